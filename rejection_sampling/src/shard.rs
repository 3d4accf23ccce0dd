//! The resumable sample log: one JSON line per prompt with all K samples and their scores,
//! appended a scoring group (prompt batch) at a time and fsync'd; beside it the generation
//! journal ([`GenJournal`], `<log>.gen`): one line per prompt with its K generated replies,
//! appended and fsync'd as soon as the prompt's last row leaves the rollout engine, before
//! scoring. A killed run loses only the rows still being decoded. Reopening either file drops a
//! torn last line (a write cut by the kill); the sampler then skips logged prompts and does not
//! regenerate journaled ones.
use crate::error::{Result, RsError};
use crate::select::PromptSamples;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct SampleLog {
    path: PathBuf,
    file: File,
    records: Vec<PromptSamples>,
    done: HashSet<String>,
}

impl SampleLog {
    /// Opens (or creates) the log, reading the records already in it. A last line that is not
    /// newline-terminated or not valid JSON is the tail of an interrupted write: it is cut off.
    /// A bad line anywhere else is an error.
    pub fn open(path: &Path) -> Result<Self> {
        let (records, file) = read_jsonl::<PromptSamples>(path)?;
        let done = records.iter().map(|r| r.key.clone()).collect();
        Ok(SampleLog { path: path.into(), file, records, done })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_done(&self, key: &str) -> bool {
        self.done.contains(key)
    }

    pub fn done(&self) -> &HashSet<String> {
        &self.done
    }

    /// Every record, in the order written.
    pub fn records(&self) -> &[PromptSamples] {
        &self.records
    }

    pub fn into_records(self) -> Vec<PromptSamples> {
        self.records
    }

    /// Appends a batch in one write and fsyncs it. Records whose prompt is already logged are
    /// skipped, so the log holds each prompt once.
    pub fn append(&mut self, batch: Vec<PromptSamples>) -> Result<()> {
        let mut buf = Vec::new();
        let mut fresh = Vec::new();
        for r in batch {
            if self.done.contains(&r.key) {
                continue;
            }
            serde_json::to_writer(&mut buf, &r).map_err(|e| RsError::Shard {
                path: self.path.clone(),
                line: self.records.len() + 1,
                msg: e.to_string(),
            })?;
            buf.push(b'\n');
            fresh.push(r);
        }
        if fresh.is_empty() {
            return Ok(());
        }
        self.file.write_all(&buf).map_err(|e| RsError::io(&self.path, e))?;
        self.file.sync_data().map_err(|e| RsError::io(&self.path, e))?;
        for r in fresh {
            self.done.insert(r.key.clone());
            self.records.push(r);
        }
        Ok(())
    }
}

/// Reads a JSONL file of `T` records and opens it for appending. A last line that is not
/// newline-terminated or not valid JSON is the tail of an interrupted write: it is cut off.
/// A bad line anywhere else is an error.
fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<(Vec<T>, File)> {
    let io = |e| RsError::io(path, e);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| RsError::io(dir, e))?;
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(e)),
    };
    let mut records = Vec::new();
    let mut good_len = 0usize;
    let mut start = 0usize;
    let mut line_no = 0usize;
    while start < bytes.len() {
        line_no += 1;
        let end = bytes[start..].iter().position(|&b| b == b'\n').map(|p| start + p);
        let last = end.is_none_or(|e| e + 1 == bytes.len());
        let line = &bytes[start..end.unwrap_or(bytes.len())];
        match serde_json::from_slice::<T>(line) {
            Ok(r) if end.is_some() => {
                records.push(r);
                good_len = end.unwrap_or(0) + 1;
            }
            Ok(_) => {
                tracing::warn!("{}: line {line_no} was cut off by an interrupted write; dropped", path.display());
            }
            Err(e) if last => {
                tracing::warn!("{}: line {line_no} is incomplete ({e}); dropped (the run was interrupted)", path.display());
            }
            Err(e) => return Err(RsError::Shard { path: path.into(), line: line_no, msg: e.to_string() }),
        }
        match end {
            Some(e) => start = e + 1,
            None => break,
        }
    }
    let file = OpenOptions::new().create(true).append(true).read(true).open(path).map_err(io)?;
    if good_len < bytes.len() {
        file.set_len(good_len as u64).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    Ok((records, file))
}

