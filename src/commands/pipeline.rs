//! `rlhf pipeline run CONFIG --out DIR` and `rlhf pipeline status DIR`: the Llama 2 recipe as one
//! config. Stages run in order, each in `DIR/<name>/` with a `manifest.json` (fingerprint of its
//! resolved config and of its inputs, outputs, metrics, wall time). A stage whose manifest matches
//! is skipped; a changed config or input re-runs it and, through the fingerprints, everything
//! downstream; an interrupted stage resumes from its own checkpoints.
//!
//! Config: `[pipeline]` (`eval_prompts`: held-out prompts for the ground-truth report, judged
//! from `eval_samples` sampled replies per prompt at `eval_temperature` plus one greedy reply) and
//! `[[stages]]` tables with `name`, `kind` and a `config` table in that stage's own format.
//! Strings may name earlier stages: `${sft}` is the output of stage `sft` (its model folder, or
//! the data folder of a `demo_data` stage) and `${sft.dir}` its folder.
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use llama::SamplingParams;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use training::runner::fnv1a;

#[derive(Subcommand)]
pub enum PipelineCommand {
    /// Run (or resume) every stage of a pipeline config.
    Run(RunArgs),
    /// Print the stage table of a pipeline folder.
    Status(StatusArgs),
}

#[derive(Args)]
pub struct RunArgs {
    pub config: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// Override a value of the pipeline config (`stages.sft.config.train.lr=1e-3` addresses a stage by name).
    #[arg(long = "set")]
    pub sets: Vec<String>,
}

#[derive(Args)]
pub struct StatusArgs {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineConfig {
    #[serde(default)]
    pipeline: PipelineSection,
    stages: Vec<StageSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineSection {
    /// Held-out prompts for the ground-truth evaluation of every policy stage (demo world).
    #[serde(default)]
    eval_prompts: Option<String>,
    /// Reply budget of that evaluation.
    #[serde(default = "default_eval_tokens")]
    eval_max_new_tokens: usize,
    /// Sampling temperature of the primary evaluation (0 = greedy only). A greedy evaluation is
    /// always reported beside it (`ground_truth.greedy`).
    #[serde(default = "default_eval_temperature")]
    eval_temperature: f64,
    /// Replies per prompt of the sampled evaluation, pooled into its rates.
    #[serde(default = "default_eval_samples")]
    eval_samples: usize,
    #[serde(default = "default_device")]
    device: String,
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
fn default_device() -> String {
    "auto".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StageSpec {
    name: String,
    kind: String,
    #[serde(default = "empty_table")]
    config: toml::Value,
}

fn empty_table() -> toml::Value {
    toml::Value::Table(toml::Table::new())
}

/// What a finished stage left behind (`DIR/<name>/manifest.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub kind: String,
    pub fingerprint: String,
    pub config: serde_json::Value,
    pub inputs: BTreeMap<String, String>,
    /// The stage's output (a model or data folder).
    pub output: PathBuf,
    pub metrics: serde_json::Value,
    pub ground_truth: Option<serde_json::Value>,
    pub wall_seconds: f64,
}

const KINDS: &[&str] = &["demo_data", "mix", "init", "sft", "reward", "rejection_sampling", "ppo"];

pub fn run(c: PipelineCommand) -> Result<()> {
    match c {
        PipelineCommand::Run(a) => run_pipeline(a),
        PipelineCommand::Status(a) => status(&a.dir),
    }
}

fn load_config(path: &Path, sets: &[String]) -> Result<PipelineConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut value = toml::Value::Table(text.parse::<toml::Table>().with_context(|| format!("{}: invalid TOML", path.display()))?);
    for s in sets {
        // `stages.<name>.x=v` addresses a stage by name.
        let rewritten = match s.strip_prefix("stages.") {
            Some(rest) => {
                let (name, tail) = rest.split_once('.').with_context(|| format!("--set {s}: expected stages.<name>.<key>=<value>"))?;
                let stages = value.get("stages").and_then(|v| v.as_array()).context("config has no [[stages]]")?;
                let idx = stages
                    .iter()
                    .position(|st| st.get("name").and_then(|n| n.as_str()) == Some(name))
                    .with_context(|| format!("--set {s}: no stage named {name}"))?;
                let (key, v) = tail.split_once('=').with_context(|| format!("--set {s}: expected key=value"))?;
                let stage = value["stages"].as_array_mut().expect("checked above").get_mut(idx).expect("index found above");
                super::config::apply_set(stage, &format!("{key}={v}"))?;
                continue;
            }
            None => s.clone(),
        };
        super::config::apply_set(&mut value, &rewritten)?;
    }
    let cfg: PipelineConfig = value.try_into().with_context(|| format!("{}: invalid pipeline config", path.display()))?;
    let mut seen = std::collections::HashSet::new();
    for s in &cfg.stages {
        if !KINDS.contains(&s.kind.as_str()) {
            bail!("{}: stage {}: unknown kind {:?} (expected one of {})", path.display(), s.name, s.kind, KINDS.join(", "));
        }
        if !seen.insert(s.name.clone()) {
            bail!("{}: two stages are named {}", path.display(), s.name);
        }
    }
    Ok(cfg)
}

/// Replaces `${name}` / `${name.dir}` in every string; returns the names referenced.
fn substitute(v: &mut toml::Value, outputs: &BTreeMap<String, (PathBuf, PathBuf)>, used: &mut Vec<String>) -> Result<()> {
    match v {
        toml::Value::String(s) => {
            while let Some(start) = s.find("${") {
                let end = s[start..].find('}').map(|e| start + e).with_context(|| format!("unclosed ${{ in {s:?}"))?;
                let key = s[start + 2..end].to_string();
                let (name, field) = key.split_once('.').unwrap_or((&key, "out"));
                let (out, dir) = outputs.get(name).with_context(|| format!("{s:?} names stage {name:?}, which does not run before it"))?;
                let path = if field == "dir" { dir } else { out };
                s.replace_range(start..=end, &path.display().to_string());
                used.push(name.to_string());
            }
        }
        toml::Value::Array(a) => a.iter_mut().try_for_each(|x| substitute(x, outputs, used))?,
        toml::Value::Table(t) => t.iter_mut().try_for_each(|(_, x)| substitute(x, outputs, used))?,
        _ => {}
    }
    Ok(())
}

fn read_manifest(dir: &Path) -> Option<Manifest> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).ok()?).ok()
}

