//! The pair file: what annotators rate. One JSON object per line:
//!
//! ```json
//! {"id": "p3f9c...", "prompt": "text" | [{"role": "user", "content": "..."}, ...],
//!  "reply_a": "...", "reply_b": "...",
//!  "model_a": "iter2@t0.8", "model_b": "iter1@t1.2",   // optional, never shown to annotators
//!  "kind": "helpfulness" | "safety",                    // optional, copied to the records
//!  "source": "batch-3"}                                  // optional, copied to the records
//! ```
//!
//! `reply_a`/`reply_b` is the file's order, which export draws at random; the page shows the two
//! in another random order per annotator, and ratings name the reply as `a` or `b` of the file.
use std::collections::HashMap;
use std::path::Path;

use datasets::parse::{object, present, prompt, string, type_name};
use datasets::{FieldError, PreferenceKind, PromptRecord};
use llama_text::chat::{Message, Role};
use serde_json::{Map, Value};

use crate::error::{AnnotateError, At, Result};
use crate::fsio::{parse_line, read_lines, write_atomic, write_jsonl_atomic};

/// Longest pair id (ids travel in URLs of the page's requests and in every rating).
pub const MAX_ID_LEN: usize = 128;

/// One comparison to rate.
#[derive(Debug, Clone, PartialEq)]
pub struct PairRecord {
    pub id: String,
    pub prompt: Vec<Message>,
    pub reply_a: String,
    pub reply_b: String,
    /// Where each reply came from (model, iteration, temperature); hidden from annotators.
    pub model_a: Option<String>,
    pub model_b: Option<String>,
    pub kind: Option<PreferenceKind>,
    pub source: Option<String>,
}

impl PairRecord {
    /// The canonical JSON line (the prompt as a message list).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), self.id.clone().into());
        m.insert("prompt".into(), serde_json::to_value(&self.prompt).unwrap_or(Value::Null));
        m.insert("reply_a".into(), self.reply_a.clone().into());
        m.insert("reply_b".into(), self.reply_b.clone().into());
        for (k, v) in [("model_a", &self.model_a), ("model_b", &self.model_b), ("source", &self.source)] {
            if let Some(v) = v {
                m.insert(k.into(), v.clone().into());
            }
        }
        if let Some(k) = self.kind {
            m.insert("kind".into(), k.as_str().into());
        }
        Value::Object(m)
    }

    /// Parses one line (structure and invariants); errors name the field.
    pub fn from_json(row: &Value) -> Result<PairRecord, FieldError> {
        let obj = object(row)?;
        let id = string(obj, "id")?;
        check_id(&id, "id")?;
        let p = PairRecord {
            id,
            prompt: prompt(obj, "prompt")?,
            reply_a: string(obj, "reply_a")?,
            reply_b: string(obj, "reply_b")?,
            model_a: opt_string(obj, "model_a")?,
            model_b: opt_string(obj, "model_b")?,
            kind: opt_string(obj, "kind")?.as_deref().map(datasets::parse::parse_kind).transpose()?,
            source: opt_string(obj, "source")?,
        };
        p.check()?;
        Ok(p)
    }

    /// A prompt that ends with a user turn and two different, non-empty replies: the invariants
    /// of the preference record a rating turns it into (`datasets::validate::check_preference`).
    pub fn check(&self) -> Result<(), FieldError> {
        datasets::validate::check_prompt(&PromptRecord { prompt: self.prompt.clone(), is_safety: false })?;
        for (field, text) in [("reply_a", &self.reply_a), ("reply_b", &self.reply_b)] {
            if text.trim().is_empty() {
                return Err(FieldError::new(field, datasets::Reason::EmptyText, "empty text"));
            }
        }
        if self.reply_a.trim() == self.reply_b.trim() {
            return Err(FieldError::new("reply_b", datasets::Reason::ChosenEqualsRejected, "reply_a and reply_b are identical"));
        }
        Ok(())
    }

    /// The prompt as one block of text (the CSV's `prompt` column): a single user turn as it
    /// is, a dialog as `[role]` headed turns.
    pub fn prompt_text(&self) -> String {
        prompt_text(&self.prompt)
    }
}

/// See [`PairRecord::prompt_text`].
pub fn prompt_text(prompt: &[Message]) -> String {
    match prompt {
        [m] if m.role == Role::User => m.content.clone(),
        _ => prompt.iter().map(|m| format!("[{}]\n{}", m.role, m.content)).collect::<Vec<_>>().join("\n\n"),
    }
}

/// Ids are short, printable and free of spaces (they are typed into and read from spreadsheets).
pub fn check_id(id: &str, field: &str) -> Result<(), FieldError> {
    let bad = if id.is_empty() {
        Some("empty id".to_string())
    } else if id.len() > MAX_ID_LEN {
        Some(format!("id longer than {MAX_ID_LEN} bytes"))
    } else if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some(format!("id {id:?} contains whitespace or control characters"))
    } else {
        None
    };
    bad.map_or(Ok(()), |d| Err(FieldError::new(field, datasets::Reason::UnknownValue, d)))
}

fn opt_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, FieldError> {
    match present(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(FieldError::new(key, datasets::Reason::WrongType, format!("expected a string, got {}", type_name(v)))),
    }
}

