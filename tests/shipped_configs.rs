//! Every shipped Llama-2 7B and 13B config, and every training stage of the 7B and 13B pipeline
//! configs, passes `rlhf plan` for one 80 GiB GPU (their stated hardware); the 70B pipeline's
//! stages are reported as not fitting one such GPU (their weights alone are 138 GB in bf16 and
//! ZeRO-1/2 does not shard weights), which its header says.
mod common;
use common::*;
use std::path::Path;

fn plan(stage: &str, config: &Path, preset: &str) -> serde_json::Value {
    let out = run_ok(rlhf().args(["plan", "--stage", stage, "--gpu-memory", "80GiB", "--preset", preset, "--config"]).arg(config));
    json_line(out.lines().last().unwrap_or_default())
}

/// The training stages of a pipeline config as (name, plan stage, its config written to a file).
fn stages(pipeline: &Path, dir: &Path) -> Vec<(String, &'static str, std::path::PathBuf)> {
    let v: toml::Value = toml::from_str(&std::fs::read_to_string(pipeline).unwrap()).unwrap();
    let mut out = Vec::new();
    for s in v["stages"].as_array().unwrap() {
        let kind = match s["kind"].as_str().unwrap() {
            "sft" => "sft",
            "reward" => "reward",
            "ppo" => "ppo",
            _ => continue,
        };
        let name = s["name"].as_str().unwrap().to_string();
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, toml::to_string(&s["config"]).unwrap()).unwrap();
        out.push((name, kind, path));
    }
    out
}

#[test]
fn the_7b_and_13b_configs_fit_one_80gb_gpu() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (stage, file) in [
        ("sft", "configs/sft-llama2-7b.toml"),
        ("reward", "configs/reward-llama2-7b-helpfulness.toml"),
        ("reward", "configs/reward-llama2-7b-safety.toml"),
        ("ppo", "configs/ppo-llama2-7b.toml"),
    ] {
        let p = plan(stage, &root.join(file), "7b");
        assert_eq!(p["fits"], true, "{file}: {p}");
    }
    let tmp = tempfile::tempdir().unwrap();
    for size in ["7b", "13b"] {
        let dir = tmp.path().join(size);
        std::fs::create_dir_all(&dir).unwrap();
        let found = stages(&root.join(format!("configs/pipeline-llama2-{size}.toml")), &dir);
        assert_eq!(found.len(), 5, "sft, two RMs, the distilled fine-tune and PPO");
        for (name, stage, path) in found {
            let p = plan(stage, &path, size);
            assert_eq!(p["fits"], true, "{size} pipeline stage {name}: peak {} bytes", p["device_peak_bytes"]);
        }
    }
}

#[test]
fn the_70b_pipeline_does_not_claim_one_80gb_gpu() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root.join("configs/pipeline-llama2-70b.toml")).unwrap();
    assert!(text.contains("does not fit"), "the 70B header states its hardware");
    for (name, stage, path) in stages(&root.join("configs/pipeline-llama2-70b.toml"), tmp.path()) {
        let p = plan(stage, &path, "70b");
        assert_eq!(p["fits"], false, "70B stage {name} unexpectedly fits: {p}");
    }
}
