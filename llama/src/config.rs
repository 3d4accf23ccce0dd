//! Two-level model config: [`HfConfig`] mirrors HF `config.json` (every field optional), and
//! [`Config`] is the resolved form with every value decided.
//!
//! Where a field is absent we fall back on the Llama-2 value, never on the `LlamaConfig` default
//! when that default is wrong for Llama 2 (HF defaults `rms_norm_eps` to 1e-6 and
//! `max_position_embeddings` to 2048; Llama 2 uses 1e-5 and 4096, LLAMA2-RECIPE §7).
use crate::error::{LlamaError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `config.json` as written by `transformers` (LlamaForCausalLM / LlamaForSequenceClassification).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub vocab_size: Option<i64>,
    #[serde(default)]
    pub hidden_size: Option<i64>,
    #[serde(default)]
    pub intermediate_size: Option<i64>,
    #[serde(default)]
    pub num_hidden_layers: Option<i64>,
    #[serde(default)]
    pub num_attention_heads: Option<i64>,
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default)]
    pub max_position_embeddings: Option<i64>,
    #[serde(default)]
    pub rms_norm_eps: Option<f64>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// transformers 5 writes `rope_parameters: {"rope_theta", "rope_type"}` instead of `rope_theta`.
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub pad_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub num_labels: Option<i64>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

/// The resolved model config: every value decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub max_position_embeddings: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub bos_token_id: i64,
    pub eos_token_id: i64,
    pub pad_token_id: Option<i64>,
}

fn first_id(v: &Option<serde_json::Value>) -> Option<i64> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_i64(),
        Some(serde_json::Value::Array(a)) => a.first().and_then(|x| x.as_i64()),
        _ => None,
    }
}

impl Config {
    /// Llama-2-7B (HF config.json of meta-llama/Llama-2-7b-hf).
    pub fn llama2_7b() -> Self {
        Self::llama2_shape(4096, 11008, 32, 32, 32)
    }
    /// Llama-2-13B.
    pub fn llama2_13b() -> Self {
        Self::llama2_shape(5120, 13824, 40, 40, 40)
    }
    /// Llama-2-70B: grouped-query attention with 8 KV heads.
    pub fn llama2_70b() -> Self {
        Self::llama2_shape(8192, 28672, 80, 64, 8)
    }
    /// The 20M-parameter benchmark model of the issues (hidden 256, 4 layers, 8 heads, 4 KV heads).
    pub fn bench_20m() -> Self {
        Self::llama2_shape(256, 688, 4, 8, 4)
    }
    /// The tiny Llama of the embedded demo: small enough to learn the demo world on 2 CPU cores.
    pub fn tiny() -> Self {
        Self::llama2_shape(128, 344, 4, 4, 2)
    }

    fn llama2_shape(hidden: i64, inter: i64, layers: i64, heads: i64, kv: i64) -> Self {
        Config {
            vocab_size: 32000,
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim: hidden / heads,
            max_position_embeddings: 4096,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            tie_word_embeddings: false,
            bos_token_id: 1,
            eos_token_id: 2,
            pad_token_id: None,
        }
    }

    /// The smallest useful Llama (tests): hidden 64, 2 layers, 4 heads, 2 KV heads.
    pub fn micro() -> Self {
        Self::llama2_shape(64, 172, 2, 4, 2)
    }

    /// A preset by name: `micro`, `tiny`, `bench-20m`, `7b`, `13b`, `70b`.
    pub fn preset(name: &str) -> Result<Self> {
        Ok(match name {
            "micro" => Self::micro(),
            "tiny" => Self::tiny(),
            "bench-20m" | "bench_20m" => Self::bench_20m(),
            "7b" | "llama2-7b" => Self::llama2_7b(),
            "13b" | "llama2-13b" => Self::llama2_13b(),
            "70b" | "llama2-70b" => Self::llama2_70b(),
            other => {
                return Err(LlamaError::Invalid(format!("unknown model preset {other:?}: expected micro, tiny, bench-20m, 7b, 13b or 70b")))
            }
        })
    }

