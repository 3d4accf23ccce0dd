//! The model commands through the binary: `eval lm` against transformers' NLL, `generate` and
//! `tokenize` output shapes, and clear errors (never a panic) on bad checkpoints.
mod common;
use common::*;
use llama::checkpoint::{write_safetensors, CheckpointFiles};

#[test]
fn eval_lm_matches_transformers_nll() {
    for name in ["tiny-gqa", "tiny-mha"] {
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture(name).join("expected.json")).unwrap()).unwrap();
        let want = expected["nll"]["mean_nll"].as_f64().expect("expected.json has nll.mean_nll");
        let want_n = expected["nll"]["n_tokens"].as_i64().unwrap();
        let out = run_ok(
            rlhf()
                .args(["eval", "lm", "--device", "cpu", "--batch-size", "2", "--model"])
                .arg(fixture(name))
                .arg("--data")
                .arg(fixture("lm_eval.jsonl")),
        );
        let got = json_line(&out);
        assert_eq!(got["n_tokens"].as_i64().unwrap(), want_n, "{name}: token count");
        let nll = got["mean_nll"].as_f64().unwrap();
        assert!((nll - want).abs() < 1e-4, "{name}: mean NLL {nll} vs transformers {want}");
    }
}

#[test]
fn generate_json_and_tokenize_shapes() {
    let out = run_ok(
        rlhf()
            .args(["generate", "--device", "cpu", "--prompt", "Hello", "--max-new-tokens", "5", "--temperature", "0", "--json", "--model"])
            .arg(fixture("tiny-gqa")),
    );
    let v = json_line(&out);
    assert!(v["completion"].is_string());
    let ids = v["token_ids"].as_array().unwrap();
    assert!(!ids.is_empty() && ids.len() <= 5);
    // Same seed, same sample; the chat path works with a system prompt.
    let args = [
        "generate",
        "--device",
        "cpu",
        "--chat",
        "--system",
        "Be brief.",
        "--prompt",
        "Hi there",
        "--max-new-tokens",
        "8",
        "--temperature",
        "1.0",
        "--seed",
        "7",
        "--json",
        "--model",
    ];
    let a = json_line(&run_ok(rlhf().args(args).arg(fixture("tiny-mha"))));
    let b = json_line(&run_ok(rlhf().args(args).arg(fixture("tiny-mha"))));
    assert_eq!(a["token_ids"], b["token_ids"]);

    let tmp = tempfile::tempdir().unwrap();
    let dialog = tmp.path().join("d.json");
    std::fs::write(&dialog, r#"[{"role":"user","content":"Hello world!"}]"#).unwrap();
    let ids: Vec<u32> =
        serde_json::from_str(run_ok(rlhf().args(["tokenize", "--model"]).arg(fixture("tiny-gqa")).arg("--dialog").arg(&dialog)).trim())
            .unwrap();
    // <s>[INST] Hello world! [/INST]
    assert_eq!(ids[0], 1);
    assert_eq!(&ids[1..4], &[518, 25580, 29962]);
}

fn eval_err(dir: &std::path::Path) -> String {
    run_err(rlhf().args(["eval", "lm", "--device", "cpu", "--model"]).arg(dir).arg("--data").arg(fixture("lm_eval.jsonl")))
}

#[test]
fn missing_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&fixture("tiny-mha"), &dir);
    let f = CheckpointFiles::open(&dir).unwrap();
    let mut names: Vec<String> = f.names().map(String::from).collect();
    names.sort();
    let kept: Vec<(String, tch::Tensor)> =
        names.iter().filter(|n| n.as_str() != "model.layers.1.mlp.up_proj.weight").map(|n| (n.clone(), f.tensor(n).unwrap())).collect();
    drop(f);
    write_safetensors(&dir.join("model.safetensors"), &kept).unwrap();
    let err = eval_err(&dir);
    assert!(err.contains("missing tensor") && err.contains("model.layers.1.mlp.up_proj.weight"), "{err}");
}

#[test]
fn wrong_shape_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&fixture("tiny-gqa"), &dir);
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["intermediate_size"] = serde_json::json!(96);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = eval_err(&dir);
    assert!(err.contains("mis-shaped") && err.contains("model.layers.0.mlp.gate_proj.weight") && err.contains("[96, 32]"), "{err}");
}

#[test]
fn truncated_safetensors_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&fixture("tiny-mha"), &dir);
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let err = eval_err(&dir);
    assert!(err.contains("model.safetensors") && err.contains("not a valid safetensors file"), "{err}");
}

#[test]
fn unknown_activation_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&fixture("tiny-mha"), &dir);
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["hidden_act"] = serde_json::json!("gelu_new");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = eval_err(&dir);
    assert!(err.contains("config.json") && err.contains("hidden_act") && err.contains("gelu_new"), "{err}");
}

#[test]
fn bad_data_rows_name_file_line_field() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bad.jsonl");
    std::fs::write(&data, "{\"text\": \"ok\"}\n{\"txt\": \"no\"}\n").unwrap();
    let err = run_err(rlhf().args(["eval", "lm", "--device", "cpu", "--model"]).arg(fixture("tiny-gqa")).arg("--data").arg(&data));
    assert!(err.contains("bad.jsonl") && err.contains("line 2") && err.contains("\"text\""), "{err}");
    std::fs::write(&data, "{\"text\": 3}\n").unwrap();
    let err = run_err(rlhf().args(["eval", "lm", "--device", "cpu", "--model"]).arg(fixture("tiny-gqa")).arg("--data").arg(&data));
    assert!(err.contains("line 1") && err.contains("must be a string"), "{err}");
}
