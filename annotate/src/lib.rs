//! Human preference annotation, Llama 2 Section 3.2.1: an annotator reads a prompt and two
//! replies and records which is better, by how much (significantly better, better, slightly
//! better, negligibly better or unsure) and the safety bin (the chosen reply safe and the other
//! not, both safe, both unsafe). The data flows one way:
//!
//! ```text
//! sample logs / prompt+candidates JSONL --export--> pairs.jsonl (+ pairs.csv for a spreadsheet)
//! pairs.jsonl --serve (the web page)--> ratings journal --merge--> preference records
//! pairs.jsonl + ratings (.jsonl or a filled-in .csv) --import--> preference records
//! ```
//!
//! The preference records are `datasets::PreferenceRecord`s that `rlhf data validate` accepts
//! and `rlhf reward train` reads; the formats are described in `docs/annotate.md`.
pub mod error;
pub mod export;
pub mod fsio;
pub mod http;
pub mod merge;
pub mod pairs;
pub mod ratings;
pub mod server;

pub use error::{AnnotateError, At, Result};
pub use merge::{merge, Agreement, Annotated, ImportSummary};
pub use pairs::{read_pairs, write_pairs, write_pairs_csv, PairRecord};
pub use ratings::{read_ratings, Event, RatingLog, RatingRow, SafetyBin, Side};
