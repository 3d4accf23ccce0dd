//! Ground-truth evaluations in the background (`[pipeline] eval_in_background = true`).
//!
//! A policy stage's evaluation ([`crate::ground_truth::ground_truth`]) is written as a job file
//! in its folder ([`JOB_FILE`]) and run by a child process, `rlhf pipeline ground-truth JOB`,
//! while the pipeline goes on with the next stages. One worker thread runs the jobs one at a time
//! in stage order (so the SFT baseline's saved replies exist before any win rate is taken). The
//! child writes [`RESULT_FILE`] (the job and its result) atomically; the pipeline waits for every
//! job before it writes the report, and copies each result into its stage's manifest.
//!
//! Same figures as an evaluation in the pipeline's own process: the child is the same binary, is
//! given the pipeline's intra-op thread count, and the evaluation draws every reply from its own
//! (seed, prompt, sample) stream. A stage's `wall_seconds` no longer includes its evaluation.
//!
//! Resume: a stage whose manifest is up to date but has no ground truth (the run stopped before
//! its job was merged) takes the result file when it was made for the same job, else runs the job
//! again.
use crate::config::PipelineSection;
use crate::error::{PipelineError, Result};
use crate::ground_truth::{ground_truth, Baseline};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

/// The job of a stage's evaluation, in its folder.
pub const JOB_FILE: &str = "ground_truth_job.json";
/// The child's result: `{"job": ..., "ground_truth": ...}`, in the stage's folder.
pub const RESULT_FILE: &str = "ground_truth.json";
/// The program the worker runs (default: this executable).
pub const EXE_ENV: &str = "RLHF_EXE";

/// One stage's ground-truth evaluation: everything [`ground_truth`] takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub stage: String,
    /// The stage's folder (the saved per-reply scores and the result go there).
    pub dir: PathBuf,
    pub model: PathBuf,
    pub prompts: PathBuf,
    pub section: PipelineSection,
    /// The win-rate baseline: (name, folder, model).
    pub baseline: Option<(String, PathBuf, PathBuf)>,
    /// libtorch intra-op threads of the pipeline's process when the job was made.
    pub threads: i32,
}

impl Job {
    /// Evaluates in this process.
    pub fn evaluate(&self) -> Result<serde_json::Value> {
        let base = self.baseline.as_ref().map(|(name, dir, model)| Baseline { name, dir, model });
        ground_truth(&self.model, &self.prompts, &self.section, &self.dir, base)
            .map_err(|source| PipelineError::GroundTruth { stage: self.stage.clone(), source })
    }

    /// The result in the stage's folder, if one was made for this very job.
    pub fn finished(&self) -> Option<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(self.dir.join(RESULT_FILE)).ok()?).ok()?;
        (v["job"] == serde_json::to_value(self).ok()?).then(|| v["ground_truth"].clone())
    }
}

/// The child's side (`rlhf pipeline ground-truth JOB`): runs the job in `file` and writes
/// [`RESULT_FILE`] beside it.
pub fn run_job(file: &Path) -> Result<()> {
    let text = std::fs::read_to_string(file).map_err(|e| PipelineError::io(file, e))?;
    let job: Job = serde_json::from_str(&text)
        .map_err(|e| PipelineError::Config { path: file.to_path_buf(), msg: format!("not a ground-truth job: {e}") })?;
    if job.threads > 0 {
        tch::set_num_threads(job.threads);
    }
    let gt = job.evaluate()?;
    let v = serde_json::json!({"job": job, "ground_truth": gt});
    llama::checkpoint::write_atomic(&job.dir.join(RESULT_FILE), serde_json::to_string_pretty(&v)?.as_bytes())?;
    Ok(())
}

/// The failure of a job: its stage and what the child said.
type Outcome = (String, std::result::Result<(), String>);

/// The worker thread that runs the jobs one by one, each in a child process.
pub struct Worker {
    tx: Option<mpsc::Sender<Job>>,
    handle: Option<JoinHandle<Vec<Outcome>>>,
    cancel: Arc<AtomicBool>,
}

