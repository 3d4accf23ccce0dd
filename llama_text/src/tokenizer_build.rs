//! Build the Llama-2 `tokenizer.json` (HF `tokenizers` layout) from the data embedded in the npm
//! package `llama-tokenizer-js@1.2.2` (`llama-tokenizer.js`, fetched by `scripts/fetch_tokenizer.sh`).
//!
//! That file carries Meta's Llama-2 SentencePiece vocabulary and the BPE merges that HF derived from
//! it (`data-conversion.py` in the package shows how they were exported from HF's `tokenizer.json`):
//!
//! * `llama_vocab_base64`: base64 of the 32000 pieces joined by `"\n"`, UTF-8, in id order
//!   (the JS decodes it with `TextDecoder('utf-8')`; we decode strictly and reject invalid UTF-8
//!   instead of silently producing U+FFFD).
//! * `llama_merges_binary`: base64 of little-endian `u16` token-id pairs, one pair per merge, in
//!   priority order (61249 merges); merge `k` joins `vocab[a] + vocab[b]`.
//!
//! The output reproduces the *legacy* HF Llama layout (the one `LlamaTokenizerFast` ships for
//! `meta-llama/Llama-2-*-hf`): a byte-fallback BPE with no pre-tokenizer, a normalizer that
//! prepends SentencePiece's dummy `"▁"` and turns spaces into `"▁"`, a post-processor that adds
//! `<s>`, and the matching decoder. Merges are written as `"left right"` strings, the form read by
//! every `tokenizers` release (Rust and Python) and by `transformers`; the newer `[left, right]`
//! pair form is only read by `tokenizers >= 0.20`. No Llama-2 piece contains an ASCII space (spaces
//! are `"▁"`), so the string form is unambiguous; [`build_tokenizer_json`] checks it.
use std::collections::HashMap;
use std::path::Path;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::error::{Result, TextError};

/// Number of pieces in Meta's Llama-2 SentencePiece model (`tokenizer.model`).
pub const LLAMA2_VOCAB_SIZE: usize = 32000;
/// Number of BPE merges in HF's Llama-2 `tokenizer.json`.
pub const LLAMA2_NUM_MERGES: usize = 61249;
/// Name of the JS constant holding the base64 vocabulary.
const VOCAB_CONST: &str = "llama_vocab_base64";
/// Name of the JS constant holding the base64 merge table.
const MERGES_CONST: &str = "llama_merges_binary";
/// The SentencePiece whitespace marker (U+2581).
const SPIECE_UNDERLINE: &str = "\u{2581}";
/// Special pieces of the Llama-2 SentencePiece model and their fixed ids.
const SPECIALS: [(&str, u32); 3] = [("<unk>", 0), ("<s>", 1), ("</s>", 2)];

/// Build the Llama-2 `tokenizer.json` text from the source of `llama-tokenizer.js`.
///
/// Fails with [`TextError::Invalid`] when the constants are missing, are not valid base64/UTF-8,
/// or do not describe the Llama-2 tokenizer (32000 unique pieces with `<unk>`, `<s>`, `</s>` at
/// ids 0-2, 61249 merges whose results are all in the vocabulary).
pub fn build_tokenizer_json(js_source: &str) -> Result<String> {
    let vocab = decode_vocab(js_string_constant(js_source, VOCAB_CONST)?)?;
    let merges = decode_merges(js_string_constant(js_source, MERGES_CONST)?, &vocab)?;
    let json = TokenizerJson::llama2(&vocab, &merges);
    serde_json::to_string_pretty(&json).map_err(|e| invalid(format!("cannot serialize tokenizer.json: {e}")))
}

/// [`build_tokenizer_json`] on a file, with the file named in any error.
pub fn build_tokenizer_json_from_file(js_path: &Path) -> Result<String> {
    let src = std::fs::read_to_string(js_path).map_err(|e| TextError::io(js_path, e))?;
    build_tokenizer_json(&src).map_err(|e| TextError::Tokenizer { path: js_path.to_path_buf(), msg: e.to_string() })
}

