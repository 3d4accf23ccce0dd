//! Errors of the annotation layer. A bad row names its file, where it sits (a JSONL line, or a
//! CSV row and the line it starts on) and its field, so that a spreadsheet can be fixed by hand.
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a row sits in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// A JSONL line, 1-based.
    Line(usize),
    /// A CSV data row (1-based, the header not counted) and the line it starts on.
    CsvRow { row: usize, line: usize },
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Line(n) => write!(f, "line {n}"),
            At::CsvRow { row, line } => write!(f, "row {row} (line {line})"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnnotateError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A malformed row of a pairs, ratings or candidates file.
    #[error("{}: {at}, field `{field}`: {detail}", file.display())]
    Row { file: PathBuf, at: At, field: String, detail: String },
    /// A whole file that cannot be used (no header, wrong columns, ...).
    #[error("{}: {detail}", file.display())]
    File { file: PathBuf, detail: String },
    #[error(transparent)]
    Dataset(#[from] datasets::DatasetError),
    /// A setting of `rlhf annotate serve` that cannot work (an exposed address without a token, ...).
    #[error("{0}")]
    Config(String),
}

impl AnnotateError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        AnnotateError::Io { path: path.to_path_buf(), source }
    }

    pub fn row(file: &Path, at: At, field: impl Into<String>, detail: impl Into<String>) -> Self {
        AnnotateError::Row { file: file.to_path_buf(), at, field: field.into(), detail: detail.into() }
    }

    pub fn file(file: &Path, detail: impl Into<String>) -> Self {
        AnnotateError::File { file: file.to_path_buf(), detail: detail.into() }
    }
}

pub type Result<T, E = AnnotateError> = std::result::Result<T, E>;
