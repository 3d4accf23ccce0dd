//! `rlhf reward train|eval|score`.
use super::stage::StageArgs;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum RewardCommand {
    /// Train a helpfulness or safety reward model (Llama 2 Eq. 2 with the Table 27 margin).
    Train(StageArgs),
    /// Accuracy per test set and rating bin (Tables 7, 8), unsafe recall/precision (Table 29), plots.
    Eval(EvalArgs),
    /// Per-row chosen_score / rejected_score (JSONL or Parquet), to recompute every figure.
    Score(ScoreArgs),
}

/// The model and scoring settings `eval` and `score` share.
#[derive(Args)]
pub struct ScoringArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Cut prompt + reply to this many tokens (default: the length the model was trained with).
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[command(flatten)]
    pub on: super::DeviceArgs,
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub scoring: ScoringArgs,
    #[arg(long, num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    /// σ(score) below this counts as an unsafe response (Table 29).
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f64,
    /// Folder for report.json, report.md and the PNG plots (default: print the JSON only).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub scoring: ScoringArgs,
    #[arg(long)]
    pub data: PathBuf,
    /// Output file (.jsonl or .parquet): the input rows plus chosen_score and rejected_score.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(c: RewardCommand) -> Result<()> {
    match c {
        RewardCommand::Train(a) => a.run(reward::RewardConfig::validate, |c, out, resume| reward::run(c, out, resume).map(|o| o.run)),
        RewardCommand::Eval(a) => eval(a),
        RewardCommand::Score(a) => score(a),
    }
}

/// Encoded comparisons of `data` and the reward model to score them with.
struct Loaded {
    recs: Vec<datasets::PreferenceRecord>,
    pairs: Vec<reward::data::PairTokens>,
    _vs: tch::nn::VarStore,
    model: reward::RewardModel,
    device: tch::Device,
}

fn load(s: &ScoringArgs, data: &[PathBuf]) -> Result<Loaded> {
    let (tok, _) = llama::tokenizer::resolve(None, Some(&s.model))?;
    let max_len = match (s.max_seq_len, reward::model::trained_max_seq_len(&s.model)) {
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => {
            tracing::warn!("{}: no record of the training max_seq_len; scoring at 4096 tokens (set --max-seq-len)", s.model.display());
            4096
        }
    };
    let (recs, pairs) = reward::run::encode_files(&tok, data, max_len)?;
    let compute = s.on.compute()?;
    let (_vs, model) = reward::run::load_reward_model(&s.model, compute)?;
    Ok(Loaded { recs, pairs, _vs, model, device: compute.device })
}

fn eval(a: EvalArgs) -> Result<()> {
    let s = &a.scoring;
    let l = load(s, &a.data)?;
    let rep = match &a.out {
        Some(out) => {
            reward::run::evaluate_into(&l.model, &l.pairs, l.device, s.batch_size, a.threshold, out, &s.model.display().to_string())?
        }
        None => reward::eval::report(&reward::eval::score_pairs(&l.model, &l.pairs, l.device, s.batch_size)?, a.threshold),
    };
    println!("{}", serde_json::to_string(&rep)?);
    Ok(())
}

fn score(a: ScoreArgs) -> Result<()> {
    let s = &a.scoring;
    let l = load(s, std::slice::from_ref(&a.data))?;
    let scores = reward::eval::score_pairs(&l.model, &l.pairs, l.device, s.batch_size)?;
    let (ch, rj): (Vec<f64>, Vec<f64>) = scores.iter().map(|s| (s.chosen, s.rejected)).unzip();
    let n = datasets::scored::write_scored_pairs(&a.out, &l.recs, &ch, &rj).with_context(|| format!("writing {}", a.out.display()))?;
    println!("{}", serde_json::json!({"out": a.out, "rows": n}));
    Ok(())
}
