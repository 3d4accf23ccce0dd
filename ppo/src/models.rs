//! The models of a PPO run and the one forward they share.
//!
//! Four kinds of model take part (Llama 2 Section 3.2.3): the policy π_θ (trainable), the frozen
//! reference π_0, the value model (a separate scalar-head model initialised from a reward model,
//! trainable) and the frozen reward models. Policy, reference and value model all read the same
//! rows — prompt left-padded, response right-padded — so one collation serves all three:
//! `[pad.. prompt][response ..pad]`. The hidden state at position `Lp − 1 + t` is the state before
//! response token `t`: the LM head there predicts token `t`, the value head there is `V(s_t)`.
use crate::math::logprobs_of;
use llama::checkpoint as ck;
use llama::model::{positions_from_mask, Mask};
use llama::{Llama, LlamaError};
use reward::RewardModel;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// Prompt + response rows for one forward.
pub struct SeqBatch {
    pub ids: Tensor,
    pub positions: Tensor,
    pub mask: Mask,
    /// Length of the (left-padded) prompt block.
    pub prompt_len: i64,
    /// Response tokens `[B, T]` (int64, right-padded with 0).
    pub response: Tensor,
    /// 1.0 on real response tokens, `[B, T]` float32.
    pub response_mask: Tensor,
    /// Flat indices into `[B·T]` of the real response tokens (the LM head runs only there).
    pub response_at: Tensor,
    /// Real (non-pad) tokens in the batch.
    pub num_tokens: usize,
}

impl SeqBatch {
    pub fn new(prompts: &[&[u32]], responses: &[&[u32]], device: Device) -> SeqBatch {
        let b = prompts.len();
        let lp = prompts.iter().map(|p| p.len()).max().unwrap_or(1).max(1);
        let t = responses.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
        let l = lp + t;
        let mut ids = vec![0i64; b * l];
        let mut valid = vec![false; b * l];
        let mut resp = vec![0i64; b * t];
        let mut rmask = vec![0f32; b * t];
        let mut at = Vec::new();
        let mut num_tokens = 0;
        for (i, (p, r)) in prompts.iter().zip(responses).enumerate() {
            let off = i * l + (lp - p.len());
            for (j, &x) in p.iter().enumerate() {
                (ids[off + j], valid[off + j]) = (x as i64, true);
            }
            for (j, &x) in r.iter().enumerate() {
                (ids[i * l + lp + j], valid[i * l + lp + j]) = (x as i64, true);
                (resp[i * t + j], rmask[i * t + j]) = (x as i64, 1.0);
                at.push((i * t + j) as i64);
            }
            num_tokens += p.len() + r.len();
        }
        let (bl, bt) = ([b as i64, l as i64], [b as i64, t as i64]);
        let valid = Tensor::from_slice(&valid).view(bl).to_device(device);
        let padded = prompts.iter().any(|p| p.len() != lp) || responses.iter().any(|r| r.len() != t);
        SeqBatch {
            ids: Tensor::from_slice(&ids).view(bl).to_device(device),
            positions: positions_from_mask(&valid),
            mask: if padded { Mask::padded_causal(&valid, 0, l as i64) } else { Mask::Causal },
            prompt_len: lp as i64,
            response: Tensor::from_slice(&resp).view(bt).to_device(device),
            response_mask: Tensor::from_slice(&rmask).view(bt).to_device(device),
            response_at: Tensor::from_slice(&at).to_device(device),
            num_tokens,
        }
    }

    pub fn response_len(&self) -> i64 {
        self.response.size()[1]
    }
}

/// Hidden states `[B, T, D]` at the positions that predict each response token.
pub fn response_hidden(trunk: &Llama, b: &SeqBatch) -> Tensor {
    response_states(&trunk.forward(&b.ids, &b.positions, &b.mask, None), b)
}

/// Log-probabilities `[B, T]` of the response tokens under `model` at `temperature` (0 on
/// padding), and the temperature-scaled logits `[n, V]` (float32) of the `n` real response tokens
/// in row-major order. The logits are the sampler's `logits / T`, so their log-softmax is the
/// distribution the rollout was drawn from; the LM head runs at real tokens only.
pub fn response_logprobs_and_logits(model: &Llama, b: &SeqBatch, temperature: f64) -> (Tensor, Tensor) {
    logprobs_and_logits_of(model, &response_hidden(model, b), b, temperature)
}

/// The response states `[B, T, D]` of the trunk's final hidden states `hidden` `[B, S, D]`.
pub fn response_states(hidden: &Tensor, b: &SeqBatch) -> Tensor {
    hidden.narrow(1, b.prompt_len - 1, b.response_len())
}

/// [`response_logprobs_and_logits`] from the response states `h` (`[B, T, D]`).
pub fn logprobs_and_logits_of(model: &Llama, h: &Tensor, b: &SeqBatch, temperature: f64) -> (Tensor, Tensor) {
    let d = h.size()[2];
    let h = h.reshape([-1, d]).index_select(0, &b.response_at);
    let logits = model.lm_logits(&h) / temperature;
    let lp = logprobs_of(&logits, &b.response.reshape([-1]).index_select(0, &b.response_at));
    let shape = b.response.size();
    let full = Tensor::zeros([shape[0] * shape[1]], (Kind::Float, lp.device())).index_add(0, &b.response_at, &lp);
    (full.view([shape[0], shape[1]]), logits)
}

/// Log-probabilities `[B, T]` of the response tokens under `model` at `temperature`.
pub fn response_logprobs(model: &Llama, b: &SeqBatch, temperature: f64) -> Tensor {
    response_logprobs_and_logits(model, b, temperature).0
}

/// Per-token values `[B, T]` (float32): the scalar head applied to every state `s_t`.
pub fn response_values(value: &RewardModel, b: &SeqBatch) -> Tensor {
    value.score.forward(&response_hidden(&value.trunk, b)).squeeze_dim(-1).to_kind(Kind::Float)
}

/// A trainable causal LM with its variables.
pub struct Policy {
    pub vs: nn::VarStore,
    pub model: Llama,
}

impl Policy {
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Policy, LlamaError> {
        let (vs, model) = ck::load_causal_lm(dir, device, kind)?;
        Ok(Policy { vs, model })
    }

    /// Loads a model that never trains (the reference): no variable requires a gradient.
    pub fn load_frozen(dir: &Path, device: Device, kind: Kind) -> Result<Policy, LlamaError> {
        let mut p = Policy::load(dir, device, kind)?;
        p.vs.freeze();
        Ok(p)
    }
}

/// A scalar-head model (reward or value) with its variables.
pub struct ScalarModel {
    pub vs: nn::VarStore,
    pub model: RewardModel,
}

impl ScalarModel {
    /// Loads a reward model; a causal-LM checkpoint gets a fresh N(0, 0.02) score head (seeded).
    pub fn load(dir: &Path, device: Device, kind: Kind, seed: u64) -> Result<(ScalarModel, bool), LlamaError> {
        let (vs, model, fresh) = RewardModel::load(dir, device, kind, seed)?;
        Ok((ScalarModel { vs, model }, fresh))
    }

    pub fn load_frozen(dir: &Path, device: Device, kind: Kind, seed: u64) -> Result<(ScalarModel, bool), LlamaError> {
        let (mut m, fresh) = ScalarModel::load(dir, device, kind, seed)?;
        m.vs.freeze();
        Ok((m, fresh))
    }
}
