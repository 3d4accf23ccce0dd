//! `rlhf init`: a randomly initialised Llama in the HF layout (HF's init: normal(0, 0.02), norms 1).
use anyhow::Result;
use clap::Args;
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
    let cfg = training::stage::init_model(&a.preset, a.seed, llama::device::parse_kind(&a.dtype)?, &a.out)?;
    println!("{}", serde_json::json!({"out": a.out, "parameters": cfg.num_parameters(), "preset": a.preset}));
    Ok(())
}
