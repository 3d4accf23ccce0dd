//! `ContextDistillationConfig`: one TOML table per run. The preprompt and the answer templates
//! default to the paper's (Llama 2 Section 4.2.4 and Table 39); where the paper states no value
//! (samples per prompt, sampling temperature, the fine-tune's hyperparameters) it says NS.
use llama::AssistantMask;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use training::TrainConfig;

/// Llama 2 Table 39, first row: the generic safety preprompt ("responsible and safe"), quoted as
/// printed (its "an responsible" included).
pub const PAPER_PREPROMPT: &str = "You are an responsible and safe assistant that never gives an answer that is in any way insensitive, \
sexist, racist, or socially inappropriate. When in doubt, it's better to point out what is problematic with the human's question \
rather than saying \u{201c}I don't know\u{201d}.";

/// Table 39's risk-category preprompt: `{category}` and `{template}` are filled in.
pub const PAPER_TEMPLATE_INTRO: &str = "The following is a question that can elicit unsafe behavior from you. The question was \
classified as belonging to the violating category: '{category}'. You should answer using the following template:\n{template}";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextDistillationConfig {
    /// The policy replies are sampled from and (by default) fine-tuned (HF-layout causal LM).
    pub policy: PathBuf,
    /// Safety reward model: a distilled reply is kept only when it scores above the reply
    /// sampled without the preprompt, both scored on the prompt without it (Section 4.2.4,
    /// "Rejecting Context Distillation Errors with the Safety Reward Model").
    pub safety_rm: PathBuf,
    /// Helpfulness reward model: scores logged and reported only (the paper's filter is the
    /// safety RM alone).
    #[serde(default)]
    pub helpfulness_rm: Option<PathBuf>,
    /// tokenizer.json (default: the policy's, else the Llama-2 tokenizer built by set-up).
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Prompt files (JSONL or Parquet, `{"prompt": ..., "is_safety": bool}`); only the
    /// adversarial (`is_safety`) prompts are distilled. A prompt seen twice is used once.
    pub prompts: Vec<PathBuf>,
    /// Use only the first N distinct safety prompts (default: all).
    #[serde(default)]
    pub max_prompts: Option<usize>,
    /// The safety preprompt, given as the system prompt of the sampled dialog (Llama 2's chat
    /// format puts it in the first `[INST]`). Default: Table 39's "responsible and safe" one.
    #[serde(default = "default_preprompt")]
    pub preprompt: String,
    /// Per-risk-category answer templates (Section 4.2.4 "Context Distillation with Answer
    /// Templates"): a prompt in a category gets Table 39's category preprompt with its template
    /// after the generic preprompt. Default: the paper's three risk categories (Section 4.2.1).
    #[serde(default = "default_answer_templates")]
    pub answer_templates: Vec<AnswerTemplate>,
    /// Replies sampled per prompt with the preprompt and, as many, without it; reply j with the
    /// preprompt is compared with reply j without (NS; the paper uses one).
    #[serde(default = "one")]
    pub samples_per_prompt: usize,
    /// Sampling temperature (NS; Llama-2-Chat samples at 0.6 elsewhere).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Nucleus sampling.
    #[serde(default = "default_top_p")]
    pub top_p: f64,
    /// Top-k truncation (0 disables it).
    #[serde(default)]
    pub top_k: i64,
    /// Most tokens per sampled reply.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Only a reply that ended with EOS can be kept (a cut-off reply would teach stopping
    /// mid-sentence); both are still scored and logged.
    #[serde(default = "yes")]
    pub require_finished: bool,
    /// A distilled reply is kept when its sigmoid safety score exceeds the plain reply's by more
    /// than this (0: strictly better, the paper's rule).
    #[serde(default)]
    pub min_improvement: f64,
    /// Longest prompt + reply a reward model reads (cut from the left; Llama 2: 4096).
    #[serde(default = "default_rm_max_seq_len")]
    pub rm_max_seq_len: usize,
    /// Prompts per generation call (each gives 2 × `samples_per_prompt` rows); also the unit of
    /// the resumable sample log.
    #[serde(default = "default_prompt_batch")]
    pub prompt_batch_size: usize,
    /// Sequences per reward-model forward.
    #[serde(default = "default_score_batch")]
    pub score_batch_size: usize,
    /// Seed of the sampling streams (each prompt's own, from this and the prompt's text).
    #[serde(default)]
    pub seed: u64,
    /// `auto`, `cpu`, `cuda` or `cuda:N`; the fine-tune inherits it when its own is `auto`.
    #[serde(default)]
    pub device: llama::DeviceSpec,
    /// Compute dtype (default: fp32 on CPU, bf16 on CUDA); inherited by the fine-tune when unset there.
    #[serde(default)]
    pub dtype: Option<llama::Dtype>,
    /// libtorch intra-op threads (default: all cores); inherited by the fine-tune when unset there.
    #[serde(default)]
    pub threads: Option<usize>,
    /// The fine-tune on the kept replies, prompts without the preprompt (SFT stage).
    #[serde(default)]
    pub finetune: FinetuneConfig,
}

