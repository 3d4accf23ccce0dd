//! Token lengths in the Llama-2 chat format, and the explicit policy for over-long examples.
//!
//! An example's length is that of the longest sequence a stage builds from it: the whole SFT
//! dialog; for a comparison, the longer of prompt + chosen and prompt + rejected; a prompt alone.
//!
//! `--overlong truncate` keeps what matters most, as TRL's `keep_end` prompt truncation does:
//! 1. a prompt longer than half the budget (all of it, for a prompt record) keeps its **end**:
//!    the earliest (user, assistant) turns after any system message go first, then the start of
//!    the first remaining user message;
//! 2. then each reply (chosen, rejected, the SFT answer) is cut at its **end** to fit.
//!
//! Cuts fall on token boundaries of the text. An example that cannot be made to fit (a system
//! prompt alone over budget), or that breaks a record invariant once cut (chosen and rejected
//! equal after cutting their differing ends), is dropped and counted.
use llama_text::chat::{encode_dialog, AssistantMask, Message, Role};
use llama_text::Tokenizer;

use crate::error::{FieldError, Reason, Result};
use crate::parse::Record;

/// What to do with an example longer than `--max-tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlong {
    /// A bad row (reason `overlong`): fails the run, or goes to the rejects file with
    /// `--skip-invalid`. The default: nothing changes without being asked for.
    #[default]
    Error,
    /// Left out of the output, counted.
    Drop,
    /// Shortened (see the module docs), counted.
    Truncate,
}

impl Overlong {
    pub fn parse(s: &str) -> Option<Overlong> {
        match s {
            "error" => Some(Overlong::Error),
            "drop" => Some(Overlong::Drop),
            "truncate" => Some(Overlong::Truncate),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Overlong::Error => "error",
            Overlong::Drop => "drop",
            Overlong::Truncate => "truncate",
        }
    }
}

/// `--max-tokens N --overlong POLICY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthPolicy {
    pub max_tokens: usize,
    pub overlong: Overlong,
}

/// The outcome of the policy for one record.
#[derive(Debug)]
pub enum Fit<R> {
    /// Within the budget, unchanged.
    Kept,
    Truncated(R),
    Dropped,
    Rejected(FieldError),
}

impl LengthPolicy {
    /// Applies the policy to a record of `len` tokens.
    pub fn apply<R: Record>(&self, tok: &Tokenizer, record: &R, len: usize) -> Result<Fit<R>> {
        let max = self.max_tokens;
        if len <= max {
            return Ok(Fit::Kept);
        }
        Ok(match self.overlong {
            Overlong::Error => Fit::Rejected(FieldError::new(
                R::LONG_FIELD,
                Reason::Overlong,
                format!("{len} tokens in the chat format, more than --max-tokens {max}"),
            )),
            Overlong::Drop => Fit::Dropped,
            Overlong::Truncate => match record.truncate(tok, max)? {
                Some(r) if r.check().is_ok() => Fit::Truncated(r),
                _ => Fit::Dropped,
            },
        })
    }
}

/// Ids of a dialog (a prompt, or a dialog ending with a reply) in the chat format.
pub fn dialog_len(tok: &Tokenizer, messages: &[Message]) -> Result<usize> {
    Ok(encode_dialog(tok, messages, AssistantMask::AllTurns)?.ids.len())
}

/// `prompt` followed by the assistant `reply`.
pub fn with_reply(prompt: &[Message], reply: &str) -> Vec<Message> {
    let mut d = prompt.to_vec();
    d.push(Message::assistant(reply));
    d
}

/// The longest sequence of a prompt with one of several replies.
pub fn longest_with_replies(tok: &Tokenizer, prompt: &[Message], replies: &[&str]) -> Result<usize> {
    replies.iter().try_fold(0, |m, r| Ok(m.max(dialog_len(tok, &with_reply(prompt, r))?)))
}

/// The largest char boundary of `s` at or below `i`.
fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A prompt cut to at most `budget` tokens, keeping its end (step 1 of the module docs);
/// `None` when even one token of user text does not fit.
pub fn cut_prompt(tok: &Tokenizer, prompt: &[Message], budget: usize) -> Result<Option<Vec<Message>>> {
    let mut p = prompt.to_vec();
    let first = usize::from(p.first().is_some_and(|m| m.role == Role::System));
    let mut len = dialog_len(tok, &p)?;
    while len > budget && p.len() > first + 2 {
        p.drain(first..first + 2);
        len = dialog_len(tok, &p)?;
    }
    if len <= budget {
        return Ok(Some(p));
    }
    let text = p[first].content.clone();
    let (_, offsets) = tok.encode_with_offsets(&text)?;
    let mut skip = len - budget;
    while skip < offsets.len() {
        let start = floor_boundary(&text, offsets[skip].0);
        p[first].content = text[start..].to_string();
        len = dialog_len(tok, &p)?;
        if len <= budget {
            return Ok(Some(p));
        }
        skip += len - budget;
    }
    Ok(None)
}

/// `reply` cut at its end so that `prompt` + reply fits in `max` tokens (step 2); `None` when no
/// text of it fits.
pub fn cut_reply(tok: &Tokenizer, prompt: &[Message], reply: &str, max: usize) -> Result<Option<String>> {
    let (_, offsets) = tok.encode_with_offsets(reply)?;
    let mut keep = offsets.len();
    while keep > 0 {
        let text = &reply[..floor_boundary(reply, offsets[keep - 1].1)];
        let len = dialog_len(tok, &with_reply(prompt, text))?;
        if len <= max {
            return Ok(Some(text.to_string()).filter(|t| !t.trim().is_empty()));
        }
        keep = keep.saturating_sub(len - max);
    }
    Ok(None)
}

/// The reply unchanged when it fits, else cut.
fn fit_reply(tok: &Tokenizer, prompt: &[Message], reply: &str, max: usize) -> Result<Option<String>> {
    if dialog_len(tok, &with_reply(prompt, reply))? <= max {
        return Ok(Some(reply.to_string()));
    }
    cut_reply(tok, prompt, reply, max)
}

/// Step 1 for a prompt that shares the budget with replies: at most half of it.
fn fit_shared_prompt(tok: &Tokenizer, prompt: &[Message], max: usize) -> Result<Option<Vec<Message>>> {
    if dialog_len(tok, prompt)? <= max / 2 {
        return Ok(Some(prompt.to_vec()));
    }
    cut_prompt(tok, prompt, max / 2)
}

/// A prompt and its replies truncated to `max` tokens each (prompt + reply), or `None`.
pub fn truncate_example(tok: &Tokenizer, prompt: &[Message], replies: &[&str], max: usize) -> Result<Option<(Vec<Message>, Vec<String>)>> {
    let Some(prompt) = fit_shared_prompt(tok, prompt, max)? else { return Ok(None) };
    let mut out = Vec::with_capacity(replies.len());
    for r in replies {
        match fit_reply(tok, &prompt, r, max)? {
            Some(r) => out.push(r),
            None => return Ok(None),
        }
    }
    Ok(Some((prompt, out)))
}
