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

/// A round with a fresh batch and the reward model retrained from the one before: the pipeline
/// evaluates the model before the round on the batch's held-out comparisons (`eval_before` of the
/// annotate stage), and the report sets it beside the retrained one, with the counts of the
/// held-out pairs sampled and left unrated. Every figure is checked against `rlhf reward eval`
/// on the same file, an independent path through the CLI.
#[test]
fn the_report_shows_each_round_s_reward_models_before_and_after_on_its_fresh_comparisons() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let text = r#"
[pipeline]
device = "cpu"

[[stages]]
name = "data"
kind = "demo_data"
[stages.config]
sft = 64
pairs = 64
prompts = 60

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
name = "rm"
kind = "reward"
[stages.config]
model = "${sft}"
train_data = ["${data}/preference_train.jsonl"]
max_seq_len = 64
[stages.config.train]
lr = 1e-3
epochs = 1
max_steps = 2
micro_batch_size = 4
grad_accumulation = 1
device = "cpu"
threads = 1

[[stages]]
name = "rlhf"
kind = "rounds"
rounds = 1

[[stages.template]]
name = "pairs"
kind = "sample_pairs"
[stages.template.config]
policies = ["${sft}"]
temperatures = [0.7, 1.5]
common_seeds = false
prompts = ["${data}/prompts_train.jsonl"]
pairs_per_prompt = 2
max_new_tokens = 6
source = "round${round}"
device = "cpu"

[[stages.template]]
name = "prefs"
kind = "annotate"
[stages.template.config]
pairs = "${pairs}"
annotator = "external"
test_fraction = 0.5
eval_reward_models = { helpfulness = "${rm}" }
device = "cpu"

[[stages.template]]
name = "mix"
kind = "mix"
[stages.template.config]
target = "helpfulness"
data = ["${prefs@all}"]
replay = ["${data}/preference_train.jsonl"]
replay_records = 20

[[stages.template]]
name = "rm"
kind = "reward"
[stages.template.config]
model = "${rm@prev}"
train_data = ["${mix}"]
eval_data = ["${data}/preference_test.jsonl", "${prefs@all.dir}/prefs_test.jsonl"]
max_seq_len = 64
[stages.template.config.train]
lr = 1e-2
epochs = 2
micro_batch_size = 4
grad_accumulation = 1
device = "cpu"
threads = 1
"#;
    let cfg = tmp.path().join("fresh.toml");
    std::fs::write(&cfg, text).unwrap();
    let run = || summary(&run_ok(rlhf().args(["pipeline", "run"]).arg(&cfg).arg("--out").arg(&out)));
    assert_eq!(run()["waiting"]["stage"], "prefs_v1");

    // Rate all pairs but the first three (left unrated): `a` when its reply is the shorter one.
    let dir = out.join("prefs_v1");
    let pairs: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.join("pairs.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(pairs.len() > 20, "{} pairs", pairs.len());
    let mut csv = String::from("pair_id,choice,strength,safety\n");
    for p in &pairs[3..] {
        let a_shorter = p["reply_a"].as_str().unwrap().len() <= p["reply_b"].as_str().unwrap().len();
        csv += &format!("{},{},better,both_safe\n", p["id"].as_str().unwrap(), if a_shorter { "a" } else { "b" });
    }
    std::fs::write(tmp.path().join("r.csv"), csv).unwrap();
    run_ok(
        rlhf()
            .args(["annotate", "import", "--pairs"])
            .arg(dir.join("pairs.jsonl"))
            .arg("--ratings")
            .arg(tmp.path().join("r.csv"))
            .arg("--out")
            .arg(dir.join("annotated.jsonl")),
    );
    let s = run();
    assert!(s["waiting"].is_null(), "{s}");

    // The held-out split, recomputed from the prompts: sampled, rated, unrated.
    let held_out = |p: &serde_json::Value| {
        let prompt: Vec<llama::Message> = serde_json::from_value(p["prompt"].clone()).unwrap();
        pipeline::pairs::held_out(&prompt, 0.5)
    };
    let test_sampled = pairs.iter().filter(|p| held_out(p)).count();
    let unrated = pairs[..3].iter().filter(|p| held_out(p)).count();
    let test_file = dir.join("prefs_test.jsonl");
    let n_test = std::fs::read_to_string(&test_file).unwrap().lines().count();
    assert_eq!(n_test, test_sampled - unrated);
    assert!(n_test >= 5, "{n_test} held-out comparisons");

    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let round = &report["rounds"][0];
    assert_eq!(round["fresh"]["test"], n_test, "{round}");
    assert_eq!(round["fresh"]["test_pairs_sampled"], test_sampled, "{round}");
    assert_eq!(round["fresh"]["test_pairs_unrated"], unrated, "{round}");
    let h = &round["reward_models"]["helpfulness"];
    assert_eq!((h["before"]["stage"].as_str(), h["after"]["stage"].as_str()), (Some("rm"), Some("rm_v1")), "{round}");
    // The same accuracies from `rlhf reward eval` on the held-out file.
    let eval = |model: &str| {
        let r = json_line(&run_ok(
            rlhf().args(["reward", "eval", "--model"]).arg(out.join(model)).arg("--data").arg(&test_file).args(["--device", "cpu"]),
        ));
        // The report's table reads the helpfulness RM on the fresh helpfulness comparisons.
        let k = &r["by_source_kind"][round["fresh"]["source"].as_str().unwrap()]["helpfulness"];
        (
            (r["overall"]["correct"].as_u64().unwrap(), r["overall"]["n"].as_u64().unwrap()),
            (k["correct"].as_u64().unwrap(), k["n"].as_u64().unwrap()),
        )
    };
    let ((before, before_k), (after, after_k)) = (eval("rm/final"), eval("rm_v1/final"));
    assert_eq!((h["before_on_kind"]["correct"].as_u64().unwrap(), h["before_on_kind"]["n"].as_u64().unwrap()), before_k, "{h}");
    assert_eq!((h["after_on_kind"]["correct"].as_u64().unwrap(), h["after_on_kind"]["n"].as_u64().unwrap()), after_k, "{h}");
    assert_eq!((h["before"]["correct"].as_u64().unwrap(), h["before"]["n"].as_u64().unwrap()), before, "{h}");
    assert_eq!((h["after"]["correct"].as_u64().unwrap(), h["after"]["n"].as_u64().unwrap()), after, "{h}");
    let w = |(k, n): (u64, u64)| {
        let i = pipeline::compare::wilson(k as usize, n as usize, pipeline::compare::Z95);
        format!("{:.1} [{:.1}, {:.1}]", 100.0 * k as f64 / n as f64, 100.0 * i.lo, 100.0 * i.hi)
    };
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let row = md.lines().find(|l| l.starts_with("| rlhf #1 | ") && l.contains("`rm_v1`")).unwrap_or_else(|| panic!("{md}"));
    let expected = format!(
        "| rlhf #1 | {n_test} | {test_sampled} | {unrated} | {} `rm` (n={}) | {} `rm_v1` (n={}) | – | – |",
        w(before_k),
        before_k.1,
        w(after_k),
        after_k.1
    );
    assert_eq!(row, expected, "{md}");
    // The round's mix: the fresh batch whole and 20 of the original comparisons.
    let mix: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("mix_v1/manifest.json")).unwrap()).unwrap();
    assert_eq!(mix["metrics"]["replay"]["records"], 20, "{mix}");
    // The retrained model started from the one before: its folder names it.
    let rm1: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("rm_v1/manifest.json")).unwrap()).unwrap();
    assert_eq!(rm1["config"]["model"], "rm/final", "{rm1}");
}
