//! The Llama-2 tokenizer: HF `tokenizers` running the legacy Llama `tokenizer.json`
//! (see [`crate::tokenizer_build`]), called with the semantics of Meta's SentencePiece wrapper
//! (`llama/tokenizer.py`, `Tokenizer.encode(s, bos, eos)` / `Tokenizer.decode(t)`):
//!
//! * the text is encoded *without* the `tokenizer.json` post-processor; BOS/EOS are added by the
//!   caller's flags, exactly like Meta's `encode(s, bos, eos)`;
//! * special-token strings in the text (`"<s>"`, `"</s>"`, `"<unk>"`) are plain text, as in
//!   SentencePiece, never control ids: a user cannot inject an EOS by typing `</s>`;
//! * `decode` skips BOS/EOS/UNK, like `sp.decode`, and drops the leading dummy-prefix space.
use std::path::{Path, PathBuf};

use crate::error::{Result, TextError};

/// Piece used by Llama-2 for beginning of sequence (id 1).
pub const BOS_TOKEN: &str = "<s>";
/// Piece used by Llama-2 for end of sequence (id 2).
pub const EOS_TOKEN: &str = "</s>";
/// Environment variable naming a `tokenizer.json` (or a directory holding one).
pub const TOKENIZER_ENV: &str = "RLHF_TOKENIZER";
/// Where `rlhf tokenizer build` writes the tokenizer, relative to the repository root.
pub const ASSET_PATH: &str = "assets/tokenizer/tokenizer.json";

/// Per id, the byte range `[start, end)` of the encoded text it covers.
pub type ByteOffsets = Vec<(usize, usize)>;

/// A Llama-2 tokenizer with SentencePiece (Meta) call semantics.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Where it was loaded from, for error messages (`<memory>` when built from a string).
    path: PathBuf,
    bos_id: u32,
    eos_id: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .finish()
    }
}

impl Tokenizer {
    /// Load a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let json = std::fs::read_to_string(path).map_err(|e| TextError::io(path, e))?;
        Self::from_json_with_path(&json, path.to_path_buf())
    }

    /// Load `dir/tokenizer.json` (an HF model directory).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("tokenizer.json"))
    }

    /// Load from the text of a `tokenizer.json` (e.g. straight from
    /// [`crate::tokenizer_build::build_tokenizer_json`]).
    pub fn from_json(json: &str) -> Result<Self> {
        Self::from_json_with_path(json, PathBuf::from("<memory>"))
    }

    fn from_json_with_path(json: &str, path: PathBuf) -> Result<Self> {
        let err = |msg: String| TextError::Tokenizer { path: path.clone(), msg };
        let mut inner: tokenizers::Tokenizer = json.parse().map_err(|e| err(format!("cannot parse tokenizer.json: {e}")))?;
        // Ids must not depend on settings a foreign tokenizer.json may carry.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| err(format!("cannot disable truncation: {e}")))?;
        // SentencePiece semantics: "<s>" typed in the text is text, not BOS.
        inner.set_encode_special_tokens(true);
        let id_of = |piece: &str| inner.token_to_id(piece).ok_or_else(|| err(format!("vocabulary has no {piece:?} token")));
        let (bos_id, eos_id) = (id_of(BOS_TOKEN)?, id_of(EOS_TOKEN)?);
        Ok(Tokenizer { inner, path, bos_id, eos_id })
    }

    fn error(&self, msg: impl std::fmt::Display) -> TextError {
        TextError::Tokenizer { path: self.path.clone(), msg: msg.to_string() }
    }

    /// Meta's `Tokenizer.encode(s, bos, eos)`: SentencePiece ids of `text` (with its dummy
    /// `"▁"` prefix), preceded by BOS if `bos` and followed by EOS if `eos`.
    /// An empty `text` gives no text ids (so `encode("", true, false) == [bos]`).
    pub fn encode(&self, text: &str, bos: bool, eos: bool) -> Result<Vec<u32>> {
        let (text_ids, _) = self.encode_with_offsets(text)?;
        let mut ids = Vec::with_capacity(text_ids.len() + 2);
        if bos {
            ids.push(self.bos_id);
        }
        ids.extend(text_ids);
        if eos {
            ids.push(self.eos_id);
        }
        Ok(ids)
    }

    /// Ids of `text` (no BOS/EOS) and, per id, the **byte** range `[start, end)` of `text` it
    /// covers. The dummy-prefix `"▁"` shares the range of the first character; every byte-fallback
    /// id of a character carries that character's whole range.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, ByteOffsets)> {
        let enc = self.inner.encode(text, false).map_err(|e| self.error(format!("cannot encode {:?}: {e}", preview(text))))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Meta's `Tokenizer.decode`: text of `ids`, skipping BOS/EOS/UNK. Fails on an id outside the
    /// vocabulary rather than dropping it silently.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let size = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= size) {
            return Err(self.error(format!("cannot decode id {bad}: vocabulary has {size} ids")));
        }
        self.inner.decode(ids, true).map_err(|e| self.error(format!("cannot decode: {e}")))
    }

    /// Id of `<s>` (1 for Llama-2).
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// Id of `</s>` (2 for Llama-2).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Number of ids, special tokens included (32000 for Llama-2).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The piece of `id` (e.g. `"▁Hello"`, `"<0x0A>"`), if any.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of `piece`, if it is in the vocabulary.
    pub fn token_to_id(&self, piece: &str) -> Option<u32> {
        self.inner.token_to_id(piece)
    }

    /// Where this tokenizer was loaded from (`<memory>` for [`Tokenizer::from_json`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The wrapped HF tokenizer (configured with `encode_special_tokens = true`).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// The first characters of `text`, for error messages.
