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
