//! `rlhf pipeline run`: the stages of a validated plan in order, each in `DIR/<name>/` under an
//! exclusive lock (and the run folder under one for the whole run). A stage whose manifest
//! matches its fingerprint is skipped; a changed config or input re-runs it and, through the
//! fingerprints, everything downstream; an interrupted stage resumes from its own checkpoints.
use crate::background::{Job, Worker};
use crate::config::PipelineConfig;
use crate::error::{PipelineError, Result};
use crate::manifest::{relative_to, relativize, Manifest, MANIFEST_FILE};
use crate::plan::{Plan, PlannedStage, StageConfig};
use crate::refs::{substitute, substitute_str, Attr, Reference};
use crate::report::{write_report, write_stage_events};
use crate::stages::run_stage;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use training::lock::{RunLock, LOCK_FILE};
use training::runner::fnv1a;
use training::tensorboard::EventWriter;

/// What `rlhf pipeline run` prints when every stage is done, or when it stopped at a stage that
/// waits for people (`waiting`).
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub out: PathBuf,
    pub report: PathBuf,
    pub seconds: f64,
    /// Stages done (run or skipped).
    pub stages: usize,
    /// The stage the run stopped at, when one waits (e.g. for annotations).
    pub waiting: Option<WaitingStage>,
}

/// A stage that waits: its name, the file it waits for and what to do.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct WaitingStage {
    pub stage: String,
    pub file: PathBuf,
    pub message: String,
}

/// Beside a waiting stage's files: what it waits for (`rlhf pipeline status` shows it).
pub const WAITING_FILE: &str = "waiting.json";

/// What became of a stage: its manifest, and the ground-truth job left to run in the background.
enum Outcome {
    Done(Box<Manifest>, Option<Job>),
    Waiting(WaitingStage),
}

/// A finished (or skipped) stage, as later stages see it.
struct Done {
    /// Its output in this run folder.
    output: PathBuf,
    fingerprint: String,
}

/// Runs (or resumes) every stage of `cfg` (read from `config_path`) into run folder `out`. The
/// whole pipeline is validated first; a second run into the same folder fails at once.
pub fn run(cfg: &PipelineConfig, config_path: &Path, out: &Path) -> Result<RunSummary> {
    let plan = Plan::new(cfg, config_path)?;
    let _lock = RunLock::acquire(out)?;
    let t0 = Instant::now();
    let mut done: BTreeMap<String, Done> = BTreeMap::new();
    let mut manifests = Vec::new();
    // The pipeline's TensorBoard events, one step per stage (rewritten on every run: a skipped
    // stage's come from its manifest).
    let mut events = EventWriter::open(out, None)?;
    // The baseline of the win rates: the first SFT stage.
    let baseline = plan.stages.iter().find(|s| s.kind == crate::plan::StageKind::Sft).map(|s| s.name.clone());
    // Background evaluations: the worker, and the manifests waiting for their results.
    let mut worker = plan.section.eval_in_background.then(Worker::start).transpose()?;
    let mut pending: Vec<(usize, Job)> = Vec::new();
    for stage in &plan.stages {
        let m = match run_or_skip(&plan, stage, out, &done, baseline.as_deref(), worker.is_some())? {
            Outcome::Done(m, job) => {
                if let (Some(w), Some(job)) = (&worker, job) {
                    w.submit(&job)?;
                    pending.push((manifests.len(), job));
                }
                *m
            }
            Outcome::Waiting(w) => {
                tracing::warn!("pipeline: stage {} waits: {}", w.stage, w.message);
                merge(worker.take(), &pending, &mut manifests, out)?;
                write_events(&mut events, out, &manifests)?;
                write_report(out, &manifests)?;
                return Ok(RunSummary {
                    out: out.to_path_buf(),
                    report: out.join("report.md"),
                    seconds: t0.elapsed().as_secs_f64(),
                    stages: manifests.len(),
                    waiting: Some(w),
                });
            }
        };
        if worker.is_none() {
            write_stage_events(&mut events, out, manifests.len() as u64 + 1, &m)?;
        }
        done.insert(stage.name.clone(), Done { output: m.output_in(out), fingerprint: m.fingerprint.clone() });
        manifests.push(m);
    }
    if worker.is_some() {
        merge(worker.take(), &pending, &mut manifests, out)?;
        write_events(&mut events, out, &manifests)?;
    }
    write_report(out, &manifests)?;
    Ok(RunSummary {
        out: out.to_path_buf(),
        report: out.join("report.md"),
        seconds: t0.elapsed().as_secs_f64(),
        stages: manifests.len(),
        waiting: None,
    })
}

