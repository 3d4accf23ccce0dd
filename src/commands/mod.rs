//! One file per subcommand.
pub mod bench;
pub mod config;
pub mod convert;
pub mod data;
pub mod data_cache;
pub mod data_demo;
pub mod data_validate;
pub mod eval;
pub mod generate;
pub mod init;
pub mod pipeline;
pub mod pipeline_stages;
pub mod ppo;
pub mod rejection_sampling;
pub mod reward;
pub mod sft;
pub mod tokenize;
pub mod tokenizer;

use anyhow::{Context, Result};
use llama::Tokenizer;
use std::path::{Path, PathBuf};

/// The tokenizer of a checkpoint folder (`DIR/tokenizer.json`), else the Llama-2 tokenizer built
/// by set-up (`assets/tokenizer/tokenizer.json` or `$RLHF_TOKENIZER`).
pub fn tokenizer_for(model_dir: &Path) -> Result<Tokenizer> {
    let local = model_dir.join("tokenizer.json");
    let path: PathBuf = if local.exists() {
        local
    } else {
        llama::tokenizer::default_tokenizer_path().with_context(|| {
            format!(
                "{} has no tokenizer.json and the Llama-2 tokenizer was not found \
                 (run scripts/setup, or set RLHF_TOKENIZER)",
                model_dir.display()
            )
        })?
    };
    Ok(Tokenizer::from_file(&path)?)
}

/// Parses `--device` and the compute dtype (`--dtype`, default fp32 on CPU, bf16 on CUDA).
pub fn device_and_kind(device: &str, dtype: Option<&str>) -> Result<(tch::Device, tch::Kind)> {
    let d = llama::device::parse_device(device)?;
    let k = match dtype {
        Some(s) => llama::device::parse_kind(s)?,
        None => llama::device::default_kind(d),
    };
    Ok((d, k))
}

/// Sets libtorch's intra-op threads (`--threads`, default: all cores).
pub fn set_threads(threads: Option<usize>) {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    tch::set_num_threads(n as i32);
}

/// tokenizer.json and, beside it, tokenizer_config.json: copied into every saved model.
pub fn tokenizer_files(tok_path: &Path) -> Vec<PathBuf> {
    let mut v = vec![tok_path.to_path_buf()];
    let cfg = tok_path.with_file_name("tokenizer_config.json");
    if cfg.exists() {
        v.push(cfg);
    }
    v
}
