//! The Llama-2-Chat dialog format, exactly as Meta's `Llama.chat_completion`
//! (meta-llama/llama, `llama/generation.py`) builds it, plus the loss mask for training on it.
//!
//! ```text
//! <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user_1} [/INST] {assistant_1} </s><s>[INST] {user_2} [/INST]
//! ```
//!
//! * An optional leading system message is folded into the first user message:
//!   `B_SYS + system + E_SYS + user_1` (the system text itself is not stripped).
//! * Each completed (user, assistant) pair is encoded **separately** as
//!   `encode(f"{B_INST} {u.strip()} {E_INST} {a.strip()} ", bos=True, eos=True)`, so every pair has
//!   its own BOS, its own SentencePiece dummy prefix, and ends with EOS.
//! * A final user turn is `encode(f"{B_INST} {u.strip()} {E_INST}", bos=True, eos=False)`.
//!
//! Meta's `strip()` is Python's `str.strip()`, which removes Unicode whitespace; Rust's
//! [`str::trim`] uses the same `White_Space` property except for U+001C..U+001F, which Python
//! also treats as whitespace, so we strip those too.
//!
//! **Assistant mask rule.** In a pair string, the assistant reply is the suffix
//! `" {a.strip()} "` that starts right after `[/INST]`. An id belongs to the reply iff the
//! byte range it covers *starts at or after* that space; the pair's EOS is part of the reply (the
//! model must learn to stop), its BOS is not. The space before the reply is SentencePiece's word
//! marker `"▁"` and merges into the reply's first piece (`" Hi"` -> `"▁Hi"`), so that piece is
//! wholly the assistant's; the trailing space becomes the reply's last piece (`"▁"`). No Llama-2
//! piece has a `"▁"` after its first character (except all-`"▁"` runs), so no piece of `[/INST]`
//! can swallow the space, and no id straddles the boundary; if one ever did (another vocabulary),
//! it would count as prompt, because it contains prompt text.
use serde::{Deserialize, Serialize};

use crate::error::{Result, TextError};
use crate::tokenizer::Tokenizer;

/// Start of a user instruction.
pub const B_INST: &str = "[INST]";
/// End of a user instruction.
pub const E_INST: &str = "[/INST]";
/// Start of the system prompt.
pub const B_SYS: &str = "<<SYS>>\n";
/// End of the system prompt.
pub const E_SYS: &str = "\n<</SYS>>\n\n";
/// Tags Meta refuses inside message content (`SPECIAL_TAGS` in `generation.py`).
pub const SPECIAL_TAGS: [&str; 4] = [B_INST, E_INST, "<<SYS>>", "<</SYS>>"];

/// Who wrote a message.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        })
    }
}

/// One message of a dialog (`{"role": ..., "content": ...}` as in Meta's `Dialog`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message { role, content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// Which assistant replies of a complete dialog are trained on.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AssistantMask {
    /// Every assistant reply (Llama 2 Sec. 3.1 SFT: loss on answer tokens only, all turns).
    #[default]
    AllTurns,
    /// Only the final reply (Ghost Attention, Llama 2 Sec. 3.3: earlier turns' loss is zeroed).
    LastTurn,
}

/// A dialog as ids, with `assistant_mask[i]` true where `ids[i]` is assistant text (or its EOS).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ChatTokens {
    pub ids: Vec<u32>,
    pub assistant_mask: Vec<bool>,
}

impl ChatTokens {
    /// How many ids are trained on.
    pub fn num_assistant_tokens(&self) -> usize {
        self.assistant_mask.iter().filter(|&&m| m).count()
    }
}

/// One `tokenizer.encode(text, bos=True, eos)` call of `chat_completion`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The text given to the tokenizer.
    pub text: String,
    /// Byte offset in `text` where the assistant reply (its leading space) starts; `None` for
    /// the final prompt segment.
    pub reply_start: Option<usize>,
    /// Whether EOS follows (true exactly for completed pairs).
    pub eos: bool,
}

