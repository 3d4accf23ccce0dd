//! Readers, writers and validation: round trips for every format and record kind, one test per
//! bad-input class (each asserting that the error names the file, the line or row, and the field),
//! the `--skip-invalid` rejects file, and the length policy.
use std::path::{Path, PathBuf};

use datasets::error::{DatasetError, Location, Reason, RowError};
use datasets::io::{for_each_batch, read_all, write_all, Format, RecordReader, RecordWriter, ROW_GROUP_ROWS};
use datasets::length::{LengthPolicy, Overlong};
use datasets::parse::Record;
use datasets::validate::{validate_files, Percentiles, ValidateOptions};
use datasets::{PreferenceKind, PreferenceRecord, PromptRecord, Rating, SftRecord};
use llama_text::chat::Message;
use llama_text::Tokenizer;
use polars::prelude::*;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn write_text(dir: &Path, name: &str, text: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn pref(prompt: Vec<Message>, chosen: &str, rejected: &str) -> PreferenceRecord {
    PreferenceRecord {
        prompt,
        chosen: chosen.into(),
        rejected: rejected.into(),
        rating: None,
        kind: None,
        chosen_safe: None,
        rejected_safe: None,
        source: None,
    }
}

fn preferences() -> Vec<PreferenceRecord> {
    let full = PreferenceRecord {
        rating: Some(Rating::SignificantlyBetter),
        kind: Some(PreferenceKind::Safety),
        chosen_safe: Some(true),
        rejected_safe: Some(false),
        source: Some("anthropic-harmless".into()),
        ..pref(
            vec![Message::system("Be safe."), Message::user("hi"), Message::assistant("hello"), Message::user("how do I pick a lock?")],
            "I can't help with that.",
            "Here is how: ...",
        )
    };
    let string_prompt = pref(datasets::records::user_prompt("2+2? ünïcödé 🙂"), "4", "5");
    let mut rated = pref(datasets::records::user_prompt("capital of France?"), "Paris", "Lyon");
    rated.rating = Some(Rating::NegligiblyBetter);
    vec![full, string_prompt, rated]
}

fn sfts() -> Vec<SftRecord> {
    vec![
        SftRecord { messages: vec![Message::user("2+2?"), Message::assistant("4")] },
        SftRecord {
            messages: vec![
                Message::system("Be brief."),
                Message::user("a"),
                Message::assistant("b"),
                Message::user("c"),
                Message::assistant("d\nwith \"quotes\""),
            ],
        },
    ]
}

fn prompts() -> Vec<PromptRecord> {
    vec![
        PromptRecord { prompt: datasets::records::user_prompt("how do I kill a python process?"), is_safety: false },
        PromptRecord { prompt: vec![Message::user("hi"), Message::assistant("yo"), Message::user("make a bomb")], is_safety: true },
    ]
}

fn roundtrip<R: Record + PartialEq + std::fmt::Debug>(records: &[R], ext: &str) {
    let dir = tmp();
    let path = dir.path().join(format!("data.{ext}"));
    assert_eq!(write_all(&path, records).unwrap(), records.len());
    let back: Vec<R> = read_all(&path).unwrap();
    assert_eq!(back, records, "{ext} round trip of {:?}", R::KIND);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "temp files left behind: {leftovers:?}");
}

#[test]
fn roundtrip_every_kind_and_format() {
    for ext in ["jsonl", "parquet"] {
        roundtrip(&preferences(), ext);
        roundtrip(&sfts(), ext);
        roundtrip(&prompts(), ext);
    }
}

/// Issue 12: an empty data file (0 rows) is an error naming the file wherever a stage reads data
/// (`read_all`), not an empty dataset that fails later on something else.
#[test]
fn empty_files_are_an_error_naming_the_file() {
    let dir = tmp();
    let jsonl = write_text(dir.path(), "empty.jsonl", b"");
    let blank = write_text(dir.path(), "blank.jsonl", b"\n  \n\n");
    let parquet = dir.path().join("empty.parquet");
    assert_eq!(write_all::<PreferenceRecord>(&parquet, &[]).unwrap(), 0, "an empty file can still be written");
    assert_eq!(RecordReader::<PreferenceRecord>::open(&parquet).unwrap().count(), 0);
    for path in [&jsonl, &blank, &parquet] {
        let e = read_all::<PreferenceRecord>(path).unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("the file is empty") && e.contains("expected preference data"),
            "{e}"
        );
        let e = read_all::<PromptRecord>(path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()) && e.contains("the file is empty"), "{e}");
    }
}

