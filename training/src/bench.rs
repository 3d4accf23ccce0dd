//! Throughput measurements behind `rlhf bench`: speed is measured here, never in tests. Each
//! bench times the stages' own code (the sampler, the SFT and RM trainers' step) on synthetic
//! inputs and returns its figures as JSON.
use crate::error::{Result, TrainError};
use llama::rng::SplitMix64;
use llama::{Llama, SamplingParams};
use tch::Kind;

/// The median of timings (`v` non-empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `step(0..warmup + steps)` and returns the median seconds of the steps after the warm-up.
pub fn time_steps(warmup: u64, steps: u64, mut step: impl FnMut(u64) -> Result<()>) -> Result<f64> {
    let mut times = Vec::new();
    for s in 0..warmup + steps {
        let t0 = std::time::Instant::now();
        step(s)?;
        if s >= warmup {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(median(times))
}

/// Random token ids in `3..3 + 31997` (no BOS/EOS/UNK), seeded.
pub fn random_ids(rng: &mut SplitMix64, n: usize) -> Vec<u32> {
    (0..n).map(|_| 3 + (rng.next_u64() % 31997) as u32).collect()
}

/// Sampling throughput: `batch` random prompts of `prompt_len` tokens, exactly `new_tokens` new
/// tokens each (EOS ignored), the median of `repeats` timed runs after one warm-up.
pub fn generate_throughput(
    model: &Llama,
    batch: i64,
    prompt_len: i64,
    new_tokens: usize,
    repeats: usize,
    temperature: f64,
    seed: u64,
) -> Result<serde_json::Value> {
    if batch < 1 || prompt_len < 1 || new_tokens < 1 || repeats < 1 {
        return Err(TrainError::Config("--batch, --prompt-len, --new-tokens and --repeats must be at least 1".into()));
    }
    tch::manual_seed(seed as i64 + 1);
    let prompts_t = tch::Tensor::randint_low(3, model.cfg.vocab_size, [batch, prompt_len], (Kind::Int64, tch::Device::Cpu));
    let flat: Vec<i64> = Vec::try_from(prompts_t.reshape([-1]))?;
    let prompts: Vec<Vec<u32>> = flat
        .chunks(prompt_len as usize)
        .map(|c| {
            let mut p: Vec<u32> = c.iter().map(|&x| x as u32).collect();
            p[0] = model.cfg.bos_token_id as u32;
            p
        })
        .collect();
    let params = SamplingParams {
        max_new_tokens: new_tokens,
        temperature,
        top_p: 1.0,
        top_k: 0,
        seed,
        stop_at_eos: false,
        eos_token_id: model.cfg.eos_token_id,
        num_samples: 1,
    };
    llama::generate(model, &prompts, &params)?; // warm-up
    let (mut total, mut pre, mut dec) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeats {
        let t0 = std::time::Instant::now();
        let out = llama::generate(model, &prompts, &params)?;
        total.push(t0.elapsed().as_secs_f64());
        pre.push(out.prefill_seconds);
        dec.push(out.decode_seconds);
        if out.num_new_tokens() != batch as usize * new_tokens {
            return Err(TrainError::Config(format!(
                "bench produced {} tokens, expected {}",
                out.num_new_tokens(),
                batch as usize * new_tokens
            )));
        }
    }
    let (secs, pre_s, dec_s) = (median(total), median(pre), median(dec));
    Ok(serde_json::json!({
        "tokens_per_s": (batch as usize * new_tokens) as f64 / secs,
        "decode_tokens_per_s": (batch as f64 * (new_tokens as f64 - 1.0)) / dec_s.max(1e-9),
        "prefill_tokens_per_s": (batch * prompt_len) as f64 / pre_s.max(1e-9),
        "seconds": secs,
        "prefill_s": pre_s,
        "decode_s": dec_s,
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "temperature": temperature,
        "parameters": model.cfg.num_parameters(),
    }))
}

/// What the SFT and RM training benches share: the model, the synthetic batch shape and the run.
#[derive(Debug, Clone)]
pub struct TrainBench {
    /// HF-layout checkpoint folder (or `preset` for random weights).
    pub model: Option<std::path::PathBuf>,
    pub preset: Option<String>,
    pub batch: usize,
    pub seq_len: usize,
    /// Prompt tokens per row (BOS included); the rest, ending with EOS, are the loss targets.
    pub prompt_len: usize,
    pub steps: u64,
    pub warmup: u64,
    pub seed: u64,
    pub device: llama::DeviceSpec,
    pub dtype: Option<llama::Dtype>,
    pub gradient_checkpointing: bool,
    /// Train a rank-r LoRA adapter on q/k/v/o (needs `model`) instead of every weight.
    pub lora_r: Option<i64>,
}

impl TrainBench {
    /// The bench's LoRA settings: rank `lora_r`, alpha 2r, on the attention projections.
    pub fn lora(&self) -> Option<llama::LoraConfig> {
        self.lora_r.map(|r| llama::LoraConfig {
            r,
            alpha: 2.0 * r as f64,
            targets: ["q_proj", "k_proj", "v_proj", "o_proj"].map(String::from).to_vec(),
            ..Default::default()
        })
    }

    /// `base` with one micro-batch of `batch` per step at a constant lr, on the bench's device.
    pub fn train_config(&self, mut base: crate::TrainConfig) -> crate::TrainConfig {
        base.micro_batch_size = self.batch;
        base.grad_accumulation = 1;
        base.gradient_checkpointing = self.gradient_checkpointing;
        base.schedule = crate::config::ScheduleKind::Constant;
        base.device = self.device;
        base.dtype = self.dtype;
        base.seed = self.seed;
        base
    }

    /// Examples needed for warm-up plus timed steps.
    pub fn rows(&self) -> usize {
        self.batch * (self.warmup + self.steps) as usize
    }
}
