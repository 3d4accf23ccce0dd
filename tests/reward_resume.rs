//! Exact resume of `rlhf reward train`: a run killed with SIGKILL mid-run and resumed ends with
//! weights bit-identical to an uninterrupted run (CPU, fp32), also when the newest checkpoint was
//! cut short (the resume falls back to the previous one, saying which) and when the kill left
//! temporary folders behind (removed on resume). Resuming the finished run keeps its outcome.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The binary under test: `$RLHF_E2E_BIN` when set (to run these checks against another build,
/// e.g. one from before a fix), else this build's.
fn bin() -> std::process::Command {
    match std::env::var_os("RLHF_E2E_BIN") {
        Some(p) => std::process::Command::new(p),
        None => rlhf(),
    }
}

/// A micro model and demo comparisons; returns the config.
fn setup(dir: &Path) -> PathBuf {
    let model = dir.join("base");
    run_ok(bin().args(["init", "--preset", "micro", "--seed", "3", "--out"]).arg(&model));
    let data = dir.join("data");
    run_ok(bin().args(["data", "demo", "--sft", "8", "--pairs", "120", "--prompts", "8", "--out"]).arg(&data));
    let cfg = format!(
        "model = \"{}\"\ntrain_data = [\"{}\"]\neval_data = [\"{}\"]\nmargin = \"small\"\nmax_seq_len = 48\n\
         [train]\nlr = 1e-3\nmicro_batch_size = 4\ngrad_accumulation = 2\nepochs = 100\nmax_steps = 24\nseed = 1\n\
         device = \"cpu\"\nthreads = 1\nsave_every = 2\nkeep_last = 2\neval_every = 4\n",
        model.display(),
        data.join("preference_train.jsonl").display(),
        data.join("preference_test.jsonl").display()
    );
    let p = dir.join("rm.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn complete_checkpoints(run: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("trainer_state.json").exists())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with("step-"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn killed_and_resumed_reward_run_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path());
    let full = tmp.path().join("full");
    let done = json_line(&run_ok(bin().args(["reward", "train", "--config"]).arg(&cfg).arg("--out").arg(&full)));
    assert_eq!(done["steps"].as_u64(), Some(24), "{done}");

    // Interrupted run: SIGKILL once two checkpoints exist, at whatever point the run has reached.
    let cut = tmp.path().join("cut");
    kill_when(
        bin().args(["reward", "train", "--config"]).arg(&cfg).arg("--out").arg(&cut),
        || complete_checkpoints(&cut).len() >= 2,
        Duration::from_secs(120),
        Duration::from_millis(50),
        "two checkpoints",
    );
    assert!(!cut.join("final").exists(), "the run was not interrupted");

    // What a kill or a full disk leaves: temporary folders of other processes.
    let stale = [cut.join("checkpoints/.step-00000099.tmp-999999"), cut.join(".final.tmp-999998"), cut.join(".best.tmp-999997")];
    for d in &stale {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("model.safetensors"), vec![0u8; 1024]).unwrap();
    }
    // The newest checkpoint cut short (as by a full disk): the resume falls back to the one before.
    let latest = std::fs::read_to_string(cut.join("checkpoints/latest")).unwrap().trim().to_string();
    let weights = cut.join("checkpoints").join(&latest).join("model/model.safetensors");
    let len = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&weights).unwrap().set_len(len / 2).unwrap();

    let o = bin().args(["reward", "train", "--resume", "--config"]).arg(&cfg).arg("--out").arg(&cut).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "the resume failed: {stderr}");
    assert!(stderr.contains(&latest), "no warning naming the bad checkpoint {latest}: {stderr}");
    let resumed = json_line(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(resumed["steps"].as_u64(), Some(24));
    let from = resumed["resumed_from"].as_u64().unwrap();
    assert!(from >= 2 && format!("step-{from:08}") < latest, "resumed from step {from}, not from before {latest}");
    for d in &stale {
        assert!(!d.exists(), "{} was left behind", d.display());
    }

    let a = std::fs::read(full.join("final/model.safetensors")).unwrap();
    let b = std::fs::read(cut.join("final/model.safetensors")).unwrap();
    assert!(a == b, "resumed weights differ from the uninterrupted run");
    let steps = logged_steps(&cut.join("metrics.jsonl"));
    assert_eq!(steps, (1..=24).collect::<Vec<_>>(), "every step is logged once");

    // The finished run resumed again: its outcome is kept, not rewritten with empty figures.
    let summary = std::fs::read(cut.join("summary.json")).expect("the run writes summary.json");
    let o = bin().args(["reward", "train", "--resume", "--config"]).arg(&cfg).arg("--out").arg(&cut).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("complete"), "no word that the run is complete: {stderr}");
    assert_eq!(json_line(&String::from_utf8_lossy(&o.stdout)), resumed);
    assert!(std::fs::read(cut.join("summary.json")).unwrap() == summary, "summary.json was rewritten");
}
