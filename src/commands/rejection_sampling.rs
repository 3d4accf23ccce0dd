//! `rlhf rejection-sampling --config FILE [--set key=value ...] --out DIR [--resume]`.
use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct RsArgs {
    /// TOML config (see configs/rs-demo.toml and configs/rs-llama2-70b.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config value: `--set best_of_k=4`, `--set finetune.train.lr=1e-5` (repeatable).
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// Run folder: samples-iter{N}.jsonl, pool.jsonl, iter{N}/ (sft/, report.md, ...), report.md.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue an interrupted run in --out: prompts already sampled are skipped, the fine-tune
    /// resumes from its checkpoints, finished iterations are not redone.
    #[arg(long)]
    pub resume: bool,
}

pub fn run(a: RsArgs) -> Result<()> {
    let cfg: rejection_sampling::RejectionSamplingConfig = super::config::load(&a.config, &a.sets)?;
    cfg.validate().map_err(anyhow::Error::msg).with_context(|| a.config.display().to_string())?;
    let outcome = run_config(&cfg, &a.out, a.resume)?;
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(())
}

/// Runs rejection sampling from a parsed, validated config (also the pipeline's entry point).
pub fn run_config(cfg: &rejection_sampling::RejectionSamplingConfig, out: &Path, resume: bool) -> Result<rejection_sampling::RsOutcome> {
    let (tok, tok_path) = super::sft::stage_tokenizer(cfg.tokenizer.as_deref(), Some(&cfg.policy))?;
    Ok(rejection_sampling::run(cfg, &tok, out, resume, &super::tokenizer_files(&tok_path))?)
}
