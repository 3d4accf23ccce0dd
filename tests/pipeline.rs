//! The pipeline end to end through the binary on the smoke config: killed during a stage,
//! resumed, report checked, and an unchanged re-run skips every stage.
mod common;
use common::*;
use std::time::Duration;

#[test]
fn smoke_pipeline_killed_resumed_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/smoke.toml");
    // Kill it inside the SFT stage, once that stage has a checkpoint.
    let latest = out.join("sft/checkpoints/latest");
    kill_when(
        rlhf().args(["pipeline", "run"]).arg(&config).arg("--out").arg(&out),
        || latest.exists(),
        Duration::from_secs(120),
        Duration::ZERO,
        "an SFT checkpoint",
    );
    assert!(out.join("data/manifest.json").exists(), "the finished data stage keeps its manifest");
    assert!(!out.join("sft/manifest.json").exists(), "the killed stage has no manifest");
    let status = run_ok(rlhf().args(["pipeline", "status"]).arg(&out));
    assert!(status.contains("interrupted"), "{status}");

    run_ok(rlhf().args(["pipeline", "run"]).arg(&config).arg("--out").arg(&out));
    let sft_summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("sft/summary.json")).unwrap()).unwrap();
    assert!(sft_summary["resumed_from"].as_u64().is_some(), "SFT did not resume from its checkpoint: {sft_summary}");

    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let stages = report["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["data", "sft", "rm_helpfulness"]);
    let gt = &stages[1]["ground_truth"];
    for k in ["helpful", "safe", "false_refusal"] {
        let v = gt[k].as_f64().unwrap_or_else(|| panic!("ground_truth.{k} missing: {gt}"));
        assert!((0.0..=1.0).contains(&v));
        let g = gt["greedy"][k].as_f64().unwrap_or_else(|| panic!("ground_truth.greedy.{k} missing: {gt}"));
        assert!((0.0..=1.0).contains(&g));
    }
    // The sampled rates pool `samples_per_prompt` replies of every held-out prompt.
    let per = gt["samples_per_prompt"].as_u64().expect("samples_per_prompt");
    assert!(per > 1);
    assert_eq!(gt["n"].as_u64().unwrap(), per * gt["greedy"]["n"].as_u64().unwrap(), "{gt}");
    for i in [1, 2] {
        let t = stages[i]["tokens_per_s"].as_str().unwrap_or_else(|| panic!("no tokens/s for stage {i}: {}", stages[i]));
        assert!(t.ends_with(" train") && t.split(' ').next().unwrap().parse::<f64>().unwrap() > 0.0, "{t}");
    }
    let acc = stages[2]["metrics"]["eval"]["overall"]["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert!(out.join("report.md").exists() && out.join("ground_truth.png").exists() && out.join("sft/curves.png").exists());

    // Nothing changed: every stage is skipped (no stage folder is touched).
    let before = std::fs::metadata(out.join("sft/manifest.json")).unwrap().modified().unwrap();
    run_ok(rlhf().args(["pipeline", "run"]).arg(&config).arg("--out").arg(&out));
    assert_eq!(before, std::fs::metadata(out.join("sft/manifest.json")).unwrap().modified().unwrap());
    // A changed downstream config re-runs only that stage.
    run_ok(
        rlhf().args(["pipeline", "run"]).arg(&config).arg("--out").arg(&out).args(["--set", "stages.rm_helpfulness.config.train.lr=2e-3"]),
    );
    assert_eq!(before, std::fs::metadata(out.join("sft/manifest.json")).unwrap().modified().unwrap());
}

/// A tiny pipeline (every stage kind the demo's first half uses, with `${stage}` references and a
/// ground-truth evaluation), for the tests that need a finished or running pipeline quickly.
/// `sft_steps` sets how long its SFT stage trains (epochs and optimizer steps).
fn tiny_config(dir: &std::path::Path, sft_steps: u64) -> std::path::PathBuf {
    let text = format!(
        r#"[pipeline]
eval_prompts = "${{data}}/prompts_test.jsonl"
eval_max_new_tokens = 4
eval_temperature = 0.0
device = "cpu"

[[stages]]
name = "data"
kind = "demo_data"
[stages.config]
sft = 64
pairs = 64
prompts = 20

[[stages]]
name = "mix"
kind = "mix"
[stages.config]
target = "helpfulness"
data = ["${{data}}/preference_train.jsonl"]

[[stages]]
name = "sft"
kind = "sft"
[stages.config]
init_preset = "micro"
train_data = ["${{data}}/sft.jsonl"]
eval_fraction = 0.1
max_seq_len = 64
[stages.config.train]
lr = 5e-3
epochs = {sft_steps}
max_steps = {sft_steps}
micro_batch_size = 4
grad_accumulation = 1
device = "cpu"
threads = 1
save_every = 1

[[stages]]
name = "rm"
kind = "reward"
[stages.config]
model = "${{sft}}"
train_data = ["${{mix}}"]
eval_data = ["${{data}}/preference_test.jsonl"]
max_seq_len = 64
[stages.config.train]
lr = 1e-3
epochs = 1
max_steps = 2
micro_batch_size = 4
grad_accumulation = 1
device = "cpu"
threads = 1
"#
    );
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Copies a folder tree (files and folders only).
fn copy_tree(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Every file named `name` under `dir`.
fn files_named(dir: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_named(&p, name));
        } else if p.file_name().is_some_and(|n| n == name) {
            out.push(p);
        }
    }
    out
}

