//! Errors of Ghost Attention.
use std::path::PathBuf;

/// What can go wrong building GAtt data, evaluating adherence or running the stage.
#[derive(Debug, thiserror::Error)]
pub enum GattError {
    /// A bad row of a dialogs or instructions file.
    #[error("{}: row {row}: field `{field}`: {msg}", .path.display())]
    Row { path: PathBuf, row: usize, field: String, msg: String },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {msg}", .path.display())]
    File { path: PathBuf, msg: String },
    #[error("gatt config: {0}")]
    Config(String),
    #[error("gatt: {0}")]
    Invalid(String),
    #[error("gatt: JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Model(#[from] llama::LlamaError),
    #[error(transparent)]
    Text(#[from] llama::TextError),
    #[error(transparent)]
    Train(#[from] training::TrainError),
}

impl GattError {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        GattError::Io { path: path.to_path_buf(), source }
    }
}

pub type Result<T, E = GattError> = std::result::Result<T, E>;
