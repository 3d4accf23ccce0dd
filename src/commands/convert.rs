//! `rlhf convert`: load an HF-layout checkpoint and save it again (change the on-disk dtype,
//! re-shard). Also how `tools/check_roundtrip.py` checks that `transformers` reads what we write.
use anyhow::Result;
use clap::Args;
use llama::checkpoint::{self, SaveOptions};
use std::path::PathBuf;

#[derive(Args)]
pub struct ConvertArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// On-disk dtype: float32, bfloat16 or float16.
    #[arg(long, default_value = "float32")]
    pub dtype: String,
    /// Shard above this many bytes (HF's default is 5 GB).
    #[arg(long, default_value_t = checkpoint::DEFAULT_MAX_SHARD_BYTES)]
    pub max_shard_bytes: u64,
}

pub fn run(a: ConvertArgs) -> Result<()> {
    let (vs, model) = checkpoint::load_causal_lm(&a.model, tch::Device::Cpu, tch::Kind::Float)?;
    let extra_files = ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]
        .iter()
        .map(|f| a.model.join(f))
        .filter(|p| p.exists())
        .collect();
    let opts =
        SaveOptions { dtype: llama::device::parse_kind(&a.dtype)?, max_shard_bytes: a.max_shard_bytes, extra_files, ..Default::default() };
    checkpoint::save(&vs, &model.cfg, &a.out, &opts)?;
    println!("{}", serde_json::json!({"out": a.out, "dtype": a.dtype, "parameters": model.cfg.num_parameters()}));
    Ok(())
}
