//! One file per subcommand.
pub mod annotate;
pub mod bench;
pub mod config;
pub mod convert;
pub mod data;
pub mod data_cache;
pub mod data_demo;
pub mod data_gatt;
pub mod data_validate;
pub mod eval;
pub mod generate;
pub mod init;
pub mod pipeline;
pub mod plan;
pub mod reward;
pub mod stage;
pub mod tokenize;
pub mod tokenizer;

use anyhow::Result;
use llama::{DeviceSpec, Dtype, Tokenizer};
use std::path::PathBuf;

/// `--device D --dtype T --threads N`: where and how every computing command runs.
#[derive(clap::Args)]
pub struct DeviceArgs {
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Compute dtype (default fp32 on CPU, bf16 on CUDA).
    #[arg(long)]
    pub dtype: Option<Dtype>,
    /// libtorch intra-op threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl DeviceArgs {
    /// Sets the threads and resolves the device and dtype (once, here at the edge).
    pub fn compute(&self) -> Result<llama::Compute> {
        set_threads(self.threads);
        Ok(self.device.compute(self.dtype)?)
    }
}

/// `--model DIR` plus [`DeviceArgs`]: what every command that loads one causal LM takes.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// HF-layout checkpoint folder.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub on: DeviceArgs,
}

impl ModelArgs {
    /// The model's tokenizer (the one precedence of [`llama::tokenizer::resolve`]).
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        Ok(llama::tokenizer::resolve(None, Some(&self.model))?.0)
    }

    /// The causal LM on its device, in its compute dtype.
    pub fn causal_lm(&self) -> Result<(tch::nn::VarStore, llama::Llama)> {
        let c = self.on.compute()?;
        Ok(llama::checkpoint::load_causal_lm(&self.model, c.device, c.kind)?)
    }
}

/// Sets libtorch's intra-op threads (`--threads`, default: all cores).
pub fn set_threads(threads: Option<usize>) {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    tch::set_num_threads(n as i32);
}
