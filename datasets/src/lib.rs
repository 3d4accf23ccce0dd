//! Record types (SFT, preference, prompts), JSONL/Parquet readers and writers, validation,
//! the Llama 2 RM mixtures, the tokenized cache and the demo world. Every stage reads its data
//! through this crate.
pub mod cache;
pub mod demo;
pub mod error;
pub mod import;
pub mod io;
pub mod length;
pub mod mixture;
pub mod parquet;
pub mod parse;
pub mod records;
pub mod scored;
pub mod validate;

pub use error::{DatasetError, FieldError, Location, Reason, RowError};
pub use io::{for_each_batch, read_all, write_all, Format, RecordReader, RecordWriter, Row};
pub use parse::{Record, RecordKind};
pub use records::{PreferenceKind, PreferenceRecord, PromptRecord, Rating, SftRecord};
