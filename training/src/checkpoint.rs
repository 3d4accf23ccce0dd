//! Trainer checkpoints: `<run>/checkpoints/step-00000042/` holds the model in the HF layout
//! (`model/`, fp32 so that resuming is exact), the optimizer state (`optimizer.safetensors`) and
//! `trainer_state.json` (step, epoch, data cursor, RNG state, best eval, ...).
//!
//! A checkpoint is built in a temp folder and renamed into place, then `latest` is rewritten
//! atomically: a crash at any moment leaves the previous checkpoint valid and `latest` pointing to
//! a complete one. Keep-last-N pruning never removes the best checkpoint.
use crate::error::{Result, TrainError};
use crate::optim::AdamW;
use llama::checkpoint::{self as ck, CheckpointFiles, SaveOptions};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::nn;

/// Where a stage stands; stages put their own resumable state (data cursor, RNG) in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    pub epoch: u64,
    /// Micro-batches consumed in the current epoch.
    pub cursor: u64,
    pub best_eval: Option<f64>,
    pub best_step: Option<u64>,
    /// Hash of the config that produced the run (resuming with another config is refused).
    pub config_hash: String,
    #[serde(default)]
    pub extra: serde_json::Value,
}

pub struct CheckpointManager {
    pub dir: PathBuf,
    pub keep_last: usize,
}

fn step_name(step: u64) -> String {
    format!("step-{step:08}")
}

impl CheckpointManager {
    pub fn new(run_dir: &Path, keep_last: usize) -> Self {
        CheckpointManager { dir: run_dir.join("checkpoints"), keep_last: keep_last.max(1) }
    }

    /// Saves model, optimizer and state; returns the checkpoint folder.
    pub fn save(&self, vs: &nn::VarStore, cfg: &llama::Config, opts: &SaveOptions, opt: &AdamW, state: &TrainerState) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.dir).map_err(|e| TrainError::io(&self.dir, e))?;
        let name = step_name(state.step);
        let tmp = self.dir.join(format!(".{name}.tmp-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
        ck::save(vs, cfg, &tmp.join("model"), opts)?;
        let tensors: Vec<(String, tch::Tensor)> =
            opt.state_tensors().into_iter().map(|(n, t)| (n, t.to_device(tch::Device::Cpu).contiguous())).collect();
        ck::write_safetensors(&tmp.join("optimizer.safetensors"), &tensors)?;
        let json = serde_json::to_string_pretty(state).expect("state serialises");
        ck::write_atomic(&tmp.join("trainer_state.json"), json.as_bytes())?;
        let dst = self.dir.join(&name);
        ck::replace_dir(&tmp, &dst)?;
        ck::write_atomic(&self.dir.join("latest"), name.as_bytes())?;
        self.prune(state)?;
        Ok(dst)
    }

    fn prune(&self, state: &TrainerState) -> Result<()> {
        let mut steps = self.list()?;
        steps.sort();
        let keep_from = steps.len().saturating_sub(self.keep_last);
        for (i, s) in steps.iter().enumerate() {
            if i < keep_from && Some(*s) != state.best_step {
                let p = self.dir.join(step_name(*s));
                std::fs::remove_dir_all(&p).map_err(|e| TrainError::io(&p, e))?;
            }
        }
        Ok(())
    }

    /// Steps of the complete checkpoints on disk.
    pub fn list(&self) -> Result<Vec<u64>> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return Ok(vec![]) };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if let Some(s) = n.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) {
                if e.path().join("trainer_state.json").exists() {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    /// The newest complete checkpoint, if any.
    pub fn latest(&self) -> Result<Option<PathBuf>> {
        let pointer = self.dir.join("latest");
        if let Ok(name) = std::fs::read_to_string(&pointer) {
            let p = self.dir.join(name.trim());
            if p.join("trainer_state.json").exists() {
                return Ok(Some(p));
            }
        }
        Ok(self.list()?.into_iter().max().map(|s| self.dir.join(step_name(s))))
    }

    /// The checkpoint of a given step.
    pub fn path_of(&self, step: u64) -> PathBuf {
        self.dir.join(step_name(step))
    }
}

/// Loads a checkpoint into the model variables and the optimizer; returns its trainer state.
pub fn load(path: &Path, vs: &mut nn::VarStore, opt: &mut AdamW) -> Result<TrainerState> {
    let state_path = path.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| TrainError::Json { path: state_path, source: e })?;
    ck::load_var_store(vs, &path.join("model"))?;
    let files = CheckpointFiles::open_file(&path.join("optimizer.safetensors"))?;
    let device = vs.device();
    opt.load_state(state.step, |name| Ok(files.tensor(name)?.to_device(device)))?;
    Ok(state)
}
