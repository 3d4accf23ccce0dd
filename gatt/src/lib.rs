//! Ghost Attention (GAtt), Llama 2 Section 3.3 and Appendix A.3.5: teaching a chat model to keep a
//! system-level instruction given in the first turn for the whole dialog.
//!
//! * [`data`]: the construction. The instruction is concatenated to every user turn while the
//!   latest RLHF model samples the assistant turns, then dropped from all but the first user turn;
//!   each turn becomes one SFT record trained with zero loss on every earlier turn (the
//!   `last_turn` mask).
//! * [`sample`]: sampling the turns with the rollout engine, best of K by the world's checker.
//! * [`eval`]: adherence by turn index (Figures 9 and 28) on held-out dialogs whose instructions
//!   have a ground-truth checker (`demo_world::instructions`).
//! * [`run()`]: one GAtt round (data, fine-tune through `sft::run`, adherence before and after),
//!   resumable, as the pipeline's `gatt` stage runs it.
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod run;
pub mod sample;

pub use config::{GattConfig, GattFinetune};
pub use error::{GattError, Result};
pub use eval::{evaluate, GattEval, TurnAdherence};
pub use run::{build_data, run, GattOutcome};
pub use sample::{sample_dialogs, SampleSpec, SampledDialog};
