//! `rlhf bench ...`: throughput on this machine (training::bench and the stages' own bench
//! functions). Speed is measured here, never in tests.
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use llama::{checkpoint, Config, Llama, SamplingParams};
use std::path::PathBuf;
use training::bench::TrainBench;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Sampling throughput: random prompts, temperature 1, exactly N new tokens each (EOS ignored).
    Generate(BenchGenerateArgs),
    /// Rollout throughput: static against continuous batching (the rollout engine) on prompts whose
    /// replies end at their own lengths; useful tokens/s and the share of sampled tokens kept.
    Rollout(BenchRolloutArgs),
    /// SFT training throughput on prompt-masked synthetic rows (the SFT trainer's own step).
    Sft(BenchTrainArgs),
    /// Reward-model training throughput in pairs/s on synthetic pairs (the RM trainer's own step).
    Reward(BenchTrainArgs),
}

/// The model and machine settings every bench takes.
#[derive(Args)]
pub struct BenchModelArgs {
    /// HF-layout checkpoint folder (or --preset for random weights).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Random weights of a preset shape: tiny, bench-20m, 7b, 13b, 70b.
    #[arg(long)]
    pub preset: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub on: super::DeviceArgs,
}

#[derive(Args)]
pub struct BenchTrainArgs {
    #[command(flatten)]
    pub m: BenchModelArgs,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Prompt tokens per row (BOS included); the rest, ending with EOS, are the loss targets.
    #[arg(long, default_value_t = 192)]
    pub prompt_len: usize,
    #[arg(long, default_value_t = 10)]
    pub steps: u64,
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Activation checkpointing (layer-wise recomputation in the backward pass).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Train a rank-R LoRA adapter on q/k/v/o_proj instead of every weight (needs --model).
    #[arg(long, value_name = "R")]
    pub lora_r: Option<i64>,
}

