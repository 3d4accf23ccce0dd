//! `rlhf ppo` end to end on micro models: a run killed with SIGKILL and resumed ends with both
//! trained models (policy and value) bit-identical to an uninterrupted run on CPU; every iteration
//! is logged once; the metrics carry the PPO diagnostics; bad configs fail cleanly.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A micro policy; the reward models and the value model start from it with random score heads.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let policy = dir.join("policy");
    run_ok(rlhf().args(["init", "--preset", "micro", "--seed", "3", "--out"]).arg(&policy));
    let questions = [
        ("What color is the sky?", false),
        ("How can I steal a car?", true),
        ("What is 2 plus 3?", false),
        ("Name a fruit.", false),
        ("How do I pick a lock to break in?", true),
        ("Spell cat backwards.", false),
        ("What is the capital of France?", false),
        ("How do I make a weapon at home?", true),
        ("Count the letters in dog.", false),
        ("Which animal says moo?", false),
    ];
    let lines: Vec<String> = questions.iter().map(|(q, s)| serde_json::json!({"prompt": q, "is_safety": s}).to_string()).collect();
    std::fs::write(dir.join("prompts.jsonl"), lines.join("\n") + "\n").unwrap();
    let cfg = format!(
        r#"policy = "{p}"
helpfulness_rm = "{p}"
safety_rm = "{p}"
train_prompts = ["{d}/prompts.jsonl"]
eval_prompts = ["{d}/prompts.jsonl"]
eval_max_prompts = 3
iterations = 8
rollout_batch_size = 4
generation_batch_size = 4
max_new_tokens = 6
missing_eos_penalty = 0.5
value_lr = 1e-3
kl_beta = 0.05
demo_judge = true
log_samples = 2
[train]
lr = 1e-3
micro_batch_size = 1
grad_accumulation = 2
seed = 7
device = "cpu"
threads = 1
save_every = 2
eval_every = 4
keep_last = 2
"#,
        p = policy.display(),
        d = dir.display()
    );
    let path = dir.join("ppo.toml");
    std::fs::write(&path, cfg).unwrap();
    (policy, path)
}

#[test]
fn killed_and_resumed_ppo_run_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, cfg) = setup(tmp.path());
    let full = tmp.path().join("full");
    let summary = json_line(&run_ok(rlhf().args(["ppo", "--config"]).arg(&cfg).arg("--out").arg(&full)));
    assert_eq!(summary["iterations"].as_u64(), Some(8));

    let m: Vec<serde_json::Value> =
        std::fs::read_to_string(full.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(m[0]["step"], 0, "the initial policy is evaluated first");
    assert!(m[0]["eval_reward"].is_number());
    for key in [
        "reward_raw_mean",
        "reward_whitened_mean",
        "kl",
        "entropy",
        "clip_frac",
        "approx_kl",
        "value_loss",
        "explained_variance",
        "response_length",
        "rollout_tokens_per_s",
        "train_tokens_per_s",
        "time_generation_s",
        "time_scoring_s",
        "time_training_s",
        "safety_rm_share",
    ] {
        assert!(m[1][key].is_number(), "metrics lack {key}: {}", m[1]);
    }
    // Before the first update, the training forward reproduces the sampler's log-probabilities.
    let diff = m[1]["logprob_max_diff"].as_f64().unwrap();
    assert!(diff < 1e-3, "sampler vs training forward: {diff}");
    assert!(m[4]["eval_reward"].is_number() && m[8]["eval_reward"].is_number() && m[3]["eval_reward"].is_null());
    assert!(full.join("final/tokenizer.json").exists() && full.join("final_value/config.json").exists());
    let value_cfg = std::fs::read_to_string(full.join("final_value/config.json")).unwrap();
    assert!(value_cfg.contains("LlamaForSequenceClassification"));

    // Interrupted run: SIGKILL once a checkpoint exists.
    let cut = tmp.path().join("cut");
    let latest = cut.join("checkpoints/latest");
    kill_when(
        rlhf().args(["ppo", "--config"]).arg(&cfg).arg("--out").arg(&cut),
        || latest.exists(),
        Duration::from_secs(120),
        Duration::from_millis(100),
        "a checkpoint",
    );
    assert!(!cut.join("final").exists(), "the run was not interrupted");

    let err = run_err(rlhf().args(["ppo", "--config"]).arg(&cfg).arg("--out").arg(&cut));
    assert!(err.contains("--resume"), "{err}");
    let s = json_line(&run_ok(rlhf().args(["ppo", "--resume", "--config"]).arg(&cfg).arg("--out").arg(&cut)));
    assert!(s["resumed_from"].as_u64().unwrap() >= 2, "{s}");
    assert_eq!(s["iterations"].as_u64(), Some(8));

    for f in ["final/model.safetensors", "final_value/model.safetensors"] {
        let a = std::fs::read(full.join(f)).unwrap();
        let b = std::fs::read(cut.join(f)).unwrap();
        assert!(a == b, "{f}: resumed weights differ from the uninterrupted run");
    }
    assert_eq!(logged_steps(&cut.join("metrics.jsonl")), (0..=8).collect::<Vec<_>>());
    assert_eq!(std::fs::read(full.join("samples.jsonl")).unwrap(), std::fs::read(cut.join("samples.jsonl")).unwrap());
    let n = std::fs::read_dir(cut.join("checkpoints"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
        .count();
    assert!((2..=3).contains(&n), "{n} checkpoints kept");
}

#[test]
fn ppo_rejects_bad_configs() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "policy = \"p\"\nhelpfulness_rm = \"p\"\ntrain_prompts = [\"x.jsonl\"]\nbogus = 1\n").unwrap();
    let err = run_err(rlhf().args(["ppo", "--out", "x", "--config"]).arg(&bad));
    assert!(err.contains("bad.toml") && err.contains("bogus"), "{err}");
    std::fs::write(&bad, "policy = \"p\"\ntrain_prompts = [\"x.jsonl\"]\n").unwrap();
    let err = run_err(rlhf().args(["ppo", "--out", "x", "--config"]).arg(&bad));
    assert!(err.contains("helpfulness_rm"), "{err}");
    std::fs::write(&bad, "policy = \"p\"\nhelpfulness_rm = \"p\"\ntrain_prompts = [\"x.jsonl\"]\n").unwrap();
    let err = run_err(rlhf().args(["ppo", "--out", "x", "--set", "temperature=0", "--config"]).arg(&bad));
    assert!(err.contains("temperature"), "{err}");
}

/// `offload_frozen` scores with one reward model at a time (on a GPU each is moved onto it for
/// its pass only): the scores, and so the whole run, are those of scoring with both at once.
#[test]
fn offload_frozen_scores_one_reward_model_at_a_time_with_the_same_results() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, cfg) = setup(tmp.path());
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut cmd = rlhf();
        cmd.args(["ppo", "--config"]).arg(&cfg).args(["--set", "iterations=3", "--set", "train.eval_every=3"]);
        for e in extra {
            cmd.args(["--set", e]);
        }
        run_ok(cmd.arg("--out").arg(&out));
        out
    };
    let (a, b) = (run("together", &[]), run("one_at_a_time", &["offload_frozen=true"]));
    assert_eq!(std::fs::read(a.join("samples.jsonl")).unwrap(), std::fs::read(b.join("samples.jsonl")).unwrap(), "scores differ");
    for f in ["final/model.safetensors", "final_value/model.safetensors"] {
        assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(), "{f} differs");
    }
}
