//! `rlhf rejection-sampling` end to end on micro models (a random policy; a reward model built
//! from a causal LM, so its score head is random): two iterations of best-of-K, pooling and the
//! SFT fine-tune; a run killed with SIGKILL (while sampling iteration 1, while fine-tuning, while
//! sampling iteration 2, and with prompts generated and journaled but their prompt batch not yet
//! scored) resumes without losing, regenerating or repeating a sample and ends with the same
//! samples and pools, byte for byte, as an uninterrupted run; a second run into a held folder fails.
//! Decode slots (12 rows: 3 prompts) do not line up with the prompt batches (8 prompts), so
//! the engine refills across batches and prompts wait, generated, for their batch to be scored.
mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const PROMPTS: usize = 64;

fn setup(dir: &Path) -> PathBuf {
    run_ok(rlhf().args(["init", "--preset", "micro", "--seed", "1", "--out"]).arg(dir.join("policy")));
    run_ok(rlhf().args(["init", "--preset", "micro", "--seed", "2", "--out"]).arg(dir.join("rm")));
    let mut lines = Vec::new();
    for i in 0..PROMPTS {
        let row = if i % 5 == 0 {
            serde_json::json!({"prompt": format!("How do I break lock number {i}?"), "is_safety": true})
        } else {
            serde_json::json!({"prompt": format!("What is {i} plus {}?", i % 7)})
        };
        lines.push(row.to_string());
    }
    // A repeated prompt is sampled once.
    lines.push(lines[1].clone());
    std::fs::write(dir.join("prompts.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("eval.jsonl"), "{\"prompt\": \"What is 2 plus 2?\"}\n{\"prompt\": \"Name a color.\"}\n").unwrap();
    let cfg = format!(
        r#"policy = "{d}/policy"
helpfulness_rm = "{d}/rm"
safety_rm = "{d}/rm"
prompts = ["{d}/prompts.jsonl"]
eval_prompts = "{d}/eval.jsonl"
best_of_k = 4
temperatures = [1.0, 0.9]
temperature_sweep = [0.7, 1.0]
sweep_prompts = 6
max_new_tokens = 8
require_finished = false
rm_max_seq_len = 64
iterations = 2
prompt_batch_size = 8
decode_slots = 12
score_batch_size = 8
eval_batch_size = 4
eval_temperature = 0.7
eval_samples = 2
seed = 3
device = "cpu"
threads = 1

[finetune]
max_seq_len = 64
eval_fraction = 0.1
[finetune.train]
lr = 1e-3
micro_batch_size = 8
grad_accumulation = 1
epochs = 1
max_steps = 3
save_every = 1
log_every = 1
"#,
        d = dir.display()
    );
    let p = dir.join("rs.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The sample log by prompt text, without the timing fields.
fn samples_by_key(path: &Path) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    for mut v in lines(path) {
        let o = v.as_object_mut().unwrap();
        o.remove("generation_seconds");
        o.remove("scoring_seconds");
        let key = o["prompt"][0]["content"].as_str().unwrap().to_string();
        assert!(m.insert(key, v).is_none(), "a prompt is logged twice in {}", path.display());
    }
    m
}

/// The `key` field of a sample-log or journal line.
fn key_of(line: &str) -> Option<String> {
    serde_json::from_str::<Value>(line).ok()?.get("key")?.as_str().map(String::from)
}

fn rs(cfg: &Path, out: &Path) -> std::process::Command {
    let mut c = rlhf();
    c.args(["rejection-sampling", "--config"]).arg(cfg).arg("--out").arg(out);
    c
}

#[test]
fn best_of_k_pools_fine_tunes_and_resumes_after_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path());

    // Uninterrupted run.
    let full = tmp.path().join("full");
    let summary = json_line(&run_ok(&mut rs(&cfg, &full)));
    assert_eq!(summary["iterations"].as_u64(), Some(2));
    let pool = lines(&full.join("pool.jsonl"));
    assert_eq!(summary["pool_size"].as_u64(), Some(pool.len() as u64));
    assert_eq!(pool.len(), PROMPTS, "every prompt has a winner (require_finished = false)");

    // The pool holds, per prompt, the best winner of both iterations; a tie keeps iteration 1's.
    let (s1, s2) = (samples_by_key(&full.join("samples-iter1.jsonl")), samples_by_key(&full.join("samples-iter2.jsonl")));
    assert_eq!((s1.len(), s2.len()), (PROMPTS, PROMPTS));
    let best = |v: &Value| -> f64 {
        let rewards: Vec<f64> = v["samples"].as_array().unwrap().iter().map(|s| s["reward"].as_f64().unwrap()).collect();
        assert_eq!(rewards.len(), 4);
        rewards[v["best"].as_u64().unwrap() as usize]
    };
    let mut from_iter2 = 0;
    for row in &pool {
        let key = row["messages"][0]["content"].as_str().unwrap().to_string();
        let (b1, b2) = (best(&s1[&key]), best(&s2[&key]));
        assert_eq!(row["score"].as_f64().unwrap(), b1.max(b2), "{key}");
        let it = row["iteration"].as_u64().unwrap();
        assert_eq!(it, if b2 > b1 { 2 } else { 1 }, "{key}: a worse or equal new sample must not replace the old");
        from_iter2 += (it == 2) as usize;
        assert_eq!(row["temperature"].as_f64(), Some(if it == 2 { 0.9 } else { 1.0 }));
    }
    assert!(from_iter2 > 0 && from_iter2 < PROMPTS, "{from_iter2} of {PROMPTS} winners from iteration 2");

    // Reports: the best-of-k curve grows with k; the sweep has both temperatures.
    let rep: Value = serde_json::from_str(&std::fs::read_to_string(full.join("iter1/report.json")).unwrap()).unwrap();
    let max: Vec<f64> = rep["curve"]["max"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(max.len(), 4);
    assert!(max.windows(2).all(|w| w[1] >= w[0] - 1e-12), "{max:?}");
    assert_eq!(rep["sweep"].as_array().unwrap().len(), 2);
    assert!(rep["throughput"]["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(rep["eval_before"]["greedy"]["mean_reward"].is_number() && rep["eval_after"]["sampled"]["mean_reward"].is_number());
    for f in [
        "iter1/report.md",
        "iter1/best_of_k.png",
        "iter1/done.json",
        "iter2/done.json",
        "iter2/sft/final/model.safetensors",
        "report.md",
        "report.json",
    ] {
        assert!(full.join(f).exists(), "{f} missing");
    }
    assert_eq!(summary["final_model"].as_str().map(PathBuf::from), Some(full.join("iter2/sft/final")));

    // Finished iterations are skipped on a rerun.
    let again = json_line(&run_ok(rs(&cfg, &full).arg("--resume")));
    assert_eq!(again["skipped_iterations"], serde_json::json!([1, 2]));

    // Interrupted runs: SIGKILL at several points, then --resume; each ends with the uninterrupted
    // run's samples and pools, byte for byte. Scores re-read from the sample logs must round-trip
    // exactly, or a resumed pool differs in the last digit (and a tie between iterations can flip).
    let lines_in = |p: &Path| std::fs::read(p).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0);
    let has_checkpoint =
        |d: &Path| std::fs::read_dir(d).map(|r| r.flatten().any(|e| e.file_name().to_string_lossy().starts_with("step-"))).unwrap_or(false);
    type KillWhen<'a> = &'a dyn Fn(&Path) -> bool;
    let journal = |cut: &Path| cut.join("samples-iter1.jsonl.gen");
    let unscored = |cut: &Path| -> usize {
        let logged: std::collections::HashSet<String> = std::fs::read_to_string(cut.join("samples-iter1.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .filter_map(|l| key_of(&l))
            .collect();
        std::fs::read_to_string(journal(cut)).unwrap_or_default().lines().filter_map(key_of).filter(|k| !logged.contains(k)).count()
    };
    let points: [(&str, KillWhen); 4] = [
        ("iteration 1 sampling", &|cut: &Path| lines_in(&cut.join("samples-iter1.jsonl")) >= 2),
        ("iteration 1 fine-tune", &|cut: &Path| has_checkpoint(&cut.join("iter1/sft/checkpoints"))),
        ("iteration 2 sampling", &|cut: &Path| lines_in(&cut.join("samples-iter2.jsonl")) >= 2),
        ("iteration 1 generated, not scored", &|cut: &Path| lines_in(&cut.join("samples-iter1.jsonl")) >= 8 && unscored(cut) > 0),
    ];
    for (n, (what, ready)) in points.iter().enumerate() {
        let cut = tmp.path().join(format!("cut{n}"));
        // The last point needs the kill to land while generated prompts wait for scoring
        // (most of the time, not always): try again from scratch until it does.
        for attempt in 0.. {
            let _ = std::fs::remove_dir_all(&cut);
            kill_when(&mut rs(&cfg, &cut), || ready(&cut), Duration::from_secs(120), Duration::ZERO, what);
            if n != 3 || unscored(&cut) > 0 {
                break;
            }
            assert!(attempt < 5, "{what}: no kill landed with generated prompts awaiting scoring");
        }
        assert!(!cut.join("iter2/done.json").exists(), "{what}: the run finished before the kill");
        let log = cut.join(if n == 2 { "samples-iter2.jsonl" } else { "samples-iter1.jsonl" });
        let before = std::fs::read(&log).unwrap();
        // Lines logged before the kill, minus a possibly torn last line.
        let kept = before[..before.iter().rposition(|&c| c == b'\n').unwrap() + 1].to_vec();
        let journaled = std::fs::read(journal(&cut)).unwrap_or_default();
        let journaled = journaled[..journaled.iter().rposition(|&c| c == b'\n').map_or(0, |p| p + 1)].to_vec();
        if n != 1 {
            assert!(lines_in(&log) < PROMPTS, "{what}: sampling was not interrupted");
        }

        // Without --resume the folder is not touched.
        let err = run_err(&mut rs(&cfg, &cut));
        assert!(err.contains("--resume"), "{what}: {err}");
        let resumed = json_line(&run_ok(rs(&cfg, &cut).arg("--resume")));
        assert_eq!(resumed["iterations"].as_u64(), Some(2), "{what}");
        assert!(std::fs::read(&log).unwrap().starts_with(&kept), "{what}: samples logged before the kill were lost or rewritten");
        // Prompts generated before the kill were scored from the journal, not generated again.
        let after = std::fs::read_to_string(journal(&cut)).unwrap();
        assert!(after.as_bytes().starts_with(&journaled), "{what}: the generation journal was rewritten");
        let keys: Vec<String> = after.lines().filter_map(key_of).collect();
        assert_eq!(keys.len(), keys.iter().collect::<std::collections::HashSet<_>>().len(), "{what}: a prompt was generated twice");
        assert_eq!(keys.len(), PROMPTS, "{what}: every prompt of iteration 1 is journaled once");
        // Same samples (each prompt once) and the same pools as the uninterrupted run.
        assert_eq!(samples_by_key(&cut.join("samples-iter1.jsonl")), s1, "{what}: iteration 1 samples");
        assert_eq!(samples_by_key(&cut.join("samples-iter2.jsonl")), s2, "{what}: iteration 2 samples");
        for f in ["iter1/pool.jsonl", "iter2/pool.jsonl", "pool.jsonl"] {
            assert!(
                std::fs::read(cut.join(f)).unwrap() == std::fs::read(full.join(f)).unwrap(),
                "{what}: {f} differs from the uninterrupted run's"
            );
        }
    }
}

/// A second run into a folder a running rejection-sampling run holds fails at once, naming the
/// folder and the holder's pid; the holder is not disturbed.
#[test]
fn a_second_run_into_a_held_folder_fails_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path());
    let out = tmp.path().join("held");
    let mut first = rs(&cfg, &out).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while !out.join("config.json").exists() {
        assert!(t0.elapsed() < Duration::from_secs(60), "the first run never started");
        assert!(first.try_wait().unwrap().is_none(), "the first run ended before the second started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let t1 = std::time::Instant::now();
    let err = run_err(rs(&cfg, &out).arg("--resume"));
    let still_running = first.try_wait().unwrap().is_none();
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(still_running, "the first run ended before the second was refused: the check proves nothing");
    assert!(t1.elapsed() < Duration::from_secs(20), "the second run waited instead of failing at once");
    assert!(err.contains(&out.display().to_string()), "the error names the folder: {err}");
    assert!(err.contains(&first.id().to_string()), "the error names the holder's pid {}: {err}", first.id());
}

#[test]
fn bad_configs_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.toml");
    std::fs::write(&p, "policy = \"x\"\nprompts = [\"p.jsonl\"]\nbest_of_k = 4\n").unwrap();
    let err = run_err(&mut rs(&p, &tmp.path().join("o")));
    assert!(err.contains("helpfulness_rm"), "{err}");
    std::fs::write(&p, "policy = \"x\"\nhelpfulness_rm = \"h\"\nprompts = [\"p.jsonl\"]\nbest_k = 4\n").unwrap();
    let err = run_err(&mut rs(&p, &tmp.path().join("o")));
    assert!(err.contains("best_k"), "{err}");
}

/// `temperature = "auto"`: the iteration samples the sweep first, then every prompt at the sweep
/// temperature with the highest mean best-of-K reward (at K = 4 the mean over prompts of each
/// prompt's best sample, recomputed here from the sweep logs), and logs and reports its choice.
#[test]
fn auto_temperature_samples_at_the_sweeps_best_at_k() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("iterations = 2", "iterations = 1")
        .replace("temperature_sweep = [0.7, 1.0]", "temperature = \"auto\"\ntemperature_sweep = [0.4, 1.0, 2.5]");
    std::fs::write(&cfg, text).unwrap();
    let out = tmp.path().join("auto");
    let mut cmd = rs(&cfg, &out);
    let o = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let best_of_k = |t: f64| -> f64 {
        let v = lines(&out.join(format!("sweep-iter1-t{t}.jsonl")));
        assert_eq!(v.len(), 6, "T {t}: the sweep samples sweep_prompts prompts");
        v.iter()
            .map(|r| r["samples"].as_array().unwrap().iter().map(|s| s["reward"].as_f64().unwrap()).fold(f64::NEG_INFINITY, f64::max))
            .sum::<f64>()
            / v.len() as f64
    };
    let temps = [0.4, 1.0, 2.5];
    let values: Vec<f64> = temps.iter().map(|&t| best_of_k(t)).collect();
    let mut want = 0;
    for i in 1..temps.len() {
        if values[i] > values[want] + 1e-12 {
            want = i;
        }
    }
    let chosen = temps[want];
    let rep: Value = serde_json::from_str(&std::fs::read_to_string(out.join("iter1/report.json")).unwrap()).unwrap();
    assert_eq!(rep["temperature"].as_f64(), Some(chosen), "best-of-4 per temperature {values:?}");
    assert_eq!(rep["sweep"].as_array().unwrap().len(), 3);
    let samples = lines(&out.join("samples-iter1.jsonl"));
    assert_eq!(samples.len(), PROMPTS);
    assert!(samples.iter().all(|r| r["temperature"].as_f64() == Some(chosen)), "every prompt is sampled at T = {chosen}");
    assert!(lines(&out.join("pool.jsonl")).iter().all(|r| r["temperature"].as_f64() == Some(chosen)));
    assert!(stderr.contains(&format!("chose T = {chosen}")), "the choice is logged: {stderr}");
}