/// One generated reply, before scoring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenSample {
    pub text: String,
    /// Generated tokens (EOS included when sampled).
    pub tokens: usize,
    /// Ended with EOS within `max_new_tokens`.
    pub finished: bool,
}

/// A prompt's K generated replies: one line of the generation journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenRecord {
    /// The pool key of the prompt.
    pub key: String,
    /// In sample order (sample j drew from stream j of the prompt).
    pub samples: Vec<GenSample>,
    /// Generation wall time charged to this prompt (decode time between completions, scoring excluded).
    pub generation_seconds: f64,
}

/// The generation journal `<log>.gen`: the rows of every prompt whose K samples have left the
/// engine, appended one prompt at a time (one write + fsync each) in completion order. A resumed
/// run scores these instead of regenerating them.
pub struct GenJournal {
    path: PathBuf,
    file: File,
    records: HashMap<String, GenRecord>,
}

impl GenJournal {
    /// The journal of the sample log at `log`.
    pub fn path_for(log: &Path) -> PathBuf {
        let mut s = log.as_os_str().to_owned();
        s.push(".gen");
        PathBuf::from(s)
    }

    /// Opens (or creates) the journal of the sample log at `log`, cutting a torn last line.
    pub fn open_for(log: &Path) -> Result<Self> {
        let path = Self::path_for(log);
        let (records, file) = read_jsonl::<GenRecord>(&path)?;
        let records = records.into_iter().map(|r| (r.key.clone(), r)).collect();
        Ok(GenJournal { path, file, records })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&GenRecord> {
        self.records.get(key)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Appends one prompt's rows in one write and fsyncs them (a prompt already journaled is skipped).
    pub fn append(&mut self, r: GenRecord) -> Result<()> {
        if self.records.contains_key(&r.key) {
            return Ok(());
        }
        let mut buf = serde_json::to_vec(&r).map_err(|e| RsError::Shard {
            path: self.path.clone(),
            line: self.records.len() + 1,
            msg: e.to_string(),
        })?;
        buf.push(b'\n');
        self.file.write_all(&buf).map_err(|e| RsError::io(&self.path, e))?;
        self.file.sync_data().map_err(|e| RsError::io(&self.path, e))?;
        self.records.insert(r.key.clone(), r);
        Ok(())
    }
}

/// Batches of prompt indices still to sample: batch b holds indices `[b*size, (b+1)*size)` of the
/// prompt list, minus those already done; fully done batches are left out. Batches are fixed by
/// position so that each keeps its seed across restarts.
pub fn pending_batches(keys: &[String], batch_size: usize, done: &HashSet<String>) -> Vec<(usize, Vec<usize>)> {
    let size = batch_size.max(1);
    (0..keys.len().div_ceil(size))
        .filter_map(|b| {
            let idx: Vec<usize> = (b * size..((b + 1) * size).min(keys.len())).filter(|&i| !done.contains(&keys[i])).collect();
            (!idx.is_empty()).then_some((b, idx))
        })
        .collect()
}

/// The own log of rank `rank` of `world` beside the main log `main`: `<stem>.rank{r}-of-{w}.jsonl`.
pub fn rank_log_path(main: &Path, rank: usize, world: usize) -> PathBuf {
    let stem = main.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    main.with_file_name(format!("{stem}.rank{rank}-of-{world}.jsonl"))
}

/// Appends the records of every rank log beside `log` (of any world size) to it, in prompt
/// order, then removes the rank logs and their generation journals. Records already in the
/// main log are skipped, so a merge cut short is finished by the next one.
pub fn merge_rank_logs(log: &mut SampleLog, keys: &[String]) -> Result<()> {
    let stem = log.path().file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let dir = log.path().parent().map(Path::to_path_buf).unwrap_or_default();
    let prefix = format!("{stem}.rank");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| RsError::io(&dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            n.starts_with(&prefix) && n.ends_with(".jsonl") && n.contains("-of-")
        })
        .collect();
    if files.is_empty() {
        return Ok(());
    }
    files.sort();
    let order: std::collections::HashMap<&str, usize> = keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
    let mut records = Vec::new();
    for f in &files {
        records.extend(SampleLog::open(f)?.into_records());
    }
    records.sort_by_key(|r| order.get(r.key.as_str()).copied().unwrap_or(usize::MAX));
    log.append(records)?;
    for f in &files {
        std::fs::remove_file(f).map_err(|e| RsError::io(f, e))?;
        // The rank's generation journal goes with it: its scored prompts are merged, and a
        // prompt it generated but did not score is sampled again (same seeds) by whoever resumes.
        let journal = GenJournal::path_for(f);
        if journal.exists() {
            std::fs::remove_file(&journal).map_err(|e| RsError::io(&journal, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::{prompt_key, Sample};
    use llama::Message;

    fn rec(text: &str) -> PromptSamples {
        let prompt = vec![Message::user(text)];
        PromptSamples {
            key: prompt_key(&prompt),
            prompt,
            is_safety: false,
            iteration: 1,
            temperature: 1.0,
            samples: vec![Sample { text: "x".into(), tokens: 1, finished: true, reward: 0.5, helpfulness: Some(0.5), safety: None }],
            best: Some(0),
            skipped: None,
            generation_seconds: 0.1,
            scoring_seconds: 0.01,
        }
    }

    /// What the ranks of a distributed run (of any size, also an interrupted one) left in their
    /// own logs is appended in prompt order, skipping prompts already logged; the rank logs go.
    #[test]
    fn rank_logs_merge_into_the_main_log_in_prompt_order() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("samples-iter1.jsonl");
        let keys: Vec<String> = ["a", "b", "c", "d", "e"].iter().map(|t| prompt_key(&[Message::user(*t)])).collect();
        SampleLog::open(&main).unwrap().append(vec![rec("a")]).unwrap();
        SampleLog::open(&rank_log_path(&main, 1, 2)).unwrap().append(vec![rec("d"), rec("b")]).unwrap();
        SampleLog::open(&rank_log_path(&main, 0, 2)).unwrap().append(vec![rec("e"), rec("a")]).unwrap();
        SampleLog::open(&rank_log_path(&main, 2, 3)).unwrap().append(vec![rec("c")]).unwrap();
        std::fs::write(dir.path().join("sweep-iter1-t0.7.rank0-of-2.jsonl"), "").unwrap();
        std::fs::write(GenJournal::path_for(&rank_log_path(&main, 1, 2)), "").unwrap();
        let mut log = SampleLog::open(&main).unwrap();
        merge_rank_logs(&mut log, &keys).unwrap();
        let texts: Vec<&str> = log.records().iter().map(|r| r.prompt[0].content.as_str()).collect();
        assert_eq!(texts, ["a", "b", "c", "d", "e"]);
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
        left.sort();
        assert_eq!(left, ["samples-iter1.jsonl", "sweep-iter1-t0.7.rank0-of-2.jsonl"], "another log's rank file is left alone");
        let reread: Vec<String> = SampleLog::open(&main).unwrap().records().iter().map(|r| r.prompt[0].content.clone()).collect();
        assert_eq!(reread, ["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn reopen_keeps_done_prompts_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("samples-iter1.jsonl");
        let mut log = SampleLog::open(&path).unwrap();
        log.append(vec![rec("a"), rec("b")]).unwrap();
        log.append(vec![rec("c"), rec("a")]).unwrap(); // "a" is already logged
        drop(log);
        let intact = std::fs::read(&path).unwrap();
        assert_eq!(intact.iter().filter(|&&b| b == b'\n').count(), 3);
        // A kill in the middle of the next write leaves half a line.
        let mut torn = intact.clone();
        torn.extend_from_slice(br#"{"key":"[{\"role\":\"user\",\"content\":\"d\"}]","prompt":[{"ro"#);
        std::fs::write(&path, &torn).unwrap();

        let mut log = SampleLog::open(&path).unwrap();
        assert_eq!(log.records().len(), 3);
        assert!(log.is_done(&prompt_key(&[Message::user("b")])));
        assert!(!log.is_done(&prompt_key(&[Message::user("d")])));
        assert_eq!(std::fs::read(&path).unwrap(), intact, "the torn tail is cut off");
        log.append(vec![rec("d")]).unwrap();
        drop(log);
        let log = SampleLog::open(&path).unwrap();
        let texts: Vec<&str> = log.records().iter().map(|r| r.prompt[0].content.as_str()).collect();
        assert_eq!(texts, ["a", "b", "c", "d"]);
    }

    #[test]
    fn a_complete_last_line_without_newline_is_dropped_and_a_bad_middle_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        let line = serde_json::to_string(&rec("a")).unwrap();
        // The write stopped right before its newline: the line may be incomplete as data; resample it.
        std::fs::write(&path, format!("{line}\n{line}")).unwrap();
        assert_eq!(SampleLog::open(&path).unwrap().records().len(), 1);
        std::fs::write(&path, format!("{line}\nnot json\n{line}\n")).unwrap();
        let err = SampleLog::open(&path).err().unwrap().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    /// Scores re-read from the log must be the scores written, bit for bit: a resumed run pools
    /// re-read scores against an uninterrupted run's in-memory ones, and one ULP can flip a tie
    /// between iterations. The scores are σ of float32 reward-model outputs, as the sampler makes
    /// them (17 significant digits in JSON, where a fast float parser can be off by one ULP).
    #[test]
    fn scores_read_back_from_the_log_are_bit_equal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("samples-iter1.jsonl");
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut written = Vec::new();
        let mut log = SampleLog::open(&path).unwrap();
        for i in 0..400 {
            let mut r = rec(&format!("p{i}"));
            r.samples = (0..8)
                .map(|_| {
                    let raw = ((next() >> 11) as f64 / (1u64 << 53) as f64 * 12.0 - 6.0) as f32;
                    let h = reward::combine::sigmoid(f64::from(raw));
                    let s = reward::combine::sigmoid(f64::from(raw) * 0.37 + 0.1);
                    Sample { text: "x".into(), tokens: 1, finished: true, reward: h.min(s), helpfulness: Some(h), safety: Some(s) }
                })
                .collect();
            r.temperature = 0.6 + (i % 9) as f64 * 0.1;
            written.push(r);
        }
        log.append(written.clone()).unwrap();
        drop(log);
        let read = SampleLog::open(&path).unwrap().into_records();
        assert_eq!(read.len(), written.len());
        let bits = |r: &PromptSamples| -> Vec<u64> {
            let mut v = vec![r.temperature.to_bits()];
            for s in &r.samples {
                v.extend([s.reward.to_bits(), s.helpfulness.unwrap().to_bits(), s.safety.unwrap().to_bits()]);
            }
            v
        };
        let off: Vec<String> = written
            .iter()
            .zip(&read)
            .filter(|(w, r)| bits(w) != bits(r))
            .map(|(w, r)| format!("{}: {:?} read back as {:?}", w.key, w.rewards(), r.rewards()))
            .take(3)
            .collect();
        assert!(off.is_empty(), "scores changed on the way through the log: {off:?}");
    }

    #[test]
    fn pending_batches_skip_done_prompts_and_keep_positions() {
        let keys: Vec<String> = ["a", "b", "c", "d", "e"].iter().map(|s| s.to_string()).collect();
        let none = HashSet::new();
        assert_eq!(pending_batches(&keys, 2, &none), vec![(0, vec![0, 1]), (1, vec![2, 3]), (2, vec![4])]);
        let done: HashSet<String> = ["a", "b", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(pending_batches(&keys, 2, &done), vec![(1, vec![2]), (2, vec![4])]);
        let all: HashSet<String> = keys.iter().cloned().collect();
        assert!(pending_batches(&keys, 2, &all).is_empty());
    }
}
