//! Errors of the training layer.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
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
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("checkpoint {}: was written by a different config; resume with the same config or use a new run folder", .path.display())]
    OtherConfig { path: PathBuf },
    #[error("step {step}: non-finite {what} ({value}); stopping with the last good checkpoint kept")]
    NonFinite { step: u64, what: &'static str, value: f64 },
    #[error("config: {0}")]
    Config(String),
    #[error("run folder {} is in use by another run ({}); wait for it to end or choose another folder", .dir.display(), holder_text(.holder))]
    Locked { dir: PathBuf, holder: Option<crate::lock::LockHolder> },
    /// A collective of a distributed run failed (names the rank at fault).
    #[error("{0}")]
    Distributed(String),
    #[error("plot {0}")]
    Plot(String),
    #[error(transparent)]
    Model(#[from] llama::LlamaError),
    #[error(transparent)]
    Text(#[from] llama::TextError),
    #[error(transparent)]
    Data(#[from] datasets::DatasetError),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

fn holder_text(h: &Option<crate::lock::LockHolder>) -> String {
    match h {
        Some(h) => format!("pid {} on host {}", h.pid, h.host),
        None => "pid and host not written yet".into(),
    }
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io { path: path.into(), source }
    }
}
