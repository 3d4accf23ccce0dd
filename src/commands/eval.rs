//! `rlhf eval lm|demo|gatt`: token-weighted mean NLL of a text set; ground truth of a demo policy;
//! Ghost Attention adherence by turn.
use super::ModelArgs;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Mean NLL of every token after the first, over JSONL rows {"text": ...} encoded with BOS, no EOS.
    Lm(EvalLmArgs),
    /// Ground-truth helpfulness, safety and false refusals of a policy on demo-world prompts.
    Demo(EvalDemoArgs),
    /// Win / tie / loss of model A against model B (same prompts, same seeds), judged by reward models and, on demo prompts,
    /// by the demo judges, with 95% intervals (Llama 2 Figure 11).
    Compare(EvalCompareArgs),
    /// Ghost Attention: the share of replies, by turn index, that obey the first turn's instruction (Llama 2 Fig. 9/28).
    Gatt(EvalGattArgs),
}

#[derive(Args)]
pub struct EvalGattArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// Dialogs with a checkable instruction (`rlhf data demo` writes gatt_eval.jsonl).
    #[arg(long)]
    pub dialogs: PathBuf,
    /// Turns answered per dialog.
    #[arg(long, default_value_t = 20)]
    pub turns: usize,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args)]
pub struct EvalDemoArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    /// Prompt records (`rlhf data demo` writes prompts_test.jsonl).
    #[arg(long)]
    pub prompts: PathBuf,
    #[arg(long, default_value_t = 48)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Replies per prompt when sampling (temperature > 0), pooled into the rates.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args)]
pub struct EvalCompareArgs {
    /// Model A (the one whose win rate is reported).
    #[arg(long)]
    pub a: PathBuf,
    /// Model B (the reference, e.g. the SFT model).
    #[arg(long)]
    pub b: PathBuf,
    /// Prompt records (`rlhf data demo` writes prompts_test.jsonl).
    #[arg(long)]
    pub prompts: PathBuf,
    /// Reward-model folders that judge (one or more); the demo judges join on demo prompts.
    #[arg(long = "judge", num_args = 1..)]
    pub judges: Vec<PathBuf>,
    #[arg(long, default_value_t = 48)]
    pub max_new_tokens: usize,
    /// 0 = greedy (one reply per prompt).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Replies per prompt and model when sampling; reply i of A meets reply i of B (same seed).
    #[arg(long, default_value_t = 4)]
    pub samples: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Reward-model scores (raw, before the sigmoid) within this of each other are a tie.
    #[arg(long, default_value_t = 0.05)]
    pub tie_tolerance: f64,
    /// Longest prompt + reply a reward model reads (the prompt's start is cut first).
    #[arg(long, default_value_t = 256)]
    pub rm_max_len: usize,
    #[command(flatten)]
    pub on: super::DeviceArgs,
    /// Print the JSON report only (default: the table, then the JSON).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct EvalLmArgs {
    #[command(flatten)]
    pub m: ModelArgs,
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
}

pub fn run(c: EvalCommand) -> Result<()> {
    match c {
        EvalCommand::Lm(a) => eval_lm(a),
        EvalCommand::Demo(a) => eval_demo(a),
        EvalCommand::Compare(a) => eval_compare(a),
        EvalCommand::Gatt(a) => eval_gatt(a),
    }
}

fn eval_lm(a: EvalLmArgs) -> Result<()> {
    let start = Instant::now();
    let tok = a.m.tokenizer()?;
    let texts = datasets::text::read_text_rows(&a.data)?;
    let (_vs, model) = a.m.causal_lm()?;
    let max = model.cfg.max_position_embeddings as usize;
    let mut encoded = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        let ids = tok.encode(t, true, false)?;
        if ids.len() > max {
            bail!("{}: row {}: field \"text\" has {} tokens, more than the model's {max} positions", a.data.display(), i + 1, ids.len());
        }
        encoded.push(ids);
    }
    let (nll, n_tokens) = llama::nll::total_nll(&model, &encoded, a.batch_size)?;
    if n_tokens == 0 {
        bail!("{}: no tokens to score (every row is a single token)", a.data.display());
    }
    let mean = nll / n_tokens as f64;
    if !mean.is_finite() {
        bail!(
            "model {}: mean NLL over {n_tokens} tokens of {} is {mean}, not a finite number (NaN or infinite weights or activations)",
            a.m.model.display(),
            a.data.display()
        );
    }
    let out = serde_json::json!({
        "mean_nll": mean,
        "perplexity": mean.exp(),
        "n_tokens": n_tokens,
        "n_rows": encoded.len(),
        "seconds": start.elapsed().as_secs_f64(),
    });
    println!("{out}");
    Ok(())
}

fn eval_compare(a: EvalCompareArgs) -> Result<()> {
    super::set_threads(a.on.threads);
    let o = pipeline::compare::CompareOptions {
        judges: a.judges.clone(),
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        samples: a.samples,
        seed: a.seed,
        batch_size: a.batch_size,
        tolerance: a.tie_tolerance,
        rm_max_len: a.rm_max_len,
        device: a.on.device,
        dtype: a.on.dtype,
    };
    let r = pipeline::compare::compare(&a.a, &a.b, &a.prompts, &o).map_err(|e| anyhow::anyhow!(e))?;
    if r.judges.is_empty() {
        bail!("no judge: give --judge RM_DIR (the prompts of {} are not the demo world's)", a.prompts.display());
    }
    if !a.json {
        eprint!("{}", pipeline::compare::table(&r));
    }
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

fn eval_demo(a: EvalDemoArgs) -> Result<()> {
    let tok = a.m.tokenizer()?;
    let prompts: Vec<datasets::PromptRecord> = datasets::io::read_all(&a.prompts)?;
    let (_vs, model) = a.m.causal_lm()?;
    let mut params = demo_world::greedy(a.max_new_tokens, model.cfg.eos_token_id);
    params.temperature = a.temperature;
    params.seed = a.seed;
    let ev = demo_world::evaluate_policy(&model, &tok, &prompts, &params, a.batch_size, a.samples)?;
    println!("{}", serde_json::to_string(&ev)?);
    Ok(())
}

fn eval_gatt(a: EvalGattArgs) -> Result<()> {
    let dialogs = gatt::data::read_dialogs(&a.dialogs, true)?;
    let tok = a.m.tokenizer()?;
    let (_vs, model) = a.m.causal_lm()?;
    let mut params = demo_world::greedy(a.max_new_tokens, model.cfg.eos_token_id);
    params.temperature = a.temperature;
    params.seed = a.seed;
    let ev = gatt::evaluate(&model, &tok, &dialogs, a.turns, &params)?;
    println!("{}", serde_json::to_string(&ev)?);
    Ok(())
}
