//! Rollouts: sample one response per prompt with the KV cache (no gradient), score it with the
//! reward models, and compute what PPO needs per token — reference log-probabilities, values,
//! the KL-shaped rewards, GAE advantages and returns (Llama 2 Section 3.2.3).
use crate::config::PpoConfig;
use crate::math::{gae, kl_penalty, masked_mean, masked_whiten, token_rewards};
use crate::models::{response_logprobs, response_values, Policy, ScalarModel, SeqBatch};
use crate::reward::RewardSource;
use datasets::PromptRecord;
use llama::engine::{self, EngineConfig, Request, RowOutput};
use llama::{SamplingParams, Tokenizer};
use reward::combine::{logit, sigmoid, RewardScorer, ScoreOrder, ScorerSpec};
use tch::{Device, Kind, Tensor};
use training::TrainError;

type Result<T> = std::result::Result<T, TrainError>;

/// A prompt with its chat-format ids.
#[derive(Debug, Clone)]
pub struct EncodedPrompt {
    pub record: PromptRecord,
    pub ids: Vec<u32>,
}

/// One sampled response and its sequence-level numbers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub prompt: usize,
    pub response: Vec<u32>,
    pub text: String,
    /// Ended with EOS (within `max_new_tokens`).
    pub finished: bool,
    /// The sampler's log-probabilities of the response tokens.
    pub logprobs: Vec<f32>,
    pub safety_raw: Option<f64>,
    pub helpfulness_raw: Option<f64>,
    /// `LOGIT(Rc)` (minus the missing-EOS penalty), before whitening.
    pub score: f64,
    pub source: RewardSource,
}

/// The frozen reward models.
pub struct RewardModels {
    pub helpfulness: Option<ScalarModel>,
    pub safety: Option<ScalarModel>,
}

/// Samples responses to `prompts` (indices into `all`), `samples` each, with the rollout engine:
/// `batch` prompts' rows decode at once, and a slot whose row has ended takes the next prompt
/// (continuous batching across the whole list). `seed()` is called once per `batch` prompts, in
/// order, as when each batch was sampled on its own; prompt i of batch b draws from
/// `engine::prompt_seed(seed_b, i)`, so a batch sampled alone (one rank of a distributed run)
/// gives the same tokens. Samples come back in prompt order.
pub fn sample(
    policy: &Policy,
    tok: &Tokenizer,
    all: &[EncodedPrompt],
    prompts: &[usize],
    p: &SamplingParams,
    batch: usize,
    mut seed: impl FnMut() -> u64,
) -> Result<Vec<Sample>> {
    let k = p.num_samples.max(1);
    let mut requests = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(batch.max(1)) {
        let s = seed();
        for (i, &pi) in chunk.iter().enumerate() {
            requests.push(Request { prompt: &all[pi].ids, seed: engine::prompt_seed(s, i as u64), expected_new_tokens: None });
        }
    }
    let mut rows: Vec<Option<RowOutput>> = vec![None; requests.len() * k];
    let stats = engine::run(&policy.model, &requests, p, &EngineConfig::continuous(batch.max(1) * k), |r: RowOutput| -> Result<()> {
        let i = r.request * k + r.sample;
        rows[i] = Some(r);
        Ok(())
    })?;
    if stats.lockstep_dummies > 0 {
        tracing::debug!(
            "rollout: {} decode steps, {} dummy forwards in lockstep with the other ranks",
            stats.steps,
            stats.lockstep_dummies
        );
    }
    let mut out = Vec::with_capacity(rows.len());
    for (i, r) in rows.into_iter().enumerate() {
        let r = r.ok_or_else(|| TrainError::Config(format!("the rollout engine returned no row {i}")))?;
        out.push(Sample {
            prompt: prompts[r.request],
            text: tok.decode(&r.tokens)?,
            response: r.tokens,
            finished: r.finished,
            logprobs: r.logprobs,
            safety_raw: None,
            helpfulness_raw: None,
            score: 0.0,
            source: RewardSource::Helpfulness,
        });
    }
    Ok(out)
}

