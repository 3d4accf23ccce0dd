//! Sampling with the KV cache: greedy (temperature 0), temperature, top-k, top-p, max new
//! tokens, per-sequence stop at EOS, seeded and reproducible. The batching lives in the rollout
//! engine ([`crate::engine`]); this module holds the sampler and the `generate` entry point.
//!
//! Each prompt is prefilled once; with `num_samples = K` its cache rows are copied into the K
//! slots of its samples (rejection sampling's best-of-K), so a prompt is never encoded K times. Every sampled token comes with its log-probability, which PPO and rejection
//! sampling need: it is the log-probability under the temperature-scaled model distribution
//! *before* top-k/top-p truncation (`log_softmax(logits / T)`; at T = 0, of the raw logits), i.e.
//! exactly what a training forward recomputes from the same logits and temperature.
use crate::engine::{self, EngineConfig, Request, RowOutput};
use crate::error::{LlamaError, Result};
use crate::model::Llama;
use crate::rng::SplitMix64;
use tch::{Kind, Tensor};

/// How to sample. The Llama-2-Chat reference defaults are temperature 0.6, top-p 0.9.
#[derive(Debug, Clone)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus sampling; 1.0 disables it.
    pub top_p: f64,
    /// Keep only the k most likely tokens; 0 disables it.
    pub top_k: i64,
    pub seed: u64,
    /// Stop each sequence at its first EOS (the EOS is kept in the output).
    pub stop_at_eos: bool,
    pub eos_token_id: i64,
    /// Samples per prompt (K of best-of-K); rows come out prompt-major: prompt i, sample j at i*K + j.
    pub num_samples: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_new_tokens: 128,
            temperature: 0.6,
            top_p: 0.9,
            top_k: 0,
            seed: 0,
            stop_at_eos: true,
            eos_token_id: 2,
            num_samples: 1,
        }
    }
}

/// Generated continuations: new tokens only (up to and including EOS when it was sampled).
#[derive(Debug, Clone)]
pub struct GenerateOutput {
    pub tokens: Vec<Vec<u32>>,
    pub logprobs: Vec<Vec<f32>>,
    /// True where the sequence ended with EOS.
    pub finished: Vec<bool>,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
}

impl GenerateOutput {
    pub fn num_new_tokens(&self) -> usize {
        self.tokens.iter().map(Vec::len).sum()
    }
}

/// Picks the next token of every row from last-position logits `[B, V]` (float32), drawing the
/// uniforms from `rng`. Returns the tokens `[B]` (int64) and their log-probabilities `[B]` (float32).
pub fn sample_next(logits: &Tensor, p: &SamplingParams, rng: &mut SplitMix64) -> (Tensor, Tensor) {
    let u =
        (p.temperature > 0.0).then(|| Tensor::from_slice(&rng.uniforms(logits.size()[0] as usize)).unsqueeze(1).to_device(logits.device()));
    sample_with_uniforms(logits, p, u.as_ref())
}

