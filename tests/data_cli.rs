//! `rlhf data validate` and `rlhf data import` through the binary: summaries, fail-first errors
//! naming file, line and field, `--skip-invalid` with its rejects file, import of HH-RLHF and TRL
//! rows to JSONL and Parquet, the length policy with a tokenizer, and the traps of real HH-RLHF data
//! (broken rows, raw files given to validate, kind-less mixes, empty files).
mod common;
use common::*;
use std::path::{Path, PathBuf};

fn write(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

const GOOD: &str = r#"{"prompt": "q1", "chosen": "a", "rejected": "b", "rating": "better", "kind": "helpfulness", "source": "s1"}"#;
const GOOD2: &str =
    r#"{"prompt": [{"role": "user", "content": "q2"}], "chosen": "c", "rejected": "d", "rating": "unsure", "kind": "safety"}"#;
const EMPTY_CHOSEN: &str = r#"{"prompt": "q3", "chosen": "  ", "rejected": "d"}"#;
const BAD_RATING: &str = r#"{"prompt": "q4", "chosen": "c", "rejected": "d", "rating": "meh"}"#;

#[test]
fn validate_prints_summary() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "p.jsonl", &[GOOD, GOOD2]);
    let v = json_line(&run_ok(rlhf().args(["data", "validate", "--kind", "preference"]).arg(&f)));
    assert_eq!((v["rows"].as_u64(), v["valid"].as_u64(), v["invalid"].as_u64()), (Some(2), Some(2), Some(0)));
    assert_eq!(v["counts"]["rating"]["better"], 1);
    assert_eq!(v["counts"]["rating"]["negligibly_better"], 1);
    assert_eq!(v["counts"]["kind"]["safety"], 1);
    assert_eq!(v["counts"]["source"]["s1"], 1);
    assert!(v.get("tokens").is_none(), "no tokenizer, no token lengths");
}

#[test]
fn validate_fails_on_first_bad_row() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "p.jsonl", &[GOOD, EMPTY_CHOSEN, BAD_RATING]);
    let err = run_err(rlhf().args(["data", "validate", "--kind", "preference"]).arg(&f));
    assert!(err.contains(&format!("{}: line 2: field `chosen`: empty text", f.display())), "{err}");
    assert!(!dir.path().join("p.rejects.jsonl").exists());
    let err = run_err(rlhf().args(["data", "validate", "--kind", "sft"]).arg(dir.path().join("missing.jsonl")));
    assert!(err.contains("missing.jsonl"), "{err}");
}

#[test]
fn validate_skip_invalid_writes_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.jsonl", &[GOOD, EMPTY_CHOSEN, "{oops", BAD_RATING, GOOD2]);
    let b = write(dir.path(), "b.jsonl", &[GOOD]);
    let v = json_line(&run_ok(rlhf().args(["data", "validate", "--kind", "preference", "--skip-invalid"]).arg(&a).arg(&b)));
    assert_eq!((v["rows"].as_u64(), v["valid"].as_u64(), v["invalid"].as_u64()), (Some(6), Some(3), Some(3)));
    assert_eq!(v["invalid_by_reason"], serde_json::json!({"empty_text": 1, "invalid_json": 1, "unknown_rating": 1}));
    let rejects = dir.path().join("a.rejects.jsonl");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&rejects).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let got: Vec<_> =
        lines.iter().map(|l| (l["line"].as_u64().unwrap(), l["field"].as_str().unwrap(), l["reason"].as_str().unwrap())).collect();
    assert_eq!(got, [(2, "chosen", "empty_text"), (3, "", "invalid_json"), (4, "rating", "unknown_rating")]);
    assert_eq!(lines[1]["raw"], "{oops");
    assert_eq!(lines[0]["file"], a.display().to_string());
    assert_eq!(std::fs::read_to_string(dir.path().join("b.rejects.jsonl")).unwrap(), "", "each input has its own");

    // One shared rejects file.
    let shared = dir.path().join("all.rejects.jsonl");
    run_ok(rlhf().args(["data", "validate", "--kind", "preference", "--skip-invalid", "--rejects"]).arg(&shared).arg(&a).arg(&b));
    assert_eq!(std::fs::read_to_string(&shared).unwrap().lines().count(), 3);
}