/// Scores every sample with the reward models ([`reward::combine::RewardScorer`], in sampling
/// order, `generation_batch_size` sequences per forward) and sets `score = LOGIT(Rc)` (Llama 2's rule).
pub fn score(
    rms: &RewardModels,
    tok: &Tokenizer,
    all: &[EncodedPrompt],
    samples: &mut [Sample],
    cfg: &PpoConfig,
    device: Device,
) -> Result<()> {
    let spec = ScorerSpec {
        threshold: cfg.safety_threshold,
        max_len: cfg.rm_max_len,
        batch: cfg.generation_batch_size,
        order: ScoreOrder::AsGiven,
    };
    let scorer = RewardScorer {
        helpfulness: rms.helpfulness.as_ref().map(|m| &m.model),
        safety: rms.safety.as_ref().map(|m| &m.model),
        spec,
        device,
    };
    let items: Vec<(&PromptRecord, &str)> = samples.iter().map(|s| (&all[s.prompt].record, s.text.as_str())).collect();
    let scores = scorer.score(tok, &items)?;
    for (smp, sc) in samples.iter_mut().zip(scores) {
        smp.helpfulness_raw = sc.helpfulness_raw;
        smp.safety_raw = sc.safety_raw;
        smp.score = logit(sc.rc) - if smp.finished { 0.0 } else { cfg.missing_eos_penalty.unwrap_or(0.0) };
        smp.source = sc.source;
    }
    Ok(())
}

/// Right-pads rows into a `[N, T]` float32 tensor.
pub fn pad_rows(rows: &[&[f32]], t: usize, device: Device) -> Tensor {
    let mut v = vec![0f32; rows.len() * t];
    for (i, r) in rows.iter().enumerate() {
        v[i * t..i * t + r.len()].copy_from_slice(r);
    }
    Tensor::from_slice(&v).view([rows.len() as i64, t as i64]).to_device(device)
}

/// A scored rollout with its per-token tensors (`[N, T]`, right-padded, on the device).
pub struct Rollout {
    pub samples: Vec<Sample>,
    pub mask: Tensor,
    pub old_logprobs: Tensor,
    pub ref_logprobs: Tensor,
    pub values: Tensor,
    pub advantages: Tensor,
    pub returns: Tensor,
    /// Per-sequence KL estimate (summed over the response).
    pub kl: Tensor,
    /// Scores after `WHITEN` (the reward the last token gets).
    pub scores_whitened: Tensor,
    /// Sum of the per-token rewards of each response.
    pub total_rewards: Tensor,
    pub generation_seconds: f64,
    pub scoring_seconds: f64,
}

/// A per-token quantity `[N, T]` of every sample (0 on padding), computed in batches of
/// `batch` rows without gradient: `f` maps a batch to `[b, t]`.
pub fn per_token(all: &[EncodedPrompt], samples: &[Sample], batch: usize, device: Device, f: impl Fn(&SeqBatch) -> Tensor) -> Tensor {
    let _g = tch::no_grad_guard();
    let t = samples.iter().map(|s| s.response.len()).max().unwrap_or(1).max(1) as i64;
    let parts: Vec<Tensor> = samples
        .chunks(batch.max(1))
        .map(|chunk| {
            let prompts: Vec<&[u32]> = chunk.iter().map(|s| all[s.prompt].ids.as_slice()).collect();
            let responses: Vec<&[u32]> = chunk.iter().map(|s| s.response.as_slice()).collect();
            let b = SeqBatch::new(&prompts, &responses, device);
            (f(&b) * &b.response_mask).constant_pad_nd([0, t - b.response_len()])
        })
        .collect();
    Tensor::cat(&parts, 0)
}

/// Log-probabilities of the samples' tokens under the frozen reference, at `temperature`.
pub fn reference_logprobs(
    reference: &Policy,
    all: &[EncodedPrompt],
    samples: &[Sample],
    temperature: f64,
    batch: usize,
    device: Device,
) -> Tensor {
    per_token(all, samples, batch, device, |b| response_logprobs(&reference.model, b, temperature))
}

