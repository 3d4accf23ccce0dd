//! The run folder belongs to one run at a time: a second run into a folder in use fails at once,
//! naming the folder and the holder's pid and host; the lock of a run killed with SIGKILL is
//! taken over by the next run. Resuming a finished run keeps its outcome instead of rewriting
//! `summary.json` with empty figures.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The binary under test: `$RLHF_E2E_BIN` when set (to run these checks against another build,
/// e.g. one from before a fix), else this build's.
fn bin() -> std::process::Command {
    match std::env::var_os("RLHF_E2E_BIN") {
        Some(p) => std::process::Command::new(p),
        None => rlhf(),
    }
}

fn write_sft(dir: &Path) -> PathBuf {
    let lines: Vec<String> = (0..48)
        .map(|i| {
            let (a, b) = (i % 7, i % 5);
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("What is {a} plus {b}?")},
                {"role": "assistant", "content": format!("{a} plus {b} is {}.", a + b)}
            ]})
            .to_string()
        })
        .collect();
    let data = dir.join("sft.jsonl");
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let cfg = format!(
        "init_preset = \"micro\"\ntrain_data = [\"{}\"]\neval_fraction = 0.1\nmax_seq_len = 64\n[train]\nlr = 1e-3\n\
         micro_batch_size = 4\nepochs = 100000\nmax_steps = 6\nseed = 5\ndevice = \"cpu\"\nthreads = 1\nsave_every = 2\nkeep_last = 2\neval_every = 3\n",
        data.display()
    );
    let p = dir.join("sft.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn metric_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0)
}

#[test]
fn a_second_run_into_a_folder_in_use_fails_at_once_and_a_killed_runs_lock_is_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_sft(tmp.path());
    let out = tmp.path().join("run");
    // A long run (no checkpoint until the end), held until it has logged a step.
    let mut first = bin()
        .args(["sft", "--config"])
        .arg(&cfg)
        .args(["--set", "train.max_steps=1000000", "--set", "train.save_every=0", "--set", "train.eval_every=0", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while metric_lines(&out.join("metrics.jsonl")) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(120), "the first run never logged a step");
        assert!(first.try_wait().unwrap().is_none(), "the first run ended early");
        std::thread::sleep(Duration::from_millis(5));
    }

    let t1 = Instant::now();
    let err = run_err(bin().args(["sft", "--config"]).arg(&cfg).arg("--out").arg(&out));
    let took = t1.elapsed();
    assert!(first.try_wait().unwrap().is_none(), "the first run was disturbed");
    assert!(err.contains(&out.display().to_string()), "the error does not name the folder: {err}");
    assert!(err.contains(&format!("pid {}", first.id())), "the error does not name the holder's pid {}: {err}", first.id());
    assert!(err.contains("host"), "the error does not name the holder's host: {err}");
    assert!(took < Duration::from_secs(30), "the second run took {took:?} to give up");

    // SIGKILL: the kernel drops the lock with the process; the next run takes the folder over.
    first.kill().unwrap();
    first.wait().unwrap();
    let holder: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(".lock")).unwrap()).unwrap();
    assert_eq!(holder["pid"].as_u64(), Some(first.id() as u64), "{holder}");
    let s = json_line(&run_ok(bin().args(["sft", "--config"]).arg(&cfg).arg("--out").arg(&out)));
    assert_eq!(s["steps"].as_u64(), Some(6), "{s}");
}

#[test]
fn resuming_a_finished_run_keeps_its_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_sft(tmp.path());
    let out = tmp.path().join("run");
    let done = json_line(&run_ok(bin().args(["sft", "--config"]).arg(&cfg).arg("--out").arg(&out)));
    assert_eq!(done["steps"].as_u64(), Some(6));
    assert!(done["final_eval_loss"].is_number() && done["tokens_per_s"].as_f64().unwrap() > 0.0, "{done}");
    let summary = std::fs::read(out.join("summary.json")).unwrap();
    let metrics = std::fs::read(out.join("metrics.jsonl")).unwrap();
    let weights = std::fs::read(out.join("final/model.safetensors")).unwrap();

    let o = bin().args(["sft", "--resume", "--config"]).arg(&cfg).arg("--out").arg(&out).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("complete"), "no word that the run is complete: {stderr}");
    let again = json_line(&String::from_utf8_lossy(&o.stdout));
    assert_eq!(again, done, "resuming a finished run changed its outcome");
    assert!(std::fs::read(out.join("summary.json")).unwrap() == summary, "summary.json was rewritten");
    assert!(std::fs::read(out.join("metrics.jsonl")).unwrap() == metrics, "metrics.jsonl was rewritten");
    assert!(std::fs::read(out.join("final/model.safetensors")).unwrap() == weights);
}
