//! `rlhf reward train|eval|score`.
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use datasets::PreferenceRecord;
use reward::data::{encode_pair, PairTokens};
use reward::RewardModel;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum RewardCommand {
    /// Train a helpfulness or safety reward model (Llama 2 Eq. 2 with the Table 27 margin).
    Train(TrainArgs),
    /// Accuracy per test set and rating bin (Tables 7, 8), unsafe recall/precision (Table 29), plots.
    Eval(EvalArgs),
    /// Per-row chosen_score / rejected_score (JSONL or Parquet), to recompute every figure.
    Score(ScoreArgs),
}

#[derive(Args)]
pub struct TrainArgs {
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long = "set")]
    pub sets: Vec<String>,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub resume: bool,
}

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    /// σ(score) below this counts as an unsafe response (Table 29).
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f64,
    /// Folder for report.json, report.md and the PNG plots (default: print the JSON only).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 4096)]
    pub max_seq_len: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Args)]
pub struct ScoreArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub data: PathBuf,
    /// Output file (.jsonl or .parquet): the input rows plus chosen_score and rejected_score.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 4096)]
    pub max_seq_len: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(c: RewardCommand) -> Result<()> {
    match c {
        RewardCommand::Train(a) => train(a),
        RewardCommand::Eval(a) => eval(a),
        RewardCommand::Score(a) => score(a),
    }
}

fn read_pairs(paths: &[PathBuf]) -> Result<Vec<PreferenceRecord>> {
    let mut out = Vec::new();
    for p in paths {
        let recs: Vec<PreferenceRecord> = datasets::io::read_all(p).with_context(|| format!("reading preference data {}", p.display()))?;
        out.extend(recs);
    }
    Ok(out)
}

fn encode_all(tok: &llama::Tokenizer, recs: &[PreferenceRecord], max_len: usize) -> Result<Vec<PairTokens>> {
    recs.iter().enumerate().map(|(i, r)| encode_pair(tok, r, max_len).with_context(|| format!("preference pair {}", i + 1))).collect()
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
            let meta = reward::data::PairMeta {
                rating: p.rating,
                kind: p.kind,
                source: p.source.map(String::from),
                chosen_safe: p.chosen_safe,
                rejected_safe: p.rejected_safe,
            };
            reward::data::pair_from_sequences(p.chosen_full(), p.rejected_full(), max_len, meta)
        })
        .collect())
}

fn train(a: TrainArgs) -> Result<()> {
    let cfg: reward::RewardConfig = super::config::load(&a.config, &a.sets)?;
    cfg.validate().map_err(anyhow::Error::msg).with_context(|| a.config.display().to_string())?;
    let (r, _) = train_config(&cfg, &a.out, a.resume)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

/// Trains a reward model from a parsed config and evaluates it on `eval_data` into `out/eval`
/// (also the pipeline's entry point).
pub fn train_config(
    cfg: &reward::RewardConfig,
    out: &Path,
    resume: bool,
) -> Result<(training::runner::RunResult, Option<reward::eval::RmReport>)> {
    let (tok, tok_path) = super::sft::stage_tokenizer(cfg.tokenizer.as_deref(), Some(&cfg.model))?;
    let pairs_of = |files: &[PathBuf]| -> Result<Vec<PairTokens>> {
        match &cfg.token_cache {
            Some(root) => cached_pairs(files, &tok_path, cfg.max_seq_len, root),
            None => encode_all(&tok, &read_pairs(files)?, cfg.max_seq_len),
        }
    };
    let pairs = pairs_of(&cfg.train_data)?;
    let eval_pairs = pairs_of(&cfg.eval_data)?;
    let extra = super::tokenizer_files(&tok_path);
    let r = reward::trainer::train(cfg, &pairs, &eval_pairs, out, resume, &extra)?;
    let mut report = None;
    if !eval_pairs.is_empty() {
        let (device, kind) = super::device_and_kind(&cfg.train.device, cfg.train.dtype.as_deref())?;
        let (_vs, model, _) = RewardModel::load(&r.final_model, device, kind, 0)?;
        report = Some(write_eval(&model, &eval_pairs, device, cfg.train.micro_batch_size, cfg.threshold, &out.join("eval"), "final")?);
    }
    Ok((r, report))
}

/// Scores, reports (JSON + Markdown) and plots into `out`; returns the report.
fn write_eval(
    model: &RewardModel,
    pairs: &[PairTokens],
    device: tch::Device,
    batch: usize,
    threshold: f64,
    out: &Path,
    name: &str,
) -> Result<reward::eval::RmReport> {
    let scores = reward::eval::score_pairs(model, pairs, device, batch)?;
    let rep = reward::eval::report(&scores, threshold);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    llama::checkpoint::write_atomic(&out.join("report.json"), serde_json::to_string_pretty(&rep)?.as_bytes())?;
    llama::checkpoint::write_atomic(&out.join("report.md"), reward::eval::markdown(name, &rep).as_bytes())?;
    reward::eval::plots(&scores, out)?;
    Ok(rep)
}

fn eval(a: EvalArgs) -> Result<()> {
    super::set_threads(a.threads);
    let tok = super::tokenizer_for(&a.model)?;
    let pairs = encode_all(&tok, &read_pairs(&a.data)?, a.max_seq_len)?;
    let (device, kind) = super::device_and_kind(&a.device, None)?;
    let (_vs, model, fresh) = RewardModel::load(&a.model, device, kind, 0)?;
    if fresh {
        anyhow::bail!("{} has no score.weight: it is not a reward model", a.model.display());
    }
    let rep = match &a.out {
        Some(out) => write_eval(&model, &pairs, device, a.batch_size, a.threshold, out, &a.model.display().to_string())?,
        None => reward::eval::report(&reward::eval::score_pairs(&model, &pairs, device, a.batch_size)?, a.threshold),
    };
    println!("{}", serde_json::to_string(&rep)?);
    Ok(())
}

fn score(a: ScoreArgs) -> Result<()> {
    super::set_threads(a.threads);
    let tok = super::tokenizer_for(&a.model)?;
    let recs = read_pairs(std::slice::from_ref(&a.data))?;
    let pairs = encode_all(&tok, &recs, a.max_seq_len)?;
    let (device, kind) = super::device_and_kind(&a.device, None)?;
    let (_vs, model, fresh) = RewardModel::load(&a.model, device, kind, 0)?;
    if fresh {
        anyhow::bail!("{} has no score.weight: it is not a reward model", a.model.display());
    }
    let scores = reward::eval::score_pairs(&model, &pairs, device, a.batch_size)?;
    let c: Vec<f64> = scores.iter().map(|s| s.chosen).collect();
    let r: Vec<f64> = scores.iter().map(|s| s.rejected).collect();
    let n = datasets::scored::write_scored_pairs(&a.out, &recs, &c, &r).with_context(|| format!("writing {}", a.out.display()))?;
    println!("{}", serde_json::json!({"out": a.out, "rows": n}));
    Ok(())
}
