//! `train.gradient_checkpointing = true` changes memory, not results: SFT, reward-model and PPO
//! runs log the same losses (within 1e-6) and end with the same weights (within 1e-5 relative) as
//! the plain backward. `train.optimizer_offload = "cpu"` trains bit for bit as on the device.
mod common;
use common::*;
use std::path::Path;

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
        .collect()
}

fn same_run(plain: &Path, ck: &Path, what: &str) {
    let (a, b) = (losses(plain), losses(ck));
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= 1e-6, "{what}: step {} loss {x} vs {y} with checkpointing", i + 1);
    }
    let flagged = |run: &Path| std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().contains("\"gradient_checkpointing\":true");
    assert!(!flagged(plain) && flagged(ck), "{what}: the checkpointed run did not take the checkpointed path");
    let rel = max_rel_diff(&plain.join("final"), &ck.join("final"));
    assert!(rel <= 1e-5, "{what}: final weights differ by {rel:e}");
}

#[test]
fn checkpointed_sft_and_reward_runs_equal_the_plain_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let data = d.join("data");
    run_ok(rlhf().args(["data", "demo", "--sft", "40", "--pairs", "60", "--prompts", "8", "--out"]).arg(&data));
    let sft = d.join("sft.toml");
    std::fs::write(
        &sft,
        format!(
            "init_preset = \"micro\"\ntrain_data = [\"{}\"]\neval_fraction = 0.1\nmax_seq_len = 96\n[train]\nlr = 1e-3\n\
             micro_batch_size = 2\ngrad_accumulation = 2\nmax_steps = 5\nseed = 2\ndevice = \"cpu\"\nthreads = 1\n",
            data.join("sft.jsonl").display()
        ),
    )
    .unwrap();
    run_ok(rlhf().args(["sft", "--config"]).arg(&sft).arg("--out").arg(d.join("sft-plain")));
    run_ok(
        rlhf().args(["sft", "--config"]).arg(&sft).arg("--out").arg(d.join("sft-ck")).args(["--set", "train.gradient_checkpointing=true"]),
    );
    same_run(&d.join("sft-plain"), &d.join("sft-ck"), "SFT");
    // Optimizer offload: on a CPU-only machine the state is in host memory either way, and the
    // offloaded path (its own fp32 masters) trains bit for bit as the plain one.
    run_ok(
        rlhf()
            .args(["sft", "--config"])
            .arg(&sft)
            .arg("--out")
            .arg(d.join("sft-offload"))
            .args(["--set", "train.optimizer_offload=\"cpu\""]),
    );
    assert_eq!(
        std::fs::read(d.join("sft-plain/final/model.safetensors")).unwrap(),
        std::fs::read(d.join("sft-offload/final/model.safetensors")).unwrap(),
        "optimizer offload changed the SFT result"
    );

    let base = d.join("base");
    run_ok(rlhf().args(["init", "--preset", "micro", "--seed", "3", "--out"]).arg(&base));
    let rm = d.join("rm.toml");
    std::fs::write(
        &rm,
        format!(
            "model = \"{}\"\ntrain_data = [\"{}\"]\nmax_seq_len = 48\n[train]\nlr = 1e-3\nmicro_batch_size = 3\n\
             grad_accumulation = 2\nmax_steps = 5\nseed = 1\ndevice = \"cpu\"\nthreads = 1\n",
            base.display(),
            data.join("preference_train.jsonl").display()
        ),
    )
    .unwrap();
    run_ok(rlhf().args(["reward", "train", "--config"]).arg(&rm).arg("--out").arg(d.join("rm-plain")));
    run_ok(
        rlhf()
            .args(["reward", "train", "--config"])
            .arg(&rm)
            .arg("--out")
            .arg(d.join("rm-ck"))
            .args(["--set", "train.gradient_checkpointing=true"]),
    );
    same_run(&d.join("rm-plain"), &d.join("rm-ck"), "RM");
}

#[test]
fn checkpointed_ppo_equals_the_plain_one() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let policy = d.join("policy");
    run_ok(rlhf().args(["init", "--preset", "micro", "--seed", "3", "--out"]).arg(&policy));
    let prompts = ["What color is the sky?", "How can I steal a car?", "Name a fruit.", "Spell cat backwards."];
    let lines: Vec<String> = prompts.iter().map(|q| serde_json::json!({"prompt": q}).to_string()).collect();
    std::fs::write(d.join("prompts.jsonl"), lines.join("\n") + "\n").unwrap();
    let cfg = d.join("ppo.toml");
    std::fs::write(
        &cfg,
        format!(
            "policy = \"{p}\"\nhelpfulness_rm = \"{p}\"\ntrain_prompts = [\"{d}/prompts.jsonl\"]\niterations = 2\n\
             rollout_batch_size = 4\ngeneration_batch_size = 4\nmax_new_tokens = 6\nvalue_lr = 1e-3\n[train]\nlr = 1e-3\n\
             micro_batch_size = 1\ngrad_accumulation = 2\nseed = 7\ndevice = \"cpu\"\nthreads = 1\n",
            p = policy.display(),
            d = d.display()
        ),
    )
    .unwrap();
    run_ok(rlhf().args(["ppo", "--config"]).arg(&cfg).arg("--out").arg(d.join("plain")));
    run_ok(rlhf().args(["ppo", "--config"]).arg(&cfg).arg("--out").arg(d.join("ck")).args(["--set", "train.gradient_checkpointing=true"]));
    let rec = |run: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(d.join(run).join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    assert!(rec("ck").iter().any(|r| r["gradient_checkpointing"] == true), "the checkpointed run did not take the checkpointed path");
    assert!(rec("plain").iter().all(|r| r.get("gradient_checkpointing").is_none()));
    for (a, b) in rec("plain").iter().zip(rec("ck").iter()) {
        for k in ["policy_loss", "value_loss", "entropy", "reward_raw_mean"] {
            if let (Some(x), Some(y)) = (a[k].as_f64(), b[k].as_f64()) {
                assert!((x - y).abs() <= 1e-6, "step {}: {k} {x} vs {y} with checkpointing", a["step"]);
            }
        }
    }
    for m in ["final", "final_value"] {
        let rel = max_rel_diff(&d.join("plain").join(m), &d.join("ck").join(m));
        assert!(rel <= 1e-5, "{m} differs by {rel:e}");
    }
}