/// Python's `str.strip()` (Unicode whitespace, including U+001C..U+001F).
fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// Check the roles: an optional system message, then user/assistant alternating from a user.
/// Errors name the offending message (0-based, counting the system message).
pub fn validate_roles(messages: &[Message]) -> Result<()> {
    let Some(first) = messages.first() else {
        return Err(TextError::Chat("empty dialog".into()));
    };
    let offset = usize::from(first.role == Role::System);
    if offset == 1 && messages.len() == 1 {
        return Err(TextError::Chat("dialog has only a system message; it must be followed by a user message".into()));
    }
    for (i, m) in messages.iter().enumerate().skip(offset) {
        let expected = if (i - offset) % 2 == 0 { Role::User } else { Role::Assistant };
        if m.role != expected {
            return Err(TextError::Chat(format!(
                "message {i} has role {}, expected {expected}: roles must alternate \
                 user/assistant after an optional leading system message",
                m.role
            )));
        }
    }
    Ok(())
}

/// The texts `chat_completion` hands to the tokenizer, one per `encode` call, in order.
/// A dialog ending with an assistant reply yields only completed pairs (a training example);
/// one ending with a user message ends with the open prompt segment.
pub fn dialog_segments(messages: &[Message]) -> Result<Vec<Segment>> {
    validate_roles(messages)?;
    // Fold the system prompt into the first user message, before any stripping (as Meta does).
    let (folded_first, rest) = match messages {
        [sys, user, rest @ ..] if sys.role == Role::System => (format!("{B_SYS}{}{E_SYS}{}", sys.content, user.content), rest),
        [user, rest @ ..] => (user.content.clone(), rest),
        [] => return Err(TextError::Chat("empty dialog".into())),
    };
    let contents: Vec<&str> = std::iter::once(folded_first.as_str()).chain(rest.iter().map(|m| m.content.as_str())).collect();
    let mut segments = Vec::with_capacity(contents.len().div_ceil(2));
    for turn in contents.chunks(2) {
        let user = py_strip(turn[0]);
        match turn.get(1) {
            Some(answer) => {
                let prompt = format!("{B_INST} {user} {E_INST}");
                let reply_start = prompt.len();
                let text = format!("{prompt} {} ", py_strip(answer));
                segments.push(Segment { text, reply_start: Some(reply_start), eos: true });
            }
            None => {
                let text = format!("{B_INST} {user} {E_INST}");
                segments.push(Segment { text, reply_start: None, eos: false });
            }
        }
    }
    Ok(segments)
}

/// Encode a dialog in the Llama-2-Chat format with its assistant mask (see the module docs for
/// the mask rule). A dialog ending with a user message is a prompt: every mask entry is false.
pub fn encode_dialog(tok: &Tokenizer, messages: &[Message], mask: AssistantMask) -> Result<ChatTokens> {
    let segments = dialog_segments(messages)?;
    let is_prompt = segments.last().is_some_and(|s| s.reply_start.is_none());
    let last = segments.len().saturating_sub(1);
    let mut out = ChatTokens::default();
    for (k, seg) in segments.iter().enumerate() {
        let (ids, offsets) = tok.encode_with_offsets(&seg.text)?;
        let trained = !is_prompt && (mask == AssistantMask::AllTurns || k == last);
        let reply_start = seg.reply_start.filter(|_| trained);
        out.ids.push(tok.bos_id());
        out.assistant_mask.push(false);
        out.ids.extend_from_slice(&ids);
        out.assistant_mask.extend(offsets.iter().map(|&(start, _)| reply_start.is_some_and(|r| start >= r)));
        if seg.eos {
            out.ids.push(tok.eos_id());
            out.assistant_mask.push(reply_start.is_some());
        }
    }
    Ok(out)
}

