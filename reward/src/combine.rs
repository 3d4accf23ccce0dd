//! Scoring responses with reward models and the Llama 2 reward combination (Section 3.2.3):
//! `R_c = R_s if IS_SAFETY(p) or R_s < 0.15 else R_h`, on sigmoid scores in [0, 1]. With one
//! reward model, its score is used as is. PPO then applies `WHITEN(LOGIT(R_c))`.
//!
//! [`RewardScorer`] is the one scorer of responses that rejection sampling and PPO share: it
//! tokenizes (prompt, response) in the chat format, runs the reward models in batches and returns
//! per response `R_c`, which model it came from and both sigmoid scores ([`RewardScore`]).
use crate::data::collate_single;
use crate::model::RewardModel;
use datasets::PromptRecord;
use llama::{AssistantMask, LlamaError, Message, Tokenizer};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Device, Kind};

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

/// Which reward model `R_c` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardSource {
    Safety,
    Helpfulness,
}

/// `R_c` on sigmoid scores and its source: the safety score when the prompt is tagged as safety
/// or the safety score is below `threshold`, else the helpfulness score. A missing model falls
/// back on the other; with neither, 0.5 (attributed to helpfulness).
pub fn combine(safety: Option<f64>, helpfulness: Option<f64>, is_safety: bool, threshold: f64) -> (f64, RewardSource) {
    match (safety, helpfulness) {
        (Some(s), Some(_)) if is_safety || s < threshold => (s, RewardSource::Safety),
        (Some(_), Some(h)) => (h, RewardSource::Helpfulness),
        (Some(s), None) => (s, RewardSource::Safety),
        (None, Some(h)) => (h, RewardSource::Helpfulness),
        (None, None) => (0.5, RewardSource::Helpfulness),
    }
}

/// `R_c` alone (see [`combine`]).
pub fn combined(safety: Option<f64>, helpfulness: Option<f64>, is_safety: bool, threshold: f64) -> f64 {
    combine(safety, helpfulness, is_safety, threshold).0
}

/// `LOGIT`, clamped away from 0 and 1 so a saturated score stays finite.
pub fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

/// The scores of one response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardScore {
    /// `R_c` (a sigmoid score in [0, 1]).
    pub rc: f64,
    /// The model `R_c` came from.
    pub source: RewardSource,
    /// σ of the safety model's score, when that model is given.
    pub safety: Option<f64>,
    /// σ of the helpfulness model's score, when that model is given.
    pub helpfulness: Option<f64>,
    /// The safety model's raw (pre-sigmoid) score.
    pub safety_raw: Option<f64>,
    /// The helpfulness model's raw (pre-sigmoid) score.
    pub helpfulness_raw: Option<f64>,
}

/// The order responses go through the reward models in. A row's score depends (by float
/// rounding) on the padding of its batch, so each stage keeps the order its results were made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreOrder {
    /// In the order given (PPO: sampling order).
    AsGiven,
    /// Sorted by token length (stable), which keeps padding low inside each batch (rejection
    /// sampling); the scores come back in the order given.
    ByLength,
}

/// How responses are scored, besides the models.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScorerSpec {
    /// Llama 2: 0.15 ([`SAFETY_THRESHOLD`]).
    pub threshold: f64,
    /// Longest prompt + response fed to a reward model (the prompt's start is cut first).
    pub max_len: usize,
    /// Sequences per reward-model forward.
    pub batch: usize,
    pub order: ScoreOrder,
}

/// A reward model loaded to score (no variable requires a gradient).
pub struct FrozenRewardModel {
    pub vs: nn::VarStore,
    pub model: RewardModel,
}

impl FrozenRewardModel {
    /// Loads `dir`; a causal-LM checkpoint gets a random score head drawn from `seed`, with a
    /// warning naming `what` (`helpfulness` or `safety`) and the folder: its scores mean nothing.
    pub fn load(dir: &Path, device: Device, kind: Kind, seed: u64, what: &str) -> Result<Self, LlamaError> {
        let (mut vs, model, fresh) = RewardModel::load(dir, device, kind, seed)?;
        if fresh {
            tracing::warn!("{what} reward model {} has no score head (a causal LM?): its scores are random", dir.display());
        }
        vs.freeze();
        Ok(FrozenRewardModel { vs, model })
    }
}

/// The optional helpfulness and safety reward models, loaded.
pub struct RewardModels {
    pub helpfulness: Option<FrozenRewardModel>,
    pub safety: Option<FrozenRewardModel>,
    pub device: Device,
}

