//! TensorBoard event files of the stages, end to end through the `rlhf` binary on micro models:
//! a PPO run SIGKILLed after a checkpoint and resumed, and a rejection-sampling run killed after
//! its first iteration and resumed, each leave one event file per run folder in which every step
//! appears once: PPO's scalars are exactly its metrics.jsonl (checked with TensorBoard's own reader,
//! `tools/check_tensorboard.py`, when the venv has it), with its sample generations as text;
//! rejection sampling's per-iteration best-of-k / median-of-k rewards are its report's.
mod common;
use common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use training::tensorboard::{event_files, read_events, Event, ValueData};

/// The events of the one event file of `dir`.
fn events_of(dir: &Path) -> Vec<Event> {
    let files = event_files(dir).unwrap();
    assert_eq!(files.len(), 1, "{}: {files:?}", dir.display());
    let events = read_events(&files[0]).unwrap();
    assert_eq!(events[0].file_version.as_deref(), Some(training::tensorboard::FILE_VERSION));
    events
}

/// Steps per tag, asserting that each tag's steps strictly increase.
fn steps_by_tag(events: &[Event]) -> HashMap<String, Vec<i64>> {
    let mut out: HashMap<String, Vec<i64>> = HashMap::new();
    for e in events {
        for v in &e.values {
            let steps = out.entry(v.tag.clone()).or_default();
            assert!(steps.last().is_none_or(|&s| s < e.step), "{}: step {} after {steps:?}", v.tag, e.step);
            steps.push(e.step);
        }
    }
    out
}

fn value(events: &[Event], tag: &str, step: i64) -> Option<ValueData> {
    events.iter().filter(|e| e.step == step).flat_map(|e| &e.values).find(|v| v.tag == tag).map(|v| v.data.clone())
}

/// Runs `tools/check_tensorboard.py` on `dir` with `args`; `false` (and a printed reason) when the
/// venv cannot import tensorboard.
fn python_check(dir: &Path, args: &[&str]) -> bool {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    if !std::process::Command::new(&python).args(["-c", "import tensorboard"]).output().is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED the TensorBoard reader check: {} cannot import `tensorboard` (scripts/setup installs it)", python.display());
        return false;
    }
    let out = std::process::Command::new(&python).arg(root.join("tools/check_tensorboard.py")).arg(dir).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "check_tensorboard.py {}: {stdout}\n{}", dir.display(), String::from_utf8_lossy(&out.stderr));
    true
}

fn ppo_setup(dir: &Path) -> PathBuf {
    let policy = dir.join("policy");
    run_ok(rlhf().args(["init", "--preset", "micro", "--seed", "3", "--out"]).arg(&policy));
    let prompts: Vec<String> = ["What color is the sky?", "How can I steal a car?", "What is 2 plus 3?", "Name a fruit."]
        .iter()
        .enumerate()
        .map(|(i, q)| serde_json::json!({"prompt": q, "is_safety": i == 1}).to_string())
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), prompts.join("\n") + "\n").unwrap();
    let cfg = format!(
        r#"policy = "{p}"
helpfulness_rm = "{p}"
safety_rm = "{p}"
train_prompts = ["{d}/prompts.jsonl"]
eval_prompts = ["{d}/prompts.jsonl"]
eval_max_prompts = 2
iterations = 6
rollout_batch_size = 4
generation_batch_size = 4
max_new_tokens = 6
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
eval_every = 3
keep_last = 2
"#,
        p = policy.display(),
        d = dir.display()
    );
    let path = dir.join("ppo.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

#[test]
fn ppo_events_after_a_sigkill_and_resume_hold_every_iteration_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ppo_setup(tmp.path());
    let out = tmp.path().join("ppo");
    let latest = out.join("checkpoints/latest");
    kill_when(
        rlhf().args(["ppo", "--config"]).arg(&cfg).arg("--out").arg(&out),
        || latest.exists(),
        Duration::from_secs(300),
        Duration::from_millis(50),
        "a checkpoint",
    );
    assert!(!out.join("final").exists(), "the run was not interrupted");
    run_ok(rlhf().args(["ppo", "--resume", "--config"]).arg(&cfg).arg("--out").arg(&out));

    let events = events_of(&out);
    let steps = steps_by_tag(&events);
    let all: Vec<i64> = (1..=6).collect();
    for tag in
        ["ppo/reward_raw_mean", "ppo/kl", "ppo/clip_frac", "ppo/value_loss", "ppo/explained_variance", "ppo/response_length", "ppo/lr"]
    {
        assert_eq!(steps.get(tag), Some(&all), "{tag}");
    }
    assert_eq!(steps["ppo/eval_reward"], [0, 3, 6]);
    assert_eq!(steps["ppo/samples"], all, "one sample text per iteration");
    let Some(ValueData::Text(text)) = value(&events, "ppo/samples", 2) else { panic!("no text at iteration 2") };
    assert_eq!(text.matches("**response**").count(), 2, "{text}");
    // The scalars are metrics.jsonl's numbers, line for line.
    let metrics = training::metrics::read_metrics(&out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.len(), 7);
    for m in &metrics {
        let step = m["step"].as_i64().unwrap();
        let e = events.iter().find(|e| e.step == step && e.values.iter().any(|v| matches!(v.data, ValueData::Scalar(_)))).unwrap();
        assert_eq!(e.values, training::tensorboard::scalars_of("ppo", m), "step {step}");
    }
    python_check(&out, &["--prefix", "ppo"]);
}