/// The whole pipeline is resolved and validated before the first stage runs: a bad later stage,
/// a reference to an undefined, later or the same stage, and an unknown `${stage.attr}` all fail
/// at once with an error naming the stage, and no stage folder is created.
#[test]
fn bad_later_stage_fails_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_config(tmp.path(), 2);
    let cases: &[(&str, &[&str])] = &[
        ("stages.rm.config.bogus_key=1", &["rm", "bogus_key"]),
        ("stages.rm.config.train.lr=-1", &["rm", "lr"]),
        ("stages.mix.config.data=[\"${data.anything}/preference_train.jsonl\"]", &["mix", "${data.anything}"]),
        ("stages.mix.config.data=[\"${nowhere}/x.jsonl\"]", &["mix", "nowhere"]),
        ("stages.mix.config.data=[\"${rm}/x.jsonl\"]", &["mix", "rm"]),
        ("stages.mix.config.data=[\"${mix}/x.jsonl\"]", &["mix", "itself"]),
        ("pipeline.eval_prompts=${rm}/prompts.jsonl", &["eval_prompts", "rm"]),
    ];
    for (i, (set, words)) in cases.iter().enumerate() {
        let out = tmp.path().join(format!("run{i}"));
        let err = run_err(rlhf().args(["pipeline", "run"]).arg(&config).arg("--out").arg(&out).args(["--set", set]));
        for w in *words {
            assert!(err.contains(w), "--set {set}: the error does not name {w:?}: {err}");
        }
        assert!(!out.join("data").exists(), "--set {set}: the data stage ran before the error: {err}");
    }
}

