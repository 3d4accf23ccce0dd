//! The network only: Llama-2 config, blocks, KV cache, heads, generation, HF checkpoint I/O,
//! and the Llama-2 tokenizer with Meta's chat format.
//!
//! The model follows HF `LlamaForCausalLM` (RMSNorm in float32, half-split RoPE, SwiGLU,
//! grouped-query attention, no biases) so that HF-layout checkpoints load by name with no
//! conversion table, and `transformers` reads what we save.

pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod error;
pub mod generate;
pub mod model;
pub mod rng;
pub mod tokenizer;
pub mod tokenizer_build;

pub use chat::{encode_dialog, AssistantMask, ChatTokens, Message, Role};
pub use config::{Config, HfConfig};
pub use device::{default_kind, parse_device, Compute, DeviceSpec, Dtype};
pub use error::LlamaError;
pub use generate::{generate, GenerateOutput, SamplingParams};
pub use model::{KvCache, Llama};
pub use tokenizer::Tokenizer;
