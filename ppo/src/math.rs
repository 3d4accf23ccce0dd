//! The PPO math as small pure functions on tensors, each checked against hand-computed numbers
//! in `tests/math.rs`.
//!
//! Shapes: `[B, T]` per response token (row = one response, right-padded), with a boolean or
//! 0/1 `mask` that is true on real response tokens (a prefix of each row).
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

fn mask_like(mask: &Tensor, x: &Tensor) -> Tensor {
    mask.to_kind(x.kind())
}

/// Mean of `x` over the entries where `mask` holds (0 when none does).
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask_like(mask, x);
    (x * &m).sum(x.kind()) / m.sum(x.kind()).clamp_min(1.0)
}

/// Variance of `x` over the entries where `mask` holds, with Bessel's correction (as TRL's
/// `masked_var`; 0 for fewer than two entries).
pub fn masked_var(x: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask_like(mask, x);
    let mean = masked_mean(x, mask);
    let n = m.sum(x.kind());
    let ss = ((x - mean).square() * &m).sum(x.kind());
    ss / (n - 1.0).clamp_min(1.0)
}

/// `WHITEN`: `(x − mean) / √(var + 1e-8)` over the masked entries (Llama 2 Section 3.2.3 whitens
/// the logit rewards over the batch "to increase stability and balance with the KL term"; PPO
/// implementations whiten advantages the same way). `shift_mean = false` keeps the mean (scales
/// only). Entries outside the mask are 0.
pub fn masked_whiten(x: &Tensor, mask: &Tensor, shift_mean: bool) -> Tensor {
    let mean = masked_mean(x, mask);
    let var = masked_var(x, mask);
    let mut w = (x - &mean) * (var + 1e-8).rsqrt();
    if !shift_mean {
        w += mean;
    }
    w * mask_like(mask, x)
}

/// Log-probabilities of `labels` `[..]` under `logits` `[.., V]` (already divided by the sampling
/// temperature): `log_softmax(logits)[label]`, in float32.
pub fn logprobs_of(logits: &Tensor, labels: &Tensor) -> Tensor {
    logits.log_softmax(-1, Kind::Float).gather(-1, &labels.unsqueeze(-1), false).squeeze_dim(-1)
}

/// Entropy of the categorical distribution of each position of `logits` `[.., V]`.
pub fn entropy_from_logits(logits: &Tensor) -> Tensor {
    let logp = logits.log_softmax(-1, Kind::Float);
    -(logp.exp() * &logp).sum_dim_intlist(-1, false, Kind::Float)
}

/// How to estimate the per-token KL(π_θ ‖ π_0) from the sampled token's log-probabilities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// `log π_θ − log π_0`: unbiased, summed over the response it is the sequence KL of
    /// Stiennon et al. (2020), which Llama 2 follows. Can be negative per token.
    #[default]
    K1,
    /// `(r − 1) − log r` with `r = π_0 / π_θ` (Schulman's k3): unbiased, never negative, lower variance.
    K3,
}

/// Per-token KL estimate between the policy (`logprobs`) and the reference (`ref_logprobs`).
pub fn kl_penalty(logprobs: &Tensor, ref_logprobs: &Tensor, estimator: KlEstimator) -> Tensor {
    match estimator {
        KlEstimator::K1 => logprobs - ref_logprobs,
        KlEstimator::K3 => {
            let log_r = ref_logprobs - logprobs;
            log_r.exp() - 1.0 - log_r
        }
    }
}

/// Llama 2's `R(g|p) = R̃c(g|p) − β·D_KL(π_θ ‖ π_0)` spread over tokens: every response token gets
/// `−β·kl_t`, and the last one (`lengths − 1`) also gets the sequence score `scores` `[B]`.
pub fn token_rewards(kl: &Tensor, scores: &Tensor, mask: &Tensor, kl_beta: f64) -> Tensor {
    let m = mask_like(mask, kl);
    let rewards = kl * (-kl_beta) * &m;
    let last = (m.sum_dim_intlist(1, false, Kind::Int64) - 1).clamp_min(0).unsqueeze(1);
    let add = Tensor::zeros_like(&rewards).scatter(1, &last, &scores.to_kind(rewards.kind()).unsqueeze(1));
    let nonempty = m.sum_dim_intlist(1, true, kl.kind()).gt(0.0).to_kind(kl.kind());
    rewards + add * nonempty
}

