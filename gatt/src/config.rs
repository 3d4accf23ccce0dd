//! `GattConfig`: one Ghost Attention round (Llama 2 Section 3.3) as `rlhf` and the pipeline run it.
use llama::{DeviceSpec, Dtype};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use training::TrainConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GattConfig {
    /// The latest RLHF model (HF layout): it samples the assistant turns and is fine-tuned
    /// (the paper applies GAtt after RLHF V3).
    pub policy: PathBuf,
    /// tokenizer.json (default: the policy's, else the bundled Llama-2 tokenizer).
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Multi-turn dialogs (`{"turns": [...]}` or `{"messages": [...]}`, see `gatt::data`).
    pub dialogs: Vec<PathBuf>,
    /// Instructions (`{"text", "constraints"}` a row) drawn for dialogs that carry none.
    /// Absent: the built-in list (hobby, language, public figure, emoji; single and combined,
    /// half shortened: Appendix A.3.5).
    #[serde(default)]
    pub instructions: Option<PathBuf>,
    /// Held-out dialogs with a checkable first-turn instruction: adherence by turn is measured
    /// on them before and after the fine-tune (Figures 9 and 28). Absent: no evaluation.
    #[serde(default)]
    pub eval_dialogs: Option<PathBuf>,
    /// Turns evaluated per dialog (the paper's figures go to 20).
    #[serde(default = "d_eval_turns")]
    pub eval_turns: usize,
    /// Samples per assistant turn; the first finished one the checker accepts is kept (like
    /// rejection sampling; instructions without a checker keep the first finished one).
    #[serde(default = "d_best_of_k")]
    pub best_of_k: usize,
    /// Keep only samples that ended with EOS.
    #[serde(default = "yes")]
    pub require_finished: bool,
    #[serde(default = "d_temperature")]
    pub temperature: f64,
    #[serde(default = "d_top_p")]
    pub top_p: f64,
    /// Reply budget per turn, for sampling and evaluation.
    #[serde(default = "d_max_new_tokens")]
    pub max_new_tokens: usize,
    #[serde(default)]
    pub seed: u64,
    /// `auto`, `cpu`, `cuda` or `cuda:N` for sampling and evaluation; the fine-tune inherits it
    /// when `finetune.train.device` is `auto`.
    #[serde(default)]
    pub device: DeviceSpec,
    /// Compute dtype (default: fp32 on CPU, bf16 on CUDA); inherited by the fine-tune when unset there.
    #[serde(default)]
    pub dtype: Option<Dtype>,
    /// libtorch intra-op threads (default: all cores); inherited by the fine-tune when unset there.
    #[serde(default)]
    pub threads: Option<usize>,
    /// The fine-tune on the GAtt records, from `policy`, always with the `last_turn` mask (zero
    /// loss on every token of the earlier turns).
    #[serde(default)]
    pub finetune: GattFinetune,
}

/// The SFT run of a GAtt round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GattFinetune {
    /// Share of the records held out for the evaluation loss.
    #[serde(default = "d_eval_fraction")]
    pub eval_fraction: f64,
    /// Sequence length of packed rows (Llama 2: 4096).
    #[serde(default = "d_max_seq_len")]
    pub max_seq_len: usize,
    /// Pack several records per row, attention kept within each.
    #[serde(default = "yes")]
    pub packing: bool,
    /// On-disk dtype of the fine-tuned model.
    #[serde(default = "d_save_dtype")]
    pub save_dtype: Dtype,
    /// Optimisation (default: Llama 2's SFT recipe).
    #[serde(default = "sft::config::sft_train_defaults")]
    pub train: TrainConfig,
}

impl Default for GattFinetune {
    fn default() -> Self {
        GattFinetune {
            eval_fraction: d_eval_fraction(),
            max_seq_len: d_max_seq_len(),
            packing: true,
            save_dtype: d_save_dtype(),
            train: sft::config::sft_train_defaults(),
        }
    }
}

fn d_eval_turns() -> usize {
    20
}
fn d_best_of_k() -> usize {
    4
}
fn d_temperature() -> f64 {
    1.0
}
fn d_top_p() -> f64 {
    1.0
}
fn d_max_new_tokens() -> usize {
    128
}
fn d_eval_fraction() -> f64 {
    0.02
}
fn d_max_seq_len() -> usize {
    4096
}
fn yes() -> bool {
    true
}
fn d_save_dtype() -> Dtype {
    Dtype::Float32
}

impl GattConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.dialogs.is_empty() {
            return Err("`dialogs` lists no file".into());
        }
        if self.best_of_k == 0 || self.max_new_tokens == 0 || self.eval_turns == 0 {
            return Err("`best_of_k`, `max_new_tokens` and `eval_turns` must be at least 1".into());
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(format!("temperature {}: sampling needs a positive temperature", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err("`top_p` must be in (0, 1]".into());
        }
        if self.finetune.max_seq_len < 2 {
            return Err("`finetune.max_seq_len` must be at least 2".into());
        }
        if !(0.0..1.0).contains(&self.finetune.eval_fraction) {
            return Err("`finetune.eval_fraction` must be in [0, 1)".into());
        }
        self.finetune.train.validate().map_err(|e| format!("finetune.train.{e}"))
    }

    /// The SFT config of the fine-tune: `policy` on `records` with the `last_turn` mask, device,
    /// dtype and threads inherited where the fine-tune leaves them unset.
    pub fn sft_config(&self, records: PathBuf) -> sft::SftConfig {
        let f = &self.finetune;
        let mut train = f.train.clone();
        if train.device == DeviceSpec::Auto {
            train.device = self.device;
        }
        train.dtype = train.dtype.or(self.dtype);
        train.threads = train.threads.or(self.threads);
        sft::SftConfig {
            model: Some(self.policy.clone()),
            init_preset: None,
            tokenizer: self.tokenizer.clone(),
            train_data: vec![records],
            eval_data: None,
            eval_fraction: f.eval_fraction,
            max_seq_len: f.max_seq_len,
            packing: f.packing,
            train_on: llama::AssistantMask::LastTurn,
            token_cache: None,
            save_dtype: f.save_dtype,
            train,
            lora: None,
        }
    }
}
