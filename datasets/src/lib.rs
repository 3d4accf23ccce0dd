//! Record types (SFT, preference, prompts), JSONL/Parquet readers and writers, validation,
//! the Llama 2 RM mixtures and the tokenized cache. Every stage reads its data through this crate.
//! The demo world, which is data with a judge and a policy evaluation, is the `demo_world` crate.
pub mod cache;
pub mod error;
pub mod import;
pub mod io;
pub mod length;
pub mod mixture;
pub mod parquet;
pub mod parse;
pub mod records;
pub mod scored;
pub mod text;
pub mod validate;

pub use error::{DatasetError, FieldError, Location, Reason, RowError};
pub use io::{for_each_batch, read_all, write_all, Format, RecordReader, RecordWriter, Row};
pub use parse::{Record, RecordKind};
pub use records::{PreferenceKind, PreferenceRecord, PromptRecord, Rating, SftRecord};
