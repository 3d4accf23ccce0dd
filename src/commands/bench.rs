//! `rlhf bench ...`: throughput on this machine (training::bench and the stages' own bench
//! functions). Speed is measured here, never in tests.
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use llama::{checkpoint, Config, Llama};
use std::path::PathBuf;
use training::bench::TrainBench;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Sampling throughput: random prompts, temperature 1, exactly N new tokens each (EOS ignored).
    Generate(BenchGenerateArgs),
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
