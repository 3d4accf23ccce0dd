//! Errors of the text layer (tokenizer, chat format, tokenizer build), each with the context a
//! user needs to act (file, field, sizes). `llama::LlamaError` wraps it (`LlamaError::Text`).
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TextError {
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
    #[error("tokenizer {path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error(
        "tokenizer {tokenizer} has {tokenizer_vocab} ids but the model in {model_dir} has vocab_size {model_vocab} (config.json): \
         ids past the model's vocabulary cannot be embedded; use the tokenizer the model was trained with"
    )]
    Vocab { tokenizer: PathBuf, tokenizer_vocab: usize, model_dir: PathBuf, model_vocab: usize },
    #[error(
        "{model_dir} has no tokenizer.json and its vocab_size {model_vocab} (config.json) is not the {tokenizer_vocab} ids of the \
         bundled Llama-2 tokenizer {tokenizer}: copy the tokenizer the model was trained with to {model_dir}/tokenizer.json"
    )]
    BundledVocab { model_dir: PathBuf, model_vocab: usize, tokenizer: PathBuf, tokenizer_vocab: usize },
    #[error("chat format: {0}")]
    Chat(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = TextError> = std::result::Result<T, E>;

impl TextError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TextError::Io { path: path.into(), source }
    }
}