/// Reads a pair file: every line must be a valid pair, ids unique.
pub fn read_pairs(path: &Path) -> Result<Vec<PairRecord>> {
    let mut pairs: Vec<PairRecord> = Vec::new();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for (n, text) in read_lines(path)?.all(path)? {
        let v = parse_line(path, n, &text)?;
        let p = PairRecord::from_json(&v).map_err(|e| AnnotateError::row(path, At::Line(n), e.field, e.detail))?;
        if let Some(first) = first_line.insert(p.id.clone(), n) {
            return Err(AnnotateError::row(path, At::Line(n), "id", format!("duplicate id {:?} (first on line {first})", p.id)));
        }
        pairs.push(p);
    }
    if pairs.is_empty() {
        return Err(AnnotateError::file(path, "no pairs (an empty pair file)"));
    }
    Ok(pairs)
}

/// Writes a pair file atomically.
pub fn write_pairs(path: &Path, pairs: &[PairRecord]) -> Result<()> {
    let rows: Vec<Value> = pairs.iter().map(PairRecord::to_json).collect();
    write_jsonl_atomic(path, &rows)
}

/// The CSV's columns: what the annotator reads, then the four they fill in.
pub const CSV_COLUMNS: [&str; 8] = ["pair_id", "prompt", "reply_a", "reply_b", "choice", "strength", "safety", "annotator"];

/// A text cell a spreadsheet will not run: a leading `=`, `+`, `-`, `@`, tab or carriage return
/// makes Excel and LibreOffice read a cell as a formula (CSV injection), so such text gets a
/// leading `'`, which both show as text. Only read-only columns are written this way; import
/// reads none of them back.
pub fn spreadsheet_text(s: &str) -> String {
    match s.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{s}"),
        _ => s.to_string(),
    }
}

/// Writes the pairs as a CSV for annotating in a spreadsheet (model names left out), atomically.
/// The `choice` (`a`/`b`), `strength` and `safety` columns are left empty to be filled in.
pub fn write_pairs_csv(path: &Path, pairs: &[PairRecord]) -> Result<()> {
    write_atomic(path, |w| {
        // A UTF-8 byte-order mark: without it Excel reads the file as the locale's code page.
        w.write_all("\u{feff}".as_bytes())?;
        let mut c = csv::Writer::from_writer(w);
        c.write_record(CSV_COLUMNS)?;
        for p in pairs {
            let cells = [p.id.clone(), spreadsheet_text(&p.prompt_text()), spreadsheet_text(&p.reply_a), spreadsheet_text(&p.reply_b)];
            c.write_record(cells.iter().map(String::as_str).chain(["", "", "", ""]))?;
        }
        c.flush()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pair(id: &str) -> PairRecord {
        PairRecord {
            id: id.into(),
            prompt: vec![Message::user("Hi?")],
            reply_a: "Hello.".into(),
            reply_b: "=HYPERLINK(\"http://x\")".into(),
            model_a: Some("m1".into()),
            model_b: None,
            kind: Some(PreferenceKind::Safety),
            source: None,
        }
    }

    #[test]
    fn pair_round_trips_and_plain_prompt_is_a_user_turn() {
        let p = pair("p1");
        assert_eq!(PairRecord::from_json(&p.to_json()).unwrap(), p);
        let v = json!({"id": "x", "prompt": "Q?", "reply_a": "a", "reply_b": "b"});
        let q = PairRecord::from_json(&v).unwrap();
        assert_eq!(q.prompt, vec![Message::user("Q?")]);
        assert_eq!((q.model_a, q.kind), (None, None));
    }

    #[test]
    fn bad_pairs_name_the_field() {
        let cases = [
            (json!({"id": "x", "prompt": "Q", "reply_a": "a", "reply_b": " a "}), "reply_b"),
            (json!({"id": "x", "prompt": "Q", "reply_a": "", "reply_b": "b"}), "reply_a"),
            (json!({"id": "a b", "prompt": "Q", "reply_a": "a", "reply_b": "b"}), "id"),
            (json!({"id": "x", "prompt": [{"role": "assistant", "content": "hi"}], "reply_a": "a", "reply_b": "b"}), "prompt"),
            (json!({"id": "x", "prompt": "Q", "reply_a": "a", "reply_b": "b", "kind": "fun"}), "kind"),
            (json!({"id": "x", "prompt": "Q", "reply_a": "a", "reply_b": "b", "model_a": 3}), "model_a"),
        ];
        for (v, field) in cases {
            let e = PairRecord::from_json(&v).unwrap_err();
            assert_eq!(e.field, field, "{v}: {e:?}");
        }
    }

    #[test]
    fn read_pairs_reports_duplicates_with_both_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.jsonl");
        let line = pair("same").to_json().to_string();
        std::fs::write(&f, format!("{line}\n\n{line}")).unwrap();
        let e = read_pairs(&f).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("first on line 1") && e.contains("`id`"), "{e}");
    }

    #[test]
    fn csv_neutralises_formulas_and_keeps_newlines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.csv");
        let mut p = pair("p1");
        p.prompt = vec![Message::system("Be brief."), Message::user("line one\nline \"two\"")];
        write_pairs_csv(&f, &[p]).unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        let mut r = csv::Reader::from_reader(text.trim_start_matches('\u{feff}').as_bytes());
        assert_eq!(r.headers().unwrap().iter().collect::<Vec<_>>(), CSV_COLUMNS);
        let row = r.records().next().unwrap().unwrap();
        assert_eq!(&row[1], "[system]\nBe brief.\n\n[user]\nline one\nline \"two\"");
        assert_eq!(&row[3], "'=HYPERLINK(\"http://x\")");
        assert!(!text.contains("m1"), "model names must stay out of the annotators' sheet");
    }
}
