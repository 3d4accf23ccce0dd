//! `PpoConfig`: one TOML table per run. Defaults are the Llama 2 recipe (Section 3.2.3): AdamW
//! β (0.9, 0.95), eps 1e-5, weight decay 0.1, gradient clip 1.0, constant lr 1e-6, 512 prompts per
//! iteration in mini-batches of 64 with one gradient step each, PPO clip 0.2, KL β 0.01 (7B/13B;
//! 0.005 for 34B/70B), reward `WHITEN(LOGIT(Rc))` with the safety threshold 0.15. What the paper
//! does not state (NS) follows the common PPO choices: GAE γ 1, λ 0.95, value clip 0.2, the k1 KL
//! estimator summed over the response (Stiennon et al.), sampling temperature 1.
use crate::math::KlEstimator;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use training::config::ScheduleKind;
use training::TrainConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PpoConfig {
    /// The initial policy π_0 (the rejection-sampling or previous RLHF model, HF layout). Training
    /// starts from it, and it is the frozen reference of the KL term unless `reference` is set.
    pub policy: PathBuf,
    /// The frozen reference π_0 of the KL term (default: `policy`).
    #[serde(default)]
    pub reference: Option<PathBuf>,
    /// Helpfulness reward model R_h (`LlamaForSequenceClassification`).
    #[serde(default)]
    pub helpfulness_rm: Option<PathBuf>,
    /// Safety reward model R_s. With only one of the two, its score is R_c.
    #[serde(default)]
    pub safety_rm: Option<PathBuf>,
    /// Initialisation of the value model, a separate scalar-head model (default: the helpfulness
    /// reward model, else the safety one). A causal LM works too (its score head starts random).
    #[serde(default)]
    pub value_model: Option<PathBuf>,
    /// tokenizer.json (default: the policy's, else the Llama-2 tokenizer built by set-up).
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Prompt records (`{"prompt", "is_safety"}`, JSONL or Parquet) sampled for rollouts.
    pub train_prompts: Vec<PathBuf>,
    /// Held-out prompts: the evaluation reward that early stopping and `best/` follow.
    #[serde(default)]
    pub eval_prompts: Vec<PathBuf>,
    /// PPO iterations (Llama 2: 200–400, early-stopped on held-out prompts).
    #[serde(default = "default_iterations")]
    pub iterations: u64,
    /// Prompts per iteration, one response each (Llama 2: 512).
    #[serde(default = "default_rollout_batch")]
    pub rollout_batch_size: usize,
    /// Prompts generated (and scored) in one batch during a rollout: bounds memory, not the math.
    #[serde(default = "default_generation_batch")]
    pub generation_batch_size: usize,
    /// Passes over each rollout (Llama 2: one gradient step per mini-batch, i.e. one pass).
    #[serde(default = "one")]
    pub ppo_epochs: u64,
    /// Prompts longer than this (in tokens, chat format) are skipped.
    #[serde(default = "default_max_prompt_len")]
    pub max_prompt_len: usize,
    /// Longest response in tokens.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Sampling temperature of rollouts. The training forward recomputes log-probabilities under
    /// the same `log_softmax(logits / T)`, so the policy trained is the one sampled from. There is
    /// no top-p/top-k: the PPO ratio needs the distribution actually sampled.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// `Rs < threshold` sends a non-safety prompt's response to the safety RM (Llama 2: 0.15).
    #[serde(default = "default_threshold")]
    pub safety_threshold: f64,
    /// `WHITEN(LOGIT(Rc))` over each rollout batch (Llama 2: yes).
    #[serde(default = "yes")]
    pub whiten_rewards: bool,
    /// β of `−β·KL(π_θ ‖ π_0)` (Llama 2: 0.01 for 7B/13B, 0.005 for 34B/70B).
    #[serde(default = "default_kl_beta")]
    pub kl_beta: f64,
    /// Per-token KL estimator: `k1` (log-ratio, Stiennon et al.) or `k3`.
    #[serde(default)]
    pub kl_estimator: KlEstimator,
    /// Subtracted from the (pre-whitening) score of a response that ends without EOS (TRL's
    /// `missing_eos_penalty`); absent: no penalty.
    #[serde(default)]
    pub missing_eos_penalty: Option<f64>,
    /// GAE discount γ.
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    /// GAE λ.
    #[serde(default = "default_lambda")]
    pub lam: f64,
    /// PPO ratio clip ε (Llama 2: 0.2).
    #[serde(default = "default_clip")]
    pub clip_ratio: f64,
    /// Value clip around the rollout's values.
    #[serde(default = "default_clip")]
    pub clip_value: f64,
    /// Whiten advantages over each rollout batch.
    #[serde(default = "yes")]
    pub whiten_advantages: bool,
    /// Learning rate of the value model (NS in Llama 2; OpenRLHF and NeMo-Aligner use 9e-6).
    #[serde(default = "default_value_lr")]
    pub value_lr: f64,
    /// Longest prompt + response fed to the reward models (the prompt's start is cut first).
    #[serde(default = "default_rm_max_len")]
    pub rm_max_len: usize,
    /// Sampling temperature of the held-out evaluation (0: greedy). Its seed is fixed, so every
    /// evaluation draws the same random numbers and differences come from the policy.
    #[serde(default = "default_temperature")]
    pub eval_temperature: f64,
    /// Responses per held-out prompt.
    #[serde(default = "one_usize")]
    pub eval_samples: usize,
    /// Use only the first N held-out prompts.
    #[serde(default)]
    pub eval_max_prompts: Option<usize>,
    /// Also judge held-out responses with the demo world's ground truth (helpful, safe, false refusal).
    #[serde(default)]
    pub demo_judge: bool,
    /// Stop when the held-out reward has not improved for this many evaluations (0: never).
    #[serde(default)]
    pub early_stop_patience: u64,
    /// Rollouts per iteration written to samples.jsonl.
    #[serde(default = "default_log_samples")]
    pub log_samples: usize,
    /// Warn when the training forward's log-probabilities of the first mini-batch (before any
    /// update) differ from the sampler's by more than this.
    #[serde(default = "default_logprob_tolerance")]
    pub logprob_tolerance: f64,
    /// On-disk dtype of `final/` and `best/`.
    #[serde(default = "default_save_dtype")]
    pub save_dtype: llama::Dtype,
    /// Optimizer and run settings. In PPO `micro_batch_size × grad_accumulation` is the mini-batch
    /// (one optimizer step each) and `save_every`, `eval_every`, `log_every` count iterations;
    /// `epochs`, `max_steps` and the warmup fields are not used.
    #[serde(default = "ppo_train_defaults")]
    pub train: TrainConfig,
    /// Train LoRA adapters on the frozen policy and value models (the value model's score head
    /// trains whole) instead of every weight; `final/` and `final_value/` are then PEFT adapter
    /// folders. Absent: full fine-tuning (the paper).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<llama::LoraConfig>,
    /// Where PPO's ratio takes π_old from: `sampler` (the log-probabilities the generator drew
    /// with), `recompute` (a no-grad forward of the training model over the rollout, in the
    /// training dtype, as OpenRLHF does), or `auto` (the default: `recompute` when the compute
    /// dtype is not float32, where the KV-cached decode and the training forward round apart).
    #[serde(default, skip_serializing_if = "OldLogprobs::is_auto")]
    pub old_logprobs: OldLogprobs,
    /// Keep the frozen reference and reward models in host memory between uses and move them to
    /// the GPU only to score a rollout or an evaluation (no effect on CPU runs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub offload_frozen: bool,
}