/// Waits for the background evaluations and puts each result into its stage's manifest.
fn merge(worker: Option<Worker>, pending: &[(usize, Job)], manifests: &mut [Manifest], out: &Path) -> Result<()> {
    let Some(worker) = worker else { return Ok(()) };
    if !pending.is_empty() {
        tracing::info!("pipeline: waiting for {} background evaluation(s)", pending.len());
    }
    worker.finish()?;
    for (i, job) in pending {
        let gt = job.finished().ok_or_else(|| PipelineError::GroundTruth {
            stage: job.stage.clone(),
            source: format!("{}: no result for this job", job.dir.join(crate::background::RESULT_FILE).display()).into(),
        })?;
        let m = &mut manifests[*i];
        m.ground_truth = Some(gt);
        m.write(&out.join(&m.name))?;
    }
    Ok(())
}

/// The TensorBoard step of every stage (after the background evaluations are in).
fn write_events(events: &mut EventWriter, out: &Path, manifests: &[Manifest]) -> Result<()> {
    for (i, m) in manifests.iter().enumerate() {
        write_stage_events(events, out, i as u64 + 1, m)?;
    }
    Ok(())
}

/// The manifest of `stage`: its folder's when up to date, else that of a fresh (or resumed) run.
fn run_or_skip(
    plan: &Plan,
    stage: &PlannedStage,
    out: &Path,
    done: &BTreeMap<String, Done>,
    baseline: Option<&str>,
    background: bool,
) -> Result<Outcome> {
    let err = |msg: String| PipelineError::Stage { path: out.to_path_buf(), stage: stage.name.clone(), msg };
    let dir = out.join(&stage.name);
    // The plan checked that every reference names an earlier stage.
    let path_of = |r: &Reference| match r.attr {
        Attr::Output => done[&r.stage].output.clone(),
        Attr::Dir => out.join(&r.stage),
    };
    let mut resolved = stage.config.clone();
    let used = substitute(&mut resolved, &path_of).map_err(err)?;
    let inputs: BTreeMap<String, String> = used.iter().map(|n| (n.clone(), done[n].fingerprint.clone())).collect();
    // Run-folder-relative, so that a copied folder is still up to date.
    let mut config = serde_json::to_value(&resolved)?;
    relativize(&mut config, out);
    let fingerprint = fnv1a(format!("{}|{}|{}", stage.kind.name(), config, serde_json::to_string(&inputs)?).as_bytes());
    // The ground-truth evaluation of a policy stage's output `model`, as a job.
    let job_for = |model: &Path| -> Result<Option<Job>> {
        let (Some(p), true) = (&plan.section.eval_prompts, stage.kind.is_policy()) else { return Ok(None) };
        let prompts = substitute_str(p, &path_of).map_err(err)?;
        // The win rate against the baseline (SFT) from its saved judgements, same seeds.
        let baseline =
            baseline.filter(|b| *b != stage.name && done.contains_key(*b)).map(|b| (b.to_string(), out.join(b), done[b].output.clone()));
        Ok(Some(Job {
            stage: stage.name.clone(),
            dir: dir.clone(),
            model: model.to_path_buf(),
            prompts,
            section: plan.section.clone(),
            baseline,
            threads: tch::get_num_threads(),
        }))
    };
    let _lock = RunLock::acquire(&dir)?;
    if let Some(mut m) = Manifest::read(&dir).filter(|m| m.fingerprint == fingerprint && m.output_in(out).exists()) {
        tracing::info!("pipeline: {} is up to date, skipped", stage.name);
        // Its evaluation may not have been merged (a background one, when the run stopped).
        let mut left = None;
        if let Some(job) = job_for(&m.output_in(out))?.filter(|_| m.ground_truth.is_none()) {
            match job.finished() {
                Some(gt) => m.ground_truth = Some(gt),
                None if background => left = Some(job),
                None => m.ground_truth = Some(job.evaluate()?),
            }
            if m.ground_truth.is_some() {
                m.write(&dir)?;
            }
        }
        return Ok(Outcome::Done(Box::new(m), left));
    }
    prepare_dir(&dir, &fingerprint)?;
    tracing::info!("pipeline: running {} ({})", stage.name, stage.kind.name());
    let start = Instant::now();
    let typed = StageConfig::parse(stage.kind, resolved).map_err(|m| err(format!("{} config: {m}", stage.kind.name())))?;
    let result = match run_stage(&typed, &dir) {
        Ok(r) => r,
        Err(source) => match source.downcast::<crate::pairs::Waiting>() {
            Ok(w) => {
                let w = WaitingStage { stage: stage.name.clone(), file: w.file, message: w.message };
                llama::checkpoint::write_atomic(&dir.join(WAITING_FILE), serde_json::to_string_pretty(&w)?.as_bytes())?;
                return Ok(Outcome::Waiting(w));
            }
            Err(source) => return Err(PipelineError::Run { stage: stage.name.clone(), kind: stage.kind.name().to_string(), source }),
        },
    };
    let _ = std::fs::remove_file(dir.join(WAITING_FILE));
    let job = job_for(&result.output)?;
    let (ground_truth, left) = match job {
        Some(job) if background => (None, Some(job)),
        Some(job) => (Some(job.evaluate()?), None),
        None => (None, None),
    };
    let mut metrics = result.metrics;
    relativize(&mut metrics, out);
    let m = Manifest {
        name: stage.name.clone(),
        kind: stage.kind.name().to_string(),
        fingerprint,
        config,
        inputs,
        output: relative_to(&result.output, out),
        metrics,
        ground_truth,
        wall_seconds: start.elapsed().as_secs_f64(),
        round: stage.round.clone(),
    };
    m.write(&dir)?;
    Ok(Outcome::Done(Box::new(m), left))
}

