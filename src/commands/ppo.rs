//! `rlhf ppo --config FILE [--set key=value ...] --out DIR [--resume]`.
use anyhow::{Context, Result};
use clap::Args;
use datasets::PromptRecord;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct PpoArgs {
    /// TOML config (see configs/ppo-demo.toml and configs/ppo-llama2-7b.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config value: `--set kl_beta=0.005` (repeatable).
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// Run folder: checkpoints/, metrics.jsonl, samples.jsonl, final/, final_value/, best/, summary.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from the newest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
}

fn read_prompts(paths: &[PathBuf]) -> Result<Vec<PromptRecord>> {
    let mut out = Vec::new();
    for p in paths {
        let recs: Vec<PromptRecord> = datasets::io::read_all(p).with_context(|| format!("reading prompts {}", p.display()))?;
        out.extend(recs);
    }
    Ok(out)
}

pub fn run(a: PpoArgs) -> Result<()> {
    let cfg: ppo::PpoConfig = super::config::load(&a.config, &a.sets)?;
    cfg.validate().map_err(anyhow::Error::msg).with_context(|| a.config.display().to_string())?;
    let outcome = run_config(&cfg, &a.out, a.resume)?;
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(())
}

/// Runs PPO from a parsed, validated config (also the pipeline's entry point).
pub fn run_config(cfg: &ppo::PpoConfig, out: &Path, resume: bool) -> Result<ppo::PpoOutcome> {
    let (tok, tok_path) = super::sft::stage_tokenizer(cfg.tokenizer.as_deref(), Some(&cfg.policy))?;
    let inputs = ppo::RunInputs {
        tokenizer: &tok,
        extra_files: super::tokenizer_files(&tok_path),
        train_prompts: read_prompts(&cfg.train_prompts)?,
        eval_prompts: read_prompts(&cfg.eval_prompts)?,
    };
    Ok(ppo::train(cfg, inputs, out, resume)?)
}
