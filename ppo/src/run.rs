//! `ppo::run`: the PPO stage from its config, as `rlhf ppo` and the pipeline call it: resolve the
//! tokenizer, read the training and evaluation prompts, then [`crate::train`].
use crate::config::PpoConfig;
use crate::trainer::{train, PpoOutcome, RunInputs};
use std::path::Path;
use training::error::Result;
use training::stage::{read_records, tokenizer_files};

/// Runs PPO into `out` (resuming from its checkpoints with `resume`).
pub fn run(cfg: &PpoConfig, out: &Path, resume: bool) -> Result<PpoOutcome> {
    cfg.validate().map_err(training::TrainError::Config)?;
    let (tok, tok_path) = llama::tokenizer::resolve(cfg.tokenizer.as_deref(), Some(&cfg.policy))?;
    let inputs = RunInputs {
        tokenizer: &tok,
        extra_files: tokenizer_files(&tok_path),
        train_prompts: read_records(&cfg.train_prompts)?,
        eval_prompts: read_records(&cfg.eval_prompts)?,
    };
    train(cfg, inputs, out, resume)
}
