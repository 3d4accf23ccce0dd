//! The network only: Llama-2 config, blocks, KV cache, heads, generation, HF checkpoint I/O;
//! the torch-free text layer (the Llama-2 tokenizer, Meta's chat format, SplitMix64) lives in
//! `llama_text` and is re-exported here under its old paths (`llama::chat`, `llama::Tokenizer`).
//!
//! The model follows HF `LlamaForCausalLM` (RMSNorm in float32, half-split RoPE, SwiGLU,
//! grouped-query attention, no biases) so that HF-layout checkpoints load by name with no
//! conversion table, and `transformers` reads what we save.

pub mod checkpoint;
pub mod config;
pub mod device;
pub mod engine;
pub mod error;
pub mod generate;
pub mod lora;
pub mod model;
pub mod nll;

pub use config::{Config, HfConfig};
pub use device::{default_kind, parse_device, Compute, DeviceSpec, Dtype};
pub use engine::{EngineConfig, EngineStats, Request, RowOutput, Schedule};
pub use error::LlamaError;
pub use generate::{generate, generate_with, GenerateOutput, SamplingParams};
pub use llama_text::{chat, rng, tokenizer, tokenizer_build};
pub use llama_text::{encode_dialog, AssistantMask, ChatTokens, Message, Role, TextError, Tokenizer};
pub use lora::LoraConfig;
pub use model::{KvCache, Llama};
