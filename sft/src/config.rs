//! `SftConfig`: one TOML table per run. Defaults are the Llama-2-7B SFT recipe.
use llama::AssistantMask;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use training::TrainConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    /// HF-layout checkpoint to fine-tune (a pretrained Llama 2). Absent: a random `init_preset`.
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// Random initialisation preset when `model` is absent (`tiny` for the demo).
    #[serde(default)]
    pub init_preset: Option<String>,
    /// tokenizer.json (default: the model's, else the Llama-2 tokenizer built by set-up).
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// SFT records (JSONL or Parquet): `{"messages": [...]}` or `{"prompt", "response"}`.
    pub train_data: Vec<PathBuf>,
    /// Held-out SFT records for the evaluation loss.
    #[serde(default)]
    pub eval_data: Option<PathBuf>,
    /// When `eval_data` is absent, hold out this share of `train_data` (seeded).
    #[serde(default = "default_eval_fraction")]
    pub eval_fraction: f64,
    /// Sequence length of packed rows (Llama 2: 4096).
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    /// Pack several examples per row (Llama 2: yes), attention kept within each example.
    #[serde(default = "yes")]
    pub packing: bool,
    /// `all_turns`: every assistant reply is trained; `last_turn`: only the final one (GAtt style).
    #[serde(default)]
    pub train_on: AssistantMask,
    /// On-disk dtype of saved models (`float32`, `bfloat16`, `float16`).
    /// Root of the tokenized on-disk cache (`rlhf data cache`, e.g. `.cache/tokens`): the data
    /// files are tokenized once into it and read back from it on later runs with the same files,
    /// tokenizer and settings. Unset: tokenize in memory every run. Same ids either way.
    #[serde(default)]
    pub token_cache: Option<PathBuf>,
    #[serde(default = "default_save_dtype")]
    pub save_dtype: llama::Dtype,
    #[serde(default = "sft_train_defaults")]
    pub train: TrainConfig,
    /// Train a LoRA adapter on the frozen `model` instead of every weight (`final/` is then a
    /// PEFT adapter folder). Absent: full fine-tuning, the paper's recipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<llama::LoraConfig>,
}

fn default_eval_fraction() -> f64 {
    0.02
}
fn default_max_seq_len() -> usize {
    4096
}
fn yes() -> bool {
    true
}
fn default_save_dtype() -> llama::Dtype {
    llama::Dtype::Float32
}

/// Llama 2 SFT: lr 2e-5 cosine (to 10%), weight decay 0.1, batch 64 sequences, 2 epochs.
pub fn sft_train_defaults() -> TrainConfig {
    TrainConfig { lr: 2e-5, micro_batch_size: 8, grad_accumulation: 8, epochs: 2, ..TrainConfig::default() }
}

impl SftConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.model.is_none() && self.init_preset.is_none() {
            return Err("set `model` (a checkpoint folder) or `init_preset`".into());
        }
        if self.train_data.is_empty() {
            return Err("`train_data` lists no file".into());
        }
        if self.max_seq_len < 2 {
            return Err("`max_seq_len` must be at least 2".into());
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return Err("`eval_fraction` must be in [0, 1)".into());
        }
        if let Some(l) = &self.lora {
            l.validate_for_stage(self.model.is_some(), self.train.gradient_checkpointing)?;
        }
        self.train.validate().map_err(|e| format!("train.{e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use training::config::ScheduleKind;

    /// Llama 2 Section 3.1 and 2.2: what a config that sets only its data gets.
    #[test]
    fn defaults_are_the_llama2_sft_recipe() {
        let c: SftConfig = serde_json::from_value(serde_json::json!({"model": "m", "train_data": ["d.jsonl"]})).unwrap();
        let t = &c.train;
        assert_eq!(t.lr, 2e-5, "initial lr 2e-5");
        assert_eq!(t.schedule, ScheduleKind::Cosine);
        assert_eq!(t.lr_floor_ratio, 0.1, "cosine to 10% of the peak (pretraining)");
        assert_eq!(t.weight_decay, 0.1);
        assert_eq!(t.micro_batch_size * t.grad_accumulation, 64, "batch 64 sequences");
        assert_eq!(t.epochs, 2);
        assert_eq!((t.beta1, t.beta2, t.eps), (0.9, 0.95, 1e-5), "AdamW as pretraining");
        assert_eq!(t.grad_clip, 1.0);
        assert_eq!(c.max_seq_len, 4096, "sequence length 4096");
        assert!(c.packing, "prompts and answers packed into full sequences");
        assert_eq!(c.train_on, AssistantMask::AllTurns, "loss on answer tokens (every assistant turn), not on prompts");
        assert_eq!(sft_train_defaults(), c.train);
    }
}