/// `tokenizer_config.json` for `transformers` (`AutoTokenizer`), with the Llama-2 HF fields:
/// `<s>`/`</s>`/`<unk>`, BOS added and EOS not, `legacy: true` (the layout this module writes),
/// 4096 positions (Llama 2 paper, Sec. 2.2: context length doubled to 4k), no pad token.
pub fn tokenizer_config_json() -> String {
    let cfg = serde_json::json!({
        "add_bos_token": true,
        "add_eos_token": false,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": null,
        "clean_up_tokenization_spaces": false,
        "legacy": true,
        "model_max_length": 4096,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    // Serializing a `Value` cannot fail.
    serde_json::to_string_pretty(&cfg).unwrap_or_default()
}

fn invalid(msg: impl std::fmt::Display) -> TextError {
    TextError::Invalid(format!("llama-tokenizer.js: {msg}"))
}

/// The contents of the string literal assigned to `name` (`name = "..."`) in JS source.
/// Base64 has no escapes, so the literal ends at the next matching quote.
fn js_string_constant<'a>(src: &'a str, name: &str) -> Result<&'a str> {
    let mut found = None;
    for (at, _) in src.match_indices(name) {
        let rest = src[at + name.len()..].trim_start();
        let Some(rest) = rest.strip_prefix('=') else {
            continue;
        };
        if rest.starts_with('=') {
            continue; // `==` comparison, not an assignment
        }
        let rest = rest.trim_start();
        let Some(quote) = rest.chars().next().filter(|c| matches!(c, '"' | '\'' | '`')) else {
            continue;
        };
        let body = &rest[1..];
        let end = body.find(quote).ok_or_else(|| invalid(format!("unterminated string literal for `{name}`")))?;
        if found.is_some() {
            return Err(invalid(format!("`{name}` is assigned more than once")));
        }
        found = Some(&body[..end]);
    }
    found.ok_or_else(|| invalid(format!("no string constant `{name} = \"...\"` found")))
}

/// Base64 as browsers' `atob` reads it: standard alphabet, padding optional, whitespace ignored.
fn decode_base64(text: &str, what: &str) -> Result<Vec<u8>> {
    let engine = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    engine.decode(compact.as_bytes()).map_err(|e| invalid(format!("`{what}` is not base64: {e}")))
}

/// Decode the vocabulary: UTF-8 pieces joined by `"\n"`, in id order; validate it is Llama-2's.
fn decode_vocab(b64: &str) -> Result<Vec<String>> {
    let bytes = decode_base64(b64, VOCAB_CONST)?;
    let text = String::from_utf8(bytes).map_err(|e| invalid(format!("`{VOCAB_CONST}` is not valid UTF-8: {e}")))?;
    let vocab: Vec<String> = text.split('\n').map(str::to_owned).collect();
    check_vocab(&vocab)?;
    Ok(vocab)
}

fn check_vocab(vocab: &[String]) -> Result<()> {
    if vocab.len() != LLAMA2_VOCAB_SIZE {
        return Err(invalid(format!("expected {LLAMA2_VOCAB_SIZE} Llama-2 pieces, found {}", vocab.len())));
    }
    for (piece, id) in SPECIALS {
        if vocab[id as usize] != piece {
            return Err(invalid(format!("expected {piece:?} at id {id}, found {:?}", vocab[id as usize])));
        }
    }
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(vocab.len());
    for (id, piece) in vocab.iter().enumerate() {
        if piece.is_empty() || piece.contains(' ') {
            return Err(invalid(format!("piece {id} ({piece:?}) is empty or contains a space")));
        }
        if let Some(first) = seen.insert(piece, id) {
            return Err(invalid(format!("piece {piece:?} appears at ids {first} and {id}")));
        }
    }
    Ok(())
}

/// Decode the merges: little-endian `u16` id pairs in priority order; each result must be a piece.
fn decode_merges(b64: &str, vocab: &[String]) -> Result<Vec<(u32, u32)>> {
    let bytes = decode_base64(b64, MERGES_CONST)?;
    let merges = merge_pairs(&bytes)?;
    if merges.len() != LLAMA2_NUM_MERGES {
        return Err(invalid(format!("expected {LLAMA2_NUM_MERGES} Llama-2 merges, found {}", merges.len())));
    }
    let ids: HashMap<&str, usize> = vocab.iter().enumerate().map(|(i, p)| (p.as_str(), i)).collect();
    for (rank, &(a, b)) in merges.iter().enumerate() {
        let (Some(left), Some(right)) = (vocab.get(a as usize), vocab.get(b as usize)) else {
            return Err(invalid(format!("merge {rank} refers to id {a} or {b} beyond the vocabulary")));
        };
        if !ids.contains_key(format!("{left}{right}").as_str()) {
            return Err(invalid(format!("merge {rank} ({left:?} + {right:?}) makes a piece not in the vocabulary")));
        }
    }
    Ok(merges)
}

