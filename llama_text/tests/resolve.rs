//! The one tokenizer precedence (`tokenizer::resolve`) and the vocabulary check, on a 4-id
//! word-level tokenizer written by the test (no downloaded asset needed).
use llama_text::tokenizer::{check_vocab, model_vocab_size, resolve, Tokenizer};
use llama_text::TextError;
use std::path::{Path, PathBuf};

/// A `tokenizer.json` with `n` ids (`<unk>`, `<s>`, `</s>`, then words `w3`...).
fn tokenizer_json(n: usize) -> String {
    let mut vocab = serde_json::json!({"<unk>": 0, "<s>": 1, "</s>": 2});
    for i in 3..n {
        vocab[format!("w{i}")] = serde_json::json!(i);
    }
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}

fn write_tokenizer(path: &Path, n: usize) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, tokenizer_json(n)).unwrap();
    path.to_path_buf()
}

/// A model folder whose `config.json` has `vocab_size` (absent when `None`).
fn model_dir(root: &Path, name: &str, vocab: Option<usize>) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = serde_json::json!({"model_type": "llama", "hidden_size": 8});
    if let Some(v) = vocab {
        cfg["vocab_size"] = serde_json::json!(v);
    }
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    dir
}

#[test]
fn explicit_then_model_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path(), "m", Some(16));
    let local = write_tokenizer(&dir.join("tokenizer.json"), 8);
    let explicit = write_tokenizer(&tmp.path().join("other/tokenizer.json"), 5);
    let (tok, path) = resolve(Some(&explicit), Some(&dir)).unwrap();
    assert_eq!((tok.vocab_size(), path), (5, explicit.clone()));
    let (tok, path) = resolve(None, Some(&dir)).unwrap();
    assert_eq!((tok.vocab_size(), path), (8, local));
    // No model folder: the explicit tokenizer is taken as it is.
    let (tok, _) = resolve(Some(&explicit), None).unwrap();
    assert_eq!(tok.vocab_size(), 5);
}

#[test]
fn tokenizer_larger_than_model_vocab_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path(), "m512", Some(512));
    write_tokenizer(&dir.join("tokenizer.json"), 600);
    let err = resolve(None, Some(&dir)).unwrap_err();
    assert!(matches!(err, TextError::Vocab { tokenizer_vocab: 600, model_vocab: 512, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("600") && msg.contains("512") && msg.contains(&dir.display().to_string()), "{msg}");
    // An explicit tokenizer is checked against the model folder too.
    let explicit = write_tokenizer(&tmp.path().join("big/tokenizer.json"), 513);
    let err = resolve(Some(&explicit), Some(&dir)).unwrap_err().to_string();
    assert!(err.contains("513") && err.contains("512"), "{err}");
    // A model vocabulary padded past the tokenizer's is fine.
    let small = write_tokenizer(&tmp.path().join("small/tokenizer.json"), 500);
    resolve(Some(&small), Some(&dir)).unwrap();
}

#[test]
fn check_vocab_names_both_sizes_and_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = Tokenizer::from_file(&write_tokenizer(&tmp.path().join("t/tokenizer.json"), 10)).unwrap();
    check_vocab(&tok, 10, Path::new("/models/a")).unwrap();
    check_vocab(&tok, 64, Path::new("/models/a")).unwrap();
    let err = check_vocab(&tok, 9, Path::new("/models/a")).unwrap_err().to_string();
    assert!(err.contains("10 ids") && err.contains("vocab_size 9") && err.contains("/models/a"), "{err}");
}

#[test]
fn model_vocab_size_reads_config_json() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(model_vocab_size(&model_dir(tmp.path(), "a", Some(512))).unwrap(), Some(512));
    // Absent field: Llama 2's 32000, as the model config resolves it.
    assert_eq!(model_vocab_size(&model_dir(tmp.path(), "b", None)).unwrap(), Some(32000));
    assert_eq!(model_vocab_size(&tmp.path().join("none")).unwrap(), None);
    let bad = tmp.path().join("c");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("config.json"), r#"{"vocab_size": -3}"#).unwrap();
    let err = resolve(Some(&write_tokenizer(&tmp.path().join("t/tokenizer.json"), 4)), Some(&bad)).unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains("vocab_size"), "{err}");
    std::fs::write(bad.join("config.json"), "{not json").unwrap();
    let err = model_vocab_size(&bad).unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains("invalid JSON"), "{err}");
}

/// The bundled fallback, pointed at a 6-id tokenizer through `RLHF_TOKENIZER` (the only test of
/// this binary that reads it).
#[test]
fn bundled_fallback_must_match_the_model_vocab() {
    let tmp = tempfile::tempdir().unwrap();
    let bundled = write_tokenizer(&tmp.path().join("bundled/tokenizer.json"), 6);
    std::env::set_var(llama_text::tokenizer::TOKENIZER_ENV, &bundled);
    let same = model_dir(tmp.path(), "same", Some(6));
    let (tok, path) = resolve(None, Some(&same)).unwrap();
    assert_eq!((tok.vocab_size(), path), (6, bundled.clone()));
    // Larger or smaller: the bundled tokenizer is not this model's.
    for v in [512, 5] {
        let dir = model_dir(tmp.path(), &format!("v{v}"), Some(v));
        let err = resolve(None, Some(&dir)).unwrap_err();
        assert!(matches!(err, TextError::BundledVocab { model_vocab, tokenizer_vocab: 6, .. } if model_vocab == v), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&dir.display().to_string()) && msg.contains("no tokenizer.json") && msg.contains(&v.to_string()), "{msg}");
    }
    // Nothing to check without a model folder or its config.json.
    assert_eq!(resolve(None, None).unwrap().1, bundled);
    assert_eq!(resolve(None, Some(&tmp.path().join("no-config"))).unwrap().1, bundled);
    std::env::remove_var(llama_text::tokenizer::TOKENIZER_ENV);
}
