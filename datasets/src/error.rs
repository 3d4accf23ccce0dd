//! Errors of the data layer. A bad row is a [`RowError`]: it names the file, the line (JSONL) or
//! row (Parquet), the field and the reason, and keeps the raw text for the rejects file.
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a row sits in its file, 1-based: a JSONL line or a Parquet row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Line(usize),
    Row(usize),
}

impl Location {
    /// The 1-based number.
    pub fn number(self) -> usize {
        match self {
            Location::Line(n) | Location::Row(n) => n,
        }
    }
    /// `"line"` or `"row"` (the rejects file's key).
    pub fn unit(self) -> &'static str {
        match self {
            Location::Line(_) => "line",
            Location::Row(_) => "row",
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.unit(), self.number())
    }
}

/// Why a row was rejected; counted by name in the validation summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    InvalidJson,
    InvalidUtf8,
    MissingField,
    WrongType,
    UnknownRating,
    /// A `kind` or `role` outside its set of names.
    UnknownValue,
    EmptyText,
    ChosenEqualsRejected,
    PromptNotEndingWithUser,
    DialogNotEndingWithAssistant,
    /// Roles that do not alternate user/assistant after an optional system message.
    RoleOrder,
    /// Two transcripts of an imported pair that do not share their prompt.
    PromptMismatch,
    /// Longer than `--max-tokens` under `--overlong error`.
    Overlong,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidJson => "invalid_json",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::UnknownRating => "unknown_rating",
            Reason::UnknownValue => "unknown_value",
            Reason::EmptyText => "empty_text",
            Reason::ChosenEqualsRejected => "chosen_equals_rejected",
            Reason::PromptNotEndingWithUser => "prompt_not_ending_with_user",
            Reason::DialogNotEndingWithAssistant => "dialog_not_ending_with_assistant",
            Reason::RoleOrder => "role_order",
            Reason::PromptMismatch => "prompt_mismatch",
            Reason::Overlong => "overlong",
        }
    }
}

/// What is wrong with one field of a row, before the row's file and location are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field, as a path into the row (`chosen`, `prompt`, `messages[2].role`); empty when the
    /// row as a whole is bad (invalid JSON or UTF-8).
    pub field: String,
    pub reason: Reason,
    pub detail: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: Reason, detail: impl Into<String>) -> Self {
        FieldError { field: field.into(), reason, detail: detail.into() }
    }
}

/// A rejected row: file, location, field, reason, and the raw row (the JSONL line, or the Parquet
/// row as JSON) for the rejects file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub file: PathBuf,
    pub loc: Location,
    pub field: String,
    pub reason: Reason,
    pub detail: String,
    pub raw: String,
}

impl RowError {
    pub fn new(file: &Path, loc: Location, e: FieldError, raw: String) -> Self {
        RowError { file: file.to_path_buf(), loc, field: e.field, reason: e.reason, detail: e.detail, raw }
    }

    /// The line of the rejects file: `{"file", "line"|"row", "field", "reason", "message", "raw"}`.
    pub fn to_reject_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("file".into(), self.file.display().to_string().into());
        m.insert(self.loc.unit().into(), self.loc.number().into());
        m.insert("field".into(), self.field.clone().into());
        m.insert("reason".into(), self.reason.as_str().into());
        m.insert("message".into(), self.detail.clone().into());
        m.insert("raw".into(), self.raw.clone().into());
        serde_json::Value::Object(m)
    }
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.loc)?;
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {} ({})", self.detail, self.reason.as_str())
    }
}

impl std::error::Error for RowError {}

/// Every error of this crate.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: parquet: {source}")]
    Polars {
        path: PathBuf,
        #[source]
        source: polars::error::PolarsError,
    },
    /// A bad row (boxed: it carries the raw text).
    #[error("{0}")]
    Row(Box<RowError>),
    /// A Parquet column whose type no record field can hold.
    #[error("{path}: column `{column}`: {msg}")]
    Column { path: PathBuf, column: String, msg: String },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// A data file with no records (0 rows, or only blank lines): a stage has nothing to learn from.
    #[error("{path}: the file is empty: no records (expected {kind} data)")]
    Empty { path: PathBuf, kind: &'static str },
    /// A reward-model mixture with no comparison in it.
    #[error("empty {target} mixture: {reason}")]
    EmptyMix { target: &'static str, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] llama_text::TextError),
    #[error("{0}")]
    Invalid(String),
}

impl From<RowError> for DatasetError {
    fn from(e: RowError) -> Self {
        DatasetError::Row(Box::new(e))
    }
}

impl DatasetError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DatasetError::Io { path: path.into(), source }
    }
    pub fn polars(path: impl Into<PathBuf>, source: polars::error::PolarsError) -> Self {
        DatasetError::Polars { path: path.into(), source }
    }
}

pub type Result<T, E = DatasetError> = std::result::Result<T, E>;