impl RewardModels {
    /// Loads the models given; each random head (a causal-LM checkpoint) is drawn from its seed.
    pub fn load(
        helpfulness: Option<&Path>,
        safety: Option<&Path>,
        device: Device,
        kind: Kind,
        seeds: (u64, u64),
    ) -> Result<Self, LlamaError> {
        Ok(RewardModels {
            helpfulness: helpfulness.map(|d| FrozenRewardModel::load(d, device, kind, seeds.0, "helpfulness")).transpose()?,
            safety: safety.map(|d| FrozenRewardModel::load(d, device, kind, seeds.1, "safety")).transpose()?,
            device,
        })
    }

    /// A scorer over these models.
    pub fn scorer(&self, spec: ScorerSpec) -> RewardScorer<'_> {
        RewardScorer {
            helpfulness: self.helpfulness.as_ref().map(|m| &m.model),
            safety: self.safety.as_ref().map(|m| &m.model),
            spec,
            device: self.device,
        }
    }
}

/// Scores responses with the (borrowed) reward models: Llama 2's `R_c` and its source.
#[derive(Clone, Copy)]
pub struct RewardScorer<'m> {
    pub helpfulness: Option<&'m RewardModel>,
    pub safety: Option<&'m RewardModel>,
    pub spec: ScorerSpec,
    pub device: Device,
}

impl RewardScorer<'_> {
    /// Scores each `(prompt, response)`; the prompt record's `is_safety` is Llama 2's IS_SAFETY(p).
    /// Each model sees the same sequences in the same batches ([`ScoreOrder`]).
    pub fn score(&self, tok: &Tokenizer, items: &[(&PromptRecord, &str)]) -> Result<Vec<RewardScore>, LlamaError> {
        let spec = &self.spec;
        let seqs = items.iter().map(|(p, r)| response_tokens(tok, &p.prompt, r, spec.max_len)).collect::<Result<Vec<_>, _>>()?;
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        if spec.order == ScoreOrder::ByLength {
            order.sort_by_key(|&i| seqs[i].len());
        }
        let sorted: Vec<Vec<u32>> = order.iter().map(|&i| seqs[i].clone()).collect();
        let run = |m: Option<&RewardModel>| -> Result<Option<Vec<f64>>, LlamaError> {
            let Some(rm) = m else { return Ok(None) };
            let raw = score_sequences(rm, &sorted, self.device, spec.batch)?;
            let mut out = vec![0.0; raw.len()];
            for (&i, r) in order.iter().zip(raw) {
                out[i] = r;
            }
            Ok(Some(out))
        };
        let h = run(self.helpfulness)?;
        let s = run(self.safety)?;
        Ok((0..items.len())
            .map(|i| {
                let (h_raw, s_raw) = (h.as_ref().map(|v| v[i]), s.as_ref().map(|v| v[i]));
                let (helpfulness, safety) = (h_raw.map(sigmoid), s_raw.map(sigmoid));
                let (rc, source) = combine(safety, helpfulness, items[i].0.is_safety, spec.threshold);
                RewardScore { rc, source, safety, helpfulness, safety_raw: s_raw, helpfulness_raw: h_raw }
            })
            .collect())
    }
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
    fn the_source_is_the_model_rc_came_from() {
        use RewardSource::*;
        assert_eq!(combine(Some(0.9), Some(0.2), true, SAFETY_THRESHOLD), (0.9, Safety));
        assert_eq!(combine(Some(0.5), Some(0.2), false, SAFETY_THRESHOLD), (0.2, Helpfulness));
        assert_eq!(combine(Some(0.1), Some(0.95), false, SAFETY_THRESHOLD), (0.1, Safety));
        assert_eq!(combine(Some(0.15), Some(0.7), false, SAFETY_THRESHOLD), (0.7, Helpfulness));
        assert_eq!(combine(Some(0.3), None, false, SAFETY_THRESHOLD), (0.3, Safety));
        assert_eq!(combine(None, Some(0.7), true, SAFETY_THRESHOLD), (0.7, Helpfulness));
        assert_eq!(combine(None, None, true, SAFETY_THRESHOLD), (0.5, Helpfulness));
        // A NaN safety score is not below the threshold: helpfulness, as before.
        assert_eq!(combine(Some(f64::NAN), Some(0.4), false, SAFETY_THRESHOLD), (0.4, Helpfulness));
    }

    #[test]
    fn logit_undoes_sigmoid() {
        for x in [-3.0, -0.5, 0.0, 2.0] {
            assert!((logit(sigmoid(x)) - x).abs() < 1e-9);
        }
        assert!(logit(1.0).is_finite() && logit(0.0).is_finite());
    }
}
