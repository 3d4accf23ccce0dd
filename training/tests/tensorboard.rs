//! TensorBoard event files as `MetricsLog` writes them for every stage: the records parsed back
//! by hand (framing, lengths, CRCs, protobuf fields), a resume that keeps no step twice, and
//! TensorBoard's own reader over the same files (`tools/check_tensorboard.py`).
use std::path::{Path, PathBuf};
use training::metrics::{read_metrics, MetricsLog};
use training::tensorboard::{decode_event, event_files, masked_crc32c, scalars_of, Event, ValueData, FILE_VERSION};

fn record(step: u64, run: u32) -> serde_json::Value {
    serde_json::json!({
        "step": step, "loss": 1.0 / (step as f64 + 1.0) + run as f64, "lr": 3e-4 * step as f64, "tokens": 1000 + step,
        "grad_norm": 0.5 + step as f64 * 0.01, "tokens_per_s": 12345.6, "gradient_checkpointing": true,
        "eval": {"by_rating": [0.9, 0.8, 0.7, 0.6]}, "eval_kl": null,
    })
}

fn sample_text(step: u64, run: u32) -> String {
    format!("**prompt**: what is {step} + 1?\n\n**response** (run {run}): {} ✓", step + 1)
}

/// A run interrupted after step 6 (its last checkpoint at 4, half a record written after step
/// 6), then resumed from 4 to 8 with values that differ, as the runner drives `MetricsLog`.
fn cut_and_resumed_run(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let metrics = dir.join("metrics.jsonl");
    let mut log = MetricsLog::open(&metrics, None).unwrap().with_events(dir, "toy", None).unwrap();
    log.write(&serde_json::json!({"step": 0, "eval_loss": 2.5})).unwrap();
    for step in 1..=6 {
        log.write(&record(step, 0)).unwrap();
        log.write_texts(step, &[("samples".into(), sample_text(step, 0))]).unwrap();
        if step == 4 {
            log.sync().unwrap();
        }
    }
    drop(log);
    let files = event_files(dir).unwrap();
    assert_eq!(files.len(), 1);
    let mut f = std::fs::OpenOptions::new().append(true).open(&files[0]).unwrap();
    std::io::Write::write_all(&mut f, &[7, 0, 0, 0, 0, 0, 0, 0, 1, 2]).unwrap();

    let mut log = MetricsLog::open(&metrics, Some(4)).unwrap().with_events(dir, "toy", Some(4)).unwrap();
    for step in 5..=8 {
        log.write(&record(step, 1)).unwrap();
        log.write_texts(step, &[("samples".into(), sample_text(step, 1))]).unwrap();
    }
    log.sync().unwrap();
}

/// The records of an event file, parsed independently of the reader under test: each length
/// and its masked CRC, each data and its masked CRC.
fn records(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let (mut pos, mut out) = (0, Vec::new());
    while pos < bytes.len() {
        let len = u64::from_le_bytes(bytes[pos..pos + 8].try_into().unwrap()) as usize;
        assert_eq!(
            u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()),
            masked_crc32c(&bytes[pos..pos + 8]),
            "length CRC at {pos}"
        );
        let data = &bytes[pos + 12..pos + 12 + len];
        let crc = u32::from_le_bytes(bytes[pos + 12 + len..pos + 16 + len].try_into().unwrap());
        assert_eq!(crc, masked_crc32c(data), "data CRC at {pos}");
        out.push(data.to_vec());
        pos += 16 + len;
    }
    assert_eq!(pos, bytes.len(), "trailing bytes");
    out
}