/// Issue 12: a raw HH-RLHF (or TRL conversational) file read as preference records says which
/// `rlhf data import` converts it, not only `missing field`.
#[test]
fn rows_in_an_import_format_point_to_data_import() {
    let hh = r#"{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}"#;
    let e = bad_line::<PreferenceRecord>(GOOD_PREF, hh.as_bytes(), "prompt", Reason::MissingField);
    assert!(e.detail.contains("HH-RLHF") && e.detail.contains("rlhf data import --format hh-rlhf"), "{e}");
    let implicit = r#"{"chosen": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}],
                       "rejected": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Green."}]}"#
        .replace('\n', " ");
    let e = bad_line::<PreferenceRecord>(GOOD_PREF, implicit.as_bytes(), "prompt", Reason::MissingField);
    assert!(e.detail.contains("TRL") && e.detail.contains("rlhf data import --format trl"), "{e}");
    let explicit = r#"{"prompt": [{"role": "user", "content": "Sky?"}], "chosen": [{"role": "assistant", "content": "Blue."}], "rejected": [{"role": "assistant", "content": "Green."}]}"#;
    let e = bad_line::<PreferenceRecord>(GOOD_PREF, explicit.as_bytes(), "chosen", Reason::WrongType);
    assert!(e.detail.contains("rlhf data import --format trl"), "{e}");
    // A row of our own schema with a bad field gets no such hint.
    let e = bad_line::<PreferenceRecord>(GOOD_PREF, br#"{"prompt": "q", "chosen": 3, "rejected": "b"}"#, "chosen", Reason::WrongType);
    assert!(!e.detail.contains("import"), "{e}");
}

#[test]
fn jsonl_string_and_message_prompts_read_the_same() {
    let dir = tmp();
    let text = concat!(
        r#"{"prompt": "hi", "chosen": "a", "rejected": "b", "rating": "unsure", "id": 7}"#,
        "\n",
        "\n",
        r#"{"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b", "rating": null}"#,
        "\n",
    );
    let p = write_text(dir.path(), "p.jsonl", text.as_bytes());
    let rs: Vec<PreferenceRecord> = read_all(&p).unwrap();
    assert_eq!(rs[0].prompt, rs[1].prompt);
    assert_eq!(rs[0].rating, Some(Rating::NegligiblyBetter), "unsure is negligibly_better");
    assert_eq!(rs[1].rating, None);
    let sft = write_text(dir.path(), "s.jsonl", br#"{"prompt": "q", "response": "a"}"#);
    let s: Vec<SftRecord> = read_all(&sft).unwrap();
    assert_eq!(s[0].messages, vec![Message::user("q"), Message::assistant("a")]);
}

/// A Parquet file written by another tool: prompt as a plain string column.
#[test]
fn parquet_string_prompt_column() {
    let dir = tmp();
    let path = dir.path().join("p.parquet");
    let mut df = df!(
        "prompt" => ["q1", "q2"],
        "chosen" => ["a", "c"],
        "rejected" => ["b", "d"],
        "rating" => [Some("better"), None],
        "extra" => [1i64, 2],
    )
    .unwrap();
    ParquetWriter::new(std::fs::File::create(&path).unwrap()).finish(&mut df).unwrap();
    let rs: Vec<PreferenceRecord> = read_all(&path).unwrap();
    assert_eq!(rs.len(), 2);
    assert_eq!(rs[1].prompt, vec![Message::user("q2")]);
    assert_eq!(rs[0].rating, Some(Rating::Better));
    let sft_path = dir.path().join("s.parquet");
    let mut df = df!("prompt" => ["q"], "response" => ["r"]).unwrap();
    ParquetWriter::new(std::fs::File::create(&sft_path).unwrap()).finish(&mut df).unwrap();
    let s: Vec<SftRecord> = read_all(&sft_path).unwrap();
    assert_eq!(s[0].messages, vec![Message::user("q"), Message::assistant("r")]);
}

/// Our Parquet writer's schema: dialogs are list<struct{role, content}>.
#[test]
fn parquet_dialog_columns_are_lists_of_structs() {
    let dir = tmp();
    let path = dir.path().join("p.parquet");
    write_all(&path, &preferences()).unwrap();
    let df = ParquetReader::new(std::fs::File::open(&path).unwrap()).finish().unwrap();
    let dtype = df.column("prompt").unwrap().dtype().clone();
    assert!(matches!(&dtype, DataType::List(inner) if matches!(**inner, DataType::Struct(_))), "{dtype:?}");
    assert_eq!(df.column("chosen").unwrap().dtype(), &DataType::String);
    assert_eq!(df.column("chosen_safe").unwrap().dtype(), &DataType::Boolean);
}

/// Streaming: batches cover every row once, in order, across Parquet row groups.
#[test]
fn batches_stream_every_row_in_order() {
    let n = ROW_GROUP_ROWS * 2 + 17;
    let records: Vec<PromptRecord> =
        (0..n).map(|i| PromptRecord { prompt: datasets::records::user_prompt(format!("q{i}")), is_safety: i % 3 == 0 }).collect();
    for ext in ["jsonl", "parquet"] {
        let dir = tmp();
        let path = dir.path().join(format!("p.{ext}"));
        write_all(&path, &records).unwrap();
        let mut seen = 0;
        for_each_batch::<PromptRecord>(&path, 1000, |batch| {
            assert!(batch.len() <= 1000);
            for row in batch {
                assert_eq!(row.loc.number(), seen + 1);
                assert_eq!(row.record.unwrap(), records[seen]);
                seen += 1;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, n, "{ext}");
    }
}

/// A writer dropped before `finish` leaves neither the target nor a temp file.
#[test]
fn unfinished_write_leaves_nothing() {
    for ext in ["jsonl", "parquet"] {
        let dir = tmp();
        let path = dir.path().join(format!("p.{ext}"));
        let mut w = RecordWriter::<PromptRecord>::create(&path, None).unwrap();
        for r in prompts() {
            w.write(r).unwrap();
        }
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{ext}");
    }
}

#[test]
fn format_from_extension() {
    assert_eq!(Format::from_path(Path::new("a.jsonl")).unwrap(), Format::Jsonl);
    assert_eq!(Format::from_path(Path::new("a.json")).unwrap(), Format::Jsonl);
    assert_eq!(Format::from_path(Path::new("a.PARQUET")).unwrap(), Format::Parquet);
    let e = Format::from_path(Path::new("a.csv")).unwrap_err().to_string();
    assert!(e.contains("a.csv") && e.contains("unknown format"), "{e}");
}

// ---- one test per bad-input class ----------------------------------------------------------

/// Reads a JSONL file whose line 2 is `bad` (line 1 is good) and returns the row error, after
/// checking that it names the file, `line 2` and the field.
fn bad_line<R: Record>(good: &str, bad: &[u8], field: &str, reason: Reason) -> RowError {
    let dir = tmp();
    let mut text = good.as_bytes().to_vec();
    text.push(b'\n');
    text.extend_from_slice(bad);
    text.push(b'\n');
    let path = write_text(dir.path(), "bad.jsonl", &text);
    let err = read_all::<R>(&path).unwrap_err();
    let DatasetError::Row(e) = err else { panic!("not a row error: {err}") };
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "no file in {msg}");
    assert_eq!(e.loc, Location::Line(2), "{msg}");
    assert!(msg.contains("line 2"), "no line in {msg}");
    assert_eq!(e.field, field, "{msg}");
    if !field.is_empty() {
        assert!(msg.contains(&format!("field `{field}`")), "no field in {msg}");
    }
    assert_eq!(e.reason, reason, "{msg}");
    *e
}

const GOOD_PREF: &str = r#"{"prompt": "q", "chosen": "a", "rejected": "b"}"#;
const GOOD_SFT: &str = r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#;

#[test]
fn bad_invalid_json() {
    let e = bad_line::<PreferenceRecord>(GOOD_PREF, br#"{"prompt": "q", "chosen": "a""#, "", Reason::InvalidJson);
    assert!(e.detail.contains("invalid JSON at column"), "{}", e.detail);
}

#[test]
fn bad_invalid_utf8() {
    let e = bad_line::<PreferenceRecord>(
        GOOD_PREF,
        b"{\"prompt\": \"q\xff\", \"chosen\": \"a\", \"rejected\": \"b\"}",
        "",
        Reason::InvalidUtf8,
    );
    assert!(e.detail.contains("byte 13"), "{}", e.detail);
    assert!(e.raw.contains('\u{fffd}'), "raw kept, lossily: {}", e.raw);
}

#[test]
fn bad_missing_field() {
    bad_line::<PreferenceRecord>(GOOD_PREF, br#"{"prompt": "q", "chosen": "a"}"#, "rejected", Reason::MissingField);
    bad_line::<PreferenceRecord>(GOOD_PREF, br#"{"prompt": "q", "chosen": null, "rejected": "b"}"#, "chosen", Reason::MissingField);
    bad_line::<PromptRecord>(r#"{"prompt": "q"}"#, br#"{"text": "q"}"#, "prompt", Reason::MissingField);
    bad_line::<SftRecord>(GOOD_SFT, br#"{"prompt": "q"}"#, "response", Reason::MissingField);
    bad_line::<SftRecord>(GOOD_SFT, br#"{"messages": [{"role": "user"}]}"#, "messages[0].content", Reason::MissingField);
}

#[test]
fn bad_wrong_type() {
    let e = bad_line::<PreferenceRecord>(GOOD_PREF, br#"{"prompt": "q", "chosen": 5, "rejected": "b"}"#, "chosen", Reason::WrongType);
    assert!(e.detail.contains("expected a string, got a number"), "{}", e.detail);
    bad_line::<PreferenceRecord>(GOOD_PREF, br#"{"prompt": {"x": 1}, "chosen": "a", "rejected": "b"}"#, "prompt", Reason::WrongType);
    bad_line::<PreferenceRecord>(
        GOOD_PREF,
        br#"{"prompt": "q", "chosen": "a", "rejected": "b", "chosen_safe": "yes"}"#,
        "chosen_safe",
        Reason::WrongType,
    );
    bad_line::<PromptRecord>(
        r#"{"prompt": "q"}"#,
        br#"{"prompt": [{"role": "user", "content": 3}]}"#,
        "prompt[0].content",
        Reason::WrongType,
    );
    bad_line::<PromptRecord>(r#"{"prompt": "q"}"#, br#"["prompt", "q"]"#, "", Reason::WrongType);
}

#[test]
fn bad_unknown_rating() {
    let e = bad_line::<PreferenceRecord>(
        GOOD_PREF,
        br#"{"prompt": "q", "chosen": "a", "rejected": "b", "rating": "much_better"}"#,
        "rating",
        Reason::UnknownRating,
    );
    assert!(e.detail.contains("much_better"), "{}", e.detail);
}

#[test]
fn bad_unknown_kind_or_role() {
    bad_line::<PreferenceRecord>(
        GOOD_PREF,
        br#"{"prompt": "q", "chosen": "a", "rejected": "b", "kind": "honesty"}"#,
        "kind",
        Reason::UnknownValue,
    );
    bad_line::<SftRecord>(
        GOOD_SFT,
        br#"{"messages": [{"role": "human", "content": "q"}, {"role": "assistant", "content": "a"}]}"#,
        "messages[0].role",
        Reason::UnknownValue,
    );
}

#[test]
fn bad_empty_text() {
    bad_line::<PreferenceRecord>(GOOD_PREF, br#"{"prompt": "q", "chosen": " \n ", "rejected": "b"}"#, "chosen", Reason::EmptyText);
    bad_line::<PreferenceRecord>(GOOD_PREF, br#"{"prompt": "", "chosen": "a", "rejected": "b"}"#, "prompt[0].content", Reason::EmptyText);
    bad_line::<SftRecord>(GOOD_SFT, br#"{"messages": []}"#, "messages", Reason::EmptyText);
}

#[test]
fn bad_chosen_equals_rejected() {
    bad_line::<PreferenceRecord>(
        GOOD_PREF,
        br#"{"prompt": "q", "chosen": "same ", "rejected": " same"}"#,
        "rejected",
        Reason::ChosenEqualsRejected,
    );
}

#[test]
fn bad_prompt_not_ending_with_user() {
    let e = bad_line::<PreferenceRecord>(
        GOOD_PREF,
        br#"{"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "chosen": "a", "rejected": "b"}"#,
        "prompt",
        Reason::PromptNotEndingWithUser,
    );
    assert!(e.detail.contains("message 1 is assistant"), "{}", e.detail);
    bad_line::<PromptRecord>(r#"{"prompt": "q"}"#, br#"{"prompt": [{"role": "system", "content": "s"}]}"#, "prompt", Reason::RoleOrder);
}

#[test]
fn bad_role_order() {
    let e = bad_line::<PreferenceRecord>(
        GOOD_PREF,
        br#"{"prompt": [{"role": "user", "content": "q"}, {"role": "user", "content": "q2"}], "chosen": "a", "rejected": "b"}"#,
        "prompt",
        Reason::RoleOrder,
    );
    assert!(e.detail.contains("message 1 has role user, expected assistant"), "{}", e.detail);
}

#[test]
fn bad_sft_not_ending_with_assistant() {
    bad_line::<SftRecord>(
        GOOD_SFT,
        br#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]}"#,
        "messages",
        Reason::DialogNotEndingWithAssistant,
    );
}

/// Parquet rows are numbered across row groups, and bad cells name their column.
#[test]
fn bad_parquet_row_names_row_and_field() {
    let dir = tmp();
    let path = dir.path().join("bad.parquet");
    let n = ROW_GROUP_ROWS + 5;
    let chosen: Vec<Option<&str>> = (0..n).map(|i| if i == n - 2 { None } else { Some("a") }).collect();
    let mut df = df!("prompt" => vec!["q"; n], "chosen" => chosen, "rejected" => vec!["b"; n]).unwrap();
    ParquetWriter::new(std::fs::File::create(&path).unwrap()).with_row_group_size(Some(ROW_GROUP_ROWS)).finish(&mut df).unwrap();
    let err = read_all::<PreferenceRecord>(&path).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains(&format!("row {}", n - 1)), "{err}");
    assert!(err.contains("field `chosen`") && err.contains("missing_field"), "{err}");

    // A column of the wrong type is a per-row type error, not a crash.
    let path = dir.path().join("typed.parquet");
    let mut df = df!("prompt" => ["q"], "chosen" => [1i64], "rejected" => ["b"]).unwrap();
    ParquetWriter::new(std::fs::File::create(&path).unwrap()).finish(&mut df).unwrap();
    let err = read_all::<PreferenceRecord>(&path).unwrap_err().to_string();
    assert!(err.contains("row 1: field `chosen`: expected a string, got a number"), "{err}");
}

// ---- whole-file validation -----------------------------------------------------------------

fn mixed_file(dir: &Path) -> PathBuf {
    let text = [
        r#"{"prompt": "q1", "chosen": "a", "rejected": "b", "rating": "better", "kind": "helpfulness", "source": "s1"}"#,
        r#"{"prompt": "q2", "chosen": "a", "rejected": "a"}"#,
        r#"not json"#,
        r#"{"prompt": "q3", "chosen": "a", "rejected": "b", "rating": "meh"}"#,
        r#"{"prompt": "q4", "chosen": "a", "rejected": "c", "rating": "unsure", "kind": "safety", "source": "s2"}"#,
    ]
    .join("\n");
    write_text(dir, "mixed.jsonl", text.as_bytes())
}

#[test]
fn validate_fails_on_first_bad_row_by_default() {
    let dir = tmp();
    let path = mixed_file(dir.path());
    let err = validate_files::<PreferenceRecord>(std::slice::from_ref(&path), &ValidateOptions::default()).unwrap_err().to_string();
    assert!(err.contains("line 2: field `rejected`"), "{err}");
    assert!(!datasets::validate::default_rejects_path(&path).exists());
}

#[test]
fn validate_skip_invalid_counts_and_writes_rejects() {
    let dir = tmp();
    let path = mixed_file(dir.path());
    let opts = ValidateOptions { skip_invalid: true, ..Default::default() };
    let s = validate_files::<PreferenceRecord>(std::slice::from_ref(&path), &opts).unwrap();
    assert_eq!((s.rows, s.valid, s.invalid), (5, 2, 3));
    let by: Vec<_> = s.invalid_by_reason.iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(by, [("chosen_equals_rejected", 1), ("invalid_json", 1), ("unknown_rating", 1)]);
    assert_eq!(s.counts.0["rating"]["better"], 1);
    assert_eq!(s.counts.0["rating"]["negligibly_better"], 1);
    assert_eq!(s.counts.0["kind"]["safety"], 1);
    assert_eq!(s.counts.0["source"]["s1"], 1);
    let rejects_path = dir.path().join("mixed.rejects.jsonl");
    assert_eq!(s.rejects, vec![rejects_path.display().to_string()]);
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&rejects_path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["file"], path.display().to_string());
    assert_eq!(lines[0]["line"], 2);
    assert_eq!(lines[0]["field"], "rejected");
    assert_eq!(lines[0]["reason"], "chosen_equals_rejected");
    assert_eq!(lines[1]["raw"], "not json");
    assert_eq!(lines[2]["line"], 4);
    assert_eq!(lines[2]["field"], "rating");
}

#[test]
fn percentiles_nearest_rank() {
    let p = Percentiles::of((1..=100).rev().collect()).unwrap();
    assert_eq!((p.p50, p.p90, p.p99, p.max), (50, 90, 99, 100));
    let p = Percentiles::of(vec![7]).unwrap();
    assert_eq!((p.p50, p.max), (7, 7));
    assert!(Percentiles::of(vec![]).is_none());
}

// ---- token lengths and the over-long policy (need the Llama-2 tokenizer) ---------------------

/// The Llama-2 tokenizer; without it these tests fail rather than pass having checked nothing.
fn tokenizer() -> Tokenizer {
    let p = llama_text::tokenizer::default_tokenizer_path()
        .filter(|p| p.is_file())
        .expect("the Llama-2 tokenizer (assets/tokenizer/tokenizer.json) is missing: run scripts/setup");
    Tokenizer::from_file(&p).unwrap()
}

fn long_pair() -> PreferenceRecord {
    let prompt = vec![
        Message::user("first question ".repeat(30)),
        Message::assistant("first answer ".repeat(30)),
        Message::user(format!("{} the real question?", "context ".repeat(60))),
    ];
    pref(prompt, &"chosen words ".repeat(80), &"rejected words ".repeat(80))
}

#[test]
fn overlong_error_names_row_and_field() {
    let tok = tokenizer();
    let dir = tmp();
    let path = dir.path().join("long.jsonl");
    write_all(&path, &[pref(datasets::records::user_prompt("q"), "a", "b"), long_pair()]).unwrap();
    let opts = ValidateOptions {
        tokenizer: Some(tok),
        length: Some(LengthPolicy { max_tokens: 128, overlong: Overlong::Error }),
        ..Default::default()
    };
    let err = validate_files::<PreferenceRecord>(std::slice::from_ref(&path), &opts).unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()) && err.contains("line 2: field `chosen`"), "{err}");
    assert!(err.contains("more than --max-tokens 128") && err.contains("(overlong)"), "{err}");
}

#[test]
fn overlong_truncate_keeps_prompt_end_and_cuts_replies() {
    let tok = tokenizer();
    let max = 128;
    let original = long_pair();
    assert!(original.token_len(&tok).unwrap() > max);
    let cut = original.truncate(&tok, max).unwrap().unwrap();
    assert!(cut.token_len(&tok).unwrap() <= max, "{}", cut.token_len(&tok).unwrap());
    // The prompt keeps its end: earliest turns gone, the question's end kept, within max/2.
    assert_eq!(cut.prompt.len(), 1);
    assert!(cut.prompt[0].content.ends_with("the real question?"));
    assert!(original.prompt[2].content.ends_with(&cut.prompt[0].content));
    assert!(datasets::length::dialog_len(&tok, &cut.prompt).unwrap() <= max / 2);
    // Replies keep their start.
    assert!(original.chosen.starts_with(&cut.chosen) && cut.chosen.len() < original.chosen.len());
    assert!(original.rejected.starts_with(&cut.rejected) && !cut.rejected.is_empty());

    let sft = SftRecord { messages: vec![Message::user("q?"), Message::assistant("word ".repeat(300))] };
    let cut = sft.truncate(&tok, 64).unwrap().unwrap();
    assert!(cut.token_len(&tok).unwrap() <= 64);
    assert_eq!(cut.messages[0], sft.messages[0], "a short prompt is kept whole");

    let p = PromptRecord { prompt: vec![Message::user("x ".repeat(500) + "end")], is_safety: true };
    let cut = p.truncate(&tok, 32).unwrap().unwrap();
    assert!(cut.token_len(&tok).unwrap() <= 32 && cut.prompt[0].content.ends_with("end") && cut.is_safety);
}

#[test]
fn overlong_policies_are_counted_and_written() {
    let tok = tokenizer();
    let dir = tmp();
    let path = dir.path().join("in.jsonl");
    let short = pref(datasets::records::user_prompt("q"), "a", "b");
    write_all(&path, &[short.clone(), long_pair(), short.clone()]).unwrap();
    for (policy, written, truncated, dropped) in [(Overlong::Drop, 2, 0, 1), (Overlong::Truncate, 3, 1, 0)] {
        let out = dir.path().join(format!("out-{}.parquet", policy.as_str()));
        let opts = ValidateOptions {
            tokenizer: Some(tok.clone()),
            length: Some(LengthPolicy { max_tokens: 128, overlong: policy }),
            out: Some((out.clone(), None)),
            ..Default::default()
        };
        let s = validate_files::<PreferenceRecord>(std::slice::from_ref(&path), &opts).unwrap();
        let o = s.overlong.as_ref().unwrap();
        assert_eq!((s.valid, o.over, o.truncated, o.dropped, s.written), (3, 1, truncated, dropped, Some(written)));
        let t = s.tokens.unwrap();
        assert!(t.max > 128 && t.p50 < 128, "{t:?}");
        let back: Vec<PreferenceRecord> = read_all(&out).unwrap();
        assert_eq!(back.len(), written);
        assert_eq!(back[0], short);
        assert!(back.iter().all(|r| r.token_len(&tok).unwrap() <= 128));
    }
}

#[test]
fn reader_reports_rows_and_keeps_going() {
    let dir = tmp();
    let path = mixed_file(dir.path());
    let rows: Vec<_> = RecordReader::<PreferenceRecord>::open(&path).unwrap().map(|r| r.unwrap()).collect();
    let ok: Vec<bool> = rows.iter().map(|r| r.record.is_ok()).collect();
    assert_eq!(ok, [true, false, false, false, true]);
    assert_eq!(rows[4].loc, Location::Line(5));
}

/// `--rejects` is truncated up front, so it may never name an input.
#[test]
fn rejects_file_cannot_be_an_input() {
    let dir = tmp();
    let path = mixed_file(dir.path());
    let before = std::fs::read(&path).unwrap();
    let opts = ValidateOptions { skip_invalid: true, rejects: Some(path.clone()), ..Default::default() };
    let err = validate_files::<PreferenceRecord>(std::slice::from_ref(&path), &opts).unwrap_err().to_string();
    assert!(err.contains("is also an input"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}
