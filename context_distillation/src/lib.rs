//! Safety context distillation, Llama 2 Section 4.2.4. For every adversarial (`is_safety`)
//! prompt, replies are sampled from the policy twice: with a safety preprompt (Table 39's
//! "responsible and safe" one, plus the answer template of the prompt's risk category) and
//! without it. The safety RM scores both on the prompt *without* the preprompt; a distilled reply
//! is kept only when it scores higher (targeted context distillation: the preprompt sometimes makes
//! answers worse, e.g. vaguer, and the RM rejects those). The kept (prompt without preprompt,
//! reply) dialogs are an SFT dataset, and the SFT stage fine-tunes the policy on it, so the model
//! answers as if the preprompt were there. A sampler, not a trainer: it produces data and calls
//! `sft::run`, as rejection sampling does.
//!
//! * [`config`]: `ContextDistillationConfig` (preprompt, answer templates, sampling, fine-tune).
//! * [`select`]: the keep rule and the scoring of a batch (behind [`select::ReplyScorer`]).
//! * [`log`]: the append-only, fsync'd sample log that makes sampling resumable.
//! * [`run`]: sample, select, write the dataset, fine-tune, report.
pub mod config;
pub mod error;
pub mod log;
pub mod run;
pub mod select;

pub use config::{AnswerTemplate, ContextDistillationConfig, FinetuneConfig, PAPER_PREPROMPT};
pub use error::{CdError, Result};
pub use run::{run, CdOutcome, CdReport};

/// A prompt's identity: its messages as JSON.
pub fn prompt_key(prompt: &[llama::Message]) -> String {
    serde_json::to_string(prompt).expect("messages serialise")
}