fn run_pipeline(a: RunArgs) -> Result<()> {
    let cfg = load_config(&a.config, &a.sets)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut outputs: BTreeMap<String, (PathBuf, PathBuf)> = BTreeMap::new();
    let mut fingerprints: BTreeMap<String, String> = BTreeMap::new();
    let mut manifests = Vec::new();
    let t0 = Instant::now();
    for spec in &cfg.stages {
        let dir = a.out.join(&spec.name);
        let mut resolved = spec.config.clone();
        let mut used = Vec::new();
        substitute(&mut resolved, &outputs, &mut used).with_context(|| format!("stage {}", spec.name))?;
        used.sort();
        used.dedup();
        let inputs: BTreeMap<String, String> = used.iter().map(|n| (n.clone(), fingerprints[n].clone())).collect();
        let config_json = serde_json::to_value(&resolved)?;
        let fingerprint = fnv1a(format!("{}|{}|{}", spec.kind, config_json, serde_json::to_string(&inputs)?).as_bytes());
        let manifest = match read_manifest(&dir) {
            Some(m) if m.fingerprint == fingerprint && m.output.exists() => {
                tracing::info!("pipeline: {} is up to date, skipped", spec.name);
                m
            }
            _ => {
                prepare_dir(&dir, &fingerprint)?;
                tracing::info!("pipeline: running {} ({})", spec.name, spec.kind);
                let start = Instant::now();
                let (output, metrics) =
                    run_stage(&spec.kind, resolved, &dir).with_context(|| format!("stage {} ({})", spec.name, spec.kind))?;
                let ground_truth = match (&cfg.pipeline.eval_prompts, is_policy(&spec.kind)) {
                    (Some(p), true) => Some(ground_truth(&output, &resolve_str(p, &outputs)?, &cfg.pipeline)?),
                    _ => None,
                };
                let m = Manifest {
                    name: spec.name.clone(),
                    kind: spec.kind.clone(),
                    fingerprint: fingerprint.clone(),
                    config: config_json,
                    inputs,
                    output,
                    metrics,
                    ground_truth,
                    wall_seconds: start.elapsed().as_secs_f64(),
                };
                llama::checkpoint::write_atomic(&dir.join("manifest.json"), serde_json::to_string_pretty(&m)?.as_bytes())?;
                m
            }
        };
        let out_dir = dir.clone();
        outputs.insert(spec.name.clone(), (manifest.output.clone(), out_dir));
        fingerprints.insert(spec.name.clone(), manifest.fingerprint.clone());
        manifests.push(manifest);
    }
    write_report(&a.out, &manifests)?;
    println!(
        "{}",
        serde_json::json!({"out": a.out, "stages": manifests.len(), "seconds": t0.elapsed().as_secs_f64(), "report": a.out.join("report.md")})
    );
    Ok(())
}

