//! `RejectionSamplingConfig`: one TOML table per run. Defaults follow Llama 2 Section 3.2.3 where
//! the paper states a value (K from Figures 7/8, T in [1.2, 1.3], the 0.15 safety threshold) and
//! are marked NS (not stated) where the choice is ours.
use llama::AssistantMask;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use training::TrainConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectionSamplingConfig {
    /// The policy iteration 1 samples from (HF-layout causal LM). Llama 2 sampled only with the
    /// 70B Llama-2-Chat and distilled the smaller models from its samples. Later iterations
    /// sample from the previous iteration's fine-tuned model (RLHF-V1, V2, ...).
    pub policy: PathBuf,
    /// Helpfulness reward model (`LlamaForSequenceClassification` folder). A causal-LM folder
    /// loads too, with a random score head (smoke tests only).
    #[serde(default)]
    pub helpfulness_rm: Option<PathBuf>,
    /// Safety reward model. With both, samples are ranked by Llama 2's
    /// `R_c = R_s if is_safety(p) or R_s < safety_threshold else R_h`; with one, by its score.
    #[serde(default)]
    pub safety_rm: Option<PathBuf>,
    /// tokenizer.json (default: the policy's, else the Llama-2 tokenizer built by set-up).
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Prompt files (JSONL or Parquet: `{"prompt": string|messages, "is_safety": bool}`), read
    /// in order; a prompt seen twice (same messages) is sampled once.
    pub prompts: Vec<PathBuf>,
    /// Use only the first N distinct prompts (default: all).
    #[serde(default)]
    pub max_prompts: Option<usize>,
    /// K: samples per prompt (NS; Figures 7 and 8 sweep 1..100, Figure 26 uses 20).
    #[serde(default = "default_best_of_k")]
    pub best_of_k: usize,
    /// Sampling temperature of each iteration (the last one repeats). The paper re-tunes it as
    /// RLHF proceeds; T in [1.2, 1.3] was best for 10 to 100 samples (Section 3.2.3, Figure 8).
    #[serde(default = "default_temperatures")]
    pub temperatures: Vec<f64>,
    /// `"auto"`: each iteration first samples the `temperature_sweep` on the first `sweep_prompts`
    /// prompts, then samples every prompt at the sweep temperature whose best-of-K curve is highest
    /// at K = `best_of_k` (the mean over prompts of the expected max reward of K samples; ties go to
    /// the lower temperature), and logs the choice. The paper re-tunes T progressively because the
    /// best temperature moves as RLHF proceeds (Section 3.2.3, Figure 8); this makes the re-tuning
    /// the rule it reads off its own Figure 8. Unset: `temperatures` is followed (NS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<TemperatureChoice>,
    /// Extra temperatures sampled on the first `sweep_prompts` prompts of each iteration, for the
    /// report (reward against K per temperature, as Figure 8) and, with `temperature = "auto"`, to
    /// choose the iteration's temperature; their samples are not pooled.
    #[serde(default)]
    pub temperature_sweep: Vec<f64>,
    /// Prompts the temperature sweep samples.
    #[serde(default = "default_sweep_prompts")]
    pub sweep_prompts: usize,
    /// Nucleus sampling (NS; 1.0 samples the full temperature-scaled distribution).
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    /// Top-k truncation (0 disables it).
    #[serde(default)]
    pub top_k: i64,
    /// Most tokens per sampled reply.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Only replies that ended with EOS can win (a cut-off reply would teach the fine-tune to
    /// stop mid-sentence). NS; they are still scored and counted in the best-of-K curve.
    #[serde(default = "yes")]
    pub require_finished: bool,
    /// Llama 2's safety threshold on the sigmoid safety score (precision 0.89, recall 0.55).
    #[serde(default = "default_safety_threshold")]
    pub safety_threshold: f64,
    /// Longest prompt + reply a reward model reads (cut from the left; Llama 2: 4096).
    #[serde(default = "default_rm_max_seq_len")]
    pub rm_max_seq_len: usize,
    /// Rejection-sampling iterations (Llama 2 ran four: RLHF-V1..V4). Each samples from the
    /// latest model, pools, and fine-tunes.
    #[serde(default = "default_iterations")]
    pub iterations: usize,
    /// Prompts per prompt batch: the unit of scoring and of the resumable sample log (each batch
    /// has its own seed), and with `best_of_k` the default decode slots. Generation runs
    /// continuously across batches; each prompt is journaled as soon as its K rows end.
    #[serde(default = "default_prompt_batch")]
    pub prompt_batch_size: usize,
    /// Rows the rollout engine decodes together (default `prompt_batch_size × best_of_k`; rounded
    /// down to a multiple of K). A freed slot takes the next prompt, across prompt batches
    /// (continuous batching, docs/rollout.md); the prompt batch stays the unit of scoring and logging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_slots: Option<usize>,
    /// Sequences per reward-model forward.
    #[serde(default = "default_score_batch")]
    pub score_batch_size: usize,
    /// Seed of the sampling streams (each prompt batch gets its own, derived from this, the
    /// iteration, the batch index and the temperature).
    #[serde(default)]
    pub seed: u64,
    /// `auto`, `cpu`, `cuda` or `cuda:N` for sampling, scoring and evaluation; the fine-tune
    /// inherits it when `finetune.train.device` is `auto`.
    #[serde(default)]
    pub device: llama::DeviceSpec,
    /// Compute dtype (default: fp32 on CPU, bf16 on CUDA); inherited by the fine-tune when unset there.
    #[serde(default)]
    pub dtype: Option<llama::Dtype>,
    /// libtorch intra-op threads (default: all cores); inherited by the fine-tune when unset there.
    #[serde(default)]
    pub threads: Option<usize>,
    /// Held-out prompts the policy is evaluated on before and after each fine-tune: greedy
    /// replies scored by the reward models and, on demo-world prompts, by the ground-truth judges.
    #[serde(default)]
    pub eval_prompts: Option<PathBuf>,
    /// Reply budget of the evaluation (default: `max_new_tokens`).
    #[serde(default)]
    pub eval_max_new_tokens: Option<usize>,
    /// Also evaluate sampled replies at this temperature (default: greedy only). Greedy
    /// decoding hides how often a policy still complies when it samples; the Llama-2-Chat
    /// reference samples at T = 0.6, top-p 0.9.
    #[serde(default)]
    pub eval_temperature: Option<f64>,
    /// Nucleus sampling of the sampled evaluation.
    #[serde(default = "default_eval_top_p")]
    pub eval_top_p: f64,
    /// Sampled replies per evaluation prompt.
    #[serde(default = "default_eval_samples")]
    pub eval_samples: usize,
    /// Prompts per evaluation generation call.
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    /// Demo world only: up to this many comparisons per prompt between the iteration's samples,
    /// labeled by the ground-truth judges, into `iter{N}/judged_pairs.jsonl` (the on-policy
    /// preference batch Llama 2 collects before each new reward model). 0 writes none.
    #[serde(default = "default_judged_pairs")]
    pub judged_pairs_per_prompt: usize,
    /// The fine-tune on the pool ("SFT-like", Section 3.2.3).
    #[serde(default)]
    pub finetune: FinetuneConfig,
}

