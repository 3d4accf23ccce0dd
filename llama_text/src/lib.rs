//! The torch-free text layer of Llama 2: the tokenizer with Meta's SentencePiece call semantics,
//! the one tokenizer precedence ([`tokenizer::resolve`]), Meta's chat format, the `tokenizer.json`
//! build from llama-tokenizer-js, and the SplitMix64 RNG of the data layer.
//!
//! It links no libtorch, so the data layer (`datasets`) builds and tests without it; `llama`
//! re-exports every item here under the same paths (`llama::chat`, `llama::Tokenizer`, ...).

pub mod chat;
pub mod error;
pub mod rng;
pub mod tokenizer;
pub mod tokenizer_build;

pub use chat::{encode_dialog, AssistantMask, ChatTokens, Message, Role};
pub use error::TextError;
pub use tokenizer::Tokenizer;
