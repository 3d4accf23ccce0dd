//! What every stage's `run` shares at its edge: the files copied into each saved model and
//! reading record files.
use crate::error::Result;
use std::path::{Path, PathBuf};

/// tokenizer.json and, beside it, tokenizer_config.json: copied into every saved model.
pub fn tokenizer_files(tok_path: &Path) -> Vec<PathBuf> {
    let mut v = vec![tok_path.to_path_buf()];
    let cfg = tok_path.with_file_name("tokenizer_config.json");
    if cfg.exists() {
        v.push(cfg);
    }
    v
}

/// Every record of every file (JSONL or Parquet), in order; errors name the file and row.
pub fn read_records<R: datasets::Record>(paths: &[PathBuf]) -> Result<Vec<R>> {
    let mut out = Vec::new();
    for p in paths {
        out.extend(datasets::io::read_all::<R>(p)?);
    }
    Ok(out)
}

/// Writes a randomly initialised preset model (HF's init: normal(0, 0.02), norms 1) in `dtype`
/// with the Llama-2 tokenizer to `out`, as `rlhf init` and the pipeline's `init` stage do.
pub fn init_model(preset: &str, seed: u64, dtype: tch::Kind, out: &Path) -> Result<llama::Config> {
    use llama::checkpoint;
    let cfg = llama::Config::preset(preset)?;
    tch::manual_seed(seed as i64);
    let vs = checkpoint::var_store(tch::Device::Cpu, tch::Kind::Float);
    let _model = llama::Llama::new(&vs.root(), &cfg);
    let mut opts = checkpoint::SaveOptions { dtype, ..Default::default() };
    if let Some(tok) = llama::tokenizer::default_tokenizer_path() {
        opts.extra_files = tokenizer_files(&tok);
    }
    checkpoint::save(&vs, &cfg, out, &opts)?;
    Ok(cfg)
}
