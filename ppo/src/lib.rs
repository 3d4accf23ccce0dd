//! PPO with the Llama 2 combined reward and KL to the initial policy (Llama 2 Section 3.2.3).
//!
//! The objective is `argmax_π E_{p∼D, g∼π}[R(g|p)]` with
//! `R(g|p) = R̃c(g|p) − β·D_KL(π_θ(g|p) ‖ π_0(g|p))`, where `Rc` is the safety reward model's score
//! when the prompt is tagged as safety or that score is below 0.15, else the helpfulness score,
//! and `R̃c = WHITEN(LOGIT(Rc))` over each batch. The KL is spread over the response tokens (k1
//! log-ratio by default), the whitened score is added at the last token, and the per-token rewards
//! go through GAE with a separate value model initialised from the reward model.
//!
//! * [`math`]: the formulas as small pure tensor functions (`masked_mean`, `masked_whiten`,
//!   `logprobs_of`, `gae`, `clipped_policy_loss`, `clipped_value_loss`, `kl_penalty`, ...).
//! * [`reward`]: `LOGIT(Rc)` from the two reward models.
//! * [`models`]: policy, reference, value and reward models, and the forward they share.
//! * [`rollout`]: sampling with the KV cache, scoring, advantages.
//! * [`trainer`]: `rollout` / `optimize` / `evaluate` and the [`train`] loop (checkpoints of both
//!   trained models, exact resume, early stopping on held-out reward, metrics).
pub mod checkpoint;
pub mod config;
pub mod math;
pub mod models;
pub mod reward;
pub mod rollout;
pub mod run;
pub mod trainer;

pub use config::PpoConfig;
pub use math::KlEstimator;
pub use run::run;
pub use trainer::{train, PpoOutcome, PpoTrainer, RunInputs};