/// Generalised advantage estimation (Schulman et al. 2016) over `[B, T]`:
/// `δ_t = r_t + γ·V_{t+1} − V_t`, `A_t = δ_t + γλ·A_{t+1}`, with `V` and `A` zero past the end of
/// each response (the episode ends at its last token). Returns `(advantages, returns = A + V)`,
/// both zero outside `mask`.
pub fn gae(rewards: &Tensor, values: &Tensor, mask: &Tensor, gamma: f64, lambda: f64) -> (Tensor, Tensor) {
    let m = mask_like(mask, values);
    let r = rewards * &m;
    let v = values * &m;
    let t_len = v.size()[1];
    let mut next_adv = Tensor::zeros_like(&v.select(1, 0));
    let mut next_v = Tensor::zeros_like(&next_adv);
    let mut advs = Vec::with_capacity(t_len as usize);
    for t in (0..t_len).rev() {
        let (mt, vt) = (m.select(1, t), v.select(1, t));
        let delta = r.select(1, t) + &next_v * gamma - &vt;
        let a = (delta + &next_adv * (gamma * lambda)) * &mt;
        next_adv = a.shallow_clone();
        next_v = vt;
        advs.push(a);
    }
    advs.reverse();
    let adv = Tensor::stack(&advs, 1);
    let returns = (&adv + &v) * &m;
    (adv, returns)
}

/// The clipped surrogate objective and its diagnostics.
#[derive(Debug)]
pub struct PolicyLoss {
    /// `mean(max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)))` over the masked tokens (a scalar with gradient).
    pub loss: Tensor,
    /// Share of tokens where the clipped term was the larger (the update was clipped).
    pub clip_frac: f64,
    /// `½·mean((log π_θ − log π_old)²)`: how far the update moved the policy.
    pub approx_kl: f64,
}

/// PPO's clipped policy loss (Schulman et al. 2017, Eq. 7) with ratio `ρ = exp(logp − old)`.
pub fn clipped_policy_loss(logprobs: &Tensor, old_logprobs: &Tensor, advantages: &Tensor, mask: &Tensor, clip: f64) -> PolicyLoss {
    let log_ratio = logprobs - old_logprobs;
    let ratio = log_ratio.exp();
    let pg1 = -advantages * &ratio;
    let pg2 = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip);
    let loss = masked_mean(&pg1.maximum(&pg2), mask);
    let (clip_frac, approx_kl) = tch::no_grad(|| {
        let cf = masked_mean(&pg2.gt_tensor(&pg1).to_kind(Kind::Float), mask);
        let ak = masked_mean(&log_ratio.square(), mask) * 0.5;
        (f64::try_from(cf).unwrap_or(f64::NAN), f64::try_from(ak).unwrap_or(f64::NAN))
    });
    PolicyLoss { loss, clip_frac, approx_kl }
}

/// The clipped value loss: `½·mean(max((V − R)², (clip(V, V_old ± ε) − R)²))` (as TRL and
/// OpenAI's baselines). Returns the loss and the share of clipped tokens.
pub fn clipped_value_loss(values: &Tensor, old_values: &Tensor, returns: &Tensor, mask: &Tensor, clip: f64) -> (Tensor, f64) {
    let clipped = old_values + (values - old_values).clamp(-clip, clip);
    let l1 = (values - returns).square();
    let l2 = (clipped - returns).square();
    let loss = masked_mean(&l1.maximum(&l2), mask) * 0.5;
    let frac = tch::no_grad(|| f64::try_from(masked_mean(&l2.gt_tensor(&l1).to_kind(Kind::Float), mask)).unwrap_or(f64::NAN));
    (loss, frac)
}

/// `1 − Var(R − V) / Var(R)` over the masked tokens: 1 when the values predict the returns, 0 or
/// below when they explain nothing.
pub fn explained_variance(values: &Tensor, returns: &Tensor, mask: &Tensor) -> f64 {
    let var_r = f64::try_from(masked_var(returns, mask)).unwrap_or(f64::NAN);
    let var_d = f64::try_from(masked_var(&(returns - values), mask)).unwrap_or(f64::NAN);
    if var_r > 0.0 {
        1.0 - var_d / var_r
    } else {
        f64::NAN
    }
}