/// A stage folder holds the work of one fingerprint: a folder left by another config is cleared
/// (all but its lock), one left by an interrupted run of the same config is kept (the stage
/// resumes from it).
fn prepare_dir(dir: &Path, fingerprint: &str) -> Result<()> {
    let marker = dir.join(".fingerprint");
    let same = std::fs::read_to_string(&marker).map(|f| f.trim() == fingerprint).unwrap_or(false);
    if !same {
        clear_dir(dir)?;
    }
    std::fs::create_dir_all(dir).map_err(|e| PipelineError::io(dir, e))?;
    llama::checkpoint::write_atomic(&marker, fingerprint.as_bytes())?;
    let _ = std::fs::remove_file(dir.join(MANIFEST_FILE));
    Ok(())
}

/// Removes everything in `dir` but the lock file (held by this run).
fn clear_dir(dir: &Path) -> Result<()> {
    let io = |e| PipelineError::io(dir, e);
    for e in std::fs::read_dir(dir).map_err(io)? {
        let e = e.map_err(io)?;
        if e.file_name() == LOCK_FILE {
            continue;
        }
        let p = e.path();
        let removed = if e.file_type().map_err(io)?.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        removed.map_err(|e| PipelineError::io(&p, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clearing_a_stage_folder_keeps_its_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sft");
        let lock = RunLock::acquire(&dir).unwrap();
        std::fs::create_dir_all(dir.join("checkpoints/step-1")).unwrap();
        std::fs::write(dir.join(".fingerprint"), "old").unwrap();
        std::fs::write(dir.join(MANIFEST_FILE), "{}").unwrap();
        prepare_dir(&dir, "new").unwrap();
        let left: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
        let mut left = left;
        left.sort();
        assert_eq!(left, [".fingerprint", LOCK_FILE]);
        assert_eq!(std::fs::read_to_string(dir.join(".fingerprint")).unwrap(), "new");
        // The same fingerprint keeps the interrupted work (the stage resumes from it).
        std::fs::create_dir_all(dir.join("checkpoints/step-2")).unwrap();
        prepare_dir(&dir, "new").unwrap();
        assert!(dir.join("checkpoints/step-2").exists());
        drop(lock);
    }
}