/// The ids `chat_completion` feeds the model for a dialog ending with a user message.
pub fn encode_prompt(tok: &Tokenizer, messages: &[Message]) -> Result<Vec<u32>> {
    match messages.last() {
        Some(m) if m.role != Role::User => {
            Err(TextError::Chat(format!("last message must be from user, got {} (message {})", m.role, messages.len() - 1)))
        }
        _ => Ok(encode_dialog(tok, messages, AssistantMask::AllTurns)?.ids),
    }
}

/// Whether any content contains `[INST]`, `[/INST]`, `<<SYS>>` or `<</SYS>>`, which Meta's
/// `chat_completion` answers with `UNSAFE_ERROR` instead of generating. Not enforced here.
pub fn contains_special_tags(messages: &[Message]) -> bool {
    messages.iter().any(|m| SPECIAL_TAGS.iter().any(|tag| m.content.contains(tag)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(messages: &[Message]) -> Vec<(String, Option<usize>, bool)> {
        dialog_segments(messages).unwrap().into_iter().map(|s| (s.text, s.reply_start, s.eos)).collect()
    }

    #[test]
    fn single_user_turn() {
        assert_eq!(texts(&[Message::user("  hi  ")]), vec![("[INST] hi [/INST]".into(), None, false)]);
    }

    #[test]
    fn system_is_folded_before_stripping() {
        let d = [Message::system(" be brief "), Message::user(" hi "), Message::assistant(" yo\n")];
        let text = "[INST] <<SYS>>\n be brief \n<</SYS>>\n\n hi [/INST] yo ".to_string();
        let start = "[INST] <<SYS>>\n be brief \n<</SYS>>\n\n hi [/INST]".len();
        assert_eq!(texts(&d), vec![(text, Some(start), true)]);
    }

    #[test]
    fn pairs_then_prompt() {
        let d = [Message::user("a"), Message::assistant("b"), Message::user("c"), Message::assistant(""), Message::user("e")];
        assert_eq!(
            texts(&d),
            vec![
                ("[INST] a [/INST] b ".into(), Some(16), true),
                ("[INST] c [/INST]  ".into(), Some(16), true),
                ("[INST] e [/INST]".into(), None, false),
            ]
        );
    }

    #[test]
    fn role_errors_name_the_message() {
        let err = |d: &[Message]| validate_roles(d).unwrap_err().to_string();
        assert!(err(&[]).contains("empty dialog"));
        assert!(err(&[Message::system("s")]).contains("only a system message"));
        let e = err(&[Message::assistant("a")]);
        assert!(e.contains("message 0 has role assistant, expected user"), "{e}");
        let e = err(&[Message::system("s"), Message::user("u"), Message::user("u")]);
        assert!(e.contains("message 2 has role user, expected assistant"), "{e}");
        let e = err(&[Message::user("u"), Message::assistant("a"), Message::system("s")]);
        assert!(e.contains("message 2 has role system, expected user"), "{e}");
        validate_roles(&[Message::user("u"), Message::assistant("a")]).unwrap();
    }

    #[test]
    fn strip_matches_python() {
        assert_eq!(py_strip("\u{1f} \t\n\u{a0}x y\u{3000}\u{1c}"), "x y");
        assert_eq!(py_strip("\u{200b}x"), "\u{200b}x", "zero-width space is not whitespace in Python");
    }

    #[test]
    fn special_tags() {
        assert!(!contains_special_tags(&[Message::user("[INST without end")]));
        assert!(contains_special_tags(&[Message::user("ok"), Message::assistant("x <</SYS>>")]));
    }

    #[test]
    fn serde_shapes() {
        let m: Message = serde_json::from_str(r#"{"role":"assistant","content":"x"}"#).unwrap();
        assert_eq!(m, Message::assistant("x"));
        let k: AssistantMask = serde_json::from_str(r#""last_turn""#).unwrap();
        assert_eq!(k, AssistantMask::LastTurn);
    }
}