/// Split a byte string into `(u16 LE, u16 LE)` pairs.
fn merge_pairs(bytes: &[u8]) -> Result<Vec<(u32, u32)>> {
    if !bytes.len().is_multiple_of(4) {
        return Err(invalid(format!("`{MERGES_CONST}` holds {} bytes, not a whole number of 4-byte id pairs", bytes.len())));
    }
    Ok(bytes.chunks_exact(4).map(|c| (u16::from_le_bytes([c[0], c[1]]) as u32, u16::from_le_bytes([c[2], c[3]]) as u32)).collect())
}

// ---------------------------------------------------------------------------------------------
// The tokenizer.json layout. Field order follows what `tokenizers` itself writes.

#[derive(Serialize)]
struct TokenizerJson<'a> {
    version: &'static str,
    truncation: Option<()>,
    padding: Option<()>,
    added_tokens: Vec<AddedToken>,
    normalizer: Normalizer,
    pre_tokenizer: Option<()>,
    post_processor: PostProcessor,
    decoder: Decoder,
    model: BpeModel<'a>,
}

#[derive(Serialize)]
struct AddedToken {
    id: u32,
    content: &'static str,
    single_word: bool,
    lstrip: bool,
    rstrip: bool,
    normalized: bool,
    special: bool,
}

