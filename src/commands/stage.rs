//! `rlhf sft|ppo|rejection-sampling|reward train --config FILE [--set key=value ...] --out DIR [--resume]`:
//! each parses its stage config and calls the stage crate's `run`, which the pipeline calls too.
use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;

/// The arguments every training stage takes.
#[derive(Args)]
pub struct StageArgs {
    /// TOML config (see configs/: sft-*.toml, reward-*.toml, rs-*.toml, ppo-*.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config value: `--set train.lr=1e-5`, `--set finetune.train.lr=1e-5` (repeatable).
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// Run folder (checkpoints/, metrics.jsonl, final/, summary.json, ...).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from the newest checkpoint in --out (finished parts are not redone).
    #[arg(long)]
    pub resume: bool,
}

impl StageArgs {
    /// Loads `--config` with the `--set` overrides, validates it, runs the stage and prints its
    /// outcome as one JSON line.
    pub fn run<C: serde::de::DeserializeOwned, O: Serialize, E: std::error::Error + Send + Sync + 'static>(
        &self,
        validate: impl Fn(&C) -> Result<(), String>,
        stage: impl Fn(&C, &std::path::Path, bool) -> Result<O, E>,
    ) -> Result<()> {
        let cfg: C = super::config::load(&self.config, &self.sets)?;
        validate(&cfg).map_err(anyhow::Error::msg).with_context(|| self.config.display().to_string())?;
        let outcome = stage(&cfg, &self.out, self.resume)?;
        // Under torchrun every rank returns the outcome; rank 0 prints it.
        if distributed::is_main() {
            println!("{}", serde_json::to_string(&outcome)?);
        }
        Ok(())
    }
}
