//! `RewardConfig`: one reward model (helpfulness or safety) per config. Defaults are the paper's
//! (Section 3.2.2): 1 epoch, peak lr 1e-5 (5e-6 for 70B), cosine to 10%, warmup 3% of the steps
//! with a minimum of 5, effective batch 512 pairs, AdamW as pretraining.
pub use crate::loss::MarginKind;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use training::TrainConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardConfig {
    /// Checkpoint to initialise from: an SFT or chat model (its LM head is dropped) or a reward model.
    pub model: PathBuf,
    /// tokenizer.json (default: the model's, else the Llama-2 tokenizer built by set-up).
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Preference records (JSONL or Parquet), e.g. the output of `rlhf data mix`.
    pub train_data: Vec<PathBuf>,
    /// Held-out preference records: the eval loss during training and the final report.
    #[serde(default)]
    pub eval_data: Vec<PathBuf>,
    /// Table 27 margin: `none` (Eq. 1), `small` or `large`.
    #[serde(default)]
    pub margin: MarginKind,
    /// Reward-centering coefficient c of `c · mean((r_c + r_r)²)` (0 disables).
    #[serde(default)]
    pub center_coef: f64,
    /// Weight of the safety RM's auxiliary loss (Table 29): binary cross-entropy of σ(r) against
    /// `chosen_safe` / `rejected_safe`, averaged over the labelled responses of each step and added
    /// to Eq. 2 (`reward::loss::safety_aux_loss_sum`). 0 (default) trains with Eq. 2 alone, as the
    /// paper's helpfulness RM and the paper's stated loss; the paper gives neither the formula nor
    /// the weight, so a safety RM opts in (e.g. 1.0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub safety_aux_loss_weight: f64,
    /// Longest prompt + response, in tokens (the prompt's start is cut first).
    #[serde(default = "default_max_len")]
    pub max_seq_len: usize,
    /// Sigmoid-score threshold below which a response counts as unsafe (Table 29 uses 0.5).
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Root of the tokenized on-disk cache (`rlhf data cache`, e.g. `.cache/tokens`): the data
    /// files are tokenized once into it and read back from it on later runs with the same files,
    /// tokenizer and settings. Unset: tokenize in memory every run. Same ids either way.
    #[serde(default)]
    pub token_cache: Option<PathBuf>,
    /// On-disk dtype of the saved model.
    #[serde(default = "default_save_dtype")]
    pub save_dtype: llama::Dtype,
    #[serde(default = "rm_train_defaults")]
    pub train: TrainConfig,
    /// Train a LoRA adapter (and the score head whole) on the frozen `model` instead of every
    /// weight; `final/` is then a PEFT adapter folder. Absent: full fine-tuning (the paper).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<llama::LoraConfig>,
}

// Left out of the serialized config when 0, so runs from before the key keep their fingerprints.
fn is_zero(x: &f64) -> bool {
    *x == 0.0
}
fn default_max_len() -> usize {
    4096
}
fn default_threshold() -> f64 {
    0.5
}
fn default_save_dtype() -> llama::Dtype {
    llama::Dtype::Float32
}

/// Llama 2 RM training: 1 epoch, lr 1e-5, cosine to 10%, warmup 3% (min 5), 512 pairs per step.
pub fn rm_train_defaults() -> TrainConfig {
    TrainConfig { lr: 1e-5, epochs: 1, micro_batch_size: 8, grad_accumulation: 64, ..TrainConfig::default() }
}

impl RewardConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.train_data.is_empty() {
            return Err("`train_data` lists no file".into());
        }
        if self.max_seq_len < 4 {
            return Err("`max_seq_len` must be at least 4".into());
        }
        if !(self.safety_aux_loss_weight.is_finite() && self.safety_aux_loss_weight >= 0.0) {
            return Err("`safety_aux_loss_weight` must be a finite number >= 0".into());
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err("`threshold` must be in [0, 1]".into());
        }
        if let Some(l) = &self.lora {
            l.validate_for_stage(true, self.train.gradient_checkpointing)?;
        }
        self.train.validate().map_err(|e| format!("train.{e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use training::config::ScheduleKind;

    /// Llama 2 Section 3.2.2: what a config that sets only its model and data gets.
    #[test]
    fn defaults_are_the_llama2_reward_model_recipe() {
        let c: RewardConfig = serde_json::from_value(serde_json::json!({"model": "m", "train_data": ["d.jsonl"]})).unwrap();
        let t = &c.train;
        assert_eq!(t.lr, 1e-5, "max lr 1e-5 (5e-6 for 70B, set in its config)");
        assert_eq!(t.epochs, 1, "one epoch: longer overfits");
        assert_eq!(t.schedule, ScheduleKind::Cosine);
        assert_eq!(t.lr_floor_ratio, 0.1, "cosine to 10% of the peak");
        assert_eq!((t.warmup_ratio, t.warmup_min_steps), (0.03, 5), "warmup 3% of the steps, at least 5");
        assert_eq!(t.micro_batch_size * t.grad_accumulation, 512, "512 pairs per step");
        assert_eq!((t.beta1, t.beta2, t.eps, t.weight_decay, t.grad_clip), (0.9, 0.95, 1e-5, 0.1, 1.0), "AdamW as the base model");
        assert_eq!(c.margin, MarginKind::Small, "Table 27's small margin");
        assert_eq!(c.safety_aux_loss_weight, 0.0, "Eq. 2 alone unless a safety RM opts in");
        assert!(!serde_json::to_string(&c).unwrap().contains("safety_aux"), "0 stays out of run fingerprints");
        let bad = RewardConfig { safety_aux_loss_weight: -1.0, ..c.clone() };
        assert!(bad.validate().unwrap_err().contains("safety_aux_loss_weight"));
        assert_eq!(rm_train_defaults(), c.train);
    }
}
