//! From one row (a JSONL line, or a Parquet row turned into JSON) to a record. Parsing checks
//! structure only: presence, types, and the closed sets of names (rating, kind, role); the
//! invariants of a record (non-empty text, role order, ...) are [`crate::validate`]'s.
//!
//! Rows are parsed from a [`serde_json::Value`] rather than by `serde` derive so that every error
//! names its field and reason; unknown keys are ignored (HF exports carry ids and extra columns).
use llama_text::chat::{Message, Role};
use llama_text::Tokenizer;
use polars::prelude::{DataFrame, PolarsResult};
use serde_json::{Map, Value};

use crate::error::{DatasetError, FieldError, Reason};
use crate::length::{cut_prompt, dialog_len, longest_with_replies, truncate_example};
use crate::records::{user_prompt, PreferenceKind, PreferenceRecord, PromptRecord, Rating, SftRecord};
use crate::validate::Tally;

/// The three record kinds (`--kind sft|preference|prompts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    Sft,
    Preference,
    Prompts,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Sft => "sft",
            RecordKind::Preference => "preference",
            RecordKind::Prompts => "prompts",
        }
    }
}

/// A record kind that can be read, checked and written. Readers and writers are generic over it,
/// so a stage reads `read_all::<PreferenceRecord>(path)` and gets its own type back.
pub trait Record: Sized + Send + Sync + Clone + std::fmt::Debug + 'static {
    const KIND: RecordKind;
    /// The field an over-long record is reported on.
    const LONG_FIELD: &'static str;
    /// The Parquet columns this kind reads (those present are read; the rest are absent fields).
    const COLUMNS: &'static [&'static str];
    /// Parses one row (structure only).
    fn from_json(row: &Value) -> Result<Self, FieldError>;
    /// The record's invariants (see [`crate::validate`]).
    fn check(&self) -> Result<(), FieldError>;
    /// The canonical JSON object (prompts and dialogs as message lists).
    fn to_json(&self) -> Value;
    /// A batch as a Parquet frame (see [`crate::parquet`]).
    fn to_frame(rows: &[Self]) -> PolarsResult<DataFrame>;
    /// Tokens of the longest sequence a stage builds from it (see [`crate::length`]).
    fn token_len(&self, tok: &Tokenizer) -> Result<usize, DatasetError>;
    /// Cut to fit `max` tokens (see [`crate::length`]); `None` when it cannot be.
    fn truncate(&self, tok: &Tokenizer, max: usize) -> Result<Option<Self>, DatasetError>;
    /// Adds the record to the summary's counts (kind, rating, source, ...).
    fn tally(&self, t: &mut Tally);
}

impl Record for SftRecord {
    const KIND: RecordKind = RecordKind::Sft;
    const LONG_FIELD: &'static str = "messages";
    const COLUMNS: &'static [&'static str] = &["messages", "prompt", "response"];
    fn from_json(row: &Value) -> Result<Self, FieldError> {
        parse_sft(row)
    }
    fn check(&self) -> Result<(), FieldError> {
        crate::validate::check_sft(self)
    }
    fn to_json(&self) -> Value {
        serde_json::json!({ "messages": self.messages })
    }
    fn to_frame(rows: &[Self]) -> PolarsResult<DataFrame> {
        crate::parquet::sft_frame(rows)
    }
    fn token_len(&self, tok: &Tokenizer) -> Result<usize, DatasetError> {
        dialog_len(tok, &self.messages)
    }
    fn truncate(&self, tok: &Tokenizer, max: usize) -> Result<Option<Self>, DatasetError> {
        let Some((last, prompt)) = self.messages.split_last() else { return Ok(None) };
        Ok(truncate_example(tok, prompt, &[&last.content], max)?.map(|(mut messages, mut reply)| {
            messages.push(Message::assistant(reply.pop().unwrap_or_default()));
            SftRecord { messages }
        }))
    }
    fn tally(&self, t: &mut Tally) {
        t.add("turns", self.messages.iter().filter(|m| m.role == Role::Assistant).count().to_string());
        t.add("system", (self.messages.first().map(|m| m.role) == Some(Role::System)).to_string());
    }
}

