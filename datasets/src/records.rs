//! The canonical record of each kind, after parsing and normalisation. Readers (JSONL, Parquet,
//! importers) produce these; validation guarantees their invariants; stages consume them.
use llama_text::chat::{Message, Role};
use serde::{Deserialize, Serialize};

/// A supervised fine-tuning example: a dialog ending with an assistant reply.
/// On disk: `{"messages": [...]}` or `{"prompt": string, "response": string}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftRecord {
    pub messages: Vec<Message>,
}

/// Annotator rating of a preference pair (Llama 2 Section 3.2.1). `unsure` is read as
/// `negligibly_better`, as the paper bins them together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rating {
    SignificantlyBetter,
    Better,
    SlightlyBetter,
    #[serde(alias = "unsure")]
    NegligiblyBetter,
}

impl Rating {
    pub const ALL: [Rating; 4] = [Rating::SignificantlyBetter, Rating::Better, Rating::SlightlyBetter, Rating::NegligiblyBetter];

    /// The on-disk name.
    pub fn as_str(self) -> &'static str {
        match self {
            Rating::SignificantlyBetter => "significantly_better",
            Rating::Better => "better",
            Rating::SlightlyBetter => "slightly_better",
            Rating::NegligiblyBetter => "negligibly_better",
        }
    }

    /// Parses a rating name (`unsure` is `negligibly_better`).
    pub fn parse(s: &str) -> Option<Rating> {
        match s {
            "significantly_better" => Some(Rating::SignificantlyBetter),
            "better" => Some(Rating::Better),
            "slightly_better" => Some(Rating::SlightlyBetter),
            "negligibly_better" | "unsure" => Some(Rating::NegligiblyBetter),
            _ => None,
        }
    }
}

/// Which reward model a comparison was collected for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreferenceKind {
    Helpfulness,
    Safety,
}

impl PreferenceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PreferenceKind::Helpfulness => "helpfulness",
            PreferenceKind::Safety => "safety",
        }
    }
}

/// A preference comparison. On disk `prompt` is a string (one user turn) or a message list ending
/// with a user turn; it is normalised to messages here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferenceRecord {
    pub prompt: Vec<Message>,
    pub chosen: String,
    pub rejected: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating: Option<Rating>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<PreferenceKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen_safe: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_safe: Option<bool>,
    /// The test-set name, for per-set accuracy (Llama 2 Table 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A prompt for rejection sampling and PPO.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptRecord {
    pub prompt: Vec<Message>,
    /// Tagged as likely to elicit unsafe responses (Llama 2's IS_SAFETY(p)).
    #[serde(default)]
    pub is_safety: bool,
}

/// A prompt as a single user turn.
pub fn user_prompt(text: impl Into<String>) -> Vec<Message> {
    vec![Message { role: Role::User, content: text.into() }]
}
