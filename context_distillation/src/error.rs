//! Errors of the context-distillation stage, with the file (and line) they concern.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CdError {
    #[error("config: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: line {line}: {msg}")]
    Log { path: PathBuf, line: usize, msg: String },
    #[error("{path}: {msg}")]
    Resume { path: PathBuf, msg: String },
    #[error(transparent)]
    Model(#[from] llama::LlamaError),
    #[error(transparent)]
    Text(#[from] llama::TextError),
    #[error(transparent)]
    Data(#[from] datasets::DatasetError),
    #[error(transparent)]
    Train(#[from] training::TrainError),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = CdError> = std::result::Result<T, E>;

impl CdError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CdError::Io { path: path.into(), source }
    }
}
