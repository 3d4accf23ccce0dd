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

#[test]
fn nan_weights_are_an_error_naming_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nan-model");
    copy_dir(&fixture("tiny-mha"), &dir);
    let f = CheckpointFiles::open(&dir).unwrap();
    let mut names: Vec<String> = f.names().map(String::from).collect();
    names.sort();
    let tensors: Vec<(String, tch::Tensor)> = names
        .iter()
        .map(|n| {
            let t = f.tensor(n).unwrap();
            (n.clone(), if n == "model.norm.weight" { t.fill(f64::NAN) } else { t })
        })
        .collect();
    drop(f);
    write_safetensors(&dir.join("model.safetensors"), &tensors).unwrap();
    let err = eval_err(&dir);
    assert!(err.contains("nan-model") && err.contains("mean NLL") && err.contains("not a finite number"), "{err}");
}

/// A micro Llama with a `vocab`-id vocabulary and no tokenizer.json, saved into `dir`.
fn micro_model(dir: &std::path::Path, vocab: i64) {
    let cfg = llama::Config { vocab_size: vocab, ..llama::Config::micro() };
    let vs = llama::checkpoint::var_store(tch::Device::Cpu, tch::Kind::Float);
    let _model = llama::Llama::new(&vs.root(), &cfg);
    llama::checkpoint::save(&vs, &cfg, dir, &Default::default()).unwrap();
}

/// The bundled Llama-2 tokenizer the binary falls back on (`scripts/setup` builds it).
fn bundled_tokenizer() -> std::path::PathBuf {
    llama::tokenizer::default_tokenizer_path()
        .filter(|p| p.is_file())
        .expect("the Llama-2 tokenizer (assets/tokenizer/tokenizer.json) is missing: run scripts/setup")
}

#[test]
fn tokenizer_past_the_model_vocab_is_refused_by_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vocab512");
    micro_model(&dir, 512);
    let dialog = tmp.path().join("d.json");
    std::fs::write(&dialog, r#"[{"role":"user","content":"Hello world!"}]"#).unwrap();
    let data = fixture("lm_eval.jsonl");
    let commands: Vec<Vec<std::ffi::OsString>> = vec![
        vec![
            "eval".into(),
            "lm".into(),
            "--device".into(),
            "cpu".into(),
            "--data".into(),
            data.into(),
            "--model".into(),
            dir.clone().into(),
        ],
        vec!["generate".into(), "--device".into(), "cpu".into(), "--prompt".into(), "Hello".into(), "--model".into(), dir.clone().into()],
        vec!["tokenize".into(), "--dialog".into(), dialog.into(), "--model".into(), dir.clone().into()],
    ];
    let dir_s = dir.display().to_string();
    // No tokenizer.json: the bundled 32000-id tokenizer is not this model's.
    for args in &commands {
        let err = run_err(rlhf().args(args));
        assert!(
            err.contains(&dir_s) && err.contains("no tokenizer.json") && err.contains("512") && err.contains("32000"),
            "{args:?}: {err}"
        );
    }
    // Its own tokenizer.json with more ids than the model embeds: refused before any forward.
    std::fs::copy(bundled_tokenizer(), dir.join("tokenizer.json")).unwrap();
    for args in &commands {
        let err = run_err(rlhf().args(args));
        assert!(err.contains("has 32000 ids") && err.contains("vocab_size 512") && err.contains(&dir_s), "{args:?}: {err}");
    }
}

#[test]
fn bundled_tokenizer_fallback_is_warned_naming_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("no-tokenizer");
    copy_dir(&fixture("tiny-mha"), &dir);
    assert!(!dir.join("tokenizer.json").exists());
    let out = rlhf()
        .args(["eval", "lm", "--device", "cpu", "--model"])
        .arg(&dir)
        .arg("--data")
        .arg(fixture("lm_eval.jsonl"))
        .env_remove("RLHF_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warning = format!("{} has no tokenizer.json: using the bundled Llama-2 tokenizer", dir.display());
    assert_eq!(stderr.matches(&warning).count(), 1, "{stderr}");
    assert!(stderr.contains("WARN"), "{stderr}");
    // With the tokenizer in the folder, no warning.
    std::fs::copy(bundled_tokenizer(), dir.join("tokenizer.json")).unwrap();
    let out =
        rlhf().args(["eval", "lm", "--device", "cpu", "--model"]).arg(&dir).arg("--data").arg(fixture("lm_eval.jsonl")).output().unwrap();
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("no tokenizer.json"));
}
