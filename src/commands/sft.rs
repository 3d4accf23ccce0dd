//! `rlhf sft --config FILE [--set key=value ...] --out DIR [--resume]`.
use anyhow::{Context, Result};
use clap::Args;
use datasets::SftRecord;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct SftArgs {
    /// TOML config (see configs/sft-demo.toml and configs/sft-llama2-7b.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config value: `--set train.lr=1e-5` (repeatable).
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// Run folder: checkpoints/, metrics.jsonl, final/, best/, summary.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from the newest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
}

/// Reads SFT dialogs from every file (JSONL or Parquet).
pub fn read_dialogs(paths: &[PathBuf]) -> Result<Vec<Vec<llama::Message>>> {
    let mut out = Vec::new();
    for p in paths {
        let recs: Vec<SftRecord> = datasets::io::read_all(p).with_context(|| format!("reading SFT data {}", p.display()))?;
        out.extend(recs.into_iter().map(|r| r.messages));
    }
    Ok(out)
}

/// The tokenizer of a stage: explicit, else the model's, else the built Llama-2 tokenizer.
pub fn stage_tokenizer(explicit: Option<&Path>, model: Option<&Path>) -> Result<(llama::Tokenizer, PathBuf)> {
    let path = match (explicit, model) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(m)) if m.join("tokenizer.json").exists() => m.join("tokenizer.json"),
        _ => llama::tokenizer::default_tokenizer_path().context("no tokenizer: set `tokenizer` or run scripts/setup")?,
    };
    Ok((llama::Tokenizer::from_file(&path)?, path))
}

pub fn run(a: SftArgs) -> Result<()> {
    let cfg: sft::SftConfig = super::config::load(&a.config, &a.sets)?;
    cfg.validate().map_err(anyhow::Error::msg).with_context(|| format!("{}", a.config.display()))?;
    let outcome = run_config(&cfg, &a.out, a.resume)?;
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(())
}

/// SFT examples through the tokenized cache under `root` (built on first use, reused after).
fn cached_examples(files: &[PathBuf], tok_path: &Path, mask: llama::AssistantMask, root: &Path) -> Result<Vec<sft::Example>> {
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
    Ok(cache.iter().map(|e| sft::Example { ids: e.ids.to_vec(), loss_mask: e.loss_mask.iter().map(|&m| m != 0).collect() }).collect())
}

/// Runs SFT from a parsed config (also the pipeline's entry point).
pub fn run_config(cfg: &sft::SftConfig, out: &Path, resume: bool) -> Result<sft::SftOutcome> {
    let (tok, tok_path) = stage_tokenizer(cfg.tokenizer.as_deref(), cfg.model.as_deref())?;
    let examples = |files: &[PathBuf]| -> Result<Vec<sft::Example>> {
        match &cfg.token_cache {
            Some(root) => cached_examples(files, &tok_path, cfg.train_on, root),
            None => Ok(sft::trainer::examples_from_dialogs(&tok, &read_dialogs(files)?, cfg.train_on)?),
        }
    };
    let mut train = examples(&cfg.train_data)?;
    let eval = match &cfg.eval_data {
        Some(p) => examples(std::slice::from_ref(p))?,
        None => {
            // Hold out a seeded share of the training examples.
            let order = sft::data::epoch_order(train.len(), cfg.train.seed ^ 0xE7A1, 0);
            let n_eval = ((train.len() as f64) * cfg.eval_fraction).round() as usize;
            let held: std::collections::HashSet<usize> = order[..n_eval].iter().copied().collect();
            let (mut t, mut e) = (Vec::new(), Vec::new());
            for (i, ex) in train.drain(..).enumerate() {
                if held.contains(&i) {
                    e.push(ex)
                } else {
                    t.push(ex)
                }
            }
            train = t;
            e
        }
    };
    Ok(sft::train(cfg, &train, &eval, out, resume, &super::tokenizer_files(&tok_path))?)
}