#[test]
fn import_hh_rlhf_then_validate() {
    let dir = tempfile::tempdir().unwrap();
    let row = serde_json::json!({
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: 2+2?\n\nAssistant: 4",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: 2+2?\n\nAssistant: 5"
    })
    .to_string();
    let mismatch = serde_json::json!({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}).to_string();
    let input = write(dir.path(), "hh.jsonl", &[&row, &mismatch]);
    for ext in ["jsonl", "parquet"] {
        let out = dir.path().join(format!("out.{ext}"));
        // Fail-first by default, naming the line and the field.
        let err = run_err(rlhf().args(["data", "import"]).arg(&input).arg("--out").arg(&out));
        assert!(err.contains("line 2: field `rejected`") && err.contains("prompt_mismatch"), "{err}");
        assert!(!out.exists(), "a failed import leaves no output");
        let args = ["data", "import", "--format", "auto", "--kind", "safety", "--source", "hh", "--skip-invalid"];
        let v = json_line(&run_ok(rlhf().args(args).arg(&input).arg("--out").arg(&out)));
        assert_eq!((v["format"].as_str(), v["written"].as_u64(), v["invalid"].as_u64()), (Some("hh-rlhf"), Some(1), Some(1)));
        let v = json_line(&run_ok(rlhf().args(["data", "validate", "--kind", "preference"]).arg(&out)));
        assert_eq!((v["rows"].as_u64(), v["valid"].as_u64()), (Some(1), Some(1)));
        assert_eq!(v["counts"]["kind"]["safety"], 1);
        assert_eq!(v["counts"]["source"]["hh"], 1);
    }
}

#[test]
fn import_trl_and_length_policy() {
    let dir = tempfile::tempdir().unwrap();
    let long = "word ".repeat(400);
    let rows = [
        serde_json::json!({"chosen": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}],
                           "rejected": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Green."}]}),
        serde_json::json!({"prompt": [{"role": "user", "content": "Essay?"}],
                           "chosen": [{"role": "assistant", "content": long}],
                           "rejected": [{"role": "assistant", "content": "No."}]}),
    ]
    .map(|r| r.to_string());
    let input = write(dir.path(), "trl.jsonl", &[&rows[0], &rows[1]]);
    let out = dir.path().join("trl.parquet");
    let v = json_line(&run_ok(rlhf().args(["data", "import", "--format", "trl"]).arg(&input).arg("--out").arg(&out)));
    assert_eq!((v["format"].as_str(), v["written"].as_u64()), (Some("trl"), Some(2)));

    let model = fixture("tiny-gqa");
    let err = run_err(rlhf().args(["data", "validate", "--kind", "preference", "--max-tokens", "64"]).arg(&out));
    assert!(err.contains("--max-tokens needs a tokenizer"), "{err}");
    let base = ["data", "validate", "--kind", "preference", "--max-tokens", "64", "--model"];
    let err = run_err(rlhf().args(base).arg(&model).arg(&out));
    assert!(err.contains("row 2: field `chosen`") && err.contains("more than --max-tokens 64"), "{err}");
    let fitted = dir.path().join("fitted.jsonl");
    let v = json_line(&run_ok(rlhf().args(base).arg(&model).args(["--overlong", "truncate", "--out"]).arg(&fitted).arg(&out)));
    assert_eq!(v["overlong"], serde_json::json!({"max_tokens": 64, "policy": "truncate", "over": 1, "truncated": 1, "dropped": 0}));
    assert!(v["tokens"]["max"].as_u64().unwrap() > 400 && v["tokens"]["p50"].as_u64().unwrap() < 64, "{v}");
    assert_eq!(v["written"], 2);
    let v = json_line(&run_ok(rlhf().args(base).arg(&model).arg(&fitted)));
    assert!(v["tokens"]["max"].as_u64().unwrap() <= 64, "{v}");
}

/// An HH-RLHF row: `n` names it, `ok` false makes its two transcripts disagree on the prompt.
fn hh_row(n: usize, ok: bool) -> String {
    let other = if ok { format!("q{n}") } else { format!("other q{n}") };
    serde_json::json!({
        "chosen": format!("\n\nHuman: q{n}\n\nAssistant: good {n}"),
        "rejected": format!("\n\nHuman: {other}\n\nAssistant: bad {n}"),
    })
    .to_string()
}

