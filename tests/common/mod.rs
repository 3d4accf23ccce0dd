//! Helpers for the end-to-end tests that drive the `rlhf` binary.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn rlhf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rlhf"))
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Copies a fixture folder into `dst`.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "command failed: {}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail cleanly: non-zero exit, an `error:` line, no panic or backtrace.
pub fn run_err(cmd: &mut Command) -> String {
    let out: Output = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(stderr.contains("error:"), "no error line: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("internal error") && !stderr.contains("RUST_BACKTRACE"), "panic: {stderr}");
    stderr
}

pub fn json_line(s: &str) -> serde_json::Value {
    let line = s.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or_else(|| panic!("no JSON line in {s:?}"));
    serde_json::from_str(line).unwrap()
}

/// Starts `cmd` (output discarded) and kills it with SIGKILL `grace` after `ready()` first holds.
/// Fails if the process ends before that or `ready` does not hold within `limit`; `what` names
/// the awaited state in that message.
pub fn kill_when(cmd: &mut Command, ready: impl Fn() -> bool, limit: std::time::Duration, grace: std::time::Duration, what: &str) {
    use std::time::{Duration, Instant};
    let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while !ready() {
        assert!(t0.elapsed() < limit, "never reached: {what}");
        assert!(child.try_wait().unwrap().is_none(), "the run finished before it could be killed");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(grace);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// The `step` of every line of a run's `metrics.jsonl`, in order.
pub fn logged_steps(metrics: &Path) -> Vec<u64> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect()
}

/// The tensors of `model_dir/model.safetensors`, sorted by name.
pub fn model_tensors(model_dir: &Path) -> Vec<(String, tch::Tensor)> {
    let mut t = tch::Tensor::read_safetensors(model_dir.join("model.safetensors")).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

/// The largest difference of a tensor of model `a` from model `b`'s, relative to the tensor's
/// largest magnitude.
pub fn max_rel_diff(a: &Path, b: &Path) -> f64 {
    let (ta, tb) = (model_tensors(a), model_tensors(b));
    assert_eq!(ta.len(), tb.len());
    ta.iter()
        .zip(&tb)
        .map(|((na, x), (nb, y))| {
            assert_eq!(na, nb);
            f64::try_from((x - y).abs().max()).unwrap() / f64::try_from(x.abs().max()).unwrap().max(1e-12)
        })
        .fold(0.0, f64::max)
}
