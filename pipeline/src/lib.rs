//! The Llama 2 recipe as one config (`rlhf pipeline run CONFIG --out DIR`, `rlhf pipeline status
//! DIR`). Stages run in order, each in `DIR/<name>/` with a `manifest.json` (fingerprint of its
//! resolved config and of its inputs, outputs, metrics, wall time). A stage whose manifest
//! matches is skipped; a changed config or input re-runs it and, through the fingerprints,
//! everything downstream; an interrupted stage resumes from its own checkpoints.
//!
//! Config: `[pipeline]` (`eval_prompts`: held-out prompts for the ground-truth report, judged
//! from `eval_samples` sampled replies per prompt at `eval_temperature` plus one greedy reply) and
//! `[[stages]]` tables with `name`, `kind` and a `config` table in that stage's own format.
//! Strings may name earlier stages: `${sft}` is the output of stage `sft` (its model folder, or
//! the data folder of a `demo_data` stage) and `${sft.dir}` its folder.
//!
//! The whole pipeline is resolved and validated ([`Plan`]) before its first stage runs; the run
//! folder and each stage folder are locked ([`training::lock::RunLock`]) while in use; manifests
//! and the report name paths relative to the run folder, so a copied folder is a pipeline of its
//! own.
pub mod background;
pub mod compare;
pub mod config;
pub mod error;
pub mod ground_truth;
pub mod manifest;
pub mod pairs;
pub mod plan;
pub mod refs;
pub mod report;
pub mod rounds;
pub mod run;
pub mod stages;
pub mod status;

pub use config::{set_target, PipelineConfig, PipelineSection, StageSpec};
pub use error::{PipelineError, Result};
pub use manifest::Manifest;
pub use plan::{Plan, StageConfig, StageKind};
pub use run::{run, RunSummary};
pub use status::status;
