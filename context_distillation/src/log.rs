//! The sample log `samples.jsonl`: one line per prompt, appended a whole prompt batch at a time
//! and fsync'd, so an interrupted run resumes after the last batch written. A torn last line
//! (the process died mid-write) is cut off on open; any other bad line is an error naming it.
use crate::error::{CdError, Result};
use crate::select::PromptDistillation;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct SampleLog {
    path: PathBuf,
    records: Vec<PromptDistillation>,
    done: HashSet<String>,
}

impl SampleLog {
    /// Opens (or starts) the log at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let mut records = Vec::new();
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| CdError::io(path, e))?;
            let mut good = 0usize;
            let lines: Vec<&str> = text.split_inclusive('\n').collect();
            for (i, line) in lines.iter().enumerate() {
                // Only the last line can lack its newline: a write the process did not finish.
                if !line.ends_with('\n') {
                    tracing::warn!("{}: line {} is incomplete (an interrupted write): dropped", path.display(), i + 1);
                    break;
                }
                let r = serde_json::from_str::<PromptDistillation>(line.trim_end()).map_err(|e| CdError::Log {
                    path: path.into(),
                    line: i + 1,
                    msg: e.to_string(),
                })?;
                records.push(r);
                good += line.len();
            }
            if good < text.len() {
                let f = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| CdError::io(path, e))?;
                f.set_len(good as u64).and_then(|_| f.sync_all()).map_err(|e| CdError::io(path, e))?;
            }
        }
        let done = records.iter().map(|r| r.key.clone()).collect();
        Ok(SampleLog { path: path.into(), records, done })
    }

    pub fn records(&self) -> &[PromptDistillation] {
        &self.records
    }

    pub fn done(&self) -> &HashSet<String> {
        &self.done
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a batch's lines in one write and fsyncs them.
    pub fn append(&mut self, batch: Vec<PromptDistillation>) -> Result<()> {
        let mut text = String::new();
        for r in &batch {
            text.push_str(&serde_json::to_string(r).map_err(|e| CdError::Config(e.to_string()))?);
            text.push('\n');
        }
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).map_err(|e| CdError::io(&self.path, e))?;
        f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| CdError::io(&self.path, e))?;
        for r in batch {
            self.done.insert(r.key.clone());
            self.records.push(r);
        }
        Ok(())
    }
}
