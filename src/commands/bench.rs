//! `rlhf bench ...`: throughput on this machine. Speed is measured here, never in tests.
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use llama::{checkpoint, Config, Llama, SamplingParams};
use std::path::PathBuf;
use tch::Kind;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Sampling throughput: random prompts, temperature 1, exactly N new tokens each (EOS ignored).
    Generate(BenchGenerateArgs),
    /// SFT training throughput on prompt-masked synthetic rows (the SFT trainer's own step).
    Sft(BenchSftArgs),
    /// Reward-model training throughput in pairs/s on synthetic pairs (the RM trainer's own step).
    Reward(BenchSftArgs),
}

#[derive(Args)]
pub struct BenchSftArgs {
    /// HF-layout checkpoint folder (or --preset for random weights).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long)]
    pub preset: Option<String>,
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
pub struct BenchGenerateArgs {
    /// HF-layout checkpoint folder (or use --preset for random weights).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Random weights of a preset shape: tiny, bench-20m, 7b, 13b, 70b.
    #[arg(long)]
    pub preset: Option<String>,
    #[arg(long, default_value_t = 16)]
    pub batch: i64,
    #[arg(long, default_value_t = 32)]
    pub prompt_len: i64,
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Timed runs; the median is reported (after one untimed warm-up).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sampling temperature (the contract is 1.0; 0 = greedy, to isolate the sampler's cost).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub dtype: Option<String>,
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(c: BenchCommand) -> Result<()> {
    match c {
        BenchCommand::Generate(a) => bench_generate(a),
        BenchCommand::Sft(a) => bench_sft(a),
        BenchCommand::Reward(a) => bench_reward(a),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn bench_generate(a: BenchGenerateArgs) -> Result<()> {
    super::set_threads(a.threads);
    let (device, kind) = super::device_and_kind(&a.device, a.dtype.as_deref())?;
    let (_vs, model) = match (&a.model, &a.preset) {
        (Some(dir), None) => checkpoint::load_causal_lm(dir, device, kind)?,
        (None, Some(p)) => {
            let cfg = Config::preset(p)?;
            tch::manual_seed(a.seed as i64);
            let vs = checkpoint::var_store(device, kind);
            let m = Llama::new(&vs.root(), &cfg);
            (vs, m)
        }
        _ => bail!("give exactly one of --model DIR or --preset NAME"),
    };
    if a.batch < 1 || a.prompt_len < 1 || a.new_tokens < 1 || a.repeats < 1 {
        bail!("--batch, --prompt-len, --new-tokens and --repeats must be at least 1");
    }
    tch::manual_seed(a.seed as i64 + 1);
    let v = model.cfg.vocab_size;
    let prompts_t = tch::Tensor::randint_low(3, v, [a.batch, a.prompt_len], (Kind::Int64, tch::Device::Cpu));
    let flat: Vec<i64> = Vec::try_from(prompts_t.reshape([-1]))?;
    let prompts: Vec<Vec<u32>> = flat
        .chunks(a.prompt_len as usize)
        .map(|c| {
            let mut p: Vec<u32> = c.iter().map(|&x| x as u32).collect();
            p[0] = model.cfg.bos_token_id as u32;
            p
        })
        .collect();
    let params = SamplingParams {
        max_new_tokens: a.new_tokens,
        temperature: a.temperature,
        top_p: 1.0,
        top_k: 0,
        seed: a.seed,
        stop_at_eos: false,
        eos_token_id: model.cfg.eos_token_id,
        num_samples: 1,
    };
    llama::generate(&model, &prompts, &params)?; // warm-up
    let (mut total, mut pre, mut dec) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.repeats {
        let t0 = std::time::Instant::now();
        let out = llama::generate(&model, &prompts, &params)?;
        total.push(t0.elapsed().as_secs_f64());
        pre.push(out.prefill_seconds);
        dec.push(out.decode_seconds);
        if out.num_new_tokens() != a.batch as usize * a.new_tokens {
            bail!("bench produced {} tokens, expected {}", out.num_new_tokens(), a.batch as usize * a.new_tokens);
        }
    }
    let (secs, pre_s, dec_s) = (median(total), median(pre), median(dec));
    let new = (a.batch as usize * a.new_tokens) as f64;
    let out = serde_json::json!({
        "tokens_per_s": new / secs,
        "decode_tokens_per_s": (a.batch as f64 * (a.new_tokens as f64 - 1.0)) / dec_s.max(1e-9),
        "prefill_tokens_per_s": (a.batch * a.prompt_len) as f64 / pre_s.max(1e-9),
        "seconds": secs,
        "prefill_s": pre_s,
        "decode_s": dec_s,
        "batch": a.batch,
        "prompt_len": a.prompt_len,
        "new_tokens": a.new_tokens,
        "repeats": a.repeats,
        "temperature": a.temperature,
        "device": format!("{device:?}"),
        "dtype": llama::device::kind_name(kind),
        "threads": tch::get_num_threads(),
        "parameters": model.cfg.num_parameters(),
    });
    println!("{out}");
    Ok(())
}

/// Rows of exactly `seq_len` tokens: BOS + random prompt (masked) + random completion + EOS.
fn synthetic_sft_examples(n: usize, seq_len: usize, prompt_len: usize, seed: u64) -> Vec<sft::Example> {
    let mut rng = llama::rng::SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let mut ids = vec![1u32];
            ids.extend((1..seq_len - 1).map(|_| 3 + (rng.next_u64() % 31997) as u32));
            ids.push(2);
            let loss_mask = (0..seq_len).map(|i| i >= prompt_len).collect();
            sft::Example { ids, loss_mask }
        })
        .collect()
}

fn bench_sft(a: BenchSftArgs) -> Result<()> {
    super::set_threads(a.threads);
    if a.prompt_len >= a.seq_len || a.batch == 0 || a.steps == 0 {
        bail!("need prompt_len < seq_len, batch >= 1 and steps >= 1");
    }
    let mut cfg = sft::SftConfig {
        model: a.model.clone(),
        init_preset: a.preset.clone(),
        tokenizer: None,
        train_data: vec![PathBuf::from("synthetic")],
        eval_data: None,
        eval_fraction: 0.0,
        max_seq_len: a.seq_len,
        packing: false,
        train_on: llama::AssistantMask::AllTurns,
        save_dtype: "float32".into(),
        token_cache: None,
        train: sft::config::sft_train_defaults(),
    };
    cfg.train.lr = 1e-5;
    cfg.train.schedule = training::config::ScheduleKind::Constant;
    cfg.train.micro_batch_size = a.batch;
    cfg.train.grad_accumulation = 1;
    cfg.train.epochs = 1;
    cfg.train.device = a.device.clone();
    cfg.train.dtype = a.dtype.clone();
    cfg.train.seed = a.seed;
    let n_steps = a.warmup + a.steps;
    let examples = synthetic_sft_examples(a.batch * n_steps as usize, a.seq_len, a.prompt_len, a.seed);
    let (mut run, _) = sft::Run::prepare(&cfg, &examples, &[])?;
    let mut times = Vec::new();
    for step in 0..n_steps {
        let t0 = std::time::Instant::now();
        let rec = run.step(step)?;
        if step >= a.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
        tracing::debug!("{rec}");
    }
    let step_s = median(times);
    let tokens = (a.batch * a.seq_len) as f64;
    let out = serde_json::json!({
        "tokens_per_s": tokens / step_s,
        "completion_tokens_per_s": (a.batch * (a.seq_len - a.prompt_len)) as f64 / step_s,
        "step_s": step_s,
        "batch": a.batch,
        "seq_len": a.seq_len,
        "completion_tokens": a.seq_len - a.prompt_len,
        "steps": a.steps,
        "threads": tch::get_num_threads(),
        "device": format!("{:?}", llama::device::parse_device(&a.device)?),
    });
    println!("{out}");
    Ok(())
}

/// Pairs sharing a prompt of `prompt_len` tokens (BOS first); each reply has `seq_len - prompt_len`
/// tokens ending with EOS, so each full sequence is `seq_len` long.
fn synthetic_pairs(n: usize, seq_len: usize, prompt_len: usize, seed: u64) -> Vec<reward::data::PairTokens> {
    let mut rng = llama::rng::SplitMix64::new(seed);
    let mut rand_ids = |k: usize| -> Vec<u32> { (0..k).map(|_| 3 + (rng.next_u64() % 31997) as u32).collect() };
    (0..n)
        .map(|_| {
            let mut prefix = vec![1u32];
            prefix.extend(rand_ids(prompt_len - 1));
            let reply = seq_len - prompt_len;
            let mut chosen = rand_ids(reply - 1);
            chosen.push(2);
            let mut rejected = rand_ids(reply - 1);
            rejected.push(2);
            reward::data::PairTokens {
                prefix,
                chosen,
                rejected,
                rating: Some(datasets::Rating::Better),
                kind: None,
                source: None,
                chosen_safe: None,
                rejected_safe: None,
            }
        })
        .collect()
}

fn bench_reward(a: BenchSftArgs) -> Result<()> {
    super::set_threads(a.threads);
    let Some(model) = a.model.clone() else { bail!("bench reward needs --model DIR (a causal LM or reward checkpoint)") };
    if a.prompt_len + 2 > a.seq_len || a.batch == 0 || a.steps == 0 {
        bail!("need prompt_len + 2 <= seq_len, batch >= 1 and steps >= 1");
    }
    let mut train = reward::config::rm_train_defaults();
    train.micro_batch_size = a.batch;
    train.grad_accumulation = 1;
    train.schedule = training::config::ScheduleKind::Constant;
    train.device = a.device.clone();
    train.dtype = a.dtype.clone();
    train.seed = a.seed;
    let cfg = reward::RewardConfig {
        model,
        tokenizer: None,
        train_data: vec![PathBuf::from("synthetic")],
        eval_data: vec![],
        margin: reward::MarginKind::None,
        center_coef: 0.0,
        max_seq_len: a.seq_len,
        threshold: 0.5,
        save_dtype: "float32".into(),
        token_cache: None,
        train,
    };
    let n_steps = a.warmup + a.steps;
    let pairs = synthetic_pairs(a.batch * n_steps as usize, a.seq_len, a.prompt_len, a.seed);
    let mut run = reward::trainer::RewardRun::prepare(&cfg, &pairs, &[])?;
    let mut times = Vec::new();
    for step in 0..n_steps {
        let t0 = std::time::Instant::now();
        run.step(step)?;
        if step >= a.warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    let step_s = median(times);
    let out = serde_json::json!({
        "pairs_per_s": a.batch as f64 / step_s,
        "step_s": step_s,
        "tokens_per_s": (2 * a.batch * a.seq_len) as f64 / step_s,
        "batch": a.batch,
        "seq_len": a.seq_len,
        "prompt_len": a.prompt_len,
        "steps": a.steps,
        "threads": tch::get_num_threads(),
        "layout": "shared prompt: one row per pair",
    });
    println!("{out}");
    Ok(())
}
