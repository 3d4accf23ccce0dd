//! Runs one stage from its typed config in its folder, always resuming there: the same entry
//! points as the `rlhf` commands (`sft::run`, `reward::run`, `rejection_sampling::run`,
//! `ppo::run`), the demo world's files, a mixture, or a random preset model.
use crate::error::StageFailure;
use crate::plan::StageConfig;
use std::path::{Path, PathBuf};

/// What a stage produced: its output (model or data folder, or a file) and summary metrics.
pub struct StageOutput {
    pub output: PathBuf,
    pub metrics: serde_json::Value,
}

/// Runs a stage in `dir` (resuming from what an interrupted run of it left there).
pub fn run_stage(cfg: &StageConfig, dir: &Path) -> Result<StageOutput, StageFailure> {
    let done = |output: PathBuf, metrics: serde_json::Value| Ok(StageOutput { output, metrics });
    match cfg {
        StageConfig::DemoData(c) => {
            let out = dir.join("data");
            let sizes = demo_world::DemoSizes { sft: c.sft, pairs: c.pairs, prompts: c.prompts };
            let m = demo_world::write_demo(&out, sizes, c.seed)?;
            done(out, serde_json::to_value(&m)?)
        }
        StageConfig::Mix(c) => {
            let mut spec = datasets::mixture::MixSpec::paper(c.target_kind()?);
            spec.seed = c.seed;
            if let Some(r) = c.ratio {
                spec.primary_share = r;
            }
            let out = dir.join("mix.jsonl");
            let summary = datasets::mixture::mix_files(&c.data, &out, None, &spec)?;
            done(out, serde_json::to_value(&summary)?)
        }
        StageConfig::Init(c) => {
            let out = dir.join("model");
            training::stage::init_model(&c.preset, c.seed, tch::Kind::Float, &out)?;
            done(out, serde_json::json!({"preset": c.preset}))
        }
        StageConfig::Sft(c) => {
            let o = sft::run(c, dir, true)?;
            done(o.final_model.clone(), serde_json::to_value(&o)?)
        }
        StageConfig::Reward(c) => {
            let o = reward::run(c, dir, true)?;
            done(o.run.final_model.clone(), serde_json::to_value(&o)?)
        }
        StageConfig::RejectionSampling(c) => {
            let o = rejection_sampling::run(c, dir, true)?;
            done(o.final_model.clone(), serde_json::to_value(&o)?)
        }
        StageConfig::Ppo(c) => {
            let o = ppo::run(c, dir, true)?;
            done(o.final_model.clone(), serde_json::to_value(&o)?)
        }
        StageConfig::SamplePairs(c) => {
            let (out, m) = crate::pairs::sample_pairs(c, dir)?;
            done(out, m)
        }
        StageConfig::Annotate(c) => {
            let (out, m) = crate::pairs::annotate_stage(c, dir)?;
            done(out, m)
        }
        StageConfig::Gatt(c) => {
            let o = gatt::run(c, dir, true)?;
            done(o.final_model.clone(), serde_json::to_value(&o)?)
        }
        StageConfig::ContextDistillation(c) => {
            let o = context_distillation::run(c, dir, true)?;
            done(o.final_model.clone(), serde_json::to_value(&o)?)
        }
    }
}