/// The memory switches change how a run executes, not what it computes: they stay out of the
/// run's fingerprint, so a run resumes with checkpointing or offload turned on (after running
/// out of memory, say), while a change of what it computes (the learning rate) is still refused.
#[test]
fn a_run_resumes_with_the_memory_switches_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let data = d.join("data");
    run_ok(rlhf().args(["data", "demo", "--sft", "30", "--pairs", "20", "--prompts", "8", "--out"]).arg(&data));
    let cfg = d.join("sft.toml");
    std::fs::write(
        &cfg,
        format!(
            "init_preset = \"micro\"\ntrain_data = [\"{}\"]\neval_fraction = 0.1\nmax_seq_len = 96\n[train]\nlr = 1e-3\n\
             micro_batch_size = 2\ngrad_accumulation = 2\nmax_steps = 6\nsave_every = 2\nseed = 2\ndevice = \"cpu\"\nthreads = 1\n",
            data.join("sft.jsonl").display()
        ),
    )
    .unwrap();
    let run = d.join("run");
    // Interrupted once its first checkpoint exists.
    kill_when(
        rlhf().args(["sft", "--config"]).arg(&cfg).arg("--out").arg(&run),
        || run.join("checkpoints/latest").exists(),
        std::time::Duration::from_secs(120),
        std::time::Duration::ZERO,
        "a checkpoint",
    );
    assert!(!run.join("final").exists(), "the run was not interrupted");
    let err = run_err(rlhf().args(["sft", "--resume", "--config"]).arg(&cfg).arg("--out").arg(&run).args(["--set", "train.lr=2e-3"]));
    assert!(err.contains("different config"), "{err}");
    let done = json_line(&run_ok(rlhf().args(["sft", "--resume", "--config"]).arg(&cfg).arg("--out").arg(&run).args([
        "--set",
        "train.gradient_checkpointing=true",
        "--set",
        "train.optimizer_offload=\"cpu\"",
        "--set",
        "train.zero_stage=2",
    ])));
    assert_eq!(done["steps"], 6, "{done}");
    assert!(done["resumed_from"].as_u64().is_some(), "{done}");
}

/// `rlhf plan`: bytes per device of a stage before it runs, whether they fit, the largest
/// micro-batch that does; checkpointing lowers the activations; a config whose checkpoint is not
/// here needs `--preset`.
#[test]
fn the_plan_says_what_fits() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("sft.toml");
    std::fs::write(
        &cfg,
        "init_preset = \"bench-20m\"\ntrain_data = [\"x.jsonl\"]\nmax_seq_len = 512\n[train]\nmicro_batch_size = 8\ndevice = \"cpu\"\n",
    )
    .unwrap();
    let plan = |extra: &[&str]| json_line(&run_ok(rlhf().args(["plan", "--stage", "sft", "--config"]).arg(&cfg).args(extra)));
    let roomy = plan(&["--gpu-memory", "64GiB"]);
    assert_eq!(roomy["fits"], true, "{roomy}");
    let peak = roomy["device_peak_bytes"].as_f64().unwrap();
    // Measured 2.1 GB with half the positions as targets; the plan counts every position as one.
    assert!(peak > 2e9 && peak < 3.5e9, "the 20M model at 8 x 512 on CPU: {peak:e}");
    let tight = plan(&["--gpu-memory", "1.5GB"]);
    assert_eq!(tight["fits"], false, "{tight}");
    let largest = tight["largest_micro_batch"].as_i64().unwrap();
    assert!((1..8).contains(&largest), "{tight}");
    let ck = plan(&["--gpu-memory", "1.5GB", "--set", "train.gradient_checkpointing=true"]);
    let act = |v: &serde_json::Value| v["plan"]["models"][0]["activations"].as_f64().unwrap();
    assert!(act(&ck) < act(&tight) / 3.0, "checkpointing keeps a fraction of the activations: {ck}");
    assert!(ck["largest_micro_batch"].as_i64().unwrap() >= largest, "{ck}");
    let rm = tmp.path().join("rm.toml");
    std::fs::write(&rm, format!("model = \"{}\"\ntrain_data = [\"x.jsonl\"]\n", tmp.path().join("absent").display())).unwrap();
    let err = run_err(rlhf().args(["plan", "--stage", "reward", "--config"]).arg(&rm));
    assert!(err.contains("--preset"), "{err}");
    let by_shape = json_line(&run_ok(rlhf().args(["plan", "--stage", "reward", "--preset", "7b", "--config"]).arg(&rm)));
    assert_eq!(by_shape["plan"]["models"][0]["params"], 6_607_347_712i64, "{by_shape}");
}
