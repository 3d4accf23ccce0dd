//! Tokenizing records for the cache: the Llama-2 chat format of [`llama_text::chat`], computed from
//! SentencePiece *words* with a per-thread word cache.
//!
//! **Why words are exact.** Meta's Llama-2 `tokenizer.json` (our `assets/tokenizer/`) has no
//! pre-tokenizer: a text is normalised (`"▁"` prepended, spaces replaced by `"▁"`) and the whole
//! string is one BPE word. No piece of its vocabulary has a `"▁"` after its first character
//! unless it is all `"▁"` (checked on load, [`WordSplit::for_tokenizer`]), and every merge
//! produces a vocabulary piece, so no merge ever joins a non-`"▁"` character to a following
//! `"▁"`. Cutting the normalised string before every `"▁"` that follows a non-`"▁"` character
//! therefore cuts between symbols that BPE never merges; BPE applies the same merges, in the same
//! relative order, to each piece alone as to the whole, so the ids of the pieces, concatenated,
//! are the ids of the whole. The pieces repeat (they are words), so their ids are cached.
//!
//! The same argument gives the preference split: the chat encoding of a completed pair,
//! `encode("[INST] {u} [/INST] {a} ", bos, eos)`, is cut right after `[/INST]` (a `"]"` followed
//! by the `"▁"` of the reply), so it equals `encode("[INST] {u} [/INST]", bos)` (the prompt of
//! `encode_prompt`) followed by `encode("{a.strip()} ", bos=false, eos=true)`, the dummy prefix
//! standing for the space before the reply. (With a leading space, `encode(" {a} ")`, it would
//! not: that normalises to `"▁▁a▁"`, one `"▁"` too many.) Tests check both equalities against
//! [`encode_dialog`] on the demo world and on adversarial strings.
//!
//! A tokenizer that does not have this shape (another normaliser, a pre-tokenizer, BPE dropout,
//! a vocabulary with inner `"▁"`) is encoded through [`Tokenizer::encode`] and
//! [`encode_dialog`] instead ([`Encoding::Exact`]); the ids are the same either way, only slower.
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

use llama_text::chat::{dialog_segments, encode_dialog, encode_prompt, AssistantMask, ChatTokens, Message};
use llama_text::Tokenizer;
use serde_json::{json, Value};
use tokenizers::Model;

use crate::error::{DatasetError, Result};

/// SentencePiece's word marker (U+2581), which the normaliser puts for every space.
pub const MARKER: char = '\u{2581}';

/// How ids are computed (the same ids either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Word by word with a word cache (Llama-2-shaped tokenizers; see the module docs).
    WordSplit,
    /// The whole text through `tokenizers` (any tokenizer).
    Exact,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::WordSplit => "word_split",
            Encoding::Exact => "exact",
        }
    }
}

/// Words cached per thread before the cache is cleared (bounds memory on open-vocabulary text:
/// about 100 bytes a word).
const WORDS_PER_THREAD: usize = 1 << 18;

/// A cheap hash for short words (FxHash's multiply-rotate); the cache is private, so no
/// denial-of-service concern.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type WordCache = HashMap<Box<str>, Box<[u32]>, BuildHasherDefault<FxHasher>>;

/// Encodes texts, dialogs and pairs for the cache. `Sync`: rayon workers share one.
pub struct RecordEncoder {
    tok: Tokenizer,
    encoding: Encoding,
    /// One word cache per rayon worker (`current_thread_index`), plus one for other threads, so
    /// that workers never wait on each other.
    caches: Vec<Mutex<WordCache>>,
}

/// Checks that a tokenizer has the Llama-2 shape the word split relies on (module docs).
pub struct WordSplit;

impl WordSplit {
    /// `Ok(())` when word-by-word encoding is exact for `tok`, else why not.
    pub fn for_tokenizer(tok: &Tokenizer) -> std::result::Result<(), String> {
        let inner = tok.inner();
        let normalizer = serde_json::to_value(inner.get_normalizer()).map_err(|e| e.to_string())?;
        let expected = json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": MARKER.to_string()},
            {"type": "Replace", "pattern": {"String": " "}, "content": MARKER.to_string()},
        ]});
        if normalizer != expected {
            return Err(format!("normalizer is {normalizer}, not Llama-2's"));
        }
        if inner.get_pre_tokenizer().is_some() {
            return Err("has a pre-tokenizer".into());
        }
        let model = serde_json::to_value(inner.get_model()).map_err(|e| e.to_string())?;
        let field = |k: &str| model.get(k).cloned().unwrap_or(Value::Null);
        if field("type") != json!("BPE") {
            return Err(format!("model is {}, not BPE", field("type")));
        }
        for k in ["dropout", "continuing_subword_prefix", "end_of_word_suffix"] {
            if !field(k).is_null() {
                return Err(format!("BPE {k} is {}", field(k)));
            }
        }
        if field("ignore_merges") == json!(true) {
            return Err("BPE ignore_merges is set".into());
        }
        if let Some(t) = inner.get_added_tokens_decoder().values().find(|t| !t.special) {
            return Err(format!("added token {:?} is not special", t.content));
        }
        let inner_marker = |p: &str| p.chars().skip(1).any(|c| c == MARKER) && p.chars().any(|c| c != MARKER);
        if let Some(p) = inner.get_vocab(true).into_keys().find(|p| inner_marker(p)) {
            return Err(format!("piece {p:?} has a word marker after its first character"));
        }
        Ok(())
    }
}

