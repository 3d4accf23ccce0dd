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