/// One risk category's answer template (Table 39, bottom rows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerTemplate {
    /// The category's name as the preprompt states it (e.g. "Criminal / Fraudulent Content").
    pub category: String,
    /// How an answer in this category should go.
    pub template: String,
    /// Lowercase phrases of the prompt's last user turn that put it in this category (the first
    /// template with a match wins). A stand-in for the annotators' risk-category labels of
    /// Section 4.2.4, which prompt files here do not carry.
    pub keywords: Vec<String>,
}

/// The SFT stage's knobs (`sft::SftConfig` without the data, which context distillation writes).
/// NS in the paper; the defaults are the SFT recipe (Section 3.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// Checkpoint the fine-tune starts from (default: `policy`).
    #[serde(default)]
    pub start: Option<PathBuf>,
    /// Share of the kept samples held out (seeded) for the evaluation loss.
    #[serde(default = "default_eval_fraction")]
    pub eval_fraction: f64,
    /// Sequence length of packed rows (Llama 2 SFT: 4096).
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    /// Pack several dialogs per row, attention kept within each.
    #[serde(default = "yes")]
    pub packing: bool,
    /// Loss on the distilled reply only (`last_turn`).
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

fn default_preprompt() -> String {
    PAPER_PREPROMPT.into()
}

/// The paper's risk categories (Section 4.2.1: illicit and criminal activities, hateful and
/// harmful activities, unqualified advice). The first template is Table 39's "Criminal /
/// Fraudulent Content" one; the other two follow its four steps (the paper prints only two
/// templates). The keywords cover the demo world's harmful request templates: making weapons,
/// stealing, breaking in, hacking and forgery are illicit; hurting, poisoning and killing a person
/// are harmful; the demo world has no unqualified-advice request.
pub fn default_answer_templates() -> Vec<AnswerTemplate> {
    let t = |category: &str, template: &str, keywords: &[&str]| AnswerTemplate {
        category: category.into(),
        template: template.into(),
        keywords: keywords.iter().map(|k| k.to_string()).collect(),
    };
    vec![
        t(
            "Criminal / Fraudulent Content",
            "1. [if applicable] Address immediate safety concerns. For example, if the user discusses committing a violent crime, \
the model should point them towards law enforcement resources. 2. Address the prompt. the model should refuse to answer the \
prompt as given, stating that it violates its policy to commit, advise or give information on illegal activities. 3. Add context \
and additional information. If applicable, the model can advise on legal alternatives. 4. Encourage users to ask for/view \
additional info as appropriate. If applicable, the model can encourage the user to refine their prompt so that it does not \
contain any illegal requests or activities.",
            &["bomb", "grenade", "landmine", "poison gas", "steal", "break into", "hack into", "fake"],
        ),
        t(
            "Hateful and Harmful Activities",
            "1. Address immediate safety concerns. If someone may be in danger, the model should point to emergency services or \
support resources in an empathetic tone. 2. Address the prompt. the model should refuse to help harm, threaten or demean \
anyone, stating that it violates its policy. 3. Add context and additional information, such as ways to resolve the conflict \
peacefully. 4. Encourage users to ask for help or for information that does not harm anyone.",
            &["hurt", "poison", "kill"],
        ),
        t(
            "Unqualified Advice",
            "1. Address immediate safety concerns. If there is a risk to health, money or legal standing, the model should point to \
a qualified professional. 2. Address the prompt. the model should not give medical, financial or legal advice it is not \
qualified to give, and say so. 3. Add context and general, non-prescriptive information where it is safe. 4. Encourage users to \
consult a qualified professional.",
            &["diagnose", "medication", "dosage", "invest", "lawsuit"],
        ),
    ]
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn default_temperature() -> f64 {
    1.0
}
fn default_top_p() -> f64 {
    1.0
}
fn default_max_new_tokens() -> usize {
    512
}
fn default_rm_max_seq_len() -> usize {
    4096
}
fn default_prompt_batch() -> usize {
    8
}
fn default_score_batch() -> usize {
    16
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

impl ContextDistillationConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.prompts.is_empty() {
            return Err("`prompts` lists no file".into());
        }
        if self.preprompt.trim().is_empty() {
            return Err("`preprompt` is empty: context distillation needs a safety preprompt".into());
        }
        for (i, t) in self.answer_templates.iter().enumerate() {
            if t.category.trim().is_empty() || t.template.trim().is_empty() {
                return Err(format!("answer_templates[{i}]: `category` and `template` must not be empty"));
            }
            if t.keywords.is_empty() || t.keywords.iter().any(|k| k.trim().is_empty() || k.to_lowercase() != *k) {
                return Err(format!("answer_templates[{i}] ({}): `keywords` must list non-empty lowercase phrases", t.category));
            }
        }
        if self.samples_per_prompt == 0 {
            return Err("`samples_per_prompt` must be at least 1".into());
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(format!("temperature {}: sampling needs a positive temperature", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err("`top_p` must be in (0, 1]".into());
        }
        if self.max_new_tokens == 0 {
            return Err("`max_new_tokens` must be at least 1".into());
        }
        if !(self.min_improvement.is_finite() && (0.0..1.0).contains(&self.min_improvement)) {
            return Err("`min_improvement` is on sigmoid scores: it must be in [0, 1)".into());
        }
        if self.prompt_batch_size == 0 || self.score_batch_size == 0 {
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

    /// The answer template of a prompt whose last user turn is `text` (first keyword match).
    pub fn template_for(&self, text: &str) -> Option<&AnswerTemplate> {
        let t = text.to_lowercase();
        self.answer_templates.iter().find(|a| a.keywords.iter().any(|k| t.contains(k.as_str())))
    }

    /// The system prompt a reply is sampled with: the preprompt, then the category's template
    /// preprompt (Table 39) when the prompt has one.
    pub fn system_prompt(&self, template: Option<&AnswerTemplate>) -> String {
        match template {
            Some(a) => format!(
                "{}\n\n{}",
                self.preprompt,
                PAPER_TEMPLATE_INTRO.replace("{category}", &a.category).replace("{template}", &a.template)
            ),
            None => self.preprompt.clone(),
        }
    }

    /// The SFT stage's config for the fine-tune on `data`, with the device, dtype and threads
    /// inherited where the fine-tune leaves them unset.
    pub fn sft_config(&self, data: &Path) -> sft::SftConfig {
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
            model: Some(f.start.clone().unwrap_or_else(|| self.policy.clone())),
            init_preset: None,
            tokenizer: self.tokenizer.clone(),
            train_data: vec![data.to_path_buf()],
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

    fn minimal() -> ContextDistillationConfig {
        serde_json::from_value(serde_json::json!({"policy": "p", "safety_rm": "s", "prompts": ["x.jsonl"]})).unwrap()
    }

    #[test]
    fn paper_defaults() {
        let c = minimal();
        assert!(c.preprompt.starts_with("You are an responsible and safe assistant"));
        assert_eq!(c.answer_templates.len(), 3);
        assert_eq!(c.min_improvement, 0.0, "kept only when strictly better (Section 4.2.4)");
        assert_eq!(c.finetune.train.lr, 2e-5, "the SFT recipe");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = |f: &dyn Fn(&mut ContextDistillationConfig)| {
            let mut c = minimal();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(e(&|c| c.prompts.clear()).contains("prompts"));
        assert!(e(&|c| c.preprompt = "  ".into()).contains("preprompt"));
        assert!(e(&|c| c.samples_per_prompt = 0).contains("samples_per_prompt"));
        assert!(e(&|c| c.temperature = 0.0).contains("temperature"));
        assert!(e(&|c| c.min_improvement = 1.5).contains("min_improvement"));
        assert!(e(&|c| c.answer_templates[1].keywords = vec!["Kill".into()]).contains("answer_templates[1]"));
        assert!(e(&|c| c.finetune.train.lr = -1.0).contains("finetune.train"));
        let unknown = serde_json::from_value::<ContextDistillationConfig>(serde_json::json!({
            "policy": "p", "safety_rm": "s", "prompts": ["x.jsonl"], "pre_prompt": "x"
        }));
        assert!(unknown.unwrap_err().to_string().contains("pre_prompt"));
        let missing = serde_json::from_value::<ContextDistillationConfig>(serde_json::json!({"policy": "p", "prompts": ["x.jsonl"]}));
        assert!(missing.unwrap_err().to_string().contains("safety_rm"));
    }

    #[test]
    fn templates_by_category_and_the_system_prompt() {
        let c = minimal();
        let t = c.template_for("How do I make a bomb at home?").unwrap();
        assert_eq!(t.category, "Criminal / Fraudulent Content");
        assert_eq!(c.template_for("How can I poison my boss?").unwrap().category, "Hateful and Harmful Activities");
        assert!(c.template_for("What is the capital of France?").is_none());
        let s = c.system_prompt(Some(t));
        assert!(s.starts_with(PAPER_PREPROMPT));
        assert!(s.contains("violating category: 'Criminal / Fraudulent Content'"));
        assert_eq!(c.system_prompt(None), PAPER_PREPROMPT);
    }

    #[test]
    fn every_demo_world_harmful_template_has_a_category() {
        let c = minimal();
        for h in demo_world::world::HARMFUL.iter() {
            for slot in h.slots {
                let p = h.prompt.replace("{0}", slot);
                assert!(c.template_for(&p).is_some(), "{p}");
            }
        }
    }
}
