//! Importers for preference data in the formats users already have, into [`PreferenceRecord`]s.
//!
//! * **Anthropic HH-RLHF**: `{"chosen": transcript, "rejected": transcript}`, each transcript
//!   `"\n\nHuman: ...\n\nAssistant: ...\n\nHuman: ...\n\nAssistant: ..."`. Both end with an
//!   assistant turn; everything before it is the shared prompt and must match turn for turn.
//! * **TRL preference** (`trl` docs, "Dataset formats"): conversational, with an explicit prompt
//!   (`{"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}`)
//!   or an implicit one (`{"chosen": [dialog], "rejected": [dialog]}`, the shared prefix being
//!   the prompt); the standard form with strings (`{"prompt", "chosen", "rejected"}`) also reads.
//!
//! An importer is a [`Parser`]: rows go through the same reader, checks, rejects file and
//! writer as `rlhf data validate` (see [`crate::validate::validate_with`]).
use std::path::Path;
use std::sync::Arc;

use llama_text::chat::{Message, Role};
use serde_json::Value;

use crate::error::{DatasetError, FieldError, Reason, Result};
use crate::io::{Format, Parser, RowReader};
use crate::parse::{messages, object, present, prompt, string, type_name};
use crate::records::{PreferenceKind, PreferenceRecord};

/// A source format of `rlhf data import`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFormat {
    HhRlhf,
    Trl,
}

impl ImportFormat {
    /// `hh-rlhf` or `trl`.
    pub fn parse(s: &str) -> Option<ImportFormat> {
        match s {
            "hh-rlhf" | "hh" => Some(ImportFormat::HhRlhf),
            "trl" => Some(ImportFormat::Trl),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ImportFormat::HhRlhf => "hh-rlhf",
            ImportFormat::Trl => "trl",
        }
    }

    /// The Parquet columns the format reads.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            ImportFormat::HhRlhf => &["chosen", "rejected"],
            ImportFormat::Trl => &["prompt", "chosen", "rejected"],
        }
    }

    /// The row parser, setting `kind` and `source` on every record when given.
    pub fn parser(self, kind: Option<PreferenceKind>, source: Option<String>) -> Parser<PreferenceRecord> {
        let convert = match self {
            ImportFormat::HhRlhf => parse_hh_rlhf,
            ImportFormat::Trl => parse_trl,
        };
        Arc::new(move |row: &Value| {
            let mut r = convert(row)?;
            r.kind = kind.or(r.kind);
            r.source = source.clone().or(r.source);
            Ok(r)
        })
    }
}

/// The format of a row, from its shape: transcripts are HH-RLHF, message lists or an explicit
/// prompt are TRL.
pub fn detect_row(row: &Value) -> Option<ImportFormat> {
    let obj = row.as_object()?;
    match (present(obj, "prompt"), present(obj, "chosen")?) {
        (_, Value::Array(_)) | (Some(_), Value::String(_)) => Some(ImportFormat::Trl),
        (None, Value::String(s)) if s.contains("Human:") && s.contains("Assistant:") => Some(ImportFormat::HhRlhf),
        _ => None,
    }
}

/// The format of a file, from its first row that is a JSON object.
pub fn detect(path: &Path, format: Option<Format>) -> Result<ImportFormat> {
    let mut rows = RowReader::open(path, format, Some(&["prompt", "chosen", "rejected"]))?;
    while let Some(raw) = rows.next_row()? {
        if let Ok(v @ Value::Object(_)) = &raw.value {
            return detect_row(v).ok_or_else(|| DatasetError::Format {
                path: path.into(),
                msg: format!(
                    "{}: cannot tell the format: expected HH-RLHF transcripts (`chosen`/`rejected` with \
                     \"\\n\\nHuman:\" and \"\\n\\nAssistant:\" turns) or TRL preference rows (message lists, \
                     or a `prompt`); give --format",
                    raw.loc
                ),
            });
        }
    }
    Err(DatasetError::Format { path: path.into(), msg: "no JSON object row to detect the format from".into() })
}

const HUMAN: &str = "\n\nHuman:";
const ASSISTANT: &str = "\n\nAssistant:";

