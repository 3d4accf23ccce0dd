//! PPO checkpoints: two trained models and two optimizers in one atomic folder.
//!
//! `<run>/checkpoints/step-00000042/` holds `policy/` (HF `LlamaForCausalLM`), `value/` (HF
//! `LlamaForSequenceClassification`), both fp32 so resuming is exact, `policy_optimizer.safetensors`,
//! `value_optimizer.safetensors` and `trainer_state.json` (iteration, prompt cursor, RNG, best
//! evaluation: [`PpoState`] in `extra`). The shared `CheckpointManager` saves one model and one
//! optimizer, so saving is done here, in the same layout rules: built in a temp folder, renamed
//! into place, then `latest` rewritten; keep-last-N never prunes the best checkpoint. Finding the
//! newest checkpoint is the manager's.
use llama::checkpoint::{self as ck, CheckpointFiles, SaveOptions};
use llama::rng::SplitMix64;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::nn;
use training::checkpoint::{CheckpointManager, TrainerState};
use training::{AdamW, TrainError};

type Result<T> = std::result::Result<T, TrainError>;

/// Everything a PPO run needs to continue bit-exactly, beyond weights and optimizer moments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PpoState {
    /// Prompt epoch (the shuffle of the training prompts is derived from (seed, epoch)).
    pub prompt_epoch: u64,
    /// Prompts of the current epoch already used.
    pub prompt_cursor: u64,
    /// The run's generator: sampling seeds and mini-batch shuffles are drawn from it.
    pub rng: SplitMix64,
    /// Optimizer steps taken by each model.
    pub policy_steps: u64,
    pub value_steps: u64,
    /// Evaluations since the best held-out reward (early stopping).
    pub evals_since_best: u64,
}

/// One trained model and its optimizer, as saved.
pub struct Part<'a> {
    /// Folder name inside the checkpoint (`policy`, `value`).
    pub name: &'static str,
    pub vs: &'a nn::VarStore,
    pub cfg: llama::Config,
    pub architecture: &'static str,
    pub opt: &'a AdamW,
}

fn step_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Saves the parts and `state` as checkpoint `state.step`; returns its folder.
pub fn save(ckman: &CheckpointManager, parts: &[Part], extra_files: &[PathBuf], state: &TrainerState) -> Result<PathBuf> {
    std::fs::create_dir_all(&ckman.dir).map_err(|e| TrainError::io(&ckman.dir, e))?;
    let name = step_name(state.step);
    let tmp = ckman.dir.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    for p in parts {
        let opts = SaveOptions { architecture: p.architecture.into(), extra_files: extra_files.to_vec(), ..Default::default() };
        ck::save(p.vs, &p.cfg, &tmp.join(p.name), &opts)?;
        let tensors: Vec<(String, tch::Tensor)> =
            p.opt.state_tensors().into_iter().map(|(n, t)| (n, t.to_device(tch::Device::Cpu).contiguous())).collect();
        ck::write_safetensors(&tmp.join(format!("{}_optimizer.safetensors", p.name)), &tensors)?;
    }
    let json = serde_json::to_string_pretty(state).expect("state serialises");
    ck::write_atomic(&tmp.join("trainer_state.json"), json.as_bytes())?;
    let dst = ckman.path_of(state.step);
    ck::replace_dir(&tmp, &dst)?;
    ck::write_atomic(&ckman.dir.join("latest"), name.as_bytes())?;
    let mut steps = ckman.list()?;
    steps.sort();
    let keep_from = steps.len().saturating_sub(ckman.keep_last);
    for s in steps.into_iter().take(keep_from).filter(|s| Some(*s) != state.best_step) {
        let p = ckman.path_of(s);
        std::fs::remove_dir_all(&p).map_err(|e| TrainError::io(&p, e))?;
    }
    Ok(dst)
}

/// Reads the trainer state of a checkpoint.
pub fn read_state(path: &Path) -> Result<TrainerState> {
    let state_path = path.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Json { path: state_path, source: e })
}

/// Loads one part's weights and optimizer state (`steps` updates done) from a checkpoint.
pub fn load_part(path: &Path, name: &str, vs: &mut nn::VarStore, opt: &mut AdamW, steps: u64) -> Result<()> {
    ck::load_var_store(vs, &path.join(name))?;
    let files = CheckpointFiles::open_file(&path.join(format!("{name}_optimizer.safetensors")))?;
    let device = vs.device();
    opt.load_state(steps, |n| Ok(files.tensor(n)?.to_device(device)))
}