/// [`PpoConfig::old_logprobs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OldLogprobs {
    #[default]
    Auto,
    Sampler,
    Recompute,
}

impl OldLogprobs {
    fn is_auto(&self) -> bool {
        *self == OldLogprobs::Auto
    }

    /// Whether a run computing in `kind` recomputes them.
    pub fn recompute(&self, kind: tch::Kind) -> bool {
        match self {
            OldLogprobs::Auto => kind != tch::Kind::Float && kind != tch::Kind::Double,
            OldLogprobs::Sampler => false,
            OldLogprobs::Recompute => true,
        }
    }
}

fn default_iterations() -> u64 {
    200
}
fn default_rollout_batch() -> usize {
    512
}
fn default_generation_batch() -> usize {
    64
}
fn one() -> u64 {
    1
}
fn one_usize() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn default_max_prompt_len() -> usize {
    1024
}
fn default_max_new_tokens() -> usize {
    512
}
fn default_temperature() -> f64 {
    1.0
}
fn default_threshold() -> f64 {
    reward::combine::SAFETY_THRESHOLD
}
fn default_kl_beta() -> f64 {
    0.01
}
fn default_gamma() -> f64 {
    1.0
}
fn default_lambda() -> f64 {
    0.95
}
fn default_clip() -> f64 {
    0.2
}
fn default_value_lr() -> f64 {
    9e-6
}
fn default_rm_max_len() -> usize {
    4096
}
fn default_log_samples() -> usize {
    4
}
fn default_logprob_tolerance() -> f64 {
    1e-3
}
fn default_save_dtype() -> llama::Dtype {
    llama::Dtype::Float32
}