/// An HH-RLHF transcript as messages (texts trimmed). Text before the first turn marker is an
/// error, not silently dropped.
pub fn split_transcript(text: &str, field: &str) -> Result<Vec<Message>, FieldError> {
    // Some exports drop the leading blank lines; the first turn marker then starts the text.
    let text = if text.starts_with("Human:") { format!("\n\n{text}") } else { text.to_string() };
    let mut markers: Vec<(usize, Role, usize)> = Vec::new();
    for (marker, role) in [(HUMAN, Role::User), (ASSISTANT, Role::Assistant)] {
        markers.extend(text.match_indices(marker).map(|(i, _)| (i, role, marker.len())));
    }
    markers.sort_unstable_by_key(|m| m.0);
    let bad = |detail: String| FieldError::new(field, Reason::WrongType, detail);
    let Some(&(first, ..)) = markers.first() else {
        return Err(bad("not an HH-RLHF transcript: no \"\\n\\nHuman:\" turn".into()));
    };
    if !text[..first].trim().is_empty() {
        return Err(bad("not an HH-RLHF transcript: text before the first \"\\n\\nHuman:\" turn".into()));
    }
    let ends = markers.iter().skip(1).map(|m| m.0).chain([text.len()]);
    Ok(markers.iter().zip(ends).map(|(&(start, role, len), end)| Message::new(role, text[start + len..end].trim())).collect())
}

/// A dialog's final assistant reply and the prompt before it.
fn split_reply(dialog: Vec<Message>, field: &str) -> Result<(Vec<Message>, String), FieldError> {
    let mut prompt = dialog;
    match prompt.pop() {
        Some(m) if m.role == Role::Assistant => Ok((prompt, m.content)),
        Some(m) => Err(FieldError::new(
            field,
            Reason::DialogNotEndingWithAssistant,
            format!("must end with an assistant reply, but its last message is {}", m.role),
        )),
        None => Err(FieldError::new(field, Reason::EmptyText, "empty dialog")),
    }
}

/// Two dialogs' shared prompt and their replies; the prompts must be equal.
fn pair(chosen: Vec<Message>, rejected: Vec<Message>) -> Result<PreferenceRecord, FieldError> {
    let (prompt, chosen) = split_reply(chosen, "chosen")?;
    let (other, rejected) = split_reply(rejected, "rejected")?;
    if prompt != other {
        let turn = prompt.iter().zip(&other).position(|(a, b)| a != b).unwrap_or(prompt.len().min(other.len()));
        return Err(FieldError::new(
            "rejected",
            Reason::PromptMismatch,
            format!(
                "chosen and rejected do not share their prompt: they differ at message {turn} \
                 ({} and {} prompt messages)",
                prompt.len(),
                other.len()
            ),
        ));
    }
    Ok(PreferenceRecord { prompt, chosen, rejected, rating: None, kind: None, chosen_safe: None, rejected_safe: None, source: None })
}

/// An HH-RLHF row.
pub fn parse_hh_rlhf(row: &Value) -> Result<PreferenceRecord, FieldError> {
    let obj = object(row)?;
    let chosen = split_transcript(&string(obj, "chosen")?, "chosen")?;
    let rejected = split_transcript(&string(obj, "rejected")?, "rejected")?;
    pair(chosen, rejected)
}

/// A TRL preference row, explicit or implicit prompt, conversational or standard.
pub fn parse_trl(row: &Value) -> Result<PreferenceRecord, FieldError> {
    let obj = object(row)?;
    if present(obj, "prompt").is_none() {
        let dialog = |key: &str| match present(obj, key) {
            Some(v @ Value::Array(_)) => messages(v, key),
            Some(v) => Err(FieldError::new(
                key,
                Reason::WrongType,
                format!("expected a message list (implicit prompt) or a `prompt` field, got {}", type_name(v)),
            )),
            None => Err(FieldError::new(key, Reason::MissingField, "missing field")),
        };
        return pair(dialog("chosen")?, dialog("rejected")?);
    }
    let prompt = prompt(obj, "prompt")?;
    let reply = |key: &str| -> Result<String, FieldError> {
        match present(obj, key) {
            Some(v @ Value::Array(_)) => match messages(v, key)?.as_slice() {
                [m] if m.role == Role::Assistant => Ok(m.content.clone()),
                ms => Err(FieldError::new(
                    key,
                    Reason::WrongType,
                    format!("expected one assistant message after an explicit prompt, got {} messages", ms.len()),
                )),
            },
            _ => string(obj, key),
        }
    };
    pair(with_reply(&prompt, reply("chosen")?), with_reply(&prompt, reply("rejected")?))
}

fn with_reply(prompt: &[Message], reply: String) -> Vec<Message> {
    let mut d = prompt.to_vec();
    d.push(Message::assistant(reply));
    d
}