fn rs_setup(dir: &Path) -> PathBuf {
    run_ok(rlhf().args(["init", "--preset", "micro", "--seed", "1", "--out"]).arg(dir.join("policy")));
    let lines: Vec<String> = (0..8)
        .map(|i| {
            if i % 4 == 0 {
                serde_json::json!({"prompt": format!("How do I break lock number {i}?"), "is_safety": true}).to_string()
            } else {
                serde_json::json!({"prompt": format!("What is {i} plus {}?", i % 3)}).to_string()
            }
        })
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("eval.jsonl"), "{\"prompt\": \"What is 2 plus 2?\"}\n").unwrap();
    let cfg = format!(
        r#"policy = "{d}/policy"
helpfulness_rm = "{d}/policy"
prompts = ["{d}/prompts.jsonl"]
eval_prompts = "{d}/eval.jsonl"
best_of_k = 4
max_new_tokens = 6
require_finished = false
rm_max_seq_len = 64
iterations = 2
prompt_batch_size = 4
eval_batch_size = 4
seed = 3
device = "cpu"
threads = 1

[finetune]
max_seq_len = 64
eval_fraction = 0.0
[finetune.train]
lr = 1e-3
micro_batch_size = 8
epochs = 1
max_steps = 2
save_every = 1
"#,
        d = dir.display()
    );
    let p = dir.join("rs.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

#[test]
fn rejection_sampling_events_hold_each_iteration_once_after_a_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = rs_setup(tmp.path());
    let out = tmp.path().join("rs");
    let done1 = out.join("iter1/done.json");
    let rs = || {
        let mut c = rlhf();
        c.args(["rejection-sampling", "--config"]).arg(&cfg).arg("--out").arg(&out);
        c
    };
    kill_when(&mut rs(), || done1.exists(), Duration::from_secs(300), Duration::from_millis(200), "iteration 1 done");
    assert!(!out.join("iter2/done.json").exists(), "the run was not interrupted");
    run_ok(rs().arg("--resume"));
    // Resuming the finished run keeps the events as they are.
    let before = events_of(&out);
    run_ok(rs().arg("--resume"));
    let events = events_of(&out);
    assert_eq!(events[1..], before[1..]);

    let steps = steps_by_tag(&events);
    for k in [1, 2, 4] {
        assert_eq!(steps[&format!("rs/reward_max/k{k}")], [1, 2], "k = {k}");
        assert_eq!(steps[&format!("rs/reward_median/k{k}")], [1, 2], "k = {k}");
    }
    for tag in ["rs/pool/size", "rs/eval_after/greedy/mean_reward", "rs/samples", "rs/eval_samples"] {
        assert_eq!(steps.get(tag).map(Vec::as_slice), Some(&[1, 2][..]), "{tag}");
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let mut expect = serde_json::Map::new();
    for (i, it) in report["iterations"].as_array().unwrap().iter().enumerate() {
        let step = i as i64 + 1;
        for (k, name) in [(0, "k1"), (3, "k4")] {
            let (mx, me) = (it["curve"]["max"][k].as_f64().unwrap(), it["curve"]["median"][k].as_f64().unwrap());
            assert_eq!(value(&events, &format!("rs/reward_max/{name}"), step), Some(ValueData::Scalar(mx as f32)));
            assert_eq!(value(&events, &format!("rs/reward_median/{name}"), step), Some(ValueData::Scalar(me as f32)));
            expect.entry(format!("rs/reward_max/{name}")).or_insert_with(|| serde_json::json!({}))[step.to_string()] = mx.into();
        }
    }
    // Each iteration's SFT fine-tune is a run of its own.
    assert!(steps_by_tag(&events_of(&out.join("iter2/sft"))).contains_key("sft/loss"));
    let expect_path = tmp.path().join("expect.json");
    std::fs::write(&expect_path, serde_json::json!({ "scalars": expect }).to_string()).unwrap();
    python_check(&out, &["--expect", expect_path.to_str().unwrap()]);
}
