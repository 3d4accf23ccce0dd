//! `reward::run`: the reward-model stage from its config, as `rlhf reward train` and the pipeline
//! call it (resolve the tokenizer, read the comparisons or the tokenized cache, train, evaluate on
//! `eval_data` into `out/eval`), and the pieces `rlhf reward eval|score` share with it.
use crate::config::RewardConfig;
use crate::data::{encode_pair, pair_from_sequences, PairMeta, PairTokens};
use crate::eval::{markdown, plots, report, score_pairs, RmReport};
use crate::model::RewardModel;
use datasets::PreferenceRecord;
use llama::checkpoint::write_atomic;
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{nn, Device};
use training::error::{Result, TrainError};
use training::runner::RunResult;
use training::stage::tokenizer_files;

/// What the stage produced: the training run and the evaluation on `eval_data`.
#[derive(Debug, Clone, Serialize)]
pub struct RewardOutcome {
    pub run: RunResult,
    pub eval: Option<RmReport>,
}

/// Trains a reward model into `out` (resuming with `resume`) and evaluates it on `eval_data`.
pub fn run(cfg: &RewardConfig, out: &Path, resume: bool) -> Result<RewardOutcome> {
    cfg.validate().map_err(TrainError::Config)?;
    let (tok, tok_path) = llama::tokenizer::resolve(cfg.tokenizer.as_deref(), Some(&cfg.model))?;
    let pairs_of = |files: &[PathBuf]| -> Result<Vec<PairTokens>> {
        match &cfg.token_cache {
            Some(root) => cached_pairs(files, &tok_path, cfg.max_seq_len, root),
            None => encode_files(&tok, files, cfg.max_seq_len).map(|(_, p)| p),
        }
    };
    // Distributed: rank 0 builds the token cache first; the others then reuse it.
    let pairs = training::dist::main_first(|| pairs_of(&cfg.train_data))?;
    let eval_pairs = training::dist::main_first(|| pairs_of(&cfg.eval_data))?;
    let r = crate::trainer::train(cfg, &pairs, &eval_pairs, out, resume, &tokenizer_files(&tok_path))?;
    let mut eval = None;
    // Distributed: rank 0 evaluates the final model and writes the report; the others are done.
    if !eval_pairs.is_empty() && distributed::is_main() {
        let compute = cfg.train.compute()?;
        let (_vs, model) = load_reward_model(&r.final_model, compute)?;
        eval = Some(evaluate_into(
            &model,
            &eval_pairs,
            compute.device,
            cfg.train.micro_batch_size,
            cfg.threshold,
            &out.join("eval"),
            "final",
        )?);
    }
    Ok(RewardOutcome { run: r, eval })
}

/// The comparisons of every file, encoded (prompt + each reply, cut to `max_len`); returns the
/// records too. Errors name the file and the row.
pub fn encode_files(tok: &llama::Tokenizer, files: &[PathBuf], max_len: usize) -> Result<(Vec<PreferenceRecord>, Vec<PairTokens>)> {
    let (mut recs, mut pairs) = (Vec::new(), Vec::new());
    for f in files {
        let rows: Vec<PreferenceRecord> = datasets::io::read_all(f)?;
        for (i, r) in rows.iter().enumerate() {
            let row_error = |e: llama::LlamaError| datasets::DatasetError::Invalid(format!("{}: row {}: {e}", f.display(), i + 1));
            pairs.push(encode_pair(tok, r, max_len).map_err(row_error)?);
        }
        recs.extend(rows);
    }
    Ok((recs, pairs))
}

/// Comparisons through the tokenized cache under `root` (built on first use, reused after).
fn cached_pairs(files: &[PathBuf], tok_path: &Path, max_len: usize, root: &Path) -> Result<Vec<PairTokens>> {
    use datasets::cache::{build_cache, CacheSettings, PreferenceCache};
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let h = build_cache(datasets::RecordKind::Preference, files, tok_path, &CacheSettings::default(), root)?;
    tracing::info!(
        "comparisons from the token cache {} ({}, {} pairs)",
        h.dir.display(),
        if h.reused { "reused" } else { "built" },
        h.manifest.records
    );
    let cache = PreferenceCache::open(&h.dir)?;
    Ok((0..cache.len())
        .filter_map(|i| cache.get(i))
        .map(|p| {
            let meta = PairMeta {
                rating: p.rating,
                kind: p.kind,
                source: p.source.map(String::from),
                chosen_safe: p.chosen_safe,
                rejected_safe: p.rejected_safe,
            };
            pair_from_sequences(p.chosen_full(), p.rejected_full(), max_len, meta)
        })
        .collect())
}

/// A trained reward model (a checkpoint without `score.weight` is refused: it is not one).
pub fn load_reward_model(dir: &Path, compute: llama::Compute) -> Result<(nn::VarStore, RewardModel)> {
    let (vs, model, fresh) = RewardModel::load(dir, compute.device, compute.kind, 0)?;
    if fresh {
        return Err(TrainError::Config(format!("{} has no score.weight: it is not a reward model", dir.display())));
    }
    Ok((vs, model))
}

/// Scores `pairs`, writes report.json, report.md and the plots into `out`; returns the report.
pub fn evaluate_into(
    model: &RewardModel,
    pairs: &[PairTokens],
    device: Device,
    batch: usize,
    threshold: f64,
    out: &Path,
    name: &str,
) -> Result<RmReport> {
    let scores = score_pairs(model, pairs, device, batch)?;
    let rep = report(&scores, threshold);
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let json = serde_json::to_string_pretty(&rep).expect("report serialises");
    write_atomic(&out.join("report.json"), json.as_bytes())?;
    write_atomic(&out.join("report.md"), markdown(name, &rep).as_bytes())?;
    plots(&scores, out)?;
    Ok(rep)
}
