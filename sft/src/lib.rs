//! Supervised fine-tuning, Llama 2 Section 3.1: autoregressive loss on assistant tokens only
//! (prompt tokens zeroed, each reply's EOS trained), many examples packed into full sequences with
//! attention kept within each example, cosine lr 2e-5, weight decay 0.1, 2 epochs by default.
pub mod bench;
pub mod config;
pub mod data;
pub mod loss;
pub mod run;
pub mod trainer;

pub use config::SftConfig;
pub use data::{pack, Example, PackedRow};
pub use run::run;
pub use trainer::{train, SftOutcome, SftTrainer};
