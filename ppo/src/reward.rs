//! The Llama 2 PPO reward of one response (Section 3.2.3):
//! `Rc = Rs if IS_SAFETY(p) or Rs < 0.15 else Rh` on sigmoid scores, then `LOGIT(Rc)`; the batch is
//! then whitened ([`crate::math::masked_whiten`]) and the KL term added per token
//! ([`crate::math::token_rewards`]). `Rc` and its source come from `reward::combine` (the
//! [`reward::combine::RewardScorer`] that rejection sampling uses too), so both stages pick the
//! same reward model for the same response.
use reward::combine::{combine, logit, sigmoid};

pub use reward::combine::RewardSource;

/// `LOGIT(Rc)` from the raw (pre-sigmoid) scores of the safety and helpfulness reward models
/// (either may be absent: the other is used), and which model it came from.
pub fn combined_logit(safety_raw: Option<f64>, helpfulness_raw: Option<f64>, is_safety: bool, threshold: f64) -> (f64, RewardSource) {
    let (rc, source) = combine(safety_raw.map(sigmoid), helpfulness_raw.map(sigmoid), is_safety, threshold);
    (logit(rc), source)
}
