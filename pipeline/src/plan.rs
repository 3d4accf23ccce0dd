//! The whole pipeline resolved and validated before its first stage runs: stage names and kinds,
//! every `${stage}` reference (defined, earlier, a known attribute), the `[pipeline]` table, and
//! every stage's config parsed into its type (unknown keys are errors) and validated. Outputs of
//! earlier stages do not exist yet: references resolve to placeholder paths for this check.
use crate::config::{PipelineConfig, PipelineSection};
use crate::error::{PipelineError, Result};
use crate::refs::{all_references, references, substitute, Reference};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// What a stage does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    DemoData,
    Mix,
    Init,
    Sft,
    Reward,
    RejectionSampling,
    Ppo,
    SamplePairs,
    Annotate,
    Gatt,
    ContextDistillation,
}

impl StageKind {
    pub const ALL: [StageKind; 11] = [
        StageKind::DemoData,
        StageKind::Mix,
        StageKind::Init,
        StageKind::Sft,
        StageKind::Reward,
        StageKind::RejectionSampling,
        StageKind::Ppo,
        StageKind::SamplePairs,
        StageKind::Annotate,
        StageKind::Gatt,
        StageKind::ContextDistillation,
    ];

    /// The name in a config's `kind`.
    pub fn name(self) -> &'static str {
        match self {
            StageKind::DemoData => "demo_data",
            StageKind::Mix => "mix",
            StageKind::Init => "init",
            StageKind::Sft => "sft",
            StageKind::Reward => "reward",
            StageKind::RejectionSampling => "rejection_sampling",
            StageKind::Ppo => "ppo",
            StageKind::SamplePairs => "sample_pairs",
            StageKind::Annotate => "annotate",
            StageKind::Gatt => "gatt",
            StageKind::ContextDistillation => "context_distillation",
        }
    }

    pub fn from_name(s: &str) -> Option<StageKind> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    /// A stage whose output is a policy (judged by the ground-truth evaluation).
    pub fn is_policy(self) -> bool {
        matches!(
            self,
            StageKind::Init
                | StageKind::Sft
                | StageKind::RejectionSampling
                | StageKind::Ppo
                | StageKind::Gatt
                | StageKind::ContextDistillation
        )
    }
}

/// `demo_data`: the demo world's files (`rlhf data demo`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoDataConfig {
    #[serde(default = "d_sft")]
    pub sft: usize,
    #[serde(default = "d_pairs")]
    pub pairs: usize,
    #[serde(default = "d_prompts")]
    pub prompts: usize,
    #[serde(default)]
    pub seed: u64,
}
fn d_sft() -> usize {
    4000
}
fn d_pairs() -> usize {
    6000
}
fn d_prompts() -> usize {
    600
}

/// `mix`: a reward model's training mixture (`rlhf data mix`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixConfig {
    /// `helpfulness` or `safety`.
    pub target: String,
    pub data: Vec<PathBuf>,
    /// The target's own share (default: Llama 2's 0.5 / 0.9).
    #[serde(default)]
    pub ratio: Option<f64>,
    #[serde(default)]
    pub seed: u64,
    /// Earlier comparisons replayed beside `data`: a uniform sample (by `seed`) of
    /// `replay_records` of them joins the input (`replay.jsonl` in the stage folder). For a
    /// reward model retrained from the previous one on a new batch: the sample keeps it from
    /// forgetting the earlier batches at a fraction of the cost of all of them.
    #[serde(default)]
    pub replay: Vec<PathBuf>,
    /// How many of the `replay` comparisons (all when fewer).
    #[serde(default)]
    pub replay_records: Option<usize>,
}

impl MixConfig {
    pub fn target_kind(&self) -> Result<datasets::PreferenceKind, String> {
        match self.target.as_str() {
            "helpfulness" => Ok(datasets::PreferenceKind::Helpfulness),
            "safety" => Ok(datasets::PreferenceKind::Safety),
            t => Err(format!("mix target {t:?}: expected helpfulness or safety")),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.target_kind()?;
        if self.data.is_empty() {
            return Err("`data` lists no file".into());
        }
        if self.replay.is_empty() != self.replay_records.is_none() {
            return Err("`replay` and `replay_records` go together".into());
        }
        match self.ratio {
            Some(r) if !(r > 0.0 && r <= 1.0) => Err(format!("mix ratio {r} must be in (0, 1]")),
            _ => Ok(()),
        }
    }
}

/// `init`: a randomly initialised preset model (`rlhf init`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitConfig {
    pub preset: String,
    #[serde(default)]
    pub seed: u64,
}

