//! Scoring responses with reward models and the Llama 2 reward combination (Section 3.2.3):
//! `R_c = R_s if IS_SAFETY(p) or R_s < 0.15 else R_h`, on sigmoid scores in [0, 1]. With one
//! reward model, its score is used as is. PPO then applies `WHITEN(LOGIT(R_c))`.
use crate::data::collate_single;
use crate::model::RewardModel;
use llama::{AssistantMask, LlamaError, Message, Tokenizer};
use tch::Device;

/// Llama 2's safety threshold: precision 0.89, recall 0.55 on the Meta Safety test set.
pub const SAFETY_THRESHOLD: f64 = 0.15;

/// Tokens of prompt + response in the chat format (`<s>[INST] ... [/INST] response </s>`), cut
/// from the left to `max_len` so that the last token, where the score is read, stays.
pub fn response_tokens(tok: &Tokenizer, prompt: &[Message], response: &str, max_len: usize) -> Result<Vec<u32>, LlamaError> {
    let mut d = prompt.to_vec();
    d.push(Message::assistant(response));
    let mut ids = llama::encode_dialog(tok, &d, AssistantMask::AllTurns)?.ids;
    if ids.len() > max_len {
        ids.drain(..ids.len() - max_len);
    }
    Ok(ids)
}

/// Raw (pre-sigmoid) scores of token sequences, in batches.
pub fn score_sequences(model: &RewardModel, seqs: &[Vec<u32>], device: Device, batch: usize) -> Result<Vec<f64>, tch::TchError> {
    let _g = tch::no_grad_guard();
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(batch.max(1)) {
        let refs: Vec<&[u32]> = chunk.iter().map(|s| s.as_slice()).collect();
        let (ids, pos, mask, at) = collate_single(&refs, device);
        let s: Vec<f32> = Vec::try_from(model.scores_at(&ids, &pos, &mask, &at).view([-1]).to_device(Device::Cpu))?;
        out.extend(s.into_iter().map(f64::from));
    }
    Ok(out)
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `R_c` on sigmoid scores: the safety score when the prompt is tagged as safety or the safety
/// score is below `threshold`, else the helpfulness score. Missing models fall back on the other.
pub fn combined(safety: Option<f64>, helpfulness: Option<f64>, is_safety: bool, threshold: f64) -> f64 {
    match (safety, helpfulness) {
        (Some(s), Some(h)) => {
            if is_safety || s < threshold {
                s
            } else {
                h
            }
        }
        (Some(s), None) => s,
        (None, Some(h)) => h,
        (None, None) => 0.5,
    }
}

/// `LOGIT`, clamped away from 0 and 1 so a saturated score stays finite.
pub fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama2_combination_and_threshold() {
        // Safety prompt: always the safety score.
        assert_eq!(combined(Some(0.9), Some(0.2), true, SAFETY_THRESHOLD), 0.9);
        // Not tagged, safety score above the threshold: helpfulness.
        assert_eq!(combined(Some(0.5), Some(0.2), false, SAFETY_THRESHOLD), 0.2);
        // Not tagged but the safety RM flags it (0.1 < 0.15): safety.
        assert_eq!(combined(Some(0.1), Some(0.95), false, SAFETY_THRESHOLD), 0.1);
        // Exactly at the threshold is not below it.
        assert_eq!(combined(Some(0.15), Some(0.7), false, SAFETY_THRESHOLD), 0.7);
        assert_eq!(combined(None, Some(0.7), true, SAFETY_THRESHOLD), 0.7);
    }

    #[test]
    fn logit_undoes_sigmoid() {
        for x in [-3.0, -0.5, 0.0, 2.0] {
            assert!((logit(sigmoid(x)) - x).abs() < 1e-9);
        }
        assert!(logit(1.0).is_finite() && logit(0.0).is_finite());
    }
}