fn resolve_str(s: &str, outputs: &BTreeMap<String, (PathBuf, PathBuf)>) -> Result<PathBuf> {
    let mut v = toml::Value::String(s.to_string());
    substitute(&mut v, outputs, &mut Vec::new())?;
    Ok(PathBuf::from(v.as_str().unwrap_or_default()))
}

/// A stage folder holds the work of one fingerprint: a folder left by another config is cleared,
/// one left by an interrupted run of the same config is kept (the stage resumes from it).
fn prepare_dir(dir: &Path, fingerprint: &str) -> Result<()> {
    let marker = dir.join(".fingerprint");
    let same = std::fs::read_to_string(&marker).map(|f| f.trim() == fingerprint).unwrap_or(false);
    if dir.exists() && !same {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    llama::checkpoint::write_atomic(&marker, fingerprint.as_bytes())?;
    let _ = std::fs::remove_file(dir.join("manifest.json"));
    Ok(())
}

fn is_policy(kind: &str) -> bool {
    matches!(kind, "init" | "sft" | "rejection_sampling" | "ppo")
}

fn parse<T: serde::de::DeserializeOwned>(v: toml::Value) -> Result<T> {
    Ok(v.try_into()?)
}

/// Runs one stage in `dir`; returns its output path and summary metrics.
fn run_stage(kind: &str, cfg: toml::Value, dir: &Path) -> Result<(PathBuf, serde_json::Value)> {
    match kind {
        "demo_data" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct DemoCfg {
                #[serde(default = "d_sft")]
                sft: usize,
                #[serde(default = "d_pairs")]
                pairs: usize,
                #[serde(default = "d_prompts")]
                prompts: usize,
                #[serde(default)]
                seed: u64,
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
            let c: DemoCfg = parse(cfg)?;
            let out = dir.join("data");
            let m = demo_world::write_demo(&out, demo_world::DemoSizes { sft: c.sft, pairs: c.pairs, prompts: c.prompts }, c.seed)?;
            Ok((out, serde_json::to_value(&m)?))
        }
        "init" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct InitCfg {
                preset: String,
                #[serde(default)]
                seed: u64,
            }
            let c: InitCfg = parse(cfg)?;
            let out = dir.join("model");
            super::init::init_model(&c.preset, c.seed, "float32", &out)?;
            Ok((out, serde_json::json!({"preset": c.preset})))
        }
        "sft" => {
            let c: sft::SftConfig = parse(cfg)?;
            c.validate().map_err(anyhow::Error::msg)?;
            let o = super::sft::run_config(&c, dir, true)?;
            Ok((o.final_model.clone(), serde_json::to_value(&o)?))
        }
        "reward" => {
            let c: reward::RewardConfig = parse(cfg)?;
            c.validate().map_err(anyhow::Error::msg)?;
            let (r, report) = super::reward::train_config(&c, dir, true)?;
            Ok((r.final_model.clone(), serde_json::json!({"run": r, "eval": report})))
        }
        other => super::pipeline_stages::run_stage(other, cfg, dir),
    }
}