fn preview(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Where to find the tokenizer when none is given:
/// 1. `$RLHF_TOKENIZER` (a `tokenizer.json`, or a directory holding one), if set and non-empty,
///    whether or not it exists, so that loading it reports the path the user chose;
/// 2. `<repo>/assets/tokenizer/tokenizer.json`, searching upwards from the running executable
///    (`<repo>/target/release/rlhf`, `<repo>/target/debug/deps/<test>`);
/// 3. `<llama crate>/../assets/tokenizer/tokenizer.json` (the source checkout this was built from).
///
/// `None` when 2 and 3 do not exist; `scripts/fetch_tokenizer.sh` then `rlhf tokenizer build`
/// create it.
pub fn default_tokenizer_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(TOKENIZER_ENV).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return Some(if p.is_dir() { p.join("tokenizer.json") } else { p });
    }
    let exe = std::env::current_exe().ok();
    if let Some(found) = exe.as_deref().and_then(|e| find_upwards(e, Path::new(ASSET_PATH))) {
        return Some(found);
    }
    let from_source = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(ASSET_PATH);
    from_source.is_file().then_some(from_source)
}

/// Llama-2's vocabulary size, and `vocab_size` of a `config.json` that does not give one.
pub const LLAMA2_VOCAB_SIZE: usize = 32000;

/// The one tokenizer precedence of every command: an explicit `tokenizer` path, else
/// `<model_dir>/tokenizer.json`, else the bundled Llama-2 tokenizer ([`default_tokenizer_path`]).
/// Returns the tokenizer and the file it came from (copied into every saved model).
///
/// When `model_dir` has a `config.json`, the tokenizer must fit the model before any forward
/// ([`check_vocab`]): an id past the embedding table would fail deep inside libtorch. Falling
/// back on the bundled tokenizer for a model folder is warned about (once per folder and
/// process), and is an error when the model's `vocab_size` is not the bundled tokenizer's.
pub fn resolve(explicit: Option<&Path>, model_dir: Option<&Path>) -> Result<(Tokenizer, PathBuf)> {
    let local = model_dir.map(|m| m.join("tokenizer.json")).filter(|p| p.exists());
    let (path, bundled) = match (explicit, local) {
        (Some(p), _) => (p.to_path_buf(), false),
        (None, Some(p)) => (p, false),
        (None, None) => (default_tokenizer_path().ok_or_else(|| no_tokenizer(model_dir))?, true),
    };
    let tok = Tokenizer::from_file(&path)?;
    let Some(dir) = model_dir else { return Ok((tok, path)) };
    if bundled && first_warning_for(dir) {
        tracing::warn!(tokenizer = %path.display(), "{} has no tokenizer.json: using the bundled Llama-2 tokenizer", dir.display());
    }
    if let Some(model_vocab) = model_vocab_size(dir)? {
        if bundled && tok.vocab_size() != model_vocab {
            return Err(TextError::BundledVocab {
                model_dir: dir.to_path_buf(),
                model_vocab,
                tokenizer: path,
                tokenizer_vocab: tok.vocab_size(),
            });
        }
        check_vocab(&tok, model_vocab, dir)?;
    }
    Ok((tok, path))
}