impl Worker {
    /// Starts the worker; the child program is `$RLHF_EXE`, else this executable.
    pub fn start() -> Result<Worker> {
        let exe = match std::env::var_os(EXE_ENV) {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe().map_err(|e| PipelineError::io(Path::new("(this executable)"), e))?,
        };
        let (tx, rx) = mpsc::channel::<Job>();
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        let handle = std::thread::spawn(move || {
            let mut out = Vec::new();
            for job in rx {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let r = run_child(&exe, &job);
                let failed = r.is_err();
                out.push((job.stage, r));
                if failed {
                    break;
                }
            }
            out
        });
        Ok(Worker { tx: Some(tx), handle: Some(handle), cancel })
    }

    /// Writes the job file and queues the job.
    pub fn submit(&self, job: &Job) -> Result<()> {
        let _ = std::fs::remove_file(job.dir.join(RESULT_FILE));
        llama::checkpoint::write_atomic(&job.dir.join(JOB_FILE), serde_json::to_string_pretty(job)?.as_bytes())?;
        if let Some(tx) = &self.tx {
            // A closed channel means the worker stopped at a failed job: `finish` reports it.
            let _ = tx.send(job.clone());
        }
        Ok(())
    }

    /// Waits for every queued job; the first failure is an error naming its stage.
    pub fn finish(mut self) -> Result<()> {
        self.tx.take();
        let outcomes = self.handle.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        for (stage, r) in outcomes {
            r.map_err(|msg| PipelineError::GroundTruth { stage, source: msg.into() })?;
        }
        Ok(())
    }
}

impl Drop for Worker {
    /// On an early return (a stage failed), queued jobs are dropped; a running child is waited for.
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run_child(exe: &Path, job: &Job) -> std::result::Result<(), String> {
    let file = job.dir.join(JOB_FILE);
    let shown = format!("{} pipeline ground-truth {}", exe.display(), file.display());
    tracing::info!("pipeline: evaluating {} in the background", job.stage);
    let out = Command::new(exe)
        .args(["pipeline", "ground-truth"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("could not start `{shown}`: {e}"))?;
    if out.status.success() && job.finished().is_some() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(format!("`{shown}` ended with {} and no result: {}", out.status, tail.join(" | ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(dir: &Path) -> Job {
        Job {
            stage: "sft".into(),
            dir: dir.to_path_buf(),
            model: dir.join("no-such-model"),
            prompts: dir.join("prompts.jsonl"),
            section: PipelineSection::default(),
            baseline: None,
            threads: 1,
        }
    }

    #[test]
    fn a_result_counts_only_for_the_job_it_was_made_for() {
        let tmp = tempfile::tempdir().unwrap();
        let j = job(tmp.path());
        assert!(j.finished().is_none());
        let v = serde_json::json!({"job": j, "ground_truth": {"helpful": 0.5}});
        std::fs::write(tmp.path().join(RESULT_FILE), v.to_string()).unwrap();
        assert_eq!(j.finished(), Some(serde_json::json!({"helpful": 0.5})));
        let mut other = j.clone();
        other.section.eval_samples += 1;
        assert!(other.finished().is_none());
    }

    #[test]
    fn a_failed_child_is_an_error_naming_the_stage_and_the_child_s_words() {
        let tmp = tempfile::tempdir().unwrap();
        // A stand-in program that fails the way a child would, with its message on stderr.
        let exe = tmp.path().join("fake-rlhf");
        std::fs::write(&exe, "#!/bin/sh\necho 'error: model folder is missing config.json' >&2\nexit 3\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let j = job(tmp.path());
        let e = run_child(&exe, &j).unwrap_err();
        assert!(e.contains("missing config.json") && e.contains("exit status: 3"), "{e}");
        let w =
            Worker { tx: None, handle: Some(std::thread::spawn(move || vec![("sft".to_string(), Err(e))])), cancel: Default::default() };
        let msg = w.finish().unwrap_err().to_string();
        assert!(msg.contains("stage sft: ground-truth evaluation") && msg.contains("missing config.json"), "{msg}");
    }
}