/// Ground-truth helpfulness, safety and false refusals of a policy on held-out demo prompts:
/// the top-level rates from `eval_samples` sampled replies per prompt at `eval_temperature`
/// (greedy replies saturate: a tiny policy that refuses every harmful prompt greedily still
/// complies in a share of its samples), and the greedy rates under `greedy`.
fn ground_truth(model: &Path, prompts: &Path, p: &PipelineSection) -> Result<serde_json::Value> {
    use demo_world::{evaluate_policy, greedy};
    let tok = super::tokenizer_for(model)?;
    let recs: Vec<datasets::PromptRecord> = datasets::io::read_all(prompts).with_context(|| format!("reading {}", prompts.display()))?;
    let (device, kind) = super::device_and_kind(&p.device, None)?;
    let (_vs, m) = llama::checkpoint::load_causal_lm(model, device, kind)?;
    let params = greedy(p.eval_max_new_tokens, m.cfg.eos_token_id);
    let g = evaluate_policy(&m, &tok, &recs, &params, 64, 1)?;
    let rates = |e: &demo_world::PolicyEval| {
        serde_json::json!({
            "helpful": e.scores.helpful_rate, "safe": e.scores.safe_rate, "false_refusal": e.scores.false_refusal_rate,
            "n": e.scores.n, "per_family": e.scores.per_family,
        })
    };
    let mut out = rates(&g);
    if p.eval_temperature > 0.0 {
        let sampled = SamplingParams { temperature: p.eval_temperature, seed: 0, ..params };
        let sv = evaluate_policy(&m, &tok, &recs, &sampled, 64, p.eval_samples.max(1))?;
        out = rates(&sv);
        out["temperature"] = p.eval_temperature.into();
        out["samples_per_prompt"] = p.eval_samples.max(1).into();
        out["greedy"] = rates(&g);
    }
    out["examples"] = serde_json::to_value(g.samples.iter().take(4).collect::<Vec<_>>())?;
    Ok(out)
}

/// A stage's throughput for the report, from its manifest and run folder: training tokens/s (SFT,
/// RM), generated tokens/s of sampling (rejection sampling), rollout and training tokens/s (PPO,
/// medians over iterations).
fn throughput(out: &Path, m: &Manifest, rs_report: Option<&serde_json::Value>) -> Option<String> {
    let x = &m.metrics;
    let median = |mut v: Vec<f64>| -> Option<f64> {
        v.retain(|x| x.is_finite());
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| v[v.len() / 2])
    };
    match m.kind.as_str() {
        "sft" => x["tokens_per_s"].as_f64().map(|t| format!("{t:.0} train")),
        "reward" => x["run"]["tokens_per_s"].as_f64().map(|t| format!("{t:.0} train")),
        "rejection_sampling" => {
            let t = rs_report?["iterations"].as_array()?.last()?["throughput"]["tokens_per_s"].as_f64()?;
            Some(format!("{t:.0} generated"))
        }
        "ppo" => {
            let recs = training::metrics::read_metrics(&out.join(&m.name).join("metrics.jsonl")).ok()?;
            let col = |k: &str| median(recs.iter().filter_map(|r| r.get(k)?.as_f64()).collect());
            Some(format!("{:.0} rollout, {:.0} train", col("rollout_tokens_per_s")?, col("train_tokens_per_s")?))
        }
        _ => None,
    }
}