impl RecordEncoder {
    /// Word-split encoding when the tokenizer allows it (module docs), else exact.
    pub fn new(tok: Tokenizer) -> Self {
        let encoding = match WordSplit::for_tokenizer(&tok) {
            Ok(()) => Encoding::WordSplit,
            Err(_) => Encoding::Exact,
        };
        Self::with_encoding(tok, encoding)
    }

    /// A given encoding; [`Encoding::WordSplit`] only when [`WordSplit::for_tokenizer`] allows it.
    pub fn with_encoding(tok: Tokenizer, encoding: Encoding) -> Self {
        let encoding = if encoding == Encoding::WordSplit && WordSplit::for_tokenizer(&tok).is_err() { Encoding::Exact } else { encoding };
        let slots = rayon::current_num_threads() + 1;
        let caches = (0..slots).map(|_| Mutex::new(WordCache::default())).collect();
        RecordEncoder { tok, encoding, caches }
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tok
    }

    /// Meta's `encode(text, bos, eos)`.
    pub fn encode(&self, text: &str, bos: bool, eos: bool) -> Result<Vec<u32>> {
        if self.encoding == Encoding::Exact {
            return Ok(self.tok.encode(text, bos, eos)?);
        }
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if bos {
            ids.push(self.tok.bos_id());
        }
        self.push_text(&mut ids, text, true)?;
        if eos {
            ids.push(self.tok.eos_id());
        }
        Ok(ids)
    }

