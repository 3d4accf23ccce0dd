//! Errors of the model layer, each with the context a user needs to act (file, tensor, field).
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LlamaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{path}: not a valid safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    #[error("checkpoint {dir}: {msg}")]
    Checkpoint { dir: PathBuf, msg: String },
    /// The text layer: tokenizer, chat format, tokenizer build.
    #[error(transparent)]
    Text(#[from] llama_text::TextError),
    #[error("invalid device {0:?}: expected auto, cpu, cuda or cuda:N")]
    Device(String),
    #[error("{0}")]
    Invalid(String),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = LlamaError> = std::result::Result<T, E>;

impl LlamaError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LlamaError::Io { path: path.into(), source }
    }
}
