//! Exact resume: an SFT run killed with SIGKILL mid-run and resumed ends with weights
//! bit-identical to an uninterrupted run (CPU, fp32).
mod common;
use common::*;
use std::path::Path;
use std::time::Duration;

fn write_data(dir: &Path) -> std::path::PathBuf {
    let mut lines = Vec::new();
    for i in 0..48 {
        let (a, b) = (i % 7, i % 5);
        let row = serde_json::json!({"messages": [
            {"role": "user", "content": format!("What is {a} plus {b}?")},
            {"role": "assistant", "content": format!("{a} plus {b} is {}.", a + b)}
        ]});
        lines.push(row.to_string());
    }
    let p = dir.join("sft.jsonl");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

fn write_config(dir: &Path, data: &Path) -> std::path::PathBuf {
    let cfg = format!(
        r#"init_preset = "micro"
train_data = ["{}"]
eval_fraction = 0.1
max_seq_len = 64
[train]
lr = 1e-3
micro_batch_size = 4
grad_accumulation = 2
epochs = 10
max_steps = 14
seed = 5
device = "cpu"
threads = 1
save_every = 2
keep_last = 2
eval_every = 4
"#,
        data.display()
    );
    let p = dir.join("sft.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

#[test]
fn killed_and_resumed_run_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path());
    let cfg = write_config(tmp.path(), &data);
    let full = tmp.path().join("full");
    run_ok(rlhf().args(["sft", "--config"]).arg(&cfg).arg("--out").arg(&full));

    // Interrupted run: SIGKILL once a checkpoint exists, at whatever point the run has reached.
    let cut = tmp.path().join("cut");
    let latest = cut.join("checkpoints/latest");
    kill_when(
        rlhf().args(["sft", "--config"]).arg(&cfg).arg("--out").arg(&cut),
        || latest.exists(),
        Duration::from_secs(120),
        Duration::from_millis(150),
        "a checkpoint",
    );
    assert!(!cut.join("final").exists(), "the run was not interrupted");

    // Without --resume the folder is not overwritten.
    let err = run_err(rlhf().args(["sft", "--config"]).arg(&cfg).arg("--out").arg(&cut));
    assert!(err.contains("--resume"), "{err}");
    let out = run_ok(rlhf().args(["sft", "--resume", "--config"]).arg(&cfg).arg("--out").arg(&cut));
    let summary = json_line(&out);
    assert!(summary["resumed_from"].as_u64().unwrap() >= 2);
    assert_eq!(summary["steps"].as_u64(), Some(14));

    let a = std::fs::read(full.join("final/model.safetensors")).unwrap();
    let b = std::fs::read(cut.join("final/model.safetensors")).unwrap();
    assert!(a == b, "resumed weights differ from the uninterrupted run");
    // Every step is logged once.
    let steps = logged_steps(&cut.join("metrics.jsonl"));
    assert_eq!(steps, (1..=14).collect::<Vec<_>>());
    // Keep-last-2 pruning (the best-by-eval checkpoint may be kept as well).
    let n = std::fs::read_dir(cut.join("checkpoints"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
        .count();
    assert!((2..=3).contains(&n), "{n} checkpoints kept");
}

#[test]
fn sft_reduces_loss_and_rejects_bad_config() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write_data(tmp.path());
    let cfg = write_config(tmp.path(), &data);
    let out = tmp.path().join("run");
    run_ok(
        rlhf()
            .args(["sft", "--config"])
            .arg(&cfg)
            .args(["--set", "train.max_steps=40", "--set", "train.epochs=40", "--set", "train.lr=5e-3", "--out"])
            .arg(&out),
    );
    let m: Vec<serde_json::Value> =
        std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let first = m[0]["loss"].as_f64().unwrap();
    let last = m.last().unwrap()["loss"].as_f64().unwrap();
    assert!(last < first * 0.7, "loss {first} -> {last}");
    assert!(out.join("final/config.json").exists() && out.join("final/tokenizer.json").exists());

    std::fs::write(tmp.path().join("bad.toml"), "init_preset = \"micro\"\ntrain_data = []\nbogus = 1\n").unwrap();
    let err = run_err(rlhf().args(["sft", "--out", "x", "--config"]).arg(tmp.path().join("bad.toml")));
    assert!(err.contains("bad.toml") && err.contains("bogus"), "{err}");
}