/// Issue 12: real HH-RLHF has 13 broken rows in 2,312; the import stopped at the first without
/// saying that `--skip-invalid` sets them aside (and where).
#[test]
fn import_stopping_at_a_broken_row_says_how_to_skip_it() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<String> = (0..20).map(|i| hh_row(i, i % 7 != 3)).collect();
    let input = write(dir.path(), "hh.jsonl", &rows.iter().map(String::as_str).collect::<Vec<_>>());
    let out = dir.path().join("out.jsonl");
    let err = run_err(rlhf().args(["data", "import", "--format", "hh-rlhf"]).arg(&input).arg("--out").arg(&out));
    assert!(err.contains("line 4: field `rejected`") && err.contains("prompt_mismatch"), "{err}");
    let rejects = dir.path().join("hh.rejects.jsonl");
    assert!(err.contains("--skip-invalid") && err.contains(&rejects.display().to_string()), "{err}");
    let shared = dir.path().join("bad.jsonl");
    let err = run_err(rlhf().args(["data", "import", "--rejects"]).arg(&shared).arg(&input).arg("--out").arg(&out));
    assert!(err.contains("--skip-invalid") && err.contains(&shared.display().to_string()), "{err}");
    // What the hint says works.
    let v = json_line(&run_ok(rlhf().args(["data", "import", "--format", "hh-rlhf", "--skip-invalid"]).arg(&input).arg("--out").arg(&out)));
    assert_eq!((v["written"].as_u64(), v["invalid"].as_u64()), (Some(17), Some(3)));
    assert_eq!(std::fs::read_to_string(&rejects).unwrap().lines().count(), 3);
}

/// Issue 12: `data validate` on a raw HH-RLHF file said `missing field` only.
#[test]
fn validate_on_raw_hh_rlhf_points_to_import() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "hh.jsonl", &[&hh_row(0, true), &hh_row(1, true)]);
    let err = run_err(rlhf().args(["data", "validate", "--kind", "preference"]).arg(&input));
    assert!(err.contains("line 1: field `prompt`: missing field"), "{err}");
    assert!(err.contains("HH-RLHF") && err.contains("rlhf data import --format hh-rlhf"), "{err}");
    assert!(!err.contains("rerun with --skip-invalid"), "skipping every row is not the way: {err}");
    // The same file through a stage's reader says so too.
    let v = json_line(&run_ok(rlhf().args(["data", "validate", "--kind", "preference", "--skip-invalid"]).arg(&input)));
    assert_eq!(v["invalid"], 2);
    let reject: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(dir.path().join("hh.rejects.jsonl")).unwrap().lines().next().unwrap()).unwrap();
    assert!(reject["message"].as_str().unwrap().contains("rlhf data import"), "{reject}");
}

/// Issue 12: `data mix --target safety` over comparisons without `kind` wrote a 0-row mix and
/// exited 0; a safety-only mix reported `primary_share 0.9` for a 100% safety file.
#[test]
fn mix_empty_is_an_error_and_a_short_mix_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let row = |i: usize, kind: Option<&str>| {
        let mut v = serde_json::json!({"prompt": format!("q{i}"), "chosen": "a", "rejected": "b"});
        if let Some(k) = kind {
            v["kind"] = k.into();
        }
        v.to_string()
    };
    let unkinded: Vec<String> = (0..10).map(|i| row(i, None)).collect();
    let input = write(dir.path(), "unkinded.jsonl", &unkinded.iter().map(String::as_str).collect::<Vec<_>>());
    let out = dir.path().join("mix.jsonl");
    let err = run_err(rlhf().args(["data", "mix", "--target", "safety", "--data"]).arg(&input).arg("--out").arg(&out));
    assert!(err.contains("empty safety mixture") && err.contains("10 have no `kind`") && err.contains("--default-kind safety"), "{err}");
    assert!(!out.exists(), "no 0-row mix is written");

    let safety: Vec<String> = (0..10).map(|i| row(i, Some("safety"))).collect();
    let input = write(dir.path(), "safety.jsonl", &safety.iter().map(String::as_str).collect::<Vec<_>>());
    let o = rlhf().args(["data", "mix", "--target", "safety", "--data"]).arg(&input).arg("--out").arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = json_line(&String::from_utf8_lossy(&o.stdout));
    assert_eq!((v["primary_share"].as_f64(), v["actual_primary_share"].as_f64()), (Some(0.9), Some(1.0)), "{v}");
    assert!(v["shortfall"].as_str().unwrap_or_default().contains("100.0% safety"), "{v}");
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(log.contains("WARN") && log.contains("100.0% safety"), "the log says so too: {log}");
}

/// Issue 12: an empty data file is an error naming the file wherever data is read.
#[test]
fn empty_data_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "prompts.jsonl", &[""]);
    let err = run_err(rlhf().args(["eval", "demo", "--model"]).arg(fixture("tiny-gqa")).arg("--prompts").arg(&empty));
    assert!(err.contains(&empty.display().to_string()) && err.contains("the file is empty"), "{err}");
    let out = dir.path().join("mix.jsonl");
    let err = run_err(rlhf().args(["data", "mix", "--target", "helpfulness", "--data"]).arg(&empty).arg("--out").arg(&out));
    assert!(err.contains("the inputs have no comparisons"), "{err}");
}