/// [`sample_next`] with the uniforms given, `[B, 1]` (any float kind, on the logits' device; unused
/// when greedy): the engine keeps each row's uniforms on the device, so a step copies nothing.
pub fn sample_with_uniforms(logits: &Tensor, p: &SamplingParams, uniform: Option<&Tensor>) -> (Tensor, Tensor) {
    let u = match uniform {
        Some(u) if p.temperature > 0.0 => u,
        _ => {
            let tok = logits.argmax(-1, false);
            let lp = logits.log_softmax(-1, Kind::Float).gather(1, &tok.unsqueeze(1), false).squeeze_dim(1);
            return (tok, lp);
        }
    };
    // x / 1.0 is x exactly: no op at the recipe's sampling temperature of 1 (rejection sampling, PPO).
    let scaled = if p.temperature == 1.0 { logits.shallow_clone() } else { logits / p.temperature };
    let logp = scaled.log_softmax(-1, Kind::Float);
    let mut filtered = scaled;
    let vocab = filtered.size()[1];
    if p.top_k > 0 && p.top_k < vocab {
        let (vals, _) = filtered.topk(p.top_k, -1, true, true);
        let kth = vals.narrow(1, p.top_k - 1, 1);
        filtered = filtered.masked_fill(&filtered.lt_tensor(&kth), f64::NEG_INFINITY);
    }
    if p.top_p < 1.0 {
        let (sorted, idx) = filtered.sort(-1, true);
        let probs = sorted.softmax(-1, Kind::Float);
        let cum = probs.cumsum(-1, Kind::Float);
        // Drop a token when the mass before it already exceeds top_p; the first always stays.
        let drop = (cum - &probs).gt(p.top_p);
        let sorted = sorted.masked_fill(&drop, f64::NEG_INFINITY);
        filtered = filtered.scatter(-1, &idx, &sorted);
    }
    let tok = sample_categorical(&filtered.softmax(-1, Kind::Float), u);
    let lp = logp.gather(1, &tok, false).squeeze_dim(1);
    (tok.squeeze_dim(1), lp)
}

/// One draw per row of `probs` `[B, V]` by inverting the CDF: with `uniform` `[B, 1]` in [0, 1),
/// the first index whose cumulative mass exceeds `uniform * total`. A zero-probability token can
/// never be that index. Returns `[B, 1]` int64. (libtorch's CPU `multinomial` costs ~9 ms for
/// 16 x 32000 on our 2-core machine; this ~0.3 ms.)
pub fn sample_categorical(probs: &Tensor, uniform: &Tensor) -> Tensor {
    let cdf = probs.cumsum(-1, Kind::Double);
    let v = cdf.size()[1];
    let total = cdf.narrow(1, v - 1, 1);
    let u = uniform.to_kind(Kind::Double) * &total;
    u.searchsorted(&cdf, false, true, "right", None::<Tensor>).clamp_max(v - 1)
}

/// Samples continuations of `prompts` (token ids, BOS included by the caller) with the rollout
/// engine ([`crate::engine`], continuous batching over all rows with compaction). Prompt i draws
/// from the stream seeded `engine::prompt_seed(p.seed, i)`, sample j of it from
/// `engine::row_rng(that, j)`: a row's tokens do not depend on the other prompts of the call.
pub fn generate(model: &Llama, prompts: &[Vec<u32>], p: &SamplingParams) -> Result<GenerateOutput> {
    generate_with(model, prompts, p, &EngineConfig::default())
}

/// [`generate`] with the engine's batching spelled out (slots, schedule, static or continuous).
pub fn generate_with(model: &Llama, prompts: &[Vec<u32>], p: &SamplingParams, ec: &EngineConfig) -> Result<GenerateOutput> {
    let requests: Vec<Request> = prompts
        .iter()
        .enumerate()
        .map(|(i, x)| Request { prompt: x, seed: engine::prompt_seed(p.seed, i as u64), expected_new_tokens: None })
        .collect();
    let k = p.num_samples.max(1);
    let mut rows: Vec<Option<RowOutput>> = vec![None; prompts.len() * k];
    let stats = engine::run(model, &requests, p, ec, |r: RowOutput| -> Result<()> {
        let i = r.request * k + r.sample;
        rows[i] = Some(r);
        Ok(())
    })?;
    let mut out = GenerateOutput {
        tokens: Vec::with_capacity(rows.len()),
        logprobs: Vec::with_capacity(rows.len()),
        finished: Vec::with_capacity(rows.len()),
        prefill_seconds: stats.prefill_seconds,
        decode_seconds: stats.decode_seconds,
    };
    for (i, r) in rows.into_iter().enumerate() {
        let r = r.ok_or_else(|| LlamaError::Invalid(format!("the engine returned no row {i}")))?;
        out.tokens.push(r.tokens);
        out.logprobs.push(r.logprobs);
        out.finished.push(r.finished);
    }
    Ok(out)
}
