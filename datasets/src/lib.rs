//! Record types (SFT, preference, prompts), JSONL/Parquet readers and writers, validation,
//! the Llama 2 RM mixtures, the tokenized cache and the demo world. Every stage reads its data
//! through this crate.
pub mod records;

pub use records::{PreferenceKind, PreferenceRecord, PromptRecord, Rating, SftRecord};
