//! The pipeline config file: `[pipeline]` (the ground-truth evaluation and its device) and
//! `[[stages]]` tables with `name`, `kind` and a `config` table in that stage's own format.
use crate::error::{PipelineError, Result};
use llama::device::DeviceSpec;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    #[serde(default)]
    pub pipeline: PipelineSection,
    pub stages: Vec<StageSpec>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// Held-out prompts for the ground-truth evaluation of every policy stage (demo world).
    #[serde(default)]
    pub eval_prompts: Option<String>,
    /// Reply budget of that evaluation.
    #[serde(default = "default_eval_tokens")]
    pub eval_max_new_tokens: usize,
    /// Sampling temperature of the primary evaluation (0 = greedy only). A greedy evaluation is
    /// always reported beside it (`ground_truth.greedy`).
    #[serde(default = "default_eval_temperature")]
    pub eval_temperature: f64,
    /// Replies per prompt of the sampled evaluation, pooled into its rates.
    #[serde(default = "default_eval_samples")]
    pub eval_samples: usize,
    /// Device of the ground-truth evaluation: `auto`, `cpu`, `cuda` or `cuda:N`.
    #[serde(default)]
    pub device: DeviceSpec,
    /// Evaluate each policy stage in a child process (`rlhf pipeline ground-truth`) while the
    /// next stages run, one evaluation at a time in stage order, instead of before the next stage
    /// starts ([`crate::background`]). Same figures (the child is the same binary with the same
    /// thread setting); the report is written when all are in. Worth it where the evaluation and
    /// the stages leave each other cores (a small model decodes on one thread of a CPU); off by
    /// default (on one GPU the two would share its memory).
    #[serde(default)]
    pub eval_in_background: bool,
}

impl Default for PipelineSection {
    fn default() -> Self {
        PipelineSection {
            eval_prompts: None,
            eval_max_new_tokens: default_eval_tokens(),
            eval_temperature: default_eval_temperature(),
            eval_samples: default_eval_samples(),
            device: DeviceSpec::Auto,
            eval_in_background: false,
        }
    }
}

fn default_eval_tokens() -> usize {
    48
}
fn default_eval_temperature() -> f64 {
    1.0
}
fn default_eval_samples() -> usize {
    8
}

/// One `[[stages]]` table as written: its `config` still holds `${stage}` references.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// The stage's folder under the run folder, and the name `${name}` refers to.
    pub name: String,
    /// One of [`crate::plan::StageKind`]'s names.
    pub kind: String,
    /// The stage's own config, in its kind's format; may name earlier stages (`${name}`).
    #[serde(default = "empty_table")]
    pub config: toml::Value,
    /// `kind = "rounds"` only: how many rounds the template runs (RLHF-V1 ... V`rounds`).
    #[serde(default)]
    pub rounds: Option<usize>,
    /// `kind = "rounds"` only: the stages of one round (see [`crate::rounds`]).
    #[serde(default)]
    pub template: Vec<TemplateStage>,
    /// `kind = "rounds"` only: the stage that `${x@prev}` names in round 1 (and `${x}` before
    /// `x`'s first round), per template stage `x` (default: the plain stage named `x`).
    #[serde(default)]
    pub initial: BTreeMap<String, String>,
    /// The round a stage of an expanded rounds block belongs to (set by the expansion).
    #[serde(skip)]
    pub round: Option<RoundOf>,
}

/// A stage of a rounds block's template: stage `name` of round `r` is `{name}_v{r}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateStage {
    /// The template name (`${name}`, `${name@prev}`, `${name@all}` in the template).
    pub name: String,
    /// One of [`crate::plan::StageKind`]'s names.
    pub kind: String,
    /// The first round the stage runs in (default 1).
    #[serde(default = "first_round")]
    pub from_round: usize,
    /// The last round the stage runs in (default: every round).
    #[serde(default)]
    pub until_round: Option<usize>,
    /// The stage's config, with the template's references (`${round}`, `@prev`, `@all`).
    #[serde(default = "empty_table")]
    pub config: toml::Value,
}

fn first_round() -> usize {
    1
}

/// Which round of which rounds block an expanded stage is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct RoundOf {
    pub block: String,
    pub round: usize,
}

fn empty_table() -> toml::Value {
    toml::Value::Table(toml::Table::new())
}

impl PipelineConfig {
    /// Reads a pipeline config file as TOML (overrides are applied to this value, then
    /// [`PipelineConfig::from_toml`] types it).
    pub fn read_toml(path: &Path) -> Result<toml::Value> {
        let text = std::fs::read_to_string(path).map_err(|e| PipelineError::io(path, e))?;
        let table = text.parse::<toml::Table>().map_err(|source| PipelineError::Toml { path: path.to_path_buf(), source })?;
        Ok(toml::Value::Table(table))
    }

    /// Types a pipeline config read from `path` (named in errors).
    pub fn from_toml(value: toml::Value, path: &Path) -> Result<Self> {
        value.try_into().map_err(|e| PipelineError::Config { path: path.to_path_buf(), msg: format!("invalid pipeline config: {e}") })
    }
}

/// Where a `--set key=value` override applies: `stages.<name>.<key>=<value>` addresses the stage
/// named `<name>` (returned with `<key>=<value>`), anything else the whole config.
pub fn set_target<'a>(root: &'a mut toml::Value, set: &str) -> Result<(&'a mut toml::Value, String)> {
    let err = |msg: String| PipelineError::Set { set: set.to_string(), msg };
    let Some(rest) = set.strip_prefix("stages.") else { return Ok((root, set.to_string())) };
    let (name, tail) = rest.split_once('.').ok_or_else(|| err("expected stages.<name>.<key>=<value>".into()))?;
    if !tail.contains('=') {
        return Err(err("expected key=value".into()));
    }
    let stages = root.get_mut("stages").and_then(|v| v.as_array_mut()).ok_or_else(|| err("the config has no [[stages]]".into()))?;
    let stage = stages
        .iter_mut()
        .find(|st| st.get("name").and_then(|n| n.as_str()) == Some(name))
        .ok_or_else(|| err(format!("no stage named {name}")))?;
    Ok((stage, tail.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_target_addresses_a_stage_by_name() {
        let mut v: toml::Value = toml::Value::Table("[[stages]]\nname = \"a\"\nkind = \"sft\"\n".parse().unwrap());
        let (t, s) = set_target(&mut v, "stages.a.config.train.lr=1").unwrap();
        assert_eq!((t.get("name").and_then(|n| n.as_str()), s.as_str()), (Some("a"), "config.train.lr=1"));
        let (t, s) = set_target(&mut v, "pipeline.device=cpu").unwrap();
        assert!(t.get("stages").is_some() && s == "pipeline.device=cpu");
        let e = set_target(&mut v, "stages.b.config.x=1").unwrap_err().to_string();
        assert!(e.contains("no stage named b"), "{e}");
        assert!(set_target(&mut v, "stages.a").is_err());
        assert!(set_target(&mut v, "stages.a.config").is_err());
    }
}