#[derive(Serialize)]
#[serde(tag = "type")]
enum Normalizer {
    Sequence { normalizers: Vec<Normalizer> },
    Prepend { prepend: &'static str },
    Replace { pattern: Pattern, content: &'static str },
}

#[derive(Serialize)]
enum Pattern {
    String(&'static str),
}

#[derive(Serialize)]
#[serde(tag = "type")]
enum PostProcessor {
    TemplateProcessing { single: Vec<Piece>, pair: Vec<Piece>, special_tokens: HashMap<&'static str, SpecialToken> },
}

#[derive(Serialize)]
enum Piece {
    SpecialToken { id: &'static str, type_id: u32 },
    Sequence { id: &'static str, type_id: u32 },
}

#[derive(Serialize)]
struct SpecialToken {
    id: &'static str,
    ids: Vec<u32>,
    tokens: Vec<&'static str>,
}

#[derive(Serialize)]
#[serde(tag = "type")]
enum Decoder {
    Sequence { decoders: Vec<Decoder> },
    Replace { pattern: Pattern, content: &'static str },
    ByteFallback,
    Fuse,
    Strip { content: &'static str, start: usize, stop: usize },
}

#[derive(Serialize)]
struct BpeModel<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    dropout: Option<f32>,
    unk_token: &'static str,
    continuing_subword_prefix: Option<()>,
    end_of_word_suffix: Option<()>,
    fuse_unk: bool,
    byte_fallback: bool,
    ignore_merges: bool,
    vocab: VocabById<'a>,
    merges: Vec<String>,
}

/// The vocabulary as a JSON object `{piece: id}` written in id order (as `tokenizers` writes it).
struct VocabById<'a>(&'a [String]);

impl Serialize for VocabById<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (id, piece) in self.0.iter().enumerate() {
            map.serialize_entry(piece, &id)?;
        }
        map.end()
    }
}

impl<'a> TokenizerJson<'a> {
    /// HF's legacy Llama-2 pipeline around the given vocabulary and merges.
    fn llama2(vocab: &'a [String], merges: &[(u32, u32)]) -> Self {
        let added_tokens = SPECIALS
            .iter()
            .map(|&(content, id)| AddedToken {
                id,
                content,
                single_word: false,
                lstrip: false,
                rstrip: false,
                normalized: false,
                special: true,
            })
            .collect();
        let bos = |type_id| Piece::SpecialToken { id: "<s>", type_id };
        let seq = |id, type_id| Piece::Sequence { id, type_id };
        let special_tokens = HashMap::from([("<s>", SpecialToken { id: "<s>", ids: vec![1], tokens: vec!["<s>"] })]);
        TokenizerJson {
            version: "1.0",
            truncation: None,
            padding: None,
            added_tokens,
            // SentencePiece `add_dummy_prefix`, then spaces become the whitespace marker.
            normalizer: Normalizer::Sequence {
                normalizers: vec![
                    Normalizer::Prepend { prepend: SPIECE_UNDERLINE },
                    Normalizer::Replace { pattern: Pattern::String(" "), content: SPIECE_UNDERLINE },
                ],
            },
            pre_tokenizer: None,
            post_processor: PostProcessor::TemplateProcessing {
                single: vec![bos(0), seq("A", 0)],
                pair: vec![bos(0), seq("A", 0), bos(1), seq("B", 1)],
                special_tokens,
            },
            // Undo the normalizer: marker -> space, `<0xNN>` -> bytes, drop the dummy prefix.
            decoder: Decoder::Sequence {
                decoders: vec![
                    Decoder::Replace { pattern: Pattern::String(SPIECE_UNDERLINE), content: " " },
                    Decoder::ByteFallback,
                    Decoder::Fuse,
                    Decoder::Strip { content: " ", start: 1, stop: 0 },
                ],
            },
            model: BpeModel {
                kind: "BPE",
                dropout: None,
                unk_token: "<unk>",
                continuing_subword_prefix: None,
                end_of_word_suffix: None,
                fuse_unk: true,
                byte_fallback: true,
                ignore_merges: false,
                vocab: VocabById(vocab),
                merges: merges.iter().map(|&(a, b)| format!("{} {}", vocab[a as usize], vocab[b as usize])).collect(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_assigned_constant_not_its_uses() {
        let src = "x = a || llama_vocab_base64\nif (llama_vocab_base64 == y) {}\nconst llama_vocab_base64 = \"QUJD\"\n";
        assert_eq!(js_string_constant(src, VOCAB_CONST).unwrap(), "QUJD");
        assert!(js_string_constant("const other = \"x\"", VOCAB_CONST).is_err());
        let twice = "const llama_vocab_base64 = 'a'\nconst llama_vocab_base64 = 'b'";
        assert!(js_string_constant(twice, VOCAB_CONST).is_err());
        assert!(js_string_constant("const llama_vocab_base64 = \"abc", VOCAB_CONST).is_err());
    }

    #[test]
    fn base64_like_atob() {
        assert_eq!(decode_base64("QUI=", "t").unwrap(), b"AB");
        assert_eq!(decode_base64("QUI", "t").unwrap(), b"AB");
        assert_eq!(decode_base64("QU\nI=", "t").unwrap(), b"AB");
        assert!(decode_base64("Q!I=", "t").is_err());
    }

    #[test]
    fn merge_pairs_are_little_endian_u16() {
        // (0x0102, 0x0304), (29871, 1)
        let bytes = [0x02, 0x01, 0x04, 0x03, 0xAF, 0x74, 0x01, 0x00];
        assert_eq!(merge_pairs(&bytes).unwrap(), vec![(0x0102, 0x0304), (29871, 1)]);
        assert!(merge_pairs(&bytes[..6]).is_err());
    }

    #[test]
    fn vocab_checks() {
        let mut vocab: Vec<String> = (0..LLAMA2_VOCAB_SIZE).map(|i| format!("p{i}")).collect();
        assert!(check_vocab(&vocab).is_err(), "specials missing");
        for (piece, id) in SPECIALS {
            vocab[id as usize] = piece.to_string();
        }
        check_vocab(&vocab).unwrap();
        vocab[7] = "p8".into();
        assert!(check_vocab(&vocab).is_err(), "duplicate piece");
        vocab[7] = "a b".into();
        assert!(check_vocab(&vocab).is_err(), "space inside a piece");
        assert!(check_vocab(&vocab[..100]).is_err(), "wrong size");
    }

    #[test]
    fn config_has_llama2_fields() {
        let cfg: serde_json::Value = serde_json::from_str(&tokenizer_config_json()).unwrap();
        assert_eq!(cfg["bos_token"], "<s>");
        assert_eq!(cfg["eos_token"], "</s>");
        assert_eq!(cfg["add_bos_token"], true);
        assert_eq!(cfg["add_eos_token"], false);
        assert_eq!(cfg["model_max_length"], 4096);
        assert!(cfg["pad_token"].is_null());
    }
}
