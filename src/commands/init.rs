//! `rlhf init`: a randomly initialised Llama in the HF layout (HF's init: normal(0, 0.02), norms 1).
use anyhow::Result;
use clap::Args;
use llama::{checkpoint, Config, Llama};
use std::path::PathBuf;

#[derive(Args)]
pub struct InitArgs {
    /// tiny, bench-20m, 7b, 13b or 70b.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// On-disk dtype: float32, bfloat16 or float16.
    #[arg(long, default_value = "float32")]
    pub dtype: String,
}

pub fn run(a: InitArgs) -> Result<()> {
    let cfg = init_model(&a.preset, a.seed, &a.dtype, &a.out)?;
    println!("{}", serde_json::json!({"out": a.out, "parameters": cfg.num_parameters(), "preset": a.preset}));
    Ok(())
}

/// Writes a randomly initialised preset model with the Llama-2 tokenizer to `out`.
pub fn init_model(preset: &str, seed: u64, dtype: &str, out: &std::path::Path) -> Result<Config> {
    let cfg = Config::preset(preset)?;
    tch::manual_seed(seed as i64);
    let vs = checkpoint::var_store(tch::Device::Cpu, tch::Kind::Float);
    let _model = Llama::new(&vs.root(), &cfg);
    let mut opts = checkpoint::SaveOptions { dtype: llama::device::parse_kind(dtype)?, ..Default::default() };
    if let Some(tok) = llama::tokenizer::default_tokenizer_path() {
        opts.extra_files = training::stage::tokenizer_files(&tok);
    }
    checkpoint::save(&vs, &cfg, out, &opts)?;
    Ok(cfg)
}