/// A stage's config in its own type.
#[derive(Debug, Clone)]
pub enum StageConfig {
    DemoData(DemoDataConfig),
    Mix(MixConfig),
    Init(InitConfig),
    Sft(sft::SftConfig),
    Reward(reward::RewardConfig),
    RejectionSampling(rejection_sampling::RejectionSamplingConfig),
    Ppo(ppo::PpoConfig),
    SamplePairs(crate::pairs::SamplePairsConfig),
    Annotate(crate::pairs::AnnotateConfig),
    /// Ghost Attention (Llama 2 Section 3.3): `rlhf gatt`.
    Gatt(gatt::GattConfig),
    /// Safety context distillation (Llama 2 Section 4.2.4): `rlhf context-distillation`.
    ContextDistillation(context_distillation::ContextDistillationConfig),
}

impl StageConfig {
    /// Parses a resolved stage table into `kind`'s config (unknown keys are errors) and
    /// validates it; the error says what is wrong.
    pub fn parse(kind: StageKind, v: toml::Value) -> Result<Self, String> {
        fn typed<T: serde::de::DeserializeOwned>(v: toml::Value) -> Result<T, String> {
            v.try_into().map_err(|e: toml::de::Error| e.to_string().trim().to_string())
        }
        let c = match kind {
            StageKind::DemoData => StageConfig::DemoData(typed(v)?),
            StageKind::Mix => StageConfig::Mix(typed(v)?),
            StageKind::Init => StageConfig::Init(typed(v)?),
            StageKind::Sft => StageConfig::Sft(typed(v)?),
            StageKind::Reward => StageConfig::Reward(typed(v)?),
            StageKind::RejectionSampling => StageConfig::RejectionSampling(typed(v)?),
            StageKind::Ppo => StageConfig::Ppo(typed(v)?),
            StageKind::SamplePairs => StageConfig::SamplePairs(typed(v)?),
            StageKind::Annotate => StageConfig::Annotate(typed(v)?),
            StageKind::Gatt => StageConfig::Gatt(typed(v)?),
            StageKind::ContextDistillation => StageConfig::ContextDistillation(typed(v)?),
        };
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            StageConfig::DemoData(_) => Ok(()),
            StageConfig::Mix(c) => c.validate(),
            StageConfig::Init(c) => llama::Config::preset(&c.preset).map(|_| ()).map_err(|e| e.to_string()),
            StageConfig::Sft(c) => c.validate().map_err(|e| e.to_string()),
            StageConfig::Reward(c) => c.validate().map_err(|e| e.to_string()),
            StageConfig::RejectionSampling(c) => c.validate().map_err(|e| e.to_string()),
            StageConfig::Ppo(c) => c.validate().map_err(|e| e.to_string()),
            StageConfig::SamplePairs(c) => c.validate(),
            StageConfig::Annotate(c) => c.validate(),
            StageConfig::Gatt(c) => c.validate(),
            StageConfig::ContextDistillation(c) => c.validate(),
        }
    }
}

/// One stage of a validated pipeline: its table still holds the references (resolved against
/// the real outputs when it runs).
#[derive(Debug, Clone)]
pub struct PlannedStage {
    pub name: String,
    pub kind: StageKind,
    pub config: toml::Value,
    /// The round of a rounds block it was expanded from ([`crate::rounds`]).
    pub round: Option<crate::config::RoundOf>,
}

/// A pipeline checked whole: nothing in it fails for a reason its config shows.
#[derive(Debug, Clone)]
pub struct Plan {
    pub section: PipelineSection,
    pub stages: Vec<PlannedStage>,
}

impl Plan {
    /// Resolves and validates every stage of `cfg` (read from `path`, named in errors).
    pub fn new(cfg: &PipelineConfig, path: &Path) -> Result<Plan> {
        let stage_err = |stage: &str, msg: String| PipelineError::Stage { path: path.to_path_buf(), stage: stage.to_string(), msg };
        let specs = crate::rounds::expand(&cfg.stages).map_err(|(stage, msg)| stage_err(&stage, msg))?;
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let mut stages = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            check_name(&spec.name).map_err(|m| stage_err(&spec.name, m))?;
            if names[..i].contains(&spec.name.as_str()) {
                return Err(stage_err(&spec.name, "two stages have this name".into()));
            }
            let kind = StageKind::from_name(&spec.kind).ok_or_else(|| {
                let all: Vec<&str> = StageKind::ALL.iter().map(|k| k.name()).collect();
                stage_err(&spec.name, format!("unknown kind {:?} (expected one of {})", spec.kind, all.join(", ")))
            })?;
            for r in all_references(&spec.config).map_err(|m| stage_err(&spec.name, m))? {
                check_order(&r, i, &names).map_err(|m| stage_err(&spec.name, m))?;
            }
            let mut resolved = spec.config.clone();
            substitute(&mut resolved, &placeholder).map_err(|m| stage_err(&spec.name, m))?;
            StageConfig::parse(kind, resolved).map_err(|m| stage_err(&spec.name, format!("{} config: {m}", kind.name())))?;
            stages.push(PlannedStage { name: spec.name.clone(), kind, config: spec.config.clone(), round: spec.round.clone() });
        }
        check_section(&cfg.pipeline, &stages).map_err(|msg| PipelineError::Config { path: path.to_path_buf(), msg })?;
        Ok(Plan { section: cfg.pipeline.clone(), stages })
    }
}