impl Record for PreferenceRecord {
    const KIND: RecordKind = RecordKind::Preference;
    const LONG_FIELD: &'static str = "chosen";
    const COLUMNS: &'static [&'static str] = &["prompt", "chosen", "rejected", "rating", "kind", "chosen_safe", "rejected_safe", "source"];
    fn from_json(row: &Value) -> Result<Self, FieldError> {
        parse_preference(row)
    }
    fn check(&self) -> Result<(), FieldError> {
        crate::validate::check_preference(self)
    }
    fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
    fn to_frame(rows: &[Self]) -> PolarsResult<DataFrame> {
        crate::parquet::preference_frame(rows)
    }
    fn token_len(&self, tok: &Tokenizer) -> Result<usize, DatasetError> {
        longest_with_replies(tok, &self.prompt, &[&self.chosen, &self.rejected])
    }
    fn truncate(&self, tok: &Tokenizer, max: usize) -> Result<Option<Self>, DatasetError> {
        let replies = [self.chosen.as_str(), self.rejected.as_str()];
        Ok(truncate_example(tok, &self.prompt, &replies, max)?.map(|(prompt, mut r)| PreferenceRecord {
            prompt,
            rejected: r.pop().unwrap_or_default(),
            chosen: r.pop().unwrap_or_default(),
            ..self.clone()
        }))
    }
    fn tally(&self, t: &mut Tally) {
        t.add("kind", self.kind.map_or("unspecified", |k| k.as_str()).to_string());
        t.add("rating", self.rating.map_or("unrated", |r| r.as_str()).to_string());
        t.add("source", self.source.clone().unwrap_or_else(|| "unspecified".into()));
    }
}

impl Record for PromptRecord {
    const KIND: RecordKind = RecordKind::Prompts;
    const LONG_FIELD: &'static str = "prompt";
    const COLUMNS: &'static [&'static str] = &["prompt", "is_safety"];
    fn from_json(row: &Value) -> Result<Self, FieldError> {
        parse_prompt_record(row)
    }
    fn check(&self) -> Result<(), FieldError> {
        crate::validate::check_prompt(self)
    }
    fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
    fn to_frame(rows: &[Self]) -> PolarsResult<DataFrame> {
        crate::parquet::prompt_frame(rows)
    }
    fn token_len(&self, tok: &Tokenizer) -> Result<usize, DatasetError> {
        dialog_len(tok, &self.prompt)
    }
    fn truncate(&self, tok: &Tokenizer, max: usize) -> Result<Option<Self>, DatasetError> {
        Ok(cut_prompt(tok, &self.prompt, max)?.map(|prompt| PromptRecord { prompt, ..self.clone() }))
    }
    fn tally(&self, t: &mut Tally) {
        t.add("is_safety", self.is_safety.to_string());
    }
}

/// `{"messages": [...]}`, else `{"prompt": string|messages, "response": string}`.
pub fn parse_sft(row: &Value) -> Result<SftRecord, FieldError> {
    let obj = object(row)?;
    if let Some(v) = present(obj, "messages") {
        return Ok(SftRecord { messages: messages(v, "messages")? });
    }
    if present(obj, "prompt").is_none() {
        return Err(missing("messages", "expected `messages`, or `prompt` and `response`"));
    }
    let mut messages = prompt(obj, "prompt")?;
    messages.push(Message::assistant(string(obj, "response")?));
    Ok(SftRecord { messages })
}

/// A preference row in the canonical schema (see `SCHEMA.md`). A row that is not, but has the
/// shape of an HH-RLHF or TRL row, says which `rlhf data import` converts it.
pub fn parse_preference(row: &Value) -> Result<PreferenceRecord, FieldError> {
    parse_canonical_preference(row).map_err(|e| with_import_hint(row, e))
}

/// The error of a preference row that failed to parse, with what to do when the row is in a
/// format `rlhf data import` reads (an HH-RLHF transcript pair, or TRL message lists). A canonical
/// row with a bad field is left alone: the shape `{"prompt", "chosen": string}` is ours too.
pub fn with_import_hint(row: &Value, mut e: FieldError) -> FieldError {
    use crate::import::{detect_row, ImportFormat};
    let chosen_is_list = row.get("chosen").is_some_and(Value::is_array);
    let looks_like = match detect_row(row) {
        Some(ImportFormat::HhRlhf) => {
            "Anthropic HH-RLHF data (`chosen`/`rejected` transcripts of \"Human:\" and \"Assistant:\" turns, no `prompt`)"
        }
        Some(ImportFormat::Trl) if chosen_is_list => "TRL conversational preference data (`chosen`/`rejected` message lists)",
        _ => return e,
    };
    let format = detect_row(row).map_or("auto", ImportFormat::as_str);
    e.detail = format!(
        "{}; this row looks like {looks_like}: convert the file with `rlhf data import --format {format} FILE --out OUT.jsonl` \
         (add --skip-invalid to set aside its broken rows)",
        e.detail
    );
    e
}

