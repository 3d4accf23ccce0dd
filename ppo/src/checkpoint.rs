//! PPO checkpoints: two trained models and two optimizers in one atomic folder, saved and loaded
//! by the shared `training::runner` from the parts the trainer lists.
//!
//! `<run>/checkpoints/step-00000042/` holds `policy/` (HF `LlamaForCausalLM`), `value/` (HF
//! `LlamaForSequenceClassification`), both fp32 so resuming is exact, `policy_optimizer.safetensors`,
//! `value_optimizer.safetensors` and `trainer_state.json` (iteration, best evaluation, and
//! [`PpoState`] in `extra`: prompt cursor, RNG, optimizer step counts).
use llama::rng::SplitMix64;
use serde::{Deserialize, Serialize};

/// The policy's folder in a checkpoint; the run's product (`final/`, `best/`).
pub const POLICY: &str = "policy";
/// The value model's folder in a checkpoint (`final_value/` at the end).
pub const VALUE: &str = "value";

/// Everything a PPO run needs to continue bit-exactly, beyond weights and optimizer moments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PpoState {
    /// Prompt epoch (the shuffle of the training prompts is derived from (seed, epoch)).
    pub prompt_epoch: u64,
    /// Prompts of the current epoch already used.
    pub prompt_cursor: u64,
    /// The run's generator: sampling seeds and mini-batch shuffles are drawn from it.
    pub rng: SplitMix64,
    /// Optimizer steps taken by each model.
    pub policy_steps: u64,
    pub value_steps: u64,
}
