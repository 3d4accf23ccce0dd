//! Importers on hand-written Anthropic HH-RLHF and TRL preference rows.
use datasets::error::Reason;
use datasets::import::{detect, detect_row, parse_hh_rlhf, parse_trl, split_transcript, ImportFormat};
use datasets::io::read_all;
use datasets::validate::{validate_with, ValidateOptions};
use datasets::{PreferenceKind, PreferenceRecord};
use llama_text::chat::Message;
use serde_json::json;

fn hh_row() -> serde_json::Value {
    json!({
        "chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: 6.",
        "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: 7, I think."
    })
}

#[test]
fn hh_rlhf_splits_prompt_and_replies() {
    let r = parse_hh_rlhf(&hh_row()).unwrap();
    assert_eq!(r.prompt, vec![Message::user("What is 2+2?"), Message::assistant("4."), Message::user("And 3+3?")]);
    assert_eq!((r.chosen.as_str(), r.rejected.as_str()), ("6.", "7, I think."));
    assert_eq!((r.rating, r.kind, r.source), (None, None, None));
}

#[test]
fn hh_rlhf_transcript_without_leading_newlines_and_inner_markers() {
    let m = split_transcript("Human: say \"Human: hi\"\n\nAssistant: Human: hi", "chosen").unwrap();
    assert_eq!(m, vec![Message::user("say \"Human: hi\""), Message::assistant("Human: hi")]);
}

#[test]
fn hh_rlhf_prompt_mismatch_is_an_error() {
    let row = json!({
        "chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.",
        "rejected": "\n\nHuman: What is 2+3?\n\nAssistant: 5."
    });
    let e = parse_hh_rlhf(&row).unwrap_err();
    assert_eq!((e.field.as_str(), e.reason), ("rejected", Reason::PromptMismatch));
    assert!(e.detail.contains("differ at message 0"), "{}", e.detail);
}

#[test]
fn hh_rlhf_bad_transcripts() {
    let e = parse_hh_rlhf(&json!({"chosen": "just text", "rejected": "\n\nHuman: q\n\nAssistant: a"})).unwrap_err();
    assert_eq!((e.field.as_str(), e.reason), ("chosen", Reason::WrongType));
    let e =
        parse_hh_rlhf(&json!({"chosen": "preamble\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"})).unwrap_err();
    assert!(e.detail.contains("text before the first"), "{}", e.detail);
    let e = parse_hh_rlhf(&json!({"chosen": "\n\nHuman: q\n\nAssistant: a\n\nHuman: more", "rejected": "\n\nHuman: q\n\nAssistant: b"}))
        .unwrap_err();
    assert_eq!((e.field.as_str(), e.reason), ("chosen", Reason::DialogNotEndingWithAssistant));
    let e = parse_hh_rlhf(&json!({"chosen": "\n\nHuman: q\n\nAssistant: a"})).unwrap_err();
    assert_eq!((e.field.as_str(), e.reason), ("rejected", Reason::MissingField));
}

#[test]
fn trl_implicit_prompt() {
    let row = json!({
        "chosen": [{"role": "user", "content": "Sky color?"}, {"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "user", "content": "Sky color?"}, {"role": "assistant", "content": "Green."}]
    });
    let r = parse_trl(&row).unwrap();
    assert_eq!(r.prompt, vec![Message::user("Sky color?")]);
    assert_eq!((r.chosen.as_str(), r.rejected.as_str()), ("Blue.", "Green."));
}

#[test]
fn trl_explicit_prompt_and_standard_form() {
    let row = json!({
        "prompt": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Sky color?"}],
        "chosen": [{"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "assistant", "content": "Green."}]
    });
    let r = parse_trl(&row).unwrap();
    assert_eq!(r.prompt, vec![Message::system("Be terse."), Message::user("Sky color?")]);
    assert_eq!(r.chosen, "Blue.");
    let r = parse_trl(&json!({"prompt": "Sky color?", "chosen": "Blue.", "rejected": "Green."})).unwrap();
    assert_eq!(r.prompt, vec![Message::user("Sky color?")]);
    assert_eq!(r.rejected, "Green.");
}

#[test]
fn trl_bad_rows() {
    let e = parse_trl(&json!({
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "x"}],
        "rejected": [{"role": "assistant", "content": "b"}]
    }))
    .unwrap_err();
    assert_eq!((e.field.as_str(), e.reason), ("chosen", Reason::WrongType));
    let e = parse_trl(&json!({"chosen": "a", "rejected": "b"})).unwrap_err();
    assert_eq!((e.field.as_str(), e.reason), ("chosen", Reason::WrongType));
    let e = parse_trl(&json!({
        "chosen": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a"}],
        "rejected": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "b"}]
    }))
    .unwrap_err();
    assert_eq!(e.reason, Reason::PromptMismatch);
}

#[test]
fn detects_formats() {
    assert_eq!(detect_row(&hh_row()), Some(ImportFormat::HhRlhf));
    assert_eq!(detect_row(&json!({"chosen": [], "rejected": []})), Some(ImportFormat::Trl));
    assert_eq!(detect_row(&json!({"prompt": "q", "chosen": "a", "rejected": "b"})), Some(ImportFormat::Trl));
    assert_eq!(detect_row(&json!({"text": "a"})), None);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hh.jsonl");
    std::fs::write(&path, format!("not json\n{}\n", hh_row())).unwrap();
    assert_eq!(detect(&path, None).unwrap(), ImportFormat::HhRlhf);
    std::fs::write(&path, "{\"text\": 1}\n").unwrap();
    let e = detect(&path, None).unwrap_err().to_string();
    assert!(e.contains("hh.jsonl") && e.contains("line 1") && e.contains("--format"), "{e}");
}

/// An HH-RLHF file imported through the validation run: kind and source set, bad rows rejected
/// with their line, the output readable as canonical preference records.
#[test]
fn import_file_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("train.jsonl");
    let mismatch = json!({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"});
    std::fs::write(&input, format!("{}\n{}\n{}\n", hh_row(), mismatch, hh_row())).unwrap();
    let out = dir.path().join("out.parquet");
    let format = ImportFormat::HhRlhf;
    let opts = ValidateOptions { skip_invalid: true, out: Some((out.clone(), None)), ..Default::default() };
    let parser = format.parser(Some(PreferenceKind::Safety), Some("hh-harmless".into()));
    let s = validate_with(std::slice::from_ref(&input), parser, format.columns(), &opts).unwrap();
    assert_eq!((s.rows, s.valid, s.invalid, s.written), (3, 2, 1, Some(2)));
    assert_eq!(s.invalid_by_reason["prompt_mismatch"], 1);
    let rejects = std::fs::read_to_string(dir.path().join("train.rejects.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(rejects.lines().next().unwrap()).unwrap();
    assert_eq!((line["line"].as_u64(), line["field"].as_str()), (Some(2), Some("rejected")));
    let back: Vec<PreferenceRecord> = read_all(&out).unwrap();
    assert_eq!(back.len(), 2);
    assert_eq!(back[0].kind, Some(PreferenceKind::Safety));
    assert_eq!(back[0].source.as_deref(), Some("hh-harmless"));
    assert_eq!(back[0].chosen, "6.");
}
