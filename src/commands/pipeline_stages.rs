//! Pipeline stages of kinds mix, rejection sampling and PPO: the mixture of `rlhf data mix`, and the
//! same entry points as `rlhf rejection-sampling` and `rlhf ppo`, always resuming inside the stage
//! folder.
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

pub fn run_stage(kind: &str, cfg: toml::Value, dir: &Path) -> Result<(PathBuf, serde_json::Value)> {
    match kind {
        "mix" => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct MixCfg {
                /// `helpfulness` or `safety`.
                target: String,
                data: Vec<PathBuf>,
                /// The target's own share (default: Llama 2's 0.5 / 0.9).
                #[serde(default)]
                ratio: Option<f64>,
                #[serde(default)]
                seed: u64,
            }
            let c: MixCfg = cfg.try_into()?;
            let target = match c.target.as_str() {
                "helpfulness" => datasets::PreferenceKind::Helpfulness,
                "safety" => datasets::PreferenceKind::Safety,
                t => bail!("mix target {t:?}: expected helpfulness or safety"),
            };
            let mut spec = datasets::mixture::MixSpec::paper(target);
            spec.seed = c.seed;
            if let Some(r) = c.ratio {
                spec.primary_share = r;
            }
            let out = dir.join("mix.jsonl");
            let summary = datasets::mixture::mix_files(&c.data, &out, None, &spec)?;
            Ok((out, serde_json::to_value(&summary)?))
        }
        "rejection_sampling" => {
            let c: rejection_sampling::RejectionSamplingConfig = cfg.try_into()?;
            c.validate().map_err(anyhow::Error::msg)?;
            let o = super::rejection_sampling::run_config(&c, dir, true)?;
            Ok((o.final_model.clone(), serde_json::to_value(&o)?))
        }
        "ppo" => {
            let c: ppo::PpoConfig = cfg.try_into()?;
            c.validate().map_err(anyhow::Error::msg)?;
            let o = super::ppo::run_config(&c, dir, true)?;
            Ok((o.final_model.clone(), serde_json::to_value(&o)?))
        }
        other => bail!("unknown stage kind {other}"),
    }
}