/// A rejection-sampling stage's own `report.json` (per iteration: evaluations, throughput).
fn rs_report(out: &Path, m: &Manifest) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(out.join(&m.name).join("report.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_report(out: &Path, manifests: &[Manifest]) -> Result<()> {
    let rs_reports: BTreeMap<&str, serde_json::Value> =
        manifests.iter().filter(|m| m.kind == "rejection_sampling").filter_map(|m| Some((m.name.as_str(), rs_report(out, m)?))).collect();
    let rs_of = |m: &Manifest| rs_reports.get(m.name.as_str());
    let stages: Vec<serde_json::Value> = manifests
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name, "kind": m.kind, "output": m.output, "wall_seconds": m.wall_seconds, "tokens_per_s": throughput(out, m, rs_of(m)),
                "ground_truth": m.ground_truth, "metrics": m.metrics, "fingerprint": m.fingerprint,
            })
        })
        .collect();
    let report = serde_json::json!({"stages": stages});
    llama::checkpoint::write_atomic(&out.join("report.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    let mut md = String::from(
        "# Pipeline report\n\n## Ground truth on held-out demo prompts\n\nSampled: the pooled rates of several sampled replies per prompt (temperature and count in \
         report.json); greedy: one greedy reply per prompt.\n\n| stage | kind | helpful | safe | false refusal | greedy helpful | greedy safe | greedy false refusal | wall s | tokens/s |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let (mut groups, mut h, mut s, mut f) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for m in manifests {
        let gt = |k: &str| m.ground_truth.as_ref().and_then(|g| g[k].as_f64());
        let fmt = |x: Option<f64>| x.map(|v| format!("{:.3}", v)).unwrap_or_else(|| "–".into());
        let gg = |k: &str| m.ground_truth.as_ref().and_then(|g| g["greedy"][k].as_f64());
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} |\n",
            m.name,
            m.kind,
            fmt(gt("helpful")),
            fmt(gt("safe")),
            fmt(gt("false_refusal")),
            fmt(gg("helpful")),
            fmt(gg("safe")),
            fmt(gg("false_refusal")),
            m.wall_seconds,
            throughput(out, m, rs_of(m)).unwrap_or_else(|| "–".into())
        );
        if m.ground_truth.is_some() {
            groups.push(m.name.clone());
            h.push(gt("helpful").unwrap_or(f64::NAN));
            s.push(gt("safe").unwrap_or(f64::NAN));
            f.push(gt("false_refusal").unwrap_or(f64::NAN));
        }
    }
    let rm: Vec<&Manifest> = manifests.iter().filter(|m| m.kind == "reward").collect();
    if !rm.is_empty() {
        md += "\n## Reward models: test accuracy by rating (Llama 2 Table 8 layout)\n\n| RM | significantly better | better | slightly better | negligibly better / unsure | avg |\n|---|---|---|---|---|---|\n";
        for m in rm {
            let ev = &m.metrics["eval"];
            let bins: Vec<String> = ev["by_rating"]
                .as_array()
                .map(|a| a.iter().map(|b| format!("{:.1}", 100.0 * b[1]["accuracy"].as_f64().unwrap_or(f64::NAN))).collect())
                .unwrap_or_default();
            md +=
                &format!("| {} | {} | {:.1} |\n", m.name, bins.join(" | "), 100.0 * ev["overall"]["accuracy"].as_f64().unwrap_or(f64::NAN));
        }
    }
    // What every run has, judges or not: the reward models' scores of each policy's held-out
    // replies (rejection sampling: greedy replies before and after; PPO: sampled replies).
    let mut rm_rows = String::new();
    for m in manifests {
        let f = |v: &serde_json::Value| v.as_f64().map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into());
        match m.kind.as_str() {
            "rejection_sampling" => {
                let Some(its) = rs_of(m).and_then(|r| r["iterations"].as_array()) else { continue };
                let (Some(first), Some(last)) = (its.first(), its.last()) else { continue };
                let (b, a) = (&first["eval_before"]["greedy"], &last["eval_after"]["greedy"]);
                rm_rows += &format!(
                    "| {} | greedy, {} prompts | R_c {} → {} | helpfulness {} → {} | safety {} → {} |\n",
                    m.name,
                    last["eval_after"]["prompts"],
                    f(&b["mean_reward"]),
                    f(&a["mean_reward"]),
                    f(&b["mean_helpfulness"]),
                    f(&a["mean_helpfulness"]),
                    f(&b["mean_safety"]),
                    f(&a["mean_safety"])
                );
            }
            "ppo" => {
                let x = &m.metrics;
                rm_rows += &format!(
                    "| {} | sampled, {} replies | LOGIT(R_c) {} → {} | | |\n",
                    m.name,
                    x["final_eval"]["responses"],
                    f(&x["initial_eval"]["reward"]),
                    f(&x["final_eval"]["reward"])
                );
            }
            _ => {}
        }
    }
    if !rm_rows.is_empty() {
        md += "\n## Reward-model scores of the held-out replies, start → end of each policy stage\n\n| stage | replies | combined | helpfulness RM (sigmoid) | safety RM (sigmoid) |\n|---|---|---|---|---|\n";
        md += &rm_rows;
    }
    let ppo: Vec<&Manifest> = manifests.iter().filter(|m| m.kind == "ppo").collect();
    if !ppo.is_empty() {
        md += "\n## PPO: held-out reward and KL (the stage's own evaluation)\n\n| stage | iterations | eval reward LOGIT(Rc) start → end | KL to π_0 (nats/reply) at the end | curves |\n|---|---|---|---|---|\n";
        for m in ppo {
            let x = &m.metrics;
            let f = |v: &serde_json::Value| v.as_f64().map(|v| format!("{v:.3}")).unwrap_or_else(|| "–".into());
            md += &format!(
                "| {} | {} | {} → {} | {} | `{}/curves.png` |\n",
                m.name,
                x["iterations"],
                f(&x["initial_eval"]["reward"]),
                f(&x["final_eval"]["reward"]),
                f(&x["final_eval"]["kl"]),
                m.name
            );
        }
    }
    if !groups.is_empty() {
        let png = out.join("ground_truth.png");
        training::plot::bar_chart(
            &png,
            "Ground truth on held-out prompts (sampled replies; greedy in report.md)",
            "rate",
            &groups,
            &[("helpful".into(), h), ("safe".into(), s), ("false refusal".into(), f)],
        )?;
        md += "\n![ground truth per stage](ground_truth.png)\n";
    }
    md += "\nPer-stage curves: `<stage>/curves.png`; manifests: `<stage>/manifest.json`.\n";
    llama::checkpoint::write_atomic(&out.join("report.md"), md.as_bytes())?;
    Ok(())
}

