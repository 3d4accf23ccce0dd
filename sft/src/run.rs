//! `sft::run`: the SFT stage from its config, as `rlhf sft` and the pipeline call it: resolve the
//! tokenizer, read the dialogs (or the tokenized cache), hold out the evaluation split, train.
use crate::config::SftConfig;
use crate::data::{held_out_split, Example};
use crate::trainer::{examples_from_dialogs, train, SftOutcome};
use datasets::SftRecord;
use std::path::{Path, PathBuf};
use training::error::Result;
use training::stage::{read_records, tokenizer_files};

/// Runs the SFT stage into `out` (resuming from its checkpoints with `resume`).
pub fn run(cfg: &SftConfig, out: &Path, resume: bool) -> Result<SftOutcome> {
    cfg.validate().map_err(training::TrainError::Config)?;
    let (tok, tok_path) = llama::tokenizer::resolve(cfg.tokenizer.as_deref(), cfg.model.as_deref())?;
    let examples = |files: &[PathBuf]| -> Result<Vec<Example>> {
        match &cfg.token_cache {
            Some(root) => cached_examples(files, &tok_path, cfg.train_on, root),
            None => {
                let dialogs: Vec<Vec<llama::Message>> = read_records::<SftRecord>(files)?.into_iter().map(|r| r.messages).collect();
                examples_from_dialogs(&tok, &dialogs, cfg.train_on)
            }
        }
    };
    // Distributed: rank 0 builds the token cache first; the others then reuse it.
    let (train_set, eval_set) = match &cfg.eval_data {
        Some(p) => {
            (training::dist::main_first(|| examples(&cfg.train_data))?, training::dist::main_first(|| examples(std::slice::from_ref(p)))?)
        }
        None => held_out_split(training::dist::main_first(|| examples(&cfg.train_data))?, cfg.eval_fraction, cfg.train.seed),
    };
    train(cfg, &train_set, &eval_set, out, resume, &tokenizer_files(&tok_path))
}

/// SFT examples through the tokenized cache under `root` (built on first use, reused after).
fn cached_examples(files: &[PathBuf], tok_path: &Path, mask: llama::AssistantMask, root: &Path) -> Result<Vec<Example>> {
    use datasets::cache::{build_cache, CacheSettings, SftCache};
    let settings = CacheSettings { mask, length: None };
    let h = build_cache(datasets::RecordKind::Sft, files, tok_path, &settings, root)?;
    tracing::info!(
        "SFT data from the token cache {} ({}, {} examples)",
        h.dir.display(),
        if h.reused { "reused" } else { "built" },
        h.manifest.records
    );
    let cache = SftCache::open(&h.dir)?;
    Ok(cache.iter().map(|e| Example { ids: e.ids.to_vec(), loss_mask: e.loss_mask.iter().map(|&m| m != 0).collect() }).collect())
}
