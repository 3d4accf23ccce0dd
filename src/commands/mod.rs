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
pub mod reward;
pub mod stage;
pub mod tokenize;
pub mod tokenizer;

use anyhow::Result;
use llama::Tokenizer;
use std::path::Path;

/// The tokenizer of a model folder by the one precedence of [`llama::tokenizer::resolve`].
pub fn tokenizer_for(model_dir: &Path) -> Result<Tokenizer> {
    Ok(llama::tokenizer::resolve(None, Some(model_dir))?.0)
}

/// Parses `--device` and the compute dtype (`--dtype`, default fp32 on CPU, bf16 on CUDA).
pub fn device_and_kind(device: &str, dtype: Option<&str>) -> Result<(tch::Device, tch::Kind)> {
    let dtype: Option<llama::Dtype> = dtype.map(str::parse).transpose()?;
    let c = device.parse::<llama::DeviceSpec>()?.compute(dtype)?;
    Ok((c.device, c.kind))
}

/// Sets libtorch's intra-op threads (`--threads`, default: all cores).
pub fn set_threads(threads: Option<usize>) {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    tch::set_num_threads(n as i32);
}