/// Which checkpoint each iteration's fine-tune starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// `finetune.start` (default: `policy`) every iteration: the pool holds the best sample of
    /// every prior iteration, so each fine-tune sees all of them.
    #[default]
    Start,
    /// The model the iteration sampled from (continued training).
    Previous,
}

/// The SFT stage's knobs for the fine-tune on the pool (`sft::SftConfig` without the data and
/// model fields, which rejection sampling fills in). RS fine-tuning hyperparameters are NS in
/// the paper; the defaults are the SFT recipe (Section 3.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// Checkpoint the fine-tune starts from (default: `policy`).
    #[serde(default)]
    pub start: Option<PathBuf>,
    /// `start` (the configured checkpoint, every iteration) or `previous` (the model sampled from).
    #[serde(default)]
    pub start_from: StartFrom,
    /// Share of the pool held out (seeded) for the fine-tune's evaluation loss.
    #[serde(default = "default_eval_fraction")]
    pub eval_fraction: f64,
    /// Sequence length of packed rows (Llama 2 SFT: 4096).
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    /// Pack several dialogs per row, attention kept within each.
    #[serde(default = "yes")]
    pub packing: bool,
    /// `last_turn` (default): the loss is on the sampled reply only, not on earlier assistant
    /// turns of a multi-turn prompt, which were not selected by reward.
    #[serde(default = "default_train_on")]
    pub train_on: AssistantMask,
    /// On-disk dtype of the fine-tuned model.
    #[serde(default = "default_save_dtype")]
    pub save_dtype: llama::Dtype,
    /// Optimizer, schedule, batch and checkpointing (default: the Llama 2 SFT recipe).
    #[serde(default = "sft::config::sft_train_defaults")]
    pub train: TrainConfig,
    /// Fine-tune a LoRA adapter on the frozen start model (see `SftConfig::lora`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<llama::LoraConfig>,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            start: None,
            start_from: StartFrom::Start,
            eval_fraction: default_eval_fraction(),
            max_seq_len: default_max_seq_len(),
            packing: true,
            train_on: default_train_on(),
            save_dtype: default_save_dtype(),
            train: sft::config::sft_train_defaults(),
            lora: None,
        }
    }
}