    /// Reads and resolves `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LlamaError::io(path, e))?;
        let hf: HfConfig = serde_json::from_str(&text).map_err(|e| LlamaError::Json { path: path.to_path_buf(), source: e })?;
        Self::from_hf(&hf).map_err(|msg| LlamaError::Config { path: path.to_path_buf(), msg })
    }

    /// Resolves an [`HfConfig`]; the error names the offending field.
    pub fn from_hf(hf: &HfConfig) -> std::result::Result<Self, String> {
        if let Some(mt) = &hf.model_type {
            if mt != "llama" {
                return Err(format!("model_type {mt:?} is not supported (expected \"llama\")"));
            }
        }
        if let Some(act) = &hf.hidden_act {
            if act != "silu" {
                return Err(format!("hidden_act {act:?} is not supported: Llama uses \"silu\" (SwiGLU)"));
            }
        }
        if let Some(rs) = &hf.rope_scaling {
            if !rs.is_null() {
                return Err(format!("rope_scaling {rs} is not supported (Llama 2 has none)"));
            }
        }
        let mut rope_theta = hf.rope_theta;
        if let Some(rp) = hf.rope_parameters.as_ref().filter(|v| !v.is_null()) {
            if let Some(t) = rp.get("rope_type").and_then(|t| t.as_str()) {
                if t != "default" {
                    return Err(format!("rope_parameters.rope_type {t:?} is not supported (Llama 2 uses \"default\")"));
                }
            }
            if let Some(theta) = rp.get("rope_theta").and_then(|t| t.as_f64()) {
                if rope_theta.is_some_and(|top| top != theta) {
                    return Err(format!("rope_theta {rope_theta:?} disagrees with rope_parameters.rope_theta {theta}"));
                }
                rope_theta = Some(theta);
            }
        }
        if hf.attention_bias == Some(true) || hf.mlp_bias == Some(true) {
            return Err("attention_bias/mlp_bias true is not supported: Llama has no biases".into());
        }
        let need = |v: Option<i64>, name: &str| -> std::result::Result<i64, String> {
            match v {
                Some(x) if x > 0 => Ok(x),
                Some(x) => Err(format!("field {name} must be positive, got {x}")),
                None => Err(format!("missing field {name}")),
            }
        };
        let hidden_size = need(hf.hidden_size, "hidden_size")?;
        let num_attention_heads = need(hf.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = need(hf.num_key_value_heads.or(hf.num_attention_heads), "num_key_value_heads")?;
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(format!(
                "num_attention_heads ({num_attention_heads}) must be a multiple of num_key_value_heads ({num_key_value_heads})"
            ));
        }
        let head_dim = match hf.head_dim {
            Some(h) => need(Some(h), "head_dim")?,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(format!("hidden_size ({hidden_size}) is not a multiple of num_attention_heads ({num_attention_heads})"));
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(format!("head_dim {head_dim} must be even for RoPE"));
        }
        let rms_norm_eps = hf.rms_norm_eps.unwrap_or(1e-5);
        if !(rms_norm_eps > 0.0) {
            return Err(format!("rms_norm_eps must be positive, got {rms_norm_eps}"));
        }
        Ok(Config {
            vocab_size: need(hf.vocab_size.or(Some(32000)), "vocab_size")?,
            hidden_size,
            intermediate_size: need(hf.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(hf.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: need(hf.max_position_embeddings.or(Some(4096)), "max_position_embeddings")?,
            rms_norm_eps,
            rope_theta: rope_theta.unwrap_or(10000.0),
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            bos_token_id: first_id(&hf.bos_token_id).unwrap_or(1),
            eos_token_id: first_id(&hf.eos_token_id).unwrap_or(2),
            pad_token_id: first_id(&hf.pad_token_id),
        })
    }

    /// The HF `config.json` for this config, for `architecture` (`LlamaForCausalLM` or
    /// `LlamaForSequenceClassification`) and the on-disk dtype name (`float32`, `bfloat16`, `float16`).
    pub fn to_hf_json(&self, architecture: &str, torch_dtype: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "architectures": [architecture],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "hidden_act": "silu",
            "attention_bias": false,
            "attention_dropout": 0.0,
            "mlp_bias": false,
            "pretraining_tp": 1,
            "initializer_range": 0.02,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": torch_dtype,
            "use_cache": true,
        });
        if architecture == "LlamaForSequenceClassification" {
            v["num_labels"] = serde_json::json!(1);
            v["id2label"] = serde_json::json!({"0": "LABEL_0"});
            v["label2id"] = serde_json::json!({"LABEL_0": 0});
        }
        v
    }

    /// Number of parameters of the causal LM (embeddings and head included).
    pub fn num_parameters(&self) -> i64 {
        let (d, i, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let attn = d * self.num_attention_heads * hd * 2 + d * self.num_key_value_heads * hd * 2;
        let layer = attn + 3 * d * i + 2 * d;
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * d };
        self.vocab_size * d + self.num_hidden_layers * layer + d + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama2_defaults_not_hf_defaults() {
        let hf: HfConfig =
            serde_json::from_str(r#"{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4}"#).unwrap();
        let c = Config::from_hf(&hf).unwrap();
        assert_eq!(c.rms_norm_eps, 1e-5);
        assert_eq!(c.max_position_embeddings, 4096);
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.num_key_value_heads, 4);
        assert_eq!(c.head_dim, 16);
    }

    #[test]
    fn rejects_unknown_activation_naming_field() {
        let hf: HfConfig = serde_json::from_str(
            r#"{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"hidden_act":"gelu"}"#,
        )
        .unwrap();
        let e = Config::from_hf(&hf).unwrap_err();
        assert!(e.contains("hidden_act") && e.contains("gelu"), "{e}");
    }

    #[test]
    fn reads_transformers5_rope_parameters() {
        let hf: HfConfig = serde_json::from_str(
            r#"{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,
                "rope_parameters":{"rope_theta":500000.0,"rope_type":"default"}}"#,
        )
        .unwrap();
        assert_eq!(Config::from_hf(&hf).unwrap().rope_theta, 500000.0);
    }

    #[test]
    fn param_counts() {
        // Llama-2-7B has 6,738,415,616 parameters.
        assert_eq!(Config::llama2_7b().num_parameters(), 6_738_415_616);
        let b = Config::bench_20m().num_parameters();
        assert!((18_000_000..22_000_000).contains(&b), "{b}");
    }
}
