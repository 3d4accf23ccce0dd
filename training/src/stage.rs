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