#[test]
fn resumed_event_files_hold_every_step_once_with_the_metrics_values() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    cut_and_resumed_run(&dir);
    let files = event_files(&dir).unwrap();
    assert_eq!(files.len(), 1, "the old event file was not replaced: {files:?}");
    assert!(files[0].file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."));
    let events: Vec<Event> = records(&files[0]).iter().map(|r| decode_event(r).unwrap()).collect();
    assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
    assert_eq!(training::tensorboard::read_events(&files[0]).unwrap(), events);

    // Per tag: steps strictly increasing, each once.
    let mut last: std::collections::HashMap<&str, i64> = Default::default();
    for e in &events[1..] {
        assert!(e.wall_time > 1.6e9, "wall time {}", e.wall_time);
        for v in &e.values {
            if let Some(&s) = last.get(v.tag.as_str()) {
                assert!(e.step > s, "{} step {} after {s}", v.tag, e.step);
            }
            last.insert(&v.tag, e.step);
        }
    }

    // The scalars are metrics.jsonl's numbers (kept lines of the first run, then the resumed run's).
    let metrics = read_metrics(&dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.iter().map(|m| m["step"].as_u64().unwrap()).collect::<Vec<_>>(), (0..=8).collect::<Vec<_>>());
    let scalar_events: Vec<&Event> = events.iter().filter(|e| e.values.iter().any(|v| matches!(v.data, ValueData::Scalar(_)))).collect();
    assert_eq!(scalar_events.len(), metrics.len());
    for (e, m) in scalar_events.iter().zip(&metrics) {
        assert_eq!(e.step as u64, m["step"].as_u64().unwrap());
        assert_eq!(e.values, scalars_of("toy", m), "step {}", e.step);
    }
    let loss = |step: usize| scalar_events[step].values.iter().find(|v| v.tag == "toy/loss").map(|v| v.data.clone());
    assert_eq!(loss(3), Some(ValueData::Scalar((0.25f64) as f32)), "a kept step changed");
    assert_eq!(loss(6), Some(ValueData::Scalar((1.0 + 1.0 / 7.0f64) as f32)), "step 6 is not the resumed run's");
    let tags: Vec<&str> = scalar_events[2].values.iter().map(|v| v.tag.as_str()).collect();
    for t in ["toy/loss", "toy/lr", "toy/grad_norm", "toy/tokens_per_s", "toy/eval/by_rating/3"] {
        assert!(tags.contains(&t), "{t} not in {tags:?}");
    }
    assert!(!tags.iter().any(|t| t.contains("gradient_checkpointing") || t.contains("eval_kl") || *t == "toy/step"), "{tags:?}");

    // Text summaries: one per step, the kept ones of the first run, then the resumed run's.
    let texts: Vec<(i64, String)> = events
        .iter()
        .flat_map(|e| e.values.iter().map(move |v| (e.step, v)))
        .filter_map(|(s, v)| match &v.data {
            ValueData::Text(t) => Some((s, t.clone())),
            _ => None,
        })
        .collect();
    let want: Vec<(i64, String)> = (1..=8u64).map(|s| (s as i64, sample_text(s, u32::from(s > 4)))).collect();
    assert_eq!(texts, want);
}

#[test]
fn a_fresh_run_removes_the_event_files_of_an_earlier_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    cut_and_resumed_run(&dir);
    let before = event_files(&dir).unwrap();
    let mut log = MetricsLog::open(&dir.join("metrics.jsonl"), None).unwrap().with_events(&dir, "toy", None).unwrap();
    log.write(&record(1, 2)).unwrap();
    drop(log);
    let after = event_files(&dir).unwrap();
    assert_eq!(after.len(), 1);
    assert_ne!(after, before);
    let events = training::tensorboard::read_events(&after[0]).unwrap();
    assert_eq!(events.iter().map(|e| e.step).collect::<Vec<_>>(), [0, 1]);
}

fn venv_python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

/// TensorBoard's reader (`tools/check_tensorboard.py`, run with the project venv's Python) sees
/// the resumed run's files as written: one file, no step twice, metrics.jsonl's numbers as
/// scalars, the text summaries.
#[test]
fn tensorboards_own_reader_reads_our_files() {
    let python = venv_python();
    let has_tb = std::process::Command::new(&python).args(["-c", "import tensorboard"]).output().is_ok_and(|o| o.status.success());
    if !has_tb {
        eprintln!(
            "SKIPPED tensorboards_own_reader_reads_our_files: {} cannot import the `tensorboard` module (scripts/setup installs it)",
            python.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    cut_and_resumed_run(&dir);
    let texts: serde_json::Map<String, serde_json::Value> =
        (1..=8u64).map(|s| (s.to_string(), serde_json::json!(sample_text(s, u32::from(s > 4))))).collect();
    let expect = serde_json::json!({
        "scalars": {"toy/loss": {"3": 0.25, "6": 1.0 + 1.0 / 7.0}, "toy/eval_loss": {"0": 2.5}},
        "texts": {"toy/samples": texts},
    });
    let expect_path = tmp.path().join("expect.json");
    std::fs::write(&expect_path, expect.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/check_tensorboard.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(&dir)
        .args(["--prefix", "toy", "--expect"])
        .arg(&expect_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "check_tensorboard.py failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["text_tags"], serde_json::json!(["toy/samples"]));
    // 9 metrics lines: 7 scalars of each of the 8 training steps, eval_loss at step 0.
    assert_eq!(report["scalar_points"], 8 * 9 + 1);

    // And a damaged file is caught: a flipped data byte drops the records from there on.
    let f = &event_files(&dir).unwrap()[0];
    let mut bytes = std::fs::read(f).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x40;
    std::fs::write(f, bytes).unwrap();
    let out = std::process::Command::new(&python).arg(&script).arg(&dir).args(["--prefix", "toy"]).output().unwrap();
    assert!(!out.status.success(), "a corrupted file passed: {}", String::from_utf8_lossy(&out.stdout));
}
