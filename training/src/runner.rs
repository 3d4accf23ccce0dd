//! The loop every trainer shares: resume from the newest checkpoint, step, log metrics, evaluate,
//! keep the best, checkpoint every N steps and at the end, export the final and best models.
//! A stage supplies the step and the evaluation ([`Stage`]); everything resumable lives in the
//! model, the optimizer and the step count, so a resumed run continues bit-exactly.
use crate::checkpoint::{self as tck, CheckpointManager, TrainerState};
use crate::error::{Result, TrainError};
use crate::metrics::{MetricsLog, Progress};
use crate::optim::AdamW;
use llama::checkpoint::{self as ck, SaveOptions};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Kind};

pub trait Stage {
    /// Optimizer steps of the whole run.
    fn total_steps(&self) -> u64;
    /// One optimizer step (0-based); returns its metrics record (with a numeric "tokens").
    fn step(&mut self, step: u64) -> Result<serde_json::Value>;
    /// Held-out loss (lower is better), if the stage has an evaluation set.
    fn evaluate(&mut self) -> Result<Option<f64>>;
    fn var_store(&self) -> &nn::VarStore;
    fn optimizer(&self) -> &AdamW;
    /// Both at once, for loading a checkpoint.
    fn parts_mut(&mut self) -> (&mut nn::VarStore, &mut AdamW);
    /// The config written with saved models.
    fn model_config(&self) -> llama::Config;
    /// `LlamaForCausalLM` or `LlamaForSequenceClassification`.
    fn architecture(&self) -> &str;
}

pub struct RunOptions {
    pub name: String,
    pub run_dir: PathBuf,
    pub resume: bool,
    pub config_hash: String,
    pub keep_last: usize,
    pub save_every: u64,
    pub eval_every: u64,
    pub log_every: u64,
    /// On-disk dtype of `final/` (checkpoints are always fp32, for exact resume).
    pub final_dtype: Kind,
    /// Files copied into every saved model (tokenizer.json, ...).
    pub extra_files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub final_model: PathBuf,
    pub best_model: Option<PathBuf>,
    pub steps: u64,
    pub final_eval_loss: Option<f64>,
    pub best_eval_loss: Option<f64>,
    pub resumed_from: Option<u64>,
    pub seconds: f64,
    pub tokens_per_s: f64,
}

/// A stable 64-bit FNV-1a hash (config and input fingerprints).
pub fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn copy_dir_atomic(src: &Path, dst: &Path) -> Result<()> {
    let tmp = dst.with_file_name(format!(
        ".{}.tmp-{}",
        dst.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default(),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    for e in std::fs::read_dir(src).map_err(|e| TrainError::io(src, e))?.flatten() {
        std::fs::copy(e.path(), tmp.join(e.file_name())).map_err(|err| TrainError::io(e.path(), err))?;
    }
    ck::replace_dir(&tmp, dst)?;
    Ok(())
}

pub fn run(stage: &mut impl Stage, o: &RunOptions) -> Result<RunResult> {
    let start = Instant::now();
    std::fs::create_dir_all(&o.run_dir).map_err(|e| TrainError::io(&o.run_dir, e))?;
    let ckman = CheckpointManager::new(&o.run_dir, o.keep_last);
    let mut state = TrainerState { config_hash: o.config_hash.clone(), ..Default::default() };
    let mut resumed_from = None;
    match ckman.latest()? {
        Some(path) if o.resume => {
            let (vs, opt) = stage.parts_mut();
            state = tck::load(&path, vs, opt)?;
            if state.config_hash != o.config_hash {
                return Err(TrainError::Checkpoint {
                    path,
                    msg: "was written by a different config; resume with the same config or use a new run folder".into(),
                });
            }
            resumed_from = Some(state.step);
            tracing::info!(step = state.step, "{}: resumed from {}", o.name, path.display());
        }
        Some(path) => {
            return Err(TrainError::Checkpoint {
                path,
                msg: "the run folder already has checkpoints: pass --resume to continue, or choose another --out".into(),
            })
        }
        None => {}
    }
    let arch = stage.architecture().to_string();
    let exact = SaveOptions { architecture: arch.clone(), dtype: Kind::Float, extra_files: o.extra_files.clone(), ..Default::default() };
    let mut metrics = MetricsLog::open(&o.run_dir.join("metrics.jsonl"), resumed_from)?;
    let total = stage.total_steps();
    let progress = Progress::new(&o.name, state.step, total, o.log_every);
    let (mut tokens, t_loop) = (0f64, Instant::now());
    let mut last_eval = None;
    while state.step < total {
        let mut rec = stage.step(state.step)?;
        state.step += 1;
        tokens += rec["tokens"].as_f64().unwrap_or(0.0);
        let last = state.step == total;
        let mut save_now = (o.save_every > 0 && state.step % o.save_every == 0) || last;
        if (o.eval_every > 0 && state.step % o.eval_every == 0) || last {
            if let Some(l) = stage.evaluate()? {
                rec["eval_loss"] = serde_json::json!(l);
                last_eval = Some(l);
                if state.best_eval.is_none_or(|b| l < b) {
                    state.best_eval = Some(l);
                    state.best_step = Some(state.step);
                    save_now = true;
                }
            }
        }
        metrics.write(&rec)?;
        progress.update(state.step, &format!("loss {:.4}", rec["loss"].as_f64().unwrap_or(f64::NAN)));
        if save_now {
            ckman.save(stage.var_store(), &stage.model_config(), &exact, stage.optimizer(), &state)?;
        }
    }
    let final_model = o.run_dir.join("final");
    let final_opts = SaveOptions { dtype: o.final_dtype, ..exact.clone() };
    ck::save(stage.var_store(), &stage.model_config(), &final_model, &final_opts)?;
    let best_model = match state.best_step {
        Some(s) if ckman.path_of(s).exists() => {
            let dst = o.run_dir.join("best");
            copy_dir_atomic(&ckman.path_of(s).join("model"), &dst)?;
            Some(dst)
        }
        _ => None,
    };
    // The curves as a PNG; a plotting failure costs the picture, never the run.
    let keys = ["loss", "eval_loss", "accuracy", "lr", "grad_norm", "tokens_per_s"];
    if let Err(e) = crate::plot::metrics_grid(&o.run_dir.join("metrics.jsonl"), &o.run_dir.join("curves.png"), &keys, &o.name) {
        tracing::warn!("{}: could not draw curves.png: {e}", o.name);
    }
    let secs = t_loop.elapsed().as_secs_f64();
    Ok(RunResult {
        final_model,
        best_model,
        steps: state.step,
        final_eval_loss: last_eval,
        best_eval_loss: state.best_eval,
        resumed_from,
        seconds: start.elapsed().as_secs_f64(),
        tokens_per_s: tokens / secs.max(1e-9),
    })
}