/// Stage names are folder names and the `x` of `${x}`: letters, digits, `_` and `-`.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!("name {name:?}: use letters, digits, `_` and `-` (it names the stage's folder)"));
    }
    Ok(())
}

/// A reference of stage `i` must name an earlier stage.
fn check_order(r: &Reference, i: usize, names: &[&str]) -> Result<(), String> {
    match names.iter().position(|n| *n == r.stage) {
        None => Err(format!("`${{{}}}` names stage {:?}, which is not defined", r.stage, r.stage)),
        Some(j) if j == i => Err(format!("`${{{}}}` names the stage itself (a cycle)", r.stage)),
        Some(j) if j > i => Err(format!("`${{{}}}` names stage {:?}, which runs after it", r.stage, r.stage)),
        Some(_) => Ok(()),
    }
}

/// Where validation resolves references: the outputs do not exist yet.
fn placeholder(r: &Reference) -> PathBuf {
    match r.attr {
        crate::refs::Attr::Output => Path::new("<run>").join(&r.stage).join("<output>"),
        crate::refs::Attr::Dir => Path::new("<run>").join(&r.stage),
    }
}

/// The `[pipeline]` table: `eval_prompts` may name only stages that run before the first policy
/// stage (its first use), the evaluation's values must make sense.
fn check_section(p: &PipelineSection, stages: &[PlannedStage]) -> Result<(), String> {
    if let Some(prompts) = &p.eval_prompts {
        let first_policy = stages.iter().position(|s| s.kind.is_policy()).unwrap_or(stages.len());
        for (_, r) in references(prompts).map_err(|m| format!("pipeline.eval_prompts: {m}"))? {
            match stages.iter().position(|s| s.name == r.stage) {
                None => return Err(format!("pipeline.eval_prompts: `${{{}}}` names stage {:?}, which is not defined", r.stage, r.stage)),
                Some(j) if j >= first_policy => {
                    return Err(format!(
                    "pipeline.eval_prompts: `${{{}}}` names stage {:?}, which runs after the first policy stage {:?} (the first evaluated)",
                    r.stage, r.stage, stages[first_policy].name
                ))
                }
                Some(_) => {}
            }
        }
    }
    if !(p.eval_temperature.is_finite() && p.eval_temperature >= 0.0) {
        return Err(format!("pipeline.eval_temperature must be >= 0 (0: greedy only), got {}", p.eval_temperature));
    }
    if p.eval_max_new_tokens == 0 {
        return Err("pipeline.eval_max_new_tokens must be at least 1".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
    }

    /// The stages of configs/smoke.toml with `edit` applied to its TOML first.
    fn plan_of_smoke(edit: impl FnOnce(&mut toml::Value)) -> Result<Plan> {
        let path = configs_dir().join("smoke.toml");
        let mut v = PipelineConfig::read_toml(&path).unwrap();
        edit(&mut v);
        Plan::new(&PipelineConfig::from_toml(v, &path)?, &path)
    }

    fn stage<'a>(v: &'a mut toml::Value, name: &str) -> &'a mut toml::Value {
        v["stages"].as_array_mut().unwrap().iter_mut().find(|s| s["name"].as_str() == Some(name)).unwrap()
    }

    fn set(v: &mut toml::Value, key: &str, value: toml::Value) {
        v.as_table_mut().unwrap().insert(key.into(), value);
    }

    fn err_of(edit: impl FnOnce(&mut toml::Value)) -> String {
        format!("{}", plan_of_smoke(edit).expect_err("the plan was accepted"))
    }

    #[test]
    fn smoke_config_plans() {
        let plan = plan_of_smoke(|_| {}).unwrap();
        let names: Vec<&str> = plan.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["data", "sft", "rm_helpfulness"]);
    }

    #[test]
    fn unknown_key_in_a_later_stage_names_the_stage_and_key() {
        let e = err_of(|v| set(&mut stage(v, "rm_helpfulness")["config"], "bogus_key", toml::Value::Integer(1)));
        assert!(e.contains("stage rm_helpfulness") && e.contains("bogus_key"), "{e}");
    }

    #[test]
    fn bad_value_in_a_later_stage_names_the_stage() {
        let e = err_of(|v| set(&mut stage(v, "rm_helpfulness")["config"]["train"], "lr", toml::Value::Float(-1.0)));
        assert!(e.contains("stage rm_helpfulness") && e.contains("lr"), "{e}");
    }

    #[test]
    fn unknown_attribute_is_an_error_naming_the_stage_and_string() {
        let e = err_of(|v| set(&mut stage(v, "rm_helpfulness")["config"], "model", "${sft.anything}".into()));
        assert!(e.contains("stage rm_helpfulness") && e.contains("${sft.anything}"), "{e}");
        // `.dir` is the one attribute.
        plan_of_smoke(|v| set(&mut stage(v, "rm_helpfulness")["config"], "model", "${sft.dir}/final".into())).unwrap();
    }

    #[test]
    fn undefined_later_and_own_references_are_errors() {
        let e = err_of(|v| set(&mut stage(v, "rm_helpfulness")["config"], "model", "${nowhere}".into()));
        assert!(e.contains("stage rm_helpfulness") && e.contains("\"nowhere\", which is not defined"), "{e}");
        let e = err_of(|v| set(&mut stage(v, "sft")["config"], "model", "${rm_helpfulness}".into()));
        assert!(e.contains("stage sft") && e.contains("runs after it"), "{e}");
        let e = err_of(|v| set(&mut stage(v, "sft")["config"], "model", "${sft}".into()));
        assert!(e.contains("stage sft") && e.contains("itself (a cycle)"), "{e}");
    }

    #[test]
    fn eval_prompts_must_exist_before_the_first_policy_stage() {
        let e = err_of(|v| set(&mut v["pipeline"], "eval_prompts", "${rm_helpfulness}/p.jsonl".into()));
        assert!(e.contains("pipeline.eval_prompts") && e.contains("runs after the first policy stage \"sft\""), "{e}");
        let e = err_of(|v| set(&mut v["pipeline"], "eval_prompts", "${data.bad}/p.jsonl".into()));
        assert!(e.contains("pipeline.eval_prompts") && e.contains("bad"), "{e}");
    }

    #[test]
    fn names_kinds_and_the_pipeline_table_are_checked() {
        let e = err_of(|v| set(stage(v, "sft"), "name", "data".into()));
        assert!(e.contains("stage data") && e.contains("two stages"), "{e}");
        let e = err_of(|v| set(stage(v, "sft"), "kind", "dpo".into()));
        assert!(e.contains("stage sft") && e.contains("unknown kind \"dpo\""), "{e}");
        let e = err_of(|v| set(stage(v, "sft"), "name", "s.f".into()));
        assert!(e.contains("\"s.f\""), "{e}");
        let e = err_of(|v| set(&mut v["pipeline"], "device", "tpu".into()));
        assert!(e.contains("tpu"), "{e}");
        let e = err_of(|v| set(&mut v["pipeline"], "eval_temperature", toml::Value::Float(-1.0)));
        assert!(e.contains("eval_temperature"), "{e}");
        let e = err_of(|v| set(stage(v, "data"), "extra", toml::Value::Integer(1)));
        assert!(e.contains("extra"), "{e}");
    }

    /// Every shipped config parses into its stage's type (unknown keys are errors) and passes
    /// validation; pipeline configs plan whole.
    #[test]
    fn every_shipped_config_parses_and_validates() {
        let mut n = 0;
        for e in std::fs::read_dir(configs_dir()).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.ends_with(".toml") {
                continue;
            }
            n += 1;
            let value = PipelineConfig::read_toml(&path).unwrap_or_else(|e| panic!("{e}"));
            if value.get("stages").is_some() {
                let cfg = PipelineConfig::from_toml(value, &path).unwrap_or_else(|e| panic!("{e}"));
                Plan::new(&cfg, &path).unwrap_or_else(|e| panic!("{e}"));
            } else {
                let kind = match name.split('-').next().unwrap() {
                    "sft" => StageKind::Sft,
                    "reward" => StageKind::Reward,
                    "rs" => StageKind::RejectionSampling,
                    "ppo" => StageKind::Ppo,
                    "gatt" => StageKind::Gatt,
                    "cd" => StageKind::ContextDistillation,
                    other => panic!("{name}: no stage kind for prefix {other:?}"),
                };
                StageConfig::parse(kind, value).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
        assert!(n >= 10, "only {n} configs found");
    }
}