/// Llama 2 PPO: constant lr 1e-6, AdamW (0.9, 0.95) eps 1e-5, weight decay 0.1, clip 1.0,
/// mini-batch 64 (8 × 8 accumulated).
pub fn ppo_train_defaults() -> TrainConfig {
    TrainConfig {
        lr: 1e-6,
        schedule: ScheduleKind::Constant,
        micro_batch_size: 8,
        grad_accumulation: 8,
        save_every: 10,
        eval_every: 10,
        ..TrainConfig::default()
    }
}

impl PpoConfig {
    /// Prompts per mini-batch (one optimizer step of each model).
    pub fn mini_batch_size(&self) -> usize {
        self.train.micro_batch_size * self.train.grad_accumulation
    }

    /// Optimizer steps per iteration (Llama 2: 512 / 64 = 8).
    pub fn steps_per_iteration(&self) -> u64 {
        self.ppo_epochs * (self.rollout_batch_size as u64).div_ceil(self.mini_batch_size() as u64)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.helpfulness_rm.is_none() && self.safety_rm.is_none() {
            return Err("set `helpfulness_rm`, `safety_rm` or both".into());
        }
        if let Some(l) = &self.lora {
            l.validate_for_stage(true, self.train.gradient_checkpointing)?;
        }
        if self.train_prompts.is_empty() {
            return Err("`train_prompts` lists no file".into());
        }
        if self.iterations == 0 {
            return Err("`iterations` must be at least 1 (a PPO run of 0 iterations trains nothing)".into());
        }
        if self.rollout_batch_size == 0 || self.generation_batch_size == 0 || self.ppo_epochs == 0 {
            return Err("`rollout_batch_size`, `generation_batch_size` and `ppo_epochs` must be at least 1".into());
        }
        if self.max_new_tokens == 0 {
            return Err("`max_new_tokens` must be at least 1".into());
        }
        if !(self.temperature > 0.0) {
            return Err(format!("`temperature` must be positive (PPO samples its rollouts), got {}", self.temperature));
        }
        if self.eval_temperature < 0.0 || self.eval_samples == 0 {
            return Err("`eval_temperature` must be >= 0 and `eval_samples` >= 1".into());
        }
        if !(0.0..=1.0).contains(&self.safety_threshold) {
            return Err("`safety_threshold` must be in [0, 1]".into());
        }
        if self.kl_beta < 0.0 || !(0.0..=1.0).contains(&self.gamma) || !(0.0..=1.0).contains(&self.lam) {
            return Err("`kl_beta` must be >= 0, `gamma` and `lam` in [0, 1]".into());
        }
        if !(self.clip_ratio > 0.0) || !(self.clip_value > 0.0) {
            return Err("`clip_ratio` and `clip_value` must be positive".into());
        }
        if !(self.value_lr > 0.0) {
            return Err("`value_lr` must be positive".into());
        }
        self.train.validate().map_err(|e| format!("train.{e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_iterations_is_a_config_error() {
        let cfg: PpoConfig = serde_json::from_value(
            serde_json::json!({"policy": "p", "helpfulness_rm": "p", "train_prompts": ["x.jsonl"], "iterations": 0}),
        )
        .unwrap();
        let err = cfg.validate().unwrap_err();
        assert!(err.contains("`iterations`"), "{err}");
        let one = PpoConfig { iterations: 1, ..cfg };
        assert_eq!(one.validate(), Ok(()));
    }
}
