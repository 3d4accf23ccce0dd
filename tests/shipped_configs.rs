//! Every shipped Llama-2 7B and 13B config, and every training stage of the 7B and 13B pipeline
//! configs, passes `rlhf plan` for one 80 GiB GPU (their stated hardware); every training stage of
//! the 70B pipeline (SFT, both reward models, and PPO: ZeRO-3 for the policy and value model, the
//! frozen reference and reward models sharded) passes it on 16 such GPUs, its stated hardware, and
//! none on one (the PPO figures its comments state are the planner's).
mod common;
use common::*;
use std::path::Path;

fn plan(stage: &str, config: &Path, preset: &str) -> serde_json::Value {
    plan_on(stage, config, preset, 1)
}

fn plan_on(stage: &str, config: &Path, preset: &str, world: i64) -> serde_json::Value {
    let out = run_ok(
        rlhf()
            .args(["plan", "--stage", stage, "--gpu-memory", "80GiB", "--preset", preset, "--world-size", &world.to_string(), "--config"])
            .arg(config),
    );
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
fn every_70b_training_stage_fits_16_80gb_gpus_with_zero3() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root.join("configs/pipeline-llama2-70b.toml")).unwrap();
    assert!(text.contains("16 x 80 GB GPUs") && text.contains("--world-size 16"), "the 70B header states its hardware");
    let found = stages(&root.join("configs/pipeline-llama2-70b.toml"), tmp.path());
    assert_eq!(found.iter().map(|f| f.1).collect::<Vec<_>>(), ["sft", "reward", "reward", "ppo"]);
    for (name, stage, path) in found {
        let on16 = plan_on(stage, &path, "70b", 16);
        assert_eq!(on16["fits"], true, "70B stage {name} on 16 GPUs: peak {} bytes", on16["device_peak_bytes"]);
        if stage == "ppo" {
            // The figures the stage's comments state: GB per GPU, host memory per rank.
            let gb = |v: &serde_json::Value| format!("{:.1}", v.as_f64().unwrap() / 1e9);
            let (peak, host) = (gb(&on16["device_peak_bytes"]), format!("{:.0}", on16["host_bytes"].as_f64().unwrap() / 1e9));
            assert!(text.contains(&format!("{peak} GB per GPU")), "the PPO stage's comment does not state the planned {peak} GB");
            assert!(text.contains(&format!("{host} GB of host memory per rank")), "nor {host} GB of host memory per rank");
            let models = on16["plan"]["models"].as_array().unwrap();
            assert_eq!(models.len(), 5, "policy, value, reference, two reward models");
            for m in &models[2..] {
                assert!(m["in_flight"].as_f64().unwrap() > 1e9, "{} is sharded with one layer in flight: {m}", m["role"]);
                assert!(m["weights"].as_f64().unwrap() < 10e9, "{} holds 1/16 of its layers: {m}", m["role"]);
            }
        }
        assert_eq!(on16["plan"]["models"][0]["params"].as_f64().map(|p| p > 68e9), Some(true), "{name} is planned at 70B");
        let on1 = plan_on(stage, &path, "70b", 1);
        assert_eq!(on1["fits"], false, "70B stage {name} fits one GPU: {on1}");
    }
}