/// Two pipelines into the same folder: the second (here with a changed first stage, which it
/// would re-run) fails at once, naming the folder and the first one's pid and host, and touches
/// nothing of the first's.
#[test]
fn second_pipeline_into_the_same_folder_fails_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_config(tmp.path(), 100_000);
    let out = tmp.path().join("run");
    let mut first = rlhf()
        .args(["pipeline", "run"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !out.join("sft/.fingerprint").exists() {
        assert!(t0.elapsed() < Duration::from_secs(120), "the first run never reached its SFT stage");
        assert!(first.try_wait().unwrap().is_none(), "the first run ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let data_manifest = out.join("data/manifest.json");
    let data_written = std::fs::metadata(&data_manifest).unwrap().modified().unwrap();
    let t1 = std::time::Instant::now();
    let mut second = rlhf()
        .args(["pipeline", "run"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .args(["--set", "stages.data.config.seed=1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A second run that does not stop by itself is killed (it would train on).
    while second.try_wait().unwrap().is_none() && t1.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let waited = t1.elapsed();
    if second.try_wait().unwrap().is_none() {
        second.kill().unwrap();
    }
    let second = second.wait_with_output().unwrap();
    let alive = first.try_wait().unwrap().is_none();
    first.kill().unwrap();
    first.wait().unwrap();
    let err = String::from_utf8_lossy(&second.stderr).to_string();
    assert!(alive, "the first run ended while the second ran");
    assert!(!second.status.success(), "the second run into the same folder succeeded: {err}");
    assert!(waited < Duration::from_secs(20), "the second run did not fail at once ({waited:?}): {err}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    for w in [out.display().to_string(), first.id().to_string(), host] {
        assert!(err.contains(&w), "the error does not name {w:?}: {err}");
    }
    assert_eq!(data_written, std::fs::metadata(&data_manifest).unwrap().modified().unwrap(), "the second run re-ran the data stage: {err}");
}

/// A copied pipeline folder is a pipeline of its own: its manifests and report name paths
/// relative to the run folder, so a re-run in the copy (with the original deleted) skips every
/// stage and nothing in it points back at the original.
#[test]
fn copied_pipeline_folder_is_up_to_date_and_self_contained() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_config(tmp.path(), 2);
    let (orig, copy) = (tmp.path().join("orig"), tmp.path().join("copy"));
    run_ok(rlhf().args(["pipeline", "run"]).arg(&config).arg("--out").arg(&orig));
    copy_tree(&orig, &copy);
    std::fs::remove_dir_all(&orig).unwrap();
    let manifests: Vec<_> = ["data", "mix", "sft", "rm"].iter().map(|st| copy.join(st).join("manifest.json")).collect();
    let mtimes: Vec<_> = manifests.iter().map(|p| std::fs::metadata(p).unwrap().modified().unwrap()).collect();
    run_ok(rlhf().args(["pipeline", "run"]).arg(&config).arg("--out").arg(&copy));
    for (p, t) in manifests.iter().zip(&mtimes) {
        assert_eq!(*t, std::fs::metadata(p).unwrap().modified().unwrap(), "{} was re-run in the copy", p.display());
    }
    let orig_name = orig.display().to_string();
    for p in files_named(&copy, "manifest.json").iter().chain([&copy.join("report.json")]) {
        let text = std::fs::read_to_string(p).unwrap();
        assert!(!text.contains(&orig_name), "{} names the original folder: {text}", p.display());
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(copy.join("report.json")).unwrap()).unwrap();
    for st in report["stages"].as_array().unwrap() {
        let output = std::path::Path::new(st["output"].as_str().unwrap());
        assert!(output.is_relative() && copy.join(output).exists(), "stage output {output:?} is not inside the copy");
    }
    let status = run_ok(rlhf().args(["pipeline", "status"]).arg(&copy));
    assert_eq!(status.matches(" done ").count(), 4, "{status}");
}

/// `eval_in_background`: each policy stage's ground-truth evaluation runs in a child process
/// while the next stages run, with the same figures as in the pipeline's own process; a run that
/// stopped before merging a result takes the child's result file, or evaluates again without it.
#[test]
fn background_evaluation_gives_the_same_ground_truth_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_config(tmp.path(), 2);
    let sampled = ["--set", "pipeline.eval_temperature=1.0", "--set", "pipeline.eval_samples=3"];
    let ground_truth = |out: &std::path::Path| -> serde_json::Value {
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
        report["stages"].as_array().unwrap().iter().map(|s| s["ground_truth"].clone()).collect()
    };
    let (inline, bg) = (tmp.path().join("inline"), tmp.path().join("bg"));
    run_ok(rlhf().args(["pipeline", "run"]).arg(&config).arg("--out").arg(&inline).args(sampled));
    let run_in_background = || {
        run_ok(
            rlhf()
                .args(["pipeline", "run"])
                .arg(&config)
                .arg("--out")
                .arg(&bg)
                .args(sampled)
                .args(["--set", "pipeline.eval_in_background=true"]),
        )
    };
    run_in_background();
    let want = ground_truth(&inline);
    assert!(want[2]["helpful"].is_f64() && want[2]["greedy"]["helpful"].is_f64(), "{want}");
    assert_eq!(ground_truth(&bg), want);
    assert!(bg.join("sft/ground_truth_job.json").exists() && bg.join("sft/ground_truth.json").exists());
    let sft_manifest = bg.join("sft/manifest.json");
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&sft_manifest).unwrap()).unwrap();
    assert_eq!(manifest["ground_truth"], want[2]);
    // Stopped before the merge: the manifest has no ground truth; the child's result is taken.
    let unmerged = |m: &serde_json::Value| {
        let mut m = m.clone();
        m["ground_truth"] = serde_json::Value::Null;
        std::fs::write(&sft_manifest, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    };
    for rerun_without_result in [false, true] {
        unmerged(&manifest);
        if rerun_without_result {
            std::fs::remove_file(bg.join("sft/ground_truth.json")).unwrap();
        }
        let log = run_in_background();
        assert_eq!(ground_truth(&bg), want, "re-run without the result file: {rerun_without_result}: {log}");
        assert!(bg.join("sft/ground_truth.json").exists());
    }
    // The inline mode also fills a missing ground truth of an up-to-date stage.
    unmerged(&manifest);
    std::fs::remove_file(bg.join("sft/ground_truth.json")).unwrap();
    run_ok(rlhf().args(["pipeline", "run"]).arg(&config).arg("--out").arg(&bg).args(sampled));
    assert_eq!(ground_truth(&bg), want);
}