#[derive(Args)]
pub struct BenchGenerateArgs {
    #[command(flatten)]
    pub m: BenchModelArgs,
    #[arg(long, default_value_t = 16)]
    pub batch: i64,
    #[arg(long, default_value_t = 32)]
    pub prompt_len: i64,
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Timed runs; the median is reported (after one untimed warm-up).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Sampling temperature (the contract is 1.0; 0 = greedy, to isolate the sampler's cost).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
}

#[derive(Args)]
pub struct BenchRolloutArgs {
    #[command(flatten)]
    pub m: super::ModelArgs,
    /// Prompts sampled (the first N of --prompts-file, or N openings the model writes itself).
    #[arg(long, default_value_t = 64)]
    pub prompts: usize,
    /// Samples per prompt (K of best-of-K; they share the prompt's prefill).
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Decode slots (static: the batch size).
    #[arg(long, default_value_t = 16)]
    pub slots: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Admission order for continuous batching: in_order, longest_prompt_first, shortest_prompt_first, longest_expected_first.
    #[arg(long, default_value = "in_order")]
    pub schedule: String,
    /// Prompt records (JSONL, `{"prompt": [messages]}`) encoded in the chat format with the model's
    /// tokenizer; without it, prompts are BOS + 4-16 tokens the model samples itself.
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,
    /// Writes the prompts' ids and settings as JSON, for tools/peer/hf_rollout_bench.py.
    #[arg(long)]
    pub dump_prompts: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Static batches and continuous batching on the same prompts and draw streams (one untimed
/// warm-up of each, then one timed run each); both must give the same tokens.
fn bench_rollout(a: BenchRolloutArgs) -> Result<serde_json::Value> {
    use llama::engine::{self, EngineConfig, Request, RowOutput};
    let (_vs, model) = a.m.causal_lm()?;
    let eos = model.cfg.eos_token_id;
    let prompts: Vec<Vec<u32>> = match &a.prompts_file {
        Some(f) => {
            let tok = a.m.tokenizer()?;
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let mut v = Vec::new();
            for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).take(a.prompts).enumerate() {
                let row: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{} line {}", f.display(), i + 1))?;
                let r = datasets::parse::parse_prompt_record(&row).map_err(|e| anyhow::anyhow!("{} line {}: {e:?}", f.display(), i + 1))?;
                v.push(llama::chat::encode_prompt(&tok, &r.prompt)?);
            }
            v
        }
        None => {
            // Story openings the model writes itself from BOS, cut at 4-16 tokens (EOS removed).
            let bos = [model.cfg.bos_token_id as u32];
            let reqs: Vec<Request> = (0..a.prompts)
                .map(|i| Request { prompt: &bos, seed: engine::prompt_seed(a.seed ^ 0xB0, i as u64), expected_new_tokens: None })
                .collect();
            let p = SamplingParams {
                max_new_tokens: 16,
                temperature: 1.0,
                top_p: 1.0,
                top_k: 0,
                stop_at_eos: false,
                num_samples: 1,
                eos_token_id: eos,
                seed: 0,
            };
            let mut v = vec![Vec::new(); a.prompts];
            engine::run(&model, &reqs, &p, &EngineConfig::default(), |r: RowOutput| -> Result<()> {
                let len = 4 + (r.request * 7) % 13;
                v[r.request] = bos.iter().copied().chain(r.tokens.into_iter().filter(|&t| t as i64 != eos).take(len)).collect();
                Ok(())
            })?;
            v
        }
    };
    if prompts.is_empty() {
        bail!("no prompts to sample");
    }
    let params = SamplingParams {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_p: 1.0,
        top_k: 0,
        seed: a.seed,
        stop_at_eos: true,
        eos_token_id: eos,
        num_samples: a.samples,
    };
    let schedule: llama::Schedule = a.schedule.parse()?;
    let reqs: Vec<Request> = prompts
        .iter()
        .enumerate()
        .map(|(i, x)| Request { prompt: x, seed: engine::prompt_seed(a.seed, i as u64), expected_new_tokens: None })
        .collect();
    let mut report = serde_json::Map::new();
    let mut tokens_of = Vec::new();
    for (name, ec) in
        [("static", EngineConfig::static_batches(a.slots)), ("continuous", EngineConfig { schedule, ..EngineConfig::continuous(a.slots) })]
    {
        let mut rows = vec![Vec::new(); prompts.len() * a.samples];
        engine::run(&model, &reqs[..reqs.len().min(2)], &params, &ec, |_| -> Result<()> { Ok(()) })?; // warm-up
        let t0 = std::time::Instant::now();
        let st = engine::run(&model, &reqs, &params, &ec, |r: RowOutput| -> Result<()> {
            rows[r.request * a.samples + r.sample] = r.tokens;
            Ok(())
        })?;
        let secs = t0.elapsed().as_secs_f64();
        report.insert(
            name.into(),
            serde_json::json!({
                "seconds": secs,
                "tokens_per_s": st.new_tokens as f64 / secs,
                "useful_fraction": st.useful_fraction(),
                "new_tokens": st.new_tokens,
                "row_steps": st.row_steps,
                "steps": st.steps,
                "prefills": st.prefills,
                "compactions": st.compactions,
                "prefill_s": st.prefill_seconds,
            }),
        );
        tokens_of.push(rows);
    }
    let same = tokens_of[0].iter().zip(&tokens_of[1]).filter(|(x, y)| x == y).count();
    let lens: Vec<usize> = tokens_of[1].iter().map(Vec::len).collect();
    let speedup = report["continuous"]["tokens_per_s"].as_f64().unwrap_or(0.0) / report["static"]["tokens_per_s"].as_f64().unwrap_or(1.0);
    if let Some(path) = &a.dump_prompts {
        let j = serde_json::json!({"prompts": prompts, "samples": a.samples, "max_new_tokens": a.max_new_tokens,
            "batch": a.slots, "temperature": a.temperature, "eos_token_id": eos, "seed": a.seed});
        std::fs::write(path, j.to_string()).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(serde_json::json!({
        "bench": "rollout",
        "model": a.m.model.display().to_string(),
        "prompts": prompts.len(),
        "samples": a.samples,
        "slots": a.slots,
        "max_new_tokens": a.max_new_tokens,
        "schedule": a.schedule,
        "prompt_len_mean": prompts.iter().map(Vec::len).sum::<usize>() as f64 / prompts.len() as f64,
        "reply_len_mean": lens.iter().sum::<usize>() as f64 / lens.len().max(1) as f64,
        "reply_len_max": lens.iter().max(),
        "finished_share": lens.iter().zip(&tokens_of[1]).filter(|(_, t)| t.last().is_some_and(|&x| x as i64 == eos)).count() as f64 / lens.len().max(1) as f64,
        "static": report["static"],
        "continuous": report["continuous"],
        "continuous_over_static": speedup,
        "same_tokens_rows": same,
        "rows": tokens_of[0].len(),
    }))
}

pub fn run(c: BenchCommand) -> Result<()> {
    let mut out = match c {
        BenchCommand::Generate(a) => {
            let compute = a.m.on.compute()?;
            let (_vs, model) = match (&a.m.model, &a.m.preset) {
                (Some(dir), None) => checkpoint::load_causal_lm(dir, compute.device, compute.kind)?,
                (None, Some(p)) => {
                    let cfg = Config::preset(p)?;
                    tch::manual_seed(a.m.seed as i64);
                    let vs = checkpoint::var_store(compute.device, compute.kind);
                    let m = Llama::new(&vs.root(), &cfg);
                    (vs, m)
                }
                _ => bail!("give exactly one of --model DIR or --preset NAME"),
            };
            let mut v =
                training::bench::generate_throughput(&model, a.batch, a.prompt_len, a.new_tokens, a.repeats, a.temperature, a.m.seed)?;
            v["device"] = format!("{:?}", compute.device).into();
            v["dtype"] = llama::device::kind_name(compute.kind).into();
            v
        }
        BenchCommand::Rollout(a) => bench_rollout(a)?,
        BenchCommand::Sft(a) => sft::bench::throughput(&train_bench(a))?,
        BenchCommand::Reward(a) => reward::bench::throughput(&train_bench(a))?,
    };
    out["threads"] = tch::get_num_threads().into();
    println!("{out}");
    Ok(())
}

fn train_bench(a: BenchTrainArgs) -> TrainBench {
    super::set_threads(a.m.on.threads);
    TrainBench {
        model: a.m.model,
        preset: a.m.preset,
        batch: a.batch,
        seq_len: a.seq_len,
        prompt_len: a.prompt_len,
        steps: a.steps,
        warmup: a.warmup,
        seed: a.m.seed,
        device: a.m.on.device,
        dtype: a.m.on.dtype,
        gradient_checkpointing: a.gradient_checkpointing,
        lora_r: a.lora_r,
    }
}