    /// Appends the ids of `text` normalised as SentencePiece does (`"▁"` prepended when
    /// `dummy_prefix`, spaces as `"▁"`), word by word.
    fn push_text(&self, ids: &mut Vec<u32>, text: &str, dummy_prefix: bool) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        thread_local!(static NORMALISED: RefCell<String> = const { RefCell::new(String::new()) });
        NORMALISED.with_borrow_mut(|s| {
            s.clear();
            if dummy_prefix {
                s.push(MARKER);
            }
            s.extend(text.chars().map(|c| if c == ' ' { MARKER } else { c }));
            let slot = rayon::current_thread_index().unwrap_or(self.caches.len() - 1).min(self.caches.len() - 1);
            let mut cache = self.caches[slot].lock().unwrap_or_else(|p| p.into_inner());
            for word in words(s) {
                if let Some(hit) = cache.get(word) {
                    ids.extend_from_slice(hit);
                    continue;
                }
                let tokens =
                    self.tok.inner().get_model().tokenize(word).map_err(|e| {
                        DatasetError::Invalid(format!("tokenizer {}: cannot encode {word:?}: {e}", self.tok.path().display()))
                    })?;
                let word_ids: Box<[u32]> = tokens.iter().map(|t| t.id).collect();
                ids.extend_from_slice(&word_ids);
                if cache.len() >= WORDS_PER_THREAD {
                    cache.clear();
                }
                cache.insert(word.into(), word_ids);
            }
            Ok(())
        })
    }

    /// [`encode_dialog`]: a dialog in the chat format with its assistant mask.
    pub fn dialog(&self, messages: &[Message], mask: AssistantMask) -> Result<ChatTokens> {
        if self.encoding == Encoding::Exact {
            return Ok(encode_dialog(&self.tok, messages, mask)?);
        }
        let segments = dialog_segments(messages)?;
        // A reply starts with the space after `[/INST]`, a word boundary (module docs); were it
        // ever not, the whole dialog goes the exact way.
        if segments.iter().any(|s| s.reply_start.is_some_and(|r| !word_boundary(&s.text, r))) {
            return Ok(encode_dialog(&self.tok, messages, mask)?);
        }
        let is_prompt = segments.last().is_some_and(|s| s.reply_start.is_none());
        let last = segments.len().saturating_sub(1);
        let mut out = ChatTokens::default();
        for (k, seg) in segments.iter().enumerate() {
            out.ids.push(self.tok.bos_id());
            out.assistant_mask.push(false);
            let trained = !is_prompt && (mask == AssistantMask::AllTurns || k == last);
            let cut = seg.reply_start.unwrap_or(seg.text.len());
            self.push_text(&mut out.ids, &seg.text[..cut], true)?;
            out.assistant_mask.resize(out.ids.len(), false);
            self.push_text(&mut out.ids, &seg.text[cut..], false)?;
            out.assistant_mask.resize(out.ids.len(), trained && cut < seg.text.len());
            if seg.eos {
                out.ids.push(self.tok.eos_id());
                out.assistant_mask.push(trained && seg.reply_start.is_some());
            }
        }
        Ok(out)
    }

    /// [`encode_prompt`]: the ids the model is fed for a dialog ending with a user turn.
    pub fn prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        if self.encoding == Encoding::Exact {
            return Ok(encode_prompt(&self.tok, messages)?);
        }
        Ok(self.dialog(messages, AssistantMask::AllTurns)?.ids)
    }

    /// A comparison as `(prompt, chosen, rejected)` ids such that `prompt ++ chosen` is
    /// `encode_dialog(prompt + [assistant(chosen)])` (and the same for rejected).
    ///
    /// Word split: `prompt` is [`encode_prompt`] and a reply is `encode("{a.strip()} ", bos=false,
    /// eos=true)` (module docs). Exact: both completed dialogs are encoded whole and cut after
    /// their longest common prefix when that is shorter than `encode_prompt` (a tokenizer whose
    /// merges cross `[/INST]`), so the equality holds for every tokenizer.
    pub fn pair(&self, prompt: &[Message], chosen: &str, rejected: &str) -> Result<[Vec<u32>; 3]> {
        if self.encoding == Encoding::WordSplit {
            let p = self.prompt(prompt)?;
            let c = self.reply(chosen)?;
            let r = self.reply(rejected)?;
            return Ok([p, c, r]);
        }
        let full = |reply: &str| -> Result<Vec<u32>> {
            let mut d = prompt.to_vec();
            d.push(Message::assistant(reply));
            Ok(encode_dialog(&self.tok, &d, AssistantMask::AllTurns)?.ids)
        };
        let (c, r) = (full(chosen)?, full(rejected)?);
        let p = encode_prompt(&self.tok, prompt)?;
        let common = c.iter().zip(&r).take_while(|(a, b)| a == b).count();
        let cut = if c.starts_with(&p) && r.starts_with(&p) { p.len() } else { common };
        Ok([c[..cut].to_vec(), c[cut..].to_vec(), r[cut..].to_vec()])
    }

    /// A reply's ids after its prompt: `encode("{reply.strip()} ", bos=false, eos=true)`, the strip
    /// being the chat format's own (taken from [`dialog_segments`]).
    fn reply(&self, reply: &str) -> Result<Vec<u32>> {
        let segs = dialog_segments(&[Message::user("x"), Message::assistant(reply)])?;
        let (text, start) = match segs.first() {
            Some(s) => (&s.text, s.reply_start.unwrap_or(s.text.len())),
            None => return Err(DatasetError::Invalid("empty chat segment".into())),
        };
        let mut ids = Vec::with_capacity(reply.len() / 3 + 2);
        self.push_text(&mut ids, &text[start..], false)?;
        ids.push(self.tok.eos_id());
        Ok(ids)
    }
}

/// Whether byte `i` of `text` starts a word (module docs): a space or marker after a character
/// that is neither.
fn word_boundary(text: &str, i: usize) -> bool {
    let is_marker = |c: char| c == ' ' || c == MARKER;
    text.get(i..).and_then(|s| s.chars().next()).is_some_and(is_marker)
        && text.get(..i).and_then(|s| s.chars().next_back()).is_some_and(|c| !is_marker(c))
}

/// The normalised string cut before every `"▁"` that follows a non-`"▁"` character.
fn words(s: &str) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let mut prev_marker = true;
    let mut cuts = s.char_indices().filter_map(move |(i, c)| {
        let is_marker = c == MARKER;
        let cut = is_marker && !prev_marker && i > 0;
        prev_marker = is_marker;
        cut.then_some(i)
    });
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let end = match cuts.next() {
            Some(i) => i,
            None => {
                done = true;
                s.len()
            }
        };
        let w = &s[start..end];
        start = end;
        Some(w)
    })
    .filter(|w| !w.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_cut_before_markers_after_text() {
        let s = "▁a▁▁b▁c▁";
        assert_eq!(words(s).collect::<Vec<_>>(), ["▁a", "▁▁b", "▁c", "▁"]);
        assert_eq!(words("▁▁").collect::<Vec<_>>(), ["▁▁"]);
        assert_eq!(words("ab").collect::<Vec<_>>(), ["ab"]);
        assert_eq!(words("").count(), 0);
    }

    #[test]
    fn boundaries() {
        assert!(word_boundary("[/INST] a", 7));
        assert!(!word_boundary("[/INST]  a", 8));
        assert!(!word_boundary("ab", 1));
        assert!(!word_boundary("a", 1));
    }
}
