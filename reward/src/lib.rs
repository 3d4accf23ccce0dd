//! Helpfulness and safety reward models (Llama 2 Section 3.2.2): the Llama trunk plus a scalar
//! regression head read at the last token of prompt + response, trained with the binary ranking
//! loss with a rating-dependent margin (Eq. 2), evaluated the way the paper reports it
//! (Tables 7, 8 and 29).
pub mod bench;
pub mod combine;
pub mod config;
pub mod data;
pub mod eval;
pub mod loss;
pub mod model;
pub mod run;
pub mod trainer;

pub use config::{MarginKind, RewardConfig};
pub use model::RewardModel;
pub use run::{run, RewardOutcome};
