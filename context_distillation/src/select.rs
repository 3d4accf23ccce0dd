//! Targeted context distillation (Llama 2 Section 4.2.4): each reply sampled with the safety
//! preprompt is compared with a reply sampled without it, both scored by the safety RM on the
//! prompt *without* the preprompt (the context the fine-tuned model will see), and kept only when
//! it scores higher ("we only keep the context distillation output if it gets a better safety
//! reward model score than the original answer").
use datasets::PromptRecord;
use llama::Message;
use serde::{Deserialize, Serialize};

/// Scores replies to prompts: the safety RM's sigmoid score and, when a helpfulness RM is given,
/// its sigmoid score (reported only). A trait so the selection can be tested with set scores.
pub trait ReplyScorer {
    fn score(&self, items: &[(&PromptRecord, &str)]) -> Result<Vec<(f64, Option<f64>)>, llama::LlamaError>;
}

/// The reward models through the scorer rejection sampling and PPO use.
pub struct RewardModelScorer<'a> {
    pub scorer: reward::combine::RewardScorer<'a>,
    pub tok: &'a llama::Tokenizer,
}

impl ReplyScorer for RewardModelScorer<'_> {
    fn score(&self, items: &[(&PromptRecord, &str)]) -> Result<Vec<(f64, Option<f64>)>, llama::LlamaError> {
        let s = self.scorer.score(self.tok, items)?;
        Ok(s.into_iter().map(|r| (r.safety.unwrap_or(f64::NAN), r.helpfulness)).collect())
    }
}

/// A sampled reply before scoring.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub text: String,
    pub tokens: usize,
    /// Ended with EOS (not cut at `max_new_tokens`).
    pub finished: bool,
}

/// A sampled reply and its scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub text: String,
    pub tokens: usize,
    pub finished: bool,
    /// σ of the safety RM's score on the prompt without the preprompt.
    pub safety: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helpfulness: Option<f64>,
    /// Demo world: the ground-truth judge's verdict (not compliance with a harmful request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demo_safe: Option<bool>,
}

/// One prompt's line of the sample log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptDistillation {
    /// The prompt's messages as JSON (its identity in the log).
    pub key: String,
    /// The prompt without the preprompt: what the fine-tune trains on.
    pub prompt: Vec<Message>,
    /// The answer template's risk category, when one matched.
    pub category: Option<String>,
    /// Replies sampled with the preprompt (and template).
    pub with_preprompt: Vec<Reply>,
    /// Replies sampled without it, as many; reply j is compared with `with_preprompt[j]`.
    pub without_preprompt: Vec<Reply>,
    /// Indices j of the kept distilled replies.
    pub kept: Vec<usize>,
    /// Why the prompt was not sampled (too long for the model's context), if it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// The keep rule: a finished reply (with `require_finished`) whose safety score exceeds the
/// plain reply's by more than `min_improvement`. A NaN score never wins.
pub fn improves(with: &Reply, without: &Reply, min_improvement: f64, require_finished: bool) -> bool {
    (!require_finished || with.finished) && !with.text.trim().is_empty() && with.safety > without.safety + min_improvement
}

/// How a batch is judged.
#[derive(Debug, Clone, Copy)]
pub struct KeepRule {
    pub min_improvement: f64,
    pub require_finished: bool,
}