fn status(dir: &Path) -> Result<()> {
    let mut rows = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    entries.sort_by_key(|p| std::fs::metadata(p.join(".fingerprint")).and_then(|m| m.modified()).ok());
    println!("{:<22} {:<20} {:<12} {:>8}  {}", "stage", "kind", "status", "wall s", "ground truth (helpful/safe/false refusal)");
    for p in entries {
        let name = p.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        match read_manifest(&p) {
            Some(m) => {
                let gt = m
                    .ground_truth
                    .as_ref()
                    .map(|g| {
                        format!(
                            "{:.3}/{:.3}/{:.3}",
                            g["helpful"].as_f64().unwrap_or(f64::NAN),
                            g["safe"].as_f64().unwrap_or(f64::NAN),
                            g["false_refusal"].as_f64().unwrap_or(f64::NAN)
                        )
                    })
                    .unwrap_or_default();
                println!("{:<22} {:<20} {:<12} {:>8.0}  {}", name, m.kind, "done", m.wall_seconds, gt);
                rows.push(serde_json::json!({"stage": name, "status": "done"}));
            }
            None if p.join(".fingerprint").exists() => {
                let step = training::checkpoint::CheckpointManager::new(&p, 1)
                    .latest()
                    .ok()
                    .flatten()
                    .map(|c| c.display().to_string())
                    .unwrap_or_else(|| "no checkpoint".into());
                println!("{:<22} {:<20} {:<12} {:>8}  {}", name, "?", "interrupted", "-", step);
            }
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("configs")
    }

    fn check_stage(kind: &str, cfg: toml::Value, what: &str) {
        let r: Result<()> = (|| match kind {
            "sft" => parse::<sft::SftConfig>(cfg)?.validate().map_err(anyhow::Error::msg),
            "reward" => parse::<reward::RewardConfig>(cfg)?.validate().map_err(anyhow::Error::msg),
            "rejection_sampling" => parse::<rejection_sampling::RejectionSamplingConfig>(cfg)?.validate().map_err(anyhow::Error::msg),
            "ppo" => parse::<ppo::PpoConfig>(cfg)?.validate().map_err(anyhow::Error::msg),
            _ => Ok(()),
        })();
        if let Err(e) = r {
            panic!("{what}: {e:#}");
        }
    }

    /// Every shipped config parses into its stage's type (unknown keys are errors) and passes
    /// validation; in pipeline configs every `${stage}` names an earlier stage.
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
            let text = std::fs::read_to_string(&path).unwrap();
            let value = toml::Value::Table(text.parse::<toml::Table>().unwrap_or_else(|e| panic!("{name}: {e}")));
            if value.get("stages").is_some() {
                let cfg = load_config(&path, &[]).unwrap_or_else(|e| panic!("{name}: {e:#}"));
                let mut outputs = BTreeMap::new();
                for st in &cfg.stages {
                    let mut c = st.config.clone();
                    substitute(&mut c, &outputs, &mut Vec::new()).unwrap_or_else(|e| panic!("{name}: stage {}: {e:#}", st.name));
                    check_stage(&st.kind, c, &format!("{name}: stage {}", st.name));
                    outputs.insert(st.name.clone(), (PathBuf::from(format!("out/{}", st.name)), PathBuf::from(format!("dir/{}", st.name))));
                }
            } else {
                let kind = match name.split('-').next().unwrap() {
                    "sft" => "sft",
                    "reward" => "reward",
                    "rs" => "rejection_sampling",
                    "ppo" => "ppo",
                    other => panic!("{name}: no stage kind for prefix {other:?}"),
                };
                check_stage(kind, value, &name);
            }
        }
        assert!(n >= 10, "only {n} configs found");
    }
}