/// Values `V(s_t)` of the samples' states under the value model.
pub fn values(value: &ScalarModel, all: &[EncodedPrompt], samples: &[Sample], batch: usize, device: Device) -> Tensor {
    per_token(all, samples, batch, device, |b| response_values(&value.model, b))
}

impl Rollout {
    /// Builds the per-token tensors: `−β·KL` on every token plus `WHITEN(LOGIT(Rc))` on the last,
    /// then GAE and (optionally) whitened advantages.
    pub fn new(samples: Vec<Sample>, ref_logprobs: Tensor, values: Tensor, cfg: &PpoConfig, device: Device) -> Rollout {
        let _g = tch::no_grad_guard();
        let t = ref_logprobs.size()[1] as usize;
        let lp: Vec<&[f32]> = samples.iter().map(|s| s.logprobs.as_slice()).collect();
        let old_logprobs = pad_rows(&lp, t, device);
        let ones: Vec<Vec<f32>> = samples.iter().map(|s| vec![1f32; s.response.len()]).collect();
        let mask = pad_rows(&ones.iter().map(|v| v.as_slice()).collect::<Vec<_>>(), t, device);
        let raw: Vec<f32> = samples.iter().map(|s| s.score as f32).collect();
        let raw = Tensor::from_slice(&raw).to_device(device);
        let scores_whitened = if cfg.whiten_rewards { masked_whiten(&raw, &Tensor::ones_like(&raw), true) } else { raw };
        let kl_tok = kl_penalty(&old_logprobs, &ref_logprobs, cfg.kl_estimator) * &mask;
        let rewards = token_rewards(&kl_tok, &scores_whitened, &mask, cfg.kl_beta);
        let (mut advantages, returns) = gae(&rewards, &values, &mask, cfg.gamma, cfg.lam);
        if cfg.whiten_advantages {
            advantages = masked_whiten(&advantages, &mask, true);
        }
        Rollout {
            kl: kl_tok.sum_dim_intlist(1, false, Kind::Float),
            total_rewards: rewards.sum_dim_intlist(1, false, Kind::Float),
            samples,
            mask,
            old_logprobs,
            ref_logprobs,
            values,
            advantages,
            returns,
            scores_whitened,
            generation_seconds: 0.0,
            scoring_seconds: 0.0,
        }
    }

    pub fn generated_tokens(&self) -> usize {
        self.samples.iter().map(|s| s.response.len()).sum()
    }

    /// Sequence-level statistics for the metrics line.
    pub fn stats(&self) -> serde_json::Value {
        let n = self.samples.len().max(1) as f64;
        let scores: Vec<f64> = self.samples.iter().map(|s| s.score).collect();
        let mean = scores.iter().sum::<f64>() / n;
        let std = (scores.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let f = |t: &Tensor| f64::try_from(t.mean(Kind::Float)).unwrap_or(f64::NAN);
        let safety_share = self.samples.iter().filter(|s| s.source == RewardSource::Safety).count() as f64 / n;
        let finished = self.samples.iter().filter(|s| s.finished).count() as f64 / n;
        let value_mean = tch::no_grad(|| f64::try_from(masked_mean(&self.values, &self.mask)).unwrap_or(f64::NAN));
        serde_json::json!({
            "reward_raw_mean": mean,
            "reward_raw_std": std,
            "reward_sigmoid_mean": scores.iter().map(|&x| sigmoid(x)).sum::<f64>() / n,
            "reward_whitened_mean": f(&self.scores_whitened),
            "reward_whitened_std": f64::try_from(self.scores_whitened.std(false)).unwrap_or(f64::NAN),
            "reward_total_mean": f(&self.total_rewards),
            "kl": f(&self.kl),
            "safety_rm_share": safety_share,
            "response_length": self.generated_tokens() as f64 / n,
            "finished_share": finished,
            "value_mean": value_mean,
        })
    }
}