/// Refuses a tokenizer with more ids than the model in `model_dir` has embeddings
/// (`model_vocab`, its `config.json` `vocab_size`): its ids past the table cannot be embedded.
/// A smaller tokenizer is fine (a model's vocabulary may be padded, e.g. to a multiple of 64).
pub fn check_vocab(tok: &Tokenizer, model_vocab: usize, model_dir: &Path) -> Result<()> {
    if tok.vocab_size() > model_vocab {
        return Err(TextError::Vocab {
            tokenizer: tok.path().to_path_buf(),
            tokenizer_vocab: tok.vocab_size(),
            model_dir: model_dir.to_path_buf(),
            model_vocab,
        });
    }
    Ok(())
}

/// `vocab_size` of `<dir>/config.json` ([`LLAMA2_VOCAB_SIZE`] when the field is absent, as for
/// the model config); `None` when the folder has no `config.json`.
pub fn model_vocab_size(dir: &Path) -> Result<Option<usize>> {
    let path = dir.join("config.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| TextError::io(&path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| TextError::Json { path: path.clone(), source: e })?;
    match v.get("vocab_size") {
        None | Some(serde_json::Value::Null) => Ok(Some(LLAMA2_VOCAB_SIZE)),
        Some(n) => match n.as_u64().filter(|&n| n > 0) {
            Some(n) => Ok(Some(n as usize)),
            None => Err(TextError::Config { path, msg: format!("field vocab_size must be a positive integer, got {n}") }),
        },
    }
}

fn no_tokenizer(model_dir: Option<&Path>) -> TextError {
    TextError::Invalid(match model_dir {
        Some(m) => {
            format!(
                "{} has no tokenizer.json and the Llama-2 tokenizer was not found (run scripts/setup, or set RLHF_TOKENIZER)",
                m.display()
            )
        }
        None => "no tokenizer: set `tokenizer` or run scripts/setup (or set RLHF_TOKENIZER)".into(),
    })
}

/// True the first time it is called for `dir` in this process: the bundled-tokenizer warning is
/// given once per folder, not once per stage or evaluation that reloads it.
fn first_warning_for(dir: &Path) -> bool {
    static WARNED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let key = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if warned.contains(&key) {
        return false;
    }
    warned.push(key);
    true
}

/// The first `<ancestor>/<rel>` that is a file, over the ancestors of `start` (nearest first).
fn find_upwards(start: &Path, rel: &Path) -> Option<PathBuf> {
    start.ancestors().skip(1).map(|dir| dir.join(rel)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_cuts_on_char_boundaries() {
        assert_eq!(preview("short"), "short");
        let long = "é".repeat(50);
        assert_eq!(preview(&long), format!("{}...", "é".repeat(40)));
    }

    #[test]
    fn find_upwards_walks_parents() {
        let root = std::env::temp_dir().join(format!("rlhf-tok-find-{}", std::process::id()));
        let asset = root.join(ASSET_PATH);
        std::fs::create_dir_all(asset.parent().unwrap()).unwrap();
        std::fs::write(&asset, "{}").unwrap();
        let exe = root.join("target/release/deps/test-123");
        assert_eq!(find_upwards(&exe, Path::new(ASSET_PATH)), Some(asset));
        assert_eq!(find_upwards(Path::new("/nonexistent/a/b"), Path::new(ASSET_PATH)), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn bundled_tokenizer_warning_once_per_folder() {
        let a = std::env::temp_dir().join(format!("rlhf-tok-warn-a-{}", std::process::id()));
        let b = std::env::temp_dir().join(format!("rlhf-tok-warn-b-{}", std::process::id()));
        assert!(first_warning_for(&a));
        assert!(!first_warning_for(&a));
        assert!(first_warning_for(&b));
    }

    #[test]
    fn bad_json_names_the_source() {
        let err = Tokenizer::from_json("{not json").unwrap_err().to_string();
        assert!(err.contains("<memory>") && err.contains("cannot parse"), "{err}");
        let missing = Path::new("/nonexistent/tokenizer.json");
        let err = Tokenizer::from_file(missing).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/tokenizer.json"), "{err}");
    }
}
