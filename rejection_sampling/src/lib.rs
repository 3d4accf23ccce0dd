//! Rejection sampling, Llama 2 Section 3.2.3: for every prompt, K samples from the latest policy,
//! scored by the reward models with the paper's combination
//! `R_c = R_safety if is_safety(p) or R_safety < 0.15 else R_helpfulness`; the best sample per
//! prompt, pooled with the best of every prior iteration, becomes an SFT dataset, and the SFT
//! stage fine-tunes on it. A sampler, not a trainer: it produces data and calls `sft::train`.
//!
//! * [`select`]: the winner of a prompt and the pool (a worse new sample never replaces a better old one).
//! * [`curve`]: reward against K (Figure 7) by exact order statistics.
//! * [`sampler`]: best-of-K generation (one prefill per prompt, cache expanded to K rows) and scoring.
//! * [`shard`]: the append-only, fsync'd sample log that makes sampling resumable.
//! * [`run`]: the iteration loop (sample, pool, fine-tune, evaluate, report).
//! * [`annotate`]: on the demo world, the judges' comparisons of the iteration's samples (the next RM batch).
pub mod annotate;
pub mod config;
pub mod curve;
pub mod error;
pub mod eval;
pub mod report;
pub mod run;
pub mod sampler;
pub mod select;
pub mod shard;

pub use config::{FinetuneConfig, RejectionSamplingConfig, StartFrom};
pub use curve::BestOfKCurve;
pub use error::{Result, RsError};
pub use run::{run, RejectionSampler, RsOutcome};
pub use select::{best_index, prompt_key, Pool, PoolEntry, PromptSamples, Sample};