fn default_best_of_k() -> usize {
    10
}
fn default_temperatures() -> Vec<f64> {
    vec![1.2]
}
fn default_sweep_prompts() -> usize {
    64
}
fn default_top_p() -> f64 {
    1.0
}
fn default_max_new_tokens() -> usize {
    512
}
fn yes() -> bool {
    true
}
fn default_safety_threshold() -> f64 {
    reward::combine::SAFETY_THRESHOLD
}
fn default_rm_max_seq_len() -> usize {
    4096
}
fn default_iterations() -> usize {
    1
}
fn default_prompt_batch() -> usize {
    8
}
fn default_score_batch() -> usize {
    16
}
fn default_eval_batch() -> usize {
    32
}
fn default_eval_top_p() -> f64 {
    0.9
}
fn default_eval_samples() -> usize {
    4
}
fn default_judged_pairs() -> usize {
    8
}
fn default_eval_fraction() -> f64 {
    0.02
}
fn default_max_seq_len() -> usize {
    4096
}
fn default_train_on() -> AssistantMask {
    AssistantMask::LastTurn
}
fn default_save_dtype() -> llama::Dtype {
    llama::Dtype::Float32
}

/// How an iteration's sampling temperature is chosen besides the `temperatures` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemperatureChoice {
    /// The best sweep temperature at K (see `RejectionSamplingConfig::temperature`).
    Auto,
}