fn parse_canonical_preference(row: &Value) -> Result<PreferenceRecord, FieldError> {
    let obj = object(row)?;
    Ok(PreferenceRecord {
        prompt: prompt(obj, "prompt")?,
        chosen: string(obj, "chosen")?,
        rejected: string(obj, "rejected")?,
        rating: opt_str(obj, "rating")?.map(|s| Rating::parse(s).ok_or_else(|| unknown_rating(s))).transpose()?,
        kind: opt_str(obj, "kind")?.map(parse_kind).transpose()?,
        chosen_safe: opt_bool(obj, "chosen_safe")?,
        rejected_safe: opt_bool(obj, "rejected_safe")?,
        source: opt_str(obj, "source")?.map(str::to_owned),
    })
}

/// `{"prompt": string|messages, "is_safety": bool (optional)}`.
pub fn parse_prompt_record(row: &Value) -> Result<PromptRecord, FieldError> {
    let obj = object(row)?;
    Ok(PromptRecord { prompt: prompt(obj, "prompt")?, is_safety: opt_bool(obj, "is_safety")?.unwrap_or(false) })
}

/// `helpfulness` or `safety`.
pub fn parse_kind(s: &str) -> Result<PreferenceKind, FieldError> {
    match s {
        "helpfulness" => Ok(PreferenceKind::Helpfulness),
        "safety" => Ok(PreferenceKind::Safety),
        _ => Err(FieldError::new("kind", Reason::UnknownValue, format!("unknown kind {s:?}: expected helpfulness or safety"))),
    }
}

fn unknown_rating(s: &str) -> FieldError {
    FieldError::new(
        "rating",
        Reason::UnknownRating,
        format!("unknown rating {s:?}: expected significantly_better, better, slightly_better, negligibly_better or unsure"),
    )
}

/// The row as a JSON object.
pub fn object(row: &Value) -> Result<&Map<String, Value>, FieldError> {
    row.as_object().ok_or_else(|| FieldError::new("", Reason::WrongType, format!("expected a JSON object, got {}", type_name(row))))
}

/// A field's value, `None` when absent or null (a Parquet null is the absence of a value).
pub fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn missing(field: &str, detail: &str) -> FieldError {
    FieldError::new(field, Reason::MissingField, detail)
}

fn wrong_type(field: &str, expected: &str, got: &Value) -> FieldError {
    FieldError::new(field, Reason::WrongType, format!("expected {expected}, got {}", type_name(got)))
}

/// A required string field.
pub fn string(obj: &Map<String, Value>, key: &str) -> Result<String, FieldError> {
    match present(obj, key) {
        None => Err(missing(key, "missing field")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(wrong_type(key, "a string", v)),
    }
}

fn opt_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, FieldError> {
    match present(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(wrong_type(key, "a string", v)),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, FieldError> {
    match present(obj, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(wrong_type(key, "a boolean", v)),
    }
}

/// A required prompt: a string (one user turn) or a message list.
pub fn prompt(obj: &Map<String, Value>, key: &str) -> Result<Vec<Message>, FieldError> {
    match present(obj, key) {
        None => Err(missing(key, "missing field")),
        Some(Value::String(s)) => Ok(user_prompt(s.clone())),
        Some(v @ Value::Array(_)) => messages(v, key),
        Some(v) => Err(wrong_type(key, "a string or a list of {\"role\", \"content\"} messages", v)),
    }
}

/// A list of `{"role", "content"}` messages; errors name the message (`prompt[2].role`).
pub fn messages(v: &Value, field: &str) -> Result<Vec<Message>, FieldError> {
    let Value::Array(items) = v else {
        return Err(wrong_type(field, "a list of {\"role\", \"content\"} messages", v));
    };
    items.iter().enumerate().map(|(i, m)| message(m, &format!("{field}[{i}]"))).collect()
}

fn message(v: &Value, field: &str) -> Result<Message, FieldError> {
    let Value::Object(obj) = v else {
        return Err(wrong_type(field, "a {\"role\", \"content\"} object", v));
    };
    let role_field = format!("{field}.role");
    let role = match present(obj, "role") {
        None => return Err(missing(&role_field, "missing field")),
        Some(Value::String(s)) => parse_role(s).ok_or_else(|| {
            FieldError::new(&role_field, Reason::UnknownValue, format!("unknown role {s:?}: expected system, user or assistant"))
        })?,
        Some(v) => return Err(wrong_type(&role_field, "a string", v)),
    };
    let content = match present(obj, "content") {
        None => return Err(missing(&format!("{field}.content"), "missing field")),
        Some(Value::String(s)) => s.clone(),
        Some(v) => return Err(wrong_type(&format!("{field}.content"), "a string", v)),
    };
    Ok(Message { role, content })
}

/// `system`, `user` or `assistant` (TRL and HF chat templates use the same names).
pub fn parse_role(s: &str) -> Option<Role> {
    match s {
        "system" => Some(Role::System),
        "user" => Some(Role::User),
        "assistant" => Some(Role::Assistant),
        _ => None,
    }
}

/// A JSON type's name for messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