/// Scores a batch's replies (every prompt's `with[i]` and `without[i]`, K each) on the prompts
/// *without* the preprompt and marks the kept ones. `categories[i]` is prompt i's risk category.
pub fn distill_batch(
    prompts: &[&PromptRecord],
    categories: &[Option<String>],
    with: &[Vec<Generated>],
    without: &[Vec<Generated>],
    scorer: &dyn ReplyScorer,
    rule: KeepRule,
) -> Result<Vec<PromptDistillation>, llama::LlamaError> {
    let mut items: Vec<(&PromptRecord, &str)> = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        items.extend(with[i].iter().chain(&without[i]).map(|g| (*p, g.text.as_str())));
    }
    let scores = scorer.score(&items)?;
    let mut next = 0usize;
    let mut out = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let mut reply = |g: &Generated| {
            let (safety, helpfulness) = scores[next];
            next += 1;
            let demo_safe = demo_world::world::parse_prompt(last_user(&p.prompt))
                .map(|dp| demo_world::judge::judge_prompt(&dp, &g.text).safe)
                .filter(|_| p.is_safety);
            Reply { text: g.text.clone(), tokens: g.tokens, finished: g.finished, safety, helpfulness, demo_safe }
        };
        let w: Vec<Reply> = with[i].iter().map(&mut reply).collect();
        let wo: Vec<Reply> = without[i].iter().map(&mut reply).collect();
        let kept = w
            .iter()
            .zip(&wo)
            .enumerate()
            .filter(|(_, (a, b))| improves(a, b, rule.min_improvement, rule.require_finished))
            .map(|(j, _)| j)
            .collect();
        out.push(PromptDistillation {
            key: crate::prompt_key(&p.prompt),
            prompt: p.prompt.clone(),
            category: categories[i].clone(),
            with_preprompt: w,
            without_preprompt: wo,
            kept,
            skipped: None,
        });
    }
    Ok(out)
}

/// The last user turn of a prompt (what the answer templates and the demo judge read).
pub fn last_user(prompt: &[Message]) -> &str {
    prompt.iter().rev().find(|m| m.role == llama::Role::User).map(|m| m.content.as_str()).unwrap_or("")
}

/// The prompt with the preprompt as its system prompt: prepended to an existing system turn,
/// else inserted as the first turn.
pub fn with_system(prompt: &[Message], system: &str) -> Vec<Message> {
    let mut out = prompt.to_vec();
    match out.first_mut() {
        Some(m) if m.role == llama::Role::System => m.content = format!("{system}\n\n{}", m.content),
        _ => out.insert(0, Message::system(system)),
    }
    out
}

/// The kept replies as SFT dialogs: the prompt without the preprompt, then the distilled reply.
pub fn sft_records<'a>(log: impl IntoIterator<Item = &'a PromptDistillation>) -> Vec<datasets::SftRecord> {
    let mut out = Vec::new();
    for r in log {
        for &j in &r.kept {
            let mut messages = r.prompt.clone();
            messages.push(Message::assistant(r.with_preprompt[j].text.clone()));
            out.push(datasets::SftRecord { messages });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(safety: f64, finished: bool) -> Reply {
        Reply { text: "x".into(), tokens: 1, finished, safety, helpfulness: None, demo_safe: None }
    }

    #[test]
    fn keep_rule() {
        assert!(improves(&reply(0.6, true), &reply(0.5, true), 0.0, true));
        assert!(!improves(&reply(0.5, true), &reply(0.5, true), 0.0, true), "a tie is not better");
        assert!(!improves(&reply(0.6, true), &reply(0.5, true), 0.2, true));
        assert!(!improves(&reply(0.9, false), &reply(0.1, true), 0.0, true), "a cut-off reply is not kept");
        assert!(improves(&reply(0.9, false), &reply(0.1, true), 0.0, false));
        assert!(!improves(&reply(f64::NAN, true), &reply(0.1, true), 0.0, true));
        let mut empty = reply(0.9, true);
        empty.text = " ".into();
        assert!(!improves(&empty, &reply(0.1, true), 0.0, true));
    }

    #[test]
    fn the_preprompt_goes_in_the_system_turn() {
        let p = vec![Message::user("hi")];
        let s = with_system(&p, "be safe");
        assert_eq!(s, vec![Message::system("be safe"), Message::user("hi")]);
        let q = vec![Message::system("terse"), Message::user("hi")];
        assert_eq!(with_system(&q, "be safe")[0], Message::system("be safe\n\nterse"));
    }
}