impl RejectionSamplingConfig {
    /// `temperature = "auto"` is set.
    pub fn auto_temperature(&self) -> bool {
        self.temperature == Some(TemperatureChoice::Auto)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.helpfulness_rm.is_none() && self.safety_rm.is_none() {
            return Err("set `helpfulness_rm` and/or `safety_rm`".into());
        }
        if self.prompts.is_empty() {
            return Err("`prompts` lists no file".into());
        }
        if self.best_of_k == 0 {
            return Err("`best_of_k` must be at least 1".into());
        }
        if self.temperatures.is_empty() {
            return Err("`temperatures` is empty: give one temperature per iteration".into());
        }
        if let Some(t) = self.temperatures.iter().chain(&self.temperature_sweep).find(|t| !(t.is_finite() && **t > 0.0)) {
            return Err(format!("temperature {t}: rejection sampling needs a positive temperature (0 is greedy: K identical samples)"));
        }
        if self.auto_temperature() && (self.temperature_sweep.is_empty() || self.sweep_prompts == 0) {
            return Err(
                "`temperature = \"auto\"` picks from the sweep: set `temperature_sweep` (the candidates) and `sweep_prompts` > 0".into()
            );
        }
        let in_unit = |p: f64| p > 0.0 && p <= 1.0;
        if !in_unit(self.top_p) || !in_unit(self.eval_top_p) {
            return Err("`top_p` and `eval_top_p` must be in (0, 1]".into());
        }
        if self.eval_temperature.is_some_and(|t| !(t.is_finite() && t > 0.0)) || self.eval_samples == 0 {
            return Err("`eval_temperature` must be positive (leave it out for greedy only) and `eval_samples` at least 1".into());
        }
        if self.max_new_tokens == 0 {
            return Err("`max_new_tokens` must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.safety_threshold) {
            return Err("`safety_threshold` is on sigmoid scores: it must be in [0, 1]".into());
        }
        if self.iterations == 0 {
            return Err("`iterations` must be at least 1".into());
        }
        if self.prompt_batch_size == 0 || self.score_batch_size == 0 || self.eval_batch_size == 0 || self.decode_slots == Some(0) {
            return Err("batch sizes must be at least 1".into());
        }
        if self.rm_max_seq_len < 2 || self.finetune.max_seq_len < 2 {
            return Err("`rm_max_seq_len` and `finetune.max_seq_len` must be at least 2".into());
        }
        if !(0.0..1.0).contains(&self.finetune.eval_fraction) {
            return Err("`finetune.eval_fraction` must be in [0, 1)".into());
        }
        self.finetune.train.validate().map_err(|e| format!("finetune.train.{e}"))
    }

    /// The temperature of iteration `it` (1-based); the last listed one repeats. With
    /// `temperature = "auto"` the iteration uses the sweep's choice instead ([`choose_temperature`]).
    pub fn temperature(&self, it: usize) -> f64 {
        self.temperatures[(it.max(1) - 1).min(self.temperatures.len() - 1)]
    }

    /// The SFT stage's config for one fine-tune: `start` on `pool`, with the device, dtype and
    /// threads inherited where the fine-tune leaves them unset.
    pub fn sft_config(&self, start: &Path, pool: &Path) -> sft::SftConfig {
        let f = &self.finetune;
        let mut train = f.train.clone();
        if train.device == llama::DeviceSpec::Auto {
            train.device = self.device;
        }
        if train.dtype.is_none() {
            train.dtype = self.dtype;
        }
        if train.threads.is_none() {
            train.threads = self.threads;
        }
        sft::SftConfig {
            model: Some(start.to_path_buf()),
            init_preset: None,
            tokenizer: self.tokenizer.clone(),
            train_data: vec![pool.to_path_buf()],
            eval_data: None,
            eval_fraction: f.eval_fraction,
            max_seq_len: f.max_seq_len,
            packing: f.packing,
            train_on: f.train_on,
            save_dtype: f.save_dtype,
            token_cache: None,
            train,
            lora: f.lora.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> RejectionSamplingConfig {
        serde_json::from_value(serde_json::json!({
            "policy": "p", "helpfulness_rm": "h", "prompts": ["x.jsonl"]
        }))
        .unwrap()
    }

    #[test]
    fn paper_defaults_and_validation() {
        let c = minimal();
        assert_eq!(c.best_of_k, 10);
        assert_eq!(c.safety_threshold, 0.15);
        assert_eq!(c.temperatures, vec![1.2]);
        assert_eq!(c.finetune.train.lr, 2e-5);
        assert_eq!(c.finetune.train_on, AssistantMask::LastTurn);
        assert!(c.validate().is_ok());
        let mut bad = c.clone();
        bad.helpfulness_rm = None;
        assert!(bad.validate().unwrap_err().contains("safety_rm"));
        let mut bad = c.clone();
        bad.temperatures = vec![1.0, 0.0];
        assert!(bad.validate().is_err());
        let unknown = serde_json::from_value::<RejectionSamplingConfig>(serde_json::json!({
            "policy": "p", "helpfulness_rm": "h", "prompts": ["x.jsonl"], "bestofk": 3
        }));
        assert!(unknown.is_err());
    }

    #[test]
    fn shipped_configs_parse_and_validate() {
        for name in ["rs-demo.toml", "rs-llama2-70b.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs").join(name);
            let text = std::fs::read_to_string(&path).unwrap();
            let c: RejectionSamplingConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            c.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn auto_temperature_parses_and_needs_a_sweep() {
        let mut c = minimal();
        assert!(!c.auto_temperature());
        let text =
            "policy = \"p\"\nhelpfulness_rm = \"h\"\nprompts = [\"x.jsonl\"]\ntemperature = \"auto\"\ntemperature_sweep = [0.8, 1.2]\n";
        let parsed: RejectionSamplingConfig = toml::from_str(text).unwrap();
        assert!(parsed.auto_temperature());
        parsed.validate().unwrap();
        c.temperature = Some(TemperatureChoice::Auto);
        let err = c.validate().unwrap_err();
        assert!(err.contains("temperature_sweep"), "{err}");
        assert!(toml::from_str::<RejectionSamplingConfig>(&text.replace("\"auto\"", "\"best\"")).is_err());
        // Unset, the field is not serialised: the config hash of existing runs does not change.
        assert!(!serde_json::to_string(&minimal()).unwrap().contains("\"temperature\""));
    }

    #[test]
    fn temperature_schedule_repeats_the_last() {
        let mut c = minimal();
        c.temperatures = vec![0.8, 1.2];
        assert_eq!((c.temperature(1), c.temperature(2), c.temperature(5)), (0.8, 1.2, 1.2));
    }

    #[test]
    fn finetune_inherits_device_dtype_threads() {
        let mut c = minimal();
        c.device = llama::DeviceSpec::Cpu;
        c.threads = Some(1);
        let s = c.sft_config(Path::new("start"), Path::new("pool.jsonl"));
        assert_eq!(s.train.device, llama::DeviceSpec::Cpu);
        assert_eq!(s.train.threads, Some(1));
        assert_eq!(s.model.as_deref(), Some(Path::new("start")));
        assert!(s.validate().is_ok());
    }
}
