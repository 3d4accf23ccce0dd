//! Iterated rounds through the binary: a rounds block whose annotate stage waits for people
//! (`annotator = "external"`): the run stops cleanly naming the file and the import to run,
//! status says "waiting", and after `rlhf annotate import` the next run goes on from there into
//! the round's reward model and the next round.
mod common;
use common::*;

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let text = r#"
[pipeline]
device = "cpu"

[[stages]]
name = "data"
kind = "demo_data"
[stages.config]
sft = 64
pairs = 64
prompts = 40

[[stages]]
name = "sft"
kind = "sft"
[stages.config]
init_preset = "micro"
train_data = ["${data}/sft.jsonl"]
eval_fraction = 0.1
max_seq_len = 64
[stages.config.train]
lr = 5e-3
epochs = 1
max_steps = 2
micro_batch_size = 4
grad_accumulation = 1
device = "cpu"
threads = 1

[[stages]]
name = "rlhf"
kind = "rounds"
rounds = 2

[[stages.template]]
name = "pairs"
kind = "sample_pairs"
[stages.template.config]
policies = ["${sft}"]
temperatures = [0.7, 1.5]
prompts = ["${data}/prompts_train.jsonl"]
max_prompts = 12
max_new_tokens = 6
source = "round${round}"
device = "cpu"

[[stages.template]]
name = "prefs"
kind = "annotate"
[stages.template.config]
pairs = "${pairs}"
annotator = "external"
test_fraction = 0.0

[[stages.template]]
name = "mix"
kind = "mix"
[stages.template.config]
target = "helpfulness"
data = ["${data}/preference_train.jsonl", "${prefs@all}"]

[[stages.template]]
name = "rm"
kind = "reward"
[stages.template.config]
model = "${sft}"
train_data = ["${mix}"]
eval_data = ["${data}/preference_test.jsonl"]
max_seq_len = 64
[stages.template.config.train]
lr = 1e-3
epochs = 1
max_steps = 1
micro_batch_size = 4
grad_accumulation = 1
device = "cpu"
threads = 1
"#;
    let path = dir.join("rounds.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Ratings for every pair of a pair file: `a` better, slightly, both safe.
fn rate_all(pairs: &std::path::Path, csv: &std::path::Path) -> usize {
    let mut text = String::from("pair_id,choice,strength,safety\n");
    let mut n = 0;
    for line in std::fs::read_to_string(pairs).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        text += &format!("{},a,slightly better,both_safe\n", v["id"].as_str().unwrap());
        n += 1;
    }
    std::fs::write(csv, text).unwrap();
    n
}

fn summary(out: &str) -> serde_json::Value {
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

#[test]
fn an_external_annotation_stage_waits_and_the_next_run_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let cfg = config(tmp.path());
    let run = || run_ok(rlhf().args(["pipeline", "run"]).arg(&cfg).arg("--out").arg(&out));

    // 1. Stops at prefs_v1, cleanly, naming the file to fill and the import to run.
    let s = summary(&run());
    assert_eq!(s["waiting"]["stage"], "prefs_v1", "{s}");
    let msg = s["waiting"]["message"].as_str().unwrap();
    assert!(msg.contains("pairs.csv") && msg.contains("rlhf annotate import") && msg.contains("annotated.jsonl"), "{msg}");
    assert_eq!(s["stages"], 3, "data, sft and pairs_v1 are done: {s}");
    assert!(!out.join("mix_v1").exists(), "nothing after the waiting stage ran");
    let status = run_ok(rlhf().args(["pipeline", "status"]).arg(&out));
    let line = status.lines().find(|l| l.starts_with("prefs_v1")).unwrap_or_else(|| panic!("{status}"));
    assert!(line.contains("waiting") && line.contains("annotated.jsonl"), "{status}");
    let line = status.lines().find(|l| l.starts_with("pairs_v1")).unwrap();
    assert!(line.contains("rlhf#1") && line.contains("done"), "{status}");

    // 2. A second run before the ratings exist waits again (and re-samples nothing).
    let before = std::fs::metadata(out.join("pairs_v1/manifest.json")).unwrap().modified().unwrap();
    assert_eq!(summary(&run())["waiting"]["stage"], "prefs_v1");
    assert_eq!(before, std::fs::metadata(out.join("pairs_v1/manifest.json")).unwrap().modified().unwrap());

    // 3. Rate in the exported sheet's format, import, run again: round 1 finishes, round 2 waits.
    let dir = out.join("prefs_v1");
    let n = rate_all(&dir.join("pairs.jsonl"), &tmp.path().join("ratings.csv"));
    assert!(n > 0);
    run_ok(
        rlhf()
            .args(["annotate", "import", "--pairs"])
            .arg(dir.join("pairs.jsonl"))
            .arg("--ratings")
            .arg(tmp.path().join("ratings.csv"))
            .arg("--out")
            .arg(dir.join("annotated.jsonl")),
    );
    let s = summary(&run());
    assert_eq!(s["waiting"]["stage"], "prefs_v2", "{s}");
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["metrics"]["records"], n, "{m}");
    assert_eq!(m["round"]["round"], 1);
    assert!(!dir.join("waiting.json").exists());
    let prefs = std::fs::read_to_string(dir.join("prefs.jsonl")).unwrap();
    assert_eq!(prefs.lines().count(), n);
    assert!(prefs.contains("\"rating\":\"slightly_better\"") && prefs.contains("\"source\":\"round1\""), "{prefs}");
    // The round's mix holds the original comparisons and the new ones.
    let mix: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("mix_v1/manifest.json")).unwrap()).unwrap();
    assert_eq!(mix["config"]["data"].as_array().unwrap().len(), 2, "{mix}");
    assert!(out.join("rm_v1/manifest.json").exists());
    let status = run_ok(rlhf().args(["pipeline", "status"]).arg(&out));
    assert!(status.lines().any(|l| l.starts_with("prefs_v2") && l.contains("waiting")), "{status}");
}

#[test]
fn a_malformed_rating_stops_the_import_with_file_row_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let pairs = tmp.path().join("pairs.jsonl");
    std::fs::write(&pairs, "{\"id\":\"p1\",\"prompt\":\"Q?\",\"reply_a\":\"A.\",\"reply_b\":\"B.\"}\n").unwrap();
    let csv = tmp.path().join("r.csv");
    std::fs::write(&csv, "pair_id,choice,strength,safety\np1,a,much better,both_safe\n").unwrap();
    let err = run_err(
        rlhf().args(["annotate", "import", "--pairs"]).arg(&pairs).arg("--ratings").arg(&csv).arg("--out").arg(tmp.path().join("o.jsonl")),
    );
    assert!(err.contains("r.csv") && err.contains("row 1") && err.contains("field `strength`") && err.contains("much better"), "{err}");
    assert!(!tmp.path().join("o.jsonl").exists());
}
