//! Errors of the pipeline: each names the config file, the stage or the folder it is about.
use std::path::PathBuf;

/// The error of a stage's own run (the stage crates' error types), kept as its source.
pub type StageFailure = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid TOML: {source}")]
    Toml {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// A problem of the config as a whole (its layout, the `[pipeline]` table).
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    /// A problem of one stage's table: its name, kind, references or its own config.
    #[error("{path}: stage {stage}: {msg}")]
    Stage { path: PathBuf, stage: String, msg: String },
    /// A `--set` override that cannot be applied.
    #[error("--set {set}: {msg}")]
    Set { set: String, msg: String },
    /// A stage failed while it ran.
    #[error("stage {stage} ({kind}): {source}")]
    Run {
        stage: String,
        kind: String,
        #[source]
        source: StageFailure,
    },
    /// The ground-truth evaluation of a policy stage failed.
    #[error("stage {stage}: ground-truth evaluation: {source}")]
    GroundTruth {
        stage: String,
        #[source]
        source: StageFailure,
    },
    /// Locks, plots and metrics of the training layer (a locked folder names its holder).
    #[error(transparent)]
    Train(#[from] training::TrainError),
    #[error(transparent)]
    Model(#[from] llama::LlamaError),
    #[error(transparent)]
    Text(#[from] llama::TextError),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl PipelineError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        PipelineError::Io { path: path.to_path_buf(), source }
    }
}

pub type Result<T, E = PipelineError> = std::result::Result<T, E>;
