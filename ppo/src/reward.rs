//! The Llama 2 PPO reward of one response (Section 3.2.3):
//! `Rc = Rs if IS_SAFETY(p) or Rs < 0.15 else Rh` on sigmoid scores, then `LOGIT(Rc)`; the batch is
//! then whitened ([`crate::math::masked_whiten`]) and the KL term added per token
//! ([`crate::math::token_rewards`]). The rule itself is `reward::combine::combined`, shared with
//! rejection sampling so both stages pick the same reward model for the same response.
use reward::combine::{combined, logit, sigmoid};
use serde::Serialize;

/// Which reward model `Rc` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardSource {
    Safety,
    Helpfulness,
}

/// `LOGIT(Rc)` from the raw (pre-sigmoid) scores of the safety and helpfulness reward models
/// (either may be absent: the other is used), and which model it came from.
pub fn combined_logit(safety_raw: Option<f64>, helpfulness_raw: Option<f64>, is_safety: bool, threshold: f64) -> (f64, RewardSource) {
    let s = safety_raw.map(sigmoid);
    let h = helpfulness_raw.map(sigmoid);
    let rc = combined(s, h, is_safety, threshold);
    let source = match (s, h) {
        (Some(s), Some(_)) if is_safety || s < threshold => RewardSource::Safety,
        (Some(_), None) => RewardSource::Safety,
        _ => RewardSource::Helpfulness,
    };
    (logit(rc), source)
}
