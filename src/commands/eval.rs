//! `rlhf eval lm`: token-weighted mean negative log-likelihood of a text set.
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use llama::checkpoint;
use llama::model::Mask;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Tensor};

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Mean NLL of every token after the first, over JSONL rows {"text": ...} encoded with BOS, no EOS.
    Lm(EvalLmArgs),
    /// Ground-truth helpfulness, safety and false refusals of a policy on demo-world prompts.
    Demo(EvalDemoArgs),
}

#[derive(Args)]
pub struct EvalDemoArgs {
    #[arg(long)]
    pub model: PathBuf,
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
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub dtype: Option<String>,
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Args)]
pub struct EvalLmArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub dtype: Option<String>,
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(c: EvalCommand) -> Result<()> {
    match c {
        EvalCommand::Lm(a) => eval_lm(a),
        EvalCommand::Demo(a) => eval_demo(a),
    }
}

/// Reads `{"text": ...}` rows; errors name the file, the line and the field.
pub fn read_text_rows(path: &Path) -> Result<Vec<String>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(f).split(b'\n').enumerate() {
        let line_no = i + 1;
        let bytes = line.with_context(|| format!("{}: reading line {line_no}", path.display()))?;
        let line = String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{}: line {line_no}: invalid UTF-8 ({e})", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("{}: line {line_no}: invalid JSON ({e})", path.display()))?;
        match v.get("text") {
            Some(serde_json::Value::String(s)) => rows.push(s.clone()),
            Some(other) => bail!("{}: line {line_no}: field \"text\" must be a string, found {}", path.display(), json_type(other)),
            None => bail!("{}: line {line_no}: missing field \"text\"", path.display()),
        }
    }
    Ok(rows)
}

pub fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn eval_lm(a: EvalLmArgs) -> Result<()> {
    super::set_threads(a.threads);
    let start = Instant::now();
    let (tok, _) = llama::tokenizer::resolve(None, Some(&a.model))?;
    let texts = read_text_rows(&a.data)?;
    let (device, kind) = super::device_and_kind(&a.device, a.dtype.as_deref())?;
    let (_vs, model) = checkpoint::load_causal_lm(&a.model, device, kind)?;
    let max = model.cfg.max_position_embeddings as usize;
    let mut encoded = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        let ids = tok.encode(t, true, false)?;
        if ids.len() > max {
            bail!("{}: row {}: field \"text\" has {} tokens, more than the model's {max} positions", a.data.display(), i + 1, ids.len());
        }
        encoded.push(ids);
    }
    let (mut nll, mut n_tokens) = (0f64, 0i64);
    let _g = tch::no_grad_guard();
    for batch in encoded.chunks(a.batch_size.max(1)) {
        let (s, n) = batch_nll(&model, batch)?;
        nll += s;
        n_tokens += n;
    }
    if n_tokens == 0 {
        bail!("{}: no tokens to score (every row is a single token)", a.data.display());
    }
    let mean = nll / n_tokens as f64;
    if !mean.is_finite() {
        bail!(
            "model {}: mean NLL over {n_tokens} tokens of {} is {mean}, not a finite number (NaN or infinite weights or activations)",
            a.model.display(),
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

/// Summed NLL and token count of right-padded rows; the LM head runs only at scored positions.
pub fn batch_nll(model: &llama::Llama, rows: &[Vec<u32>]) -> Result<(f64, i64)> {
    let device = model.device();
    let b = rows.len() as i64;
    let t = rows.iter().map(Vec::len).max().unwrap_or(0) as i64;
    if t < 2 {
        return Ok((0.0, 0));
    }
    let mut ids = vec![0i64; (b * t) as usize];
    let mut valid = vec![false; (b * t) as usize];
    for (i, r) in rows.iter().enumerate() {
        for (j, &x) in r.iter().enumerate() {
            ids[i * t as usize + j] = x as i64;
            valid[i * t as usize + j] = true;
        }
    }
    let ids = Tensor::from_slice(&ids).view([b, t]).to_device(device);
    let valid = Tensor::from_slice(&valid).view([b, t]).to_device(device);
    let positions = Tensor::arange(t, (Kind::Int64, device)).unsqueeze(0).expand([b, t], false);
    let mask = if rows.iter().all(|r| r.len() as i64 == t) { Mask::Causal } else { Mask::padded_causal(&valid, 0, t) };
    let hidden = model.forward(&ids, &positions, &mask, None);
    let d = hidden.size()[2];
    let scored = valid.narrow(1, 1, t - 1).reshape([-1]).nonzero().squeeze_dim(1);
    let h = hidden.narrow(1, 0, t - 1).reshape([-1, d]).index_select(0, &scored);
    let targets = ids.narrow(1, 1, t - 1).reshape([-1]).index_select(0, &scored);
    let logits = model.lm_logits(&h);
    let nll = logits.log_softmax(-1, Kind::Float).gather(1, &targets.unsqueeze(1), false).neg().to_kind(Kind::Double).sum(Kind::Double);
    Ok((f64::try_from(nll)?, scored.size()[0]))
}

fn eval_demo(a: EvalDemoArgs) -> Result<()> {
    super::set_threads(a.threads);
    let tok = super::tokenizer_for(&a.model)?;
    let prompts: Vec<datasets::PromptRecord> =
        datasets::io::read_all(&a.prompts).with_context(|| format!("reading prompts {}", a.prompts.display()))?;
    let (device, kind) = super::device_and_kind(&a.device, a.dtype.as_deref())?;
    let (_vs, model) = checkpoint::load_causal_lm(&a.model, device, kind)?;
    let mut params = demo_world::greedy(a.max_new_tokens, model.cfg.eos_token_id);
    params.temperature = a.temperature;
    params.seed = a.seed;
    let ev = demo_world::evaluate_policy(&model, &tok, &prompts, &params, a.batch_size, a.samples)?;
    println!("{}", serde_json::to_string(&ev)?);
    Ok(())
}
