//! Per-step metrics: one JSON line per logged step in `<run>/metrics.jsonl` and, for a run's
//! own metrics ([`MetricsLog::with_events`]), the same numbers as TensorBoard scalars in event
//! files beside it; and a progress display — a bar with ETA on a terminal, plain `tracing` lines
//! otherwise.
use crate::error::{Result, TrainError};
use crate::tensorboard::{scalars_of, tag, EventWriter, Value};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
    /// TensorBoard event files and the tag prefix (the stage's name).
    events: Option<(EventWriter, String)>,
}

impl MetricsLog {
    /// Opens `path` for appending. On resume from step `resume_step`, lines of later steps (written
    /// after that checkpoint by the interrupted run) are dropped so every step appears once.
    pub fn open(path: &Path, resume_step: Option<u64>) -> Result<Self> {
        if let Some(step) = resume_step {
            if path.exists() {
                let f = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
                let kept: Vec<String> = std::io::BufReader::new(f)
                    .lines()
                    .map_while(|l| l.ok())
                    .filter(|l| {
                        serde_json::from_str::<serde_json::Value>(l)
                            .ok()
                            .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                            .is_some_and(|s| s <= step)
                    })
                    .collect();
                let mut text = kept.join("\n");
                if !text.is_empty() {
                    text.push('\n');
                }
                llama::checkpoint::write_atomic(path, text.as_bytes())?;
            }
        } else if path.exists() {
            std::fs::remove_file(path).map_err(|e| TrainError::io(path, e))?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| TrainError::io(path, e))?;
        Ok(MetricsLog { path: path.to_path_buf(), file, events: None })
    }

    /// Also writes every record's numbers as TensorBoard scalars `<prefix>/<key>` (see
    /// [`scalars_of`]) at the record's `step`, into event files in `dir`. `resume_step` is the
    /// one given to [`MetricsLog::open`]: events of later steps are dropped the same way.
    pub fn with_events(mut self, dir: &Path, prefix: &str, resume_step: Option<u64>) -> Result<Self> {
        self.events = Some((EventWriter::open(dir, resume_step)?, tag(prefix)));
        Ok(self)
    }

    pub fn write(&mut self, record: &serde_json::Value) -> Result<()> {
        let mut line = record.to_string();
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(|e| TrainError::io(&self.path, e))?;
        self.file.flush().map_err(|e| TrainError::io(&self.path, e))?;
        if let (Some((events, prefix)), Some(step)) = (&mut self.events, record.get("step").and_then(|s| s.as_u64())) {
            events.write(step, scalars_of(prefix, record))?;
        }
        Ok(())
    }

    /// Text summaries (markdown) `<prefix>/<tag>` of `step` (nothing without event files).
    pub fn write_texts(&mut self, step: u64, texts: &[(String, String)]) -> Result<()> {
        if let Some((events, prefix)) = &mut self.events {
            events.write(step, texts.iter().map(|(t, text)| Value::text(format!("{prefix}/{}", tag(t)), text.as_str())).collect())?;
        }
        Ok(())
    }

    /// Flushes both files to disk (at every checkpoint, so what a checkpoint resumes from is logged).
    pub fn sync(&mut self) -> Result<()> {
        self.file.sync_data().map_err(|e| TrainError::io(&self.path, e))?;
        if let Some((events, _)) = &mut self.events {
            events.sync()?;
        }
        Ok(())
    }
}

/// Reads every record of a metrics file.
pub fn read_metrics(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

/// Progress on stderr: an in-place line with ETA on a terminal, a log line every `every` steps otherwise.
pub struct Progress {
    name: String,
    total: u64,
    start: Instant,
    start_step: u64,
    tty: bool,
    every: u64,
}

impl Progress {
    pub fn new(name: &str, start_step: u64, total: u64, every: u64) -> Self {
        Progress { name: name.into(), total, start: Instant::now(), start_step, tty: std::io::stderr().is_terminal(), every: every.max(1) }
    }

    /// Shows the step (rank 0 of a distributed run only).
    pub fn update(&self, step: u64, summary: &str) {
        if !distributed::is_main() {
            return;
        }
        let done = step.saturating_sub(self.start_step) as f64;
        let elapsed = self.start.elapsed().as_secs_f64();
        let eta = if done > 0.0 { elapsed / done * (self.total.saturating_sub(step)) as f64 } else { f64::NAN };
        if self.tty {
            let width = 30usize;
            let filled = ((step as f64 / self.total.max(1) as f64) * width as f64).round() as usize;
            eprint!(
                "\r{} [{}{}] {step}/{} eta {:.0}s {summary}   ",
                self.name,
                "#".repeat(filled.min(width)),
                "-".repeat(width - filled.min(width)),
                self.total,
                eta
            );
            if step >= self.total {
                eprintln!();
            }
        } else if step.is_multiple_of(self.every) || step >= self.total {
            tracing::info!("{} step {step}/{} eta {:.0}s {summary}", self.name, self.total, eta);
        }
    }
}
