//! The tokenized cache: every record tokenized once, in the Llama-2 chat format, into flat files
//! that the stages map into memory ([`format`] describes the files).
//!
//! * **SFT**: the dialog's ids ([`encode_dialog`](llama_text::chat::encode_dialog)) and its loss mask
//!   (assistant reply tokens and their EOS; [`AssistantMask`] picks all turns or the last one).
//! * **Preference**: the prompt's ids ([`encode_prompt`](llama_text::chat::encode_prompt)) and each
//!   reply's ids, such that `prompt ++ chosen` (and `prompt ++ rejected`) is exactly the chat
//!   encoding of the completed pair (see [`encode`] for why, and the tests that check it), plus
//!   rating, kind, source and the safety flags. The prompt is stored once, not twice.
//! * **Prompts**: the prompt's ids and `is_safety`.
//!
//! **Key.** A cache folder is `ROOT/<kind>-<16 hex>`, named by a BLAKE3 hash of: the format
//! version, the settings ([`CacheSettings`]: mask mode, length policy), the bytes of
//! `tokenizer.json`, and every input's format and *full content* (in order). Any change to an
//! input, however small and whatever its mtime, gives a new key and a rebuild; an unchanged input
//! reuses the folder after one read of its bytes (about a second per GB).
//!
//! **Atomic.** A build writes into `ROOT/.tmp-<name>-<pid>-<nanos>`, syncs, writes
//! `manifest.json` last, then renames the folder into place. A folder without a valid manifest is
//! never used; a leftover temp folder of a dead process is removed by the next build.
//!
//! **Streaming.** Inputs are read in row batches ([`crate::io::RecordReader::next_batch`]) on
//! a reader thread, two batches ahead; each batch is tokenized in parallel (rayon) and appended
//! to the files, so memory stays flat whatever the size of the input.
pub mod encode;
pub mod format;

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use llama_text::chat::{AssistantMask, ChatTokens};
use llama_text::Tokenizer;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use encode::{Encoding, RecordEncoder};
use format::{
    Mapped, StoreWriter, MANIFEST_FILE, MASK_FILE, META_FILE, NONE, OFFSETS_FILE, PAIR_META_BYTES, PROMPT_META_BYTES, TOKENS_FILE,
};

use crate::error::{DatasetError, FieldError, Result, RowError};
use crate::io::{Format, RecordReader, Row};
use crate::length::{Fit, LengthPolicy};
use crate::parse::{Record, RecordKind};
use crate::records::{PreferenceKind, PreferenceRecord, PromptRecord, Rating, SftRecord};

/// Bumped whenever the files or their meaning change; part of the key.
pub const FORMAT_VERSION: u32 = 1;
/// Where `rlhf data cache` puts caches unless told (`--cache-dir`).
pub const DEFAULT_CACHE_DIR: &str = ".cache/tokens";
/// Rows read and tokenized at a time.
pub const BATCH_ROWS: usize = 4096;

/// What besides the data and the tokenizer decides the ids (all of it is in the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheSettings {
    /// SFT loss mask: every assistant reply or only the last (Ghost Attention). Ignored (and not
    /// in the key) for the other kinds.
    pub mask: AssistantMask,
    /// `--max-tokens` and `--overlong`: `None` keeps every example whole.
    pub length: Option<LengthPolicy>,
}

impl CacheSettings {
    /// The settings as they enter the key and the manifest.
    pub fn to_json(&self, kind: RecordKind) -> Value {
        let mask = match (kind, self.mask) {
            (RecordKind::Sft, AssistantMask::LastTurn) => "last_turn",
            (RecordKind::Sft, AssistantMask::AllTurns) => "all_turns",
            _ => "none",
        };
        json!({
            "kind": kind.as_str(),
            "mask": mask,
            "max_tokens": self.length.map(|l| l.max_tokens),
            "overlong": self.length.map(|l| l.overlong.as_str()),
        })
    }
}

/// An input or the tokenizer as it entered the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHash {
    pub path: PathBuf,
    pub bytes: u64,
    pub blake3: String,
}

/// `manifest.json`: what a cache folder holds and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// The full key (hex); the folder is named by its first 16 digits.
    pub key: String,
    /// `sft`, `preference` or `prompts`.
    pub kind: String,
    pub settings: Value,
    pub tokenizer: FileHash,
    pub inputs: Vec<FileHash>,
    /// How ids were computed (`word_split` or `exact`: the same ids).
    pub encoding: String,
    pub bos_id: u32,
    pub eos_id: u32,
    pub vocab_size: usize,
    pub records: u64,
    /// Sequences in `offsets.u64` (records times 1, or 3 for preference).
    pub sequences: u64,
    pub tokens: u64,
    /// Longest example (SFT dialog, prompt + longer reply, prompt).
    pub max_example_tokens: u64,
    /// Examples left out or shortened by the length policy.
    pub dropped: u64,
    pub truncated: u64,
    /// The `source` names that `meta.bin` indexes (preference only).
    pub sources: Vec<String>,
    pub build_seconds: f64,
}

/// Counts and speed of one `build_cache` call (reused or built).
#[derive(Debug, Clone, Serialize)]
pub struct CacheStats {
    pub records: u64,
    pub tokens: u64,
    /// Wall time of the call: hashing the inputs, and tokenizing and writing when built.
    pub seconds: f64,
    pub hash_seconds: f64,
    pub records_per_s: f64,
    pub tokens_per_s: f64,
    pub encoding: String,
}

/// A ready cache folder.
#[derive(Debug, Clone)]
pub struct CacheHandle {
    pub dir: PathBuf,
    /// Whether a matching folder already existed.
    pub reused: bool,
    pub stats: CacheStats,
    pub manifest: Manifest,
}

/// Knobs that do not change the ids (so are not in the key).
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildOptions {
    /// Force an encoding (benchmarks); default: word split when the tokenizer allows it.
    pub encoding: Option<Encoding>,
    /// Rows per batch (default [`BATCH_ROWS`]).
    pub batch_rows: Option<usize>,
}

/// Tokenizes `inputs` (files of `kind` records, in order) into a cache folder under
/// `cache_root`, or reuses the folder built from the same bytes, tokenizer and settings.
pub fn build_cache(
    kind: RecordKind,
    inputs: &[PathBuf],
    tokenizer_path: &Path,
    settings: &CacheSettings,
    cache_root: &Path,
) -> Result<CacheHandle> {
    build_cache_with(kind, inputs, tokenizer_path, settings, cache_root, BuildOptions::default())
}

/// [`build_cache`] with [`BuildOptions`].
pub fn build_cache_with(
    kind: RecordKind,
    inputs: &[PathBuf],
    tokenizer_path: &Path,
    settings: &CacheSettings,
    cache_root: &Path,
    options: BuildOptions,
) -> Result<CacheHandle> {
    let start = Instant::now();
    let tokenizer = hash_file(tokenizer_path)?;
    let input_hashes = inputs.iter().map(|p| hash_file(p)).collect::<Result<Vec<_>>>()?;
    let formats = inputs.iter().map(|p| Format::from_path(p)).collect::<Result<Vec<_>>>()?;
    let hash_seconds = start.elapsed().as_secs_f64();

    let mut h = blake3::Hasher::new();
    h.update(format!("rlhf token cache v{FORMAT_VERSION}\n").as_bytes());
    h.update(settings.to_json(kind).to_string().as_bytes());
    h.update(format!("\ntokenizer {}\n", tokenizer.blake3).as_bytes());
    for (f, fmt) in input_hashes.iter().zip(&formats) {
        h.update(format!("input {fmt:?} {} {}\n", f.bytes, f.blake3).as_bytes());
    }
    let key = h.finalize().to_hex().to_string();
    let name = format!("{}-{}", kind.as_str(), &key[..16]);
    let dir = cache_root.join(&name);
    fs::create_dir_all(cache_root).map_err(|e| DatasetError::io(cache_root, e))?;

    let stats = |m: &Manifest, reused: bool| {
        let seconds = start.elapsed().as_secs_f64();
        let rate = |n: u64| if reused || seconds <= 0.0 { 0.0 } else { n as f64 / seconds };
        CacheStats {
            records: m.records,
            tokens: m.tokens,
            seconds,
            hash_seconds,
            records_per_s: rate(m.records),
            tokens_per_s: rate(m.tokens),
            encoding: m.encoding.clone(),
        }
    };
    if let Some(m) = valid_manifest(&dir, &key) {
        return Ok(CacheHandle { stats: stats(&m, true), dir, reused: true, manifest: m });
    }

    remove_stale_temps(cache_root);
    let tmp = cache_root.join(format!(".tmp-{name}-{}-{}", std::process::id(), now_nanos()));
    fs::create_dir_all(&tmp).map_err(|e| DatasetError::io(&tmp, e))?;
    let tok = Tokenizer::from_file(tokenizer_path)?;
    let encoder = match options.encoding {
        Some(e) => RecordEncoder::with_encoding(tok, e),
        None => RecordEncoder::new(tok),
    };
    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        key: key.clone(),
        kind: kind.as_str().into(),
        settings: settings.to_json(kind),
        tokenizer,
        inputs: input_hashes,
        encoding: encoder.encoding().as_str().into(),
        bos_id: encoder.tokenizer().bos_id(),
        eos_id: encoder.tokenizer().eos_id(),
        vocab_size: encoder.tokenizer().vocab_size(),
        records: 0,
        sequences: 0,
        tokens: 0,
        max_example_tokens: 0,
        dropped: 0,
        truncated: 0,
        sources: Vec::new(),
        build_seconds: 0.0,
    };
    let built = match kind {
        RecordKind::Sft => write_store::<SftRecord>(inputs, &encoder, settings, options, &tmp, &mut manifest),
        RecordKind::Preference => write_store::<PreferenceRecord>(inputs, &encoder, settings, options, &tmp, &mut manifest),
        RecordKind::Prompts => write_store::<PromptRecord>(inputs, &encoder, settings, options, &tmp, &mut manifest),
    };
    if let Err(e) = built {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    manifest.build_seconds = start.elapsed().as_secs_f64();
    write_manifest(&tmp, &manifest)?;
    publish(&tmp, &dir, &key)?;
    let m = valid_manifest(&dir, &key)
        .ok_or_else(|| DatasetError::Invalid(format!("{}: cache folder did not verify after building", dir.display())))?;
    // Another process may have published the same key first: its folder is as good as ours.
    Ok(CacheHandle { stats: stats(&m, false), dir, reused: false, manifest: m })
}

/// BLAKE3 of a file's bytes, read in 4 MiB chunks (not mapped: a mapped 4 GB input would count
/// in the resident set).
fn hash_file(path: &Path) -> Result<FileHash> {
    let mut f = fs::File::open(path).map_err(|e| DatasetError::io(path, e))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| DatasetError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileHash { path: path.to_path_buf(), bytes, blake3: h.finalize().to_hex().to_string() })
}

fn now_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// The manifest of `dir` if it is complete, of this format and key, and its files have the
/// sizes it states (checked again, in full, by the readers).
fn valid_manifest(dir: &Path, key: &str) -> Option<Manifest> {
    let m: Manifest = serde_json::from_slice(&fs::read(dir.join(MANIFEST_FILE)).ok()?).ok()?;
    if m.format_version != FORMAT_VERSION || m.key != key {
        return None;
    }
    let size = |name: &str| fs::metadata(dir.join(name)).ok().map(|md| md.len());
    let meta_bytes = m.records
        * match m.kind.as_str() {
            "preference" => PAIR_META_BYTES as u64,
            "prompts" => PROMPT_META_BYTES as u64,
            _ => 0,
        };
    let ok = size(TOKENS_FILE)? == 4 * m.tokens
        && size(OFFSETS_FILE)? == 8 * (m.sequences + 1)
        && size(META_FILE)? == meta_bytes
        && (m.kind != "sft" || size(MASK_FILE)? == m.tokens);
    ok.then_some(m)
}

fn write_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    let text = serde_json::to_vec_pretty(m).map_err(|e| DatasetError::Invalid(format!("manifest: {e}")))?;
    fs::write(&path, text).map_err(|e| DatasetError::io(&path, e))?;
    fs::File::open(&path).and_then(|f| f.sync_all()).map_err(|e| DatasetError::io(&path, e))
}

/// Renames the finished temp folder to `dir`, replacing an invalid folder there; if a valid one
/// of the same key appeared meanwhile (a concurrent build), keeps it and drops ours.
fn publish(tmp: &Path, dir: &Path, key: &str) -> Result<()> {
    if dir.exists() {
        if valid_manifest(dir, key).is_some() {
            let _ = fs::remove_dir_all(tmp);
            return Ok(());
        }
        // Not a valid cache (no manifest: copied by hand, or from an older, non-atomic tool):
        // move it aside first, so that `dir` never holds a mix of two builds.
        let trash = dir.with_file_name(format!(".old-{}-{}", std::process::id(), now_nanos()));
        fs::rename(dir, &trash).map_err(|e| DatasetError::io(dir, e))?;
        let _ = fs::remove_dir_all(&trash);
    }
    match fs::rename(tmp, dir) {
        Ok(()) => {}
        Err(_) if valid_manifest(dir, key).is_some() => {
            let _ = fs::remove_dir_all(tmp);
        }
        Err(e) => return Err(DatasetError::io(dir, e)),
    }
    if let Some(parent) = dir.parent() {
        let _ = fs::File::open(parent).and_then(|f| f.sync_all());
    }
    Ok(())
}

/// Removes `.tmp-*` / `.old-*` folders left by processes that no longer run (an interrupted
/// build). Folders of live processes (a concurrent build) are left alone. Where there is no
/// `/proc` to ask, only folders older than a day go.
fn remove_stale_temps(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else { return };
    let have_proc = Path::new("/proc/self").exists();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".tmp-").or_else(|| name.strip_prefix(".old-")) else { continue };
        // `<...>-<pid>-<nanos>`: the pid is the second field from the end.
        let pid = rest.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        let dead = match pid {
            Some(pid) if have_proc => pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists(),
            _ => e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age.as_secs() > 86_400),
        };
        if dead {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// One record's ids, ready to append.
enum Encoded {
    Sft(ChatTokens),
    Pair { ids: [Vec<u32>; 3], meta: PairMeta },
    Prompt { ids: Vec<u32>, is_safety: bool },
}

struct PairMeta {
    rating: Option<Rating>,
    kind: Option<PreferenceKind>,
    chosen_safe: Option<bool>,
    rejected_safe: Option<bool>,
    source: Option<String>,
}

impl Encoded {
    /// The longest sequence a stage builds from it (what the length policy measures).
    fn example_len(&self) -> usize {
        match self {
            Encoded::Sft(t) => t.ids.len(),
            Encoded::Pair { ids: [p, c, r], .. } => p.len() + c.len().max(r.len()),
            Encoded::Prompt { ids, .. } => ids.len(),
        }
    }
}

/// A record kind the cache can hold.
trait Cacheable: Record {
    fn encode(&self, enc: &RecordEncoder, settings: &CacheSettings) -> Result<Encoded>;
}

impl Cacheable for SftRecord {
    fn encode(&self, enc: &RecordEncoder, settings: &CacheSettings) -> Result<Encoded> {
        Ok(Encoded::Sft(enc.dialog(&self.messages, settings.mask)?))
    }
}

impl Cacheable for PreferenceRecord {
    fn encode(&self, enc: &RecordEncoder, _: &CacheSettings) -> Result<Encoded> {
        let ids = enc.pair(&self.prompt, &self.chosen, &self.rejected)?;
        let meta = PairMeta {
            rating: self.rating,
            kind: self.kind,
            chosen_safe: self.chosen_safe,
            rejected_safe: self.rejected_safe,
            source: self.source.clone(),
        };
        Ok(Encoded::Pair { ids, meta })
    }
}

impl Cacheable for PromptRecord {
    fn encode(&self, enc: &RecordEncoder, _: &CacheSettings) -> Result<Encoded> {
        Ok(Encoded::Prompt { ids: enc.prompt(&self.prompt)?, is_safety: self.is_safety })
    }
}

/// What the length policy made of one record.
enum Outcome {
    Keep(Encoded),
    Truncated(Encoded),
    Dropped,
}

fn encode_row<R: Cacheable>(file: &Path, row: &Row<R>, enc: &RecordEncoder, settings: &CacheSettings) -> Result<Outcome> {
    let record = match &row.record {
        Ok(r) => r,
        Err(e) => return Err(e.clone().into()),
    };
    let encoded = record.encode(enc, settings)?;
    let Some(policy) = settings.length else { return Ok(Outcome::Keep(encoded)) };
    let len = encoded.example_len();
    Ok(match policy.apply(enc.tokenizer(), record, len)? {
        Fit::Kept => Outcome::Keep(encoded),
        Fit::Truncated(r) => Outcome::Truncated(r.encode(enc, settings)?),
        Fit::Dropped => Outcome::Dropped,
        Fit::Rejected(e) => return Err(reject(file, row, e)),
    })
}

fn reject<R>(file: &Path, row: &Row<R>, e: FieldError) -> DatasetError {
    RowError::new(file, row.loc, e, String::new()).into()
}

/// Streams every input through the encoder into the files of `dir`, filling in the manifest's
/// counts.
fn write_store<R: Cacheable>(
    inputs: &[PathBuf],
    enc: &RecordEncoder,
    settings: &CacheSettings,
    options: BuildOptions,
    dir: &Path,
    manifest: &mut Manifest,
) -> Result<()> {
    let mut store = StoreWriter::create(dir, R::KIND == RecordKind::Sft)?;
    let mut sources: HashMap<String, u32> = HashMap::new();
    let batch_rows = options.batch_rows.unwrap_or(BATCH_ROWS).max(1);
    for file in inputs {
        let mut reader = RecordReader::<R>::open(file)?;
        // The reader runs ahead on its own thread (parsing JSON / decoding Parquet) while the
        // rayon pool tokenizes the batch before.
        std::thread::scope(|s| -> Result<()> {
            let (tx, rx) = sync_channel::<Result<Vec<Row<R>>>>(2);
            let reading = s.spawn(move || loop {
                let batch = reader.next_batch(batch_rows);
                let last = matches!(&batch, Ok(b) if b.is_empty()) || batch.is_err();
                if tx.send(batch).is_err() || last {
                    return;
                }
            });
            let result = (|| {
                let mut rows = 0usize;
                for batch in rx.iter() {
                    let batch = batch?;
                    if batch.is_empty() {
                        break;
                    }
                    rows += batch.len();
                    let encoded: Vec<Result<Outcome>> = batch.par_iter().map(|row| encode_row(file, row, enc, settings)).collect();
                    drop(batch);
                    for outcome in encoded {
                        append(&mut store, outcome?, manifest, &mut sources)?;
                    }
                }
                // As `read_all`: an empty input is named, not cached as zero sequences for a
                // stage to fail on later.
                if rows == 0 {
                    return Err(DatasetError::Empty { path: file.clone(), kind: R::KIND.as_str() });
                }
                Ok(())
            })();
            drop(rx); // unblocks the reader if we stopped early
            let _ = reading.join();
            result
        })?;
    }
    manifest.sequences = store.n_sequences;
    manifest.tokens = store.n_tokens;
    store.finish()?;
    let mut names: Vec<(u32, String)> = sources.into_iter().map(|(s, i)| (i, s)).collect();
    names.sort();
    manifest.sources = names.into_iter().map(|(_, s)| s).collect();
    Ok(())
}

fn append(store: &mut StoreWriter, outcome: Outcome, m: &mut Manifest, sources: &mut HashMap<String, u32>) -> Result<()> {
    let encoded = match outcome {
        Outcome::Keep(e) => e,
        Outcome::Truncated(e) => {
            m.truncated += 1;
            e
        }
        Outcome::Dropped => {
            m.dropped += 1;
            return Ok(());
        }
    };
    m.records += 1;
    m.max_example_tokens = m.max_example_tokens.max(encoded.example_len() as u64);
    match encoded {
        Encoded::Sft(t) => store.push(&t.ids, Some(&t.assistant_mask)),
        Encoded::Pair { ids, meta } => {
            for seq in &ids {
                store.push(seq, None)?;
            }
            let source = match meta.source {
                Some(s) => {
                    let next = sources.len() as u32;
                    *sources.entry(s).or_insert(next)
                }
                None => u32::MAX,
            };
            let flag = |b: Option<bool>| b.map_or(NONE, u8::from);
            let rating = meta.rating.and_then(|r| Rating::ALL.iter().position(|&x| x == r)).map_or(NONE, |i| i as u8);
            let kind = meta.kind.map_or(NONE, |k| match k {
                PreferenceKind::Helpfulness => 0,
                PreferenceKind::Safety => 1,
            });
            let s = source.to_le_bytes();
            store.push_meta(&[rating, kind, flag(meta.chosen_safe), flag(meta.rejected_safe), s[0], s[1], s[2], s[3]])
        }
        Encoded::Prompt { ids, is_safety } => {
            store.push(&ids, None)?;
            store.push_meta(&[u8::from(is_safety)])
        }
    }
}

/// The sequences of a cache folder, mapped: `seq(j)` borrows from the map.
struct TokenStore {
    tokens: Mapped,
    offsets: Mapped,
    tokens_path: PathBuf,
    offsets_path: PathBuf,
}

impl TokenStore {
    /// Opens and checks the store against the manifest: sizes, and offsets that start at 0,
    /// never decrease and end at the token count (so that `seq` cannot go out of bounds).
    fn open(dir: &Path, m: &Manifest) -> Result<Self> {
        let tokens_path = dir.join(TOKENS_FILE);
        let offsets_path = dir.join(OFFSETS_FILE);
        let store = TokenStore { tokens: Mapped::open(&tokens_path)?, offsets: Mapped::open(&offsets_path)?, tokens_path, offsets_path };
        let bad = |path: &Path, msg: String| DatasetError::Format { path: path.into(), msg };
        let ids = store.ids()?;
        let offsets = store.offsets()?;
        if ids.len() as u64 != m.tokens {
            return Err(bad(&store.tokens_path, format!("{} ids, the manifest says {}", ids.len(), m.tokens)));
        }
        if offsets.len() as u64 != m.sequences + 1 {
            return Err(bad(&store.offsets_path, format!("{} offsets, expected {}", offsets.len(), m.sequences + 1)));
        }
        let monotone = offsets.windows(2).all(|w| w[0] <= w[1]);
        if offsets.first() != Some(&0) || offsets.last() != Some(&m.tokens) || !monotone {
            return Err(bad(&store.offsets_path, "offsets do not run from 0 to the token count".into()));
        }
        Ok(store)
    }

    fn ids(&self) -> Result<&[u32]> {
        format::as_words(self.tokens.bytes(), &self.tokens_path)
    }

    fn offsets(&self) -> Result<&[u64]> {
        format::as_words(self.offsets.bytes(), &self.offsets_path)
    }

    /// Token range of sequence `j` (checked on open, so in bounds for `j < sequences`).
    fn range(&self, j: usize) -> Option<std::ops::Range<usize>> {
        let o = self.offsets().ok()?;
        Some(o[j] as usize..*o.get(j + 1)? as usize)
    }

    fn seq(&self, j: usize) -> Option<&[u32]> {
        self.ids().ok()?.get(self.range(j)?)
    }
}

fn open_manifest(dir: &Path, kind: RecordKind) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = fs::read(&path).map_err(|e| DatasetError::io(&path, e))?;
    let m: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| DatasetError::Format { path: path.clone(), msg: format!("invalid manifest: {e}") })?;
    if m.format_version != FORMAT_VERSION {
        let msg = format!("cache format {}, this build reads {FORMAT_VERSION}: rebuild it", m.format_version);
        return Err(DatasetError::Format { path, msg });
    }
    if m.kind != kind.as_str() {
        return Err(DatasetError::Format { path, msg: format!("a {} cache, not {}", m.kind, kind.as_str()) });
    }
    Ok(m)
}

fn open_meta(dir: &Path, m: &Manifest, width: usize) -> Result<Mapped> {
    let path = dir.join(META_FILE);
    let meta = Mapped::open(&path)?;
    if meta.bytes().len() as u64 != m.records * width as u64 {
        let msg = format!("{} bytes, expected {} records of {width}", meta.bytes().len(), m.records);
        return Err(DatasetError::Format { path, msg });
    }
    Ok(meta)
}

/// One SFT example from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SftTokens<'a> {
    pub ids: &'a [u32],
    /// 1 where the loss is taken (assistant reply tokens and their EOS), else 0.
    pub loss_mask: &'a [u8],
}

/// A mapped SFT cache.
pub struct SftCache {
    store: TokenStore,
    mask: Mapped,
    manifest: Manifest,
}

impl SftCache {
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = open_manifest(dir, RecordKind::Sft)?;
        let store = TokenStore::open(dir, &manifest)?;
        let path = dir.join(MASK_FILE);
        let mask = Mapped::open(&path)?;
        if mask.bytes().len() as u64 != manifest.tokens {
            return Err(DatasetError::Format { path, msg: "one mask byte per id expected".into() });
        }
        Ok(SftCache { store, mask, manifest })
    }
    pub fn len(&self) -> usize {
        self.manifest.records as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// Example `i`, `None` past the end.
    pub fn get(&self, i: usize) -> Option<SftTokens<'_>> {
        if i >= self.len() {
            return None;
        }
        let range = self.store.range(i)?;
        Some(SftTokens { ids: self.store.seq(i)?, loss_mask: self.mask.bytes().get(range)? })
    }
    pub fn iter(&self) -> impl Iterator<Item = SftTokens<'_>> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

/// One comparison from the cache: `prompt ++ chosen` is the chat encoding of the prompt
/// completed by the chosen reply (BOS ... EOS), likewise for rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairTokens<'a> {
    pub prompt: &'a [u32],
    pub chosen: &'a [u32],
    pub rejected: &'a [u32],
    pub rating: Option<Rating>,
    pub kind: Option<PreferenceKind>,
    pub source: Option<&'a str>,
    pub chosen_safe: Option<bool>,
    pub rejected_safe: Option<bool>,
}

impl PairTokens<'_> {
    /// `prompt ++ chosen`.
    pub fn chosen_full(&self) -> Vec<u32> {
        [self.prompt, self.chosen].concat()
    }
    /// `prompt ++ rejected`.
    pub fn rejected_full(&self) -> Vec<u32> {
        [self.prompt, self.rejected].concat()
    }
}

/// A mapped preference cache.
pub struct PreferenceCache {
    store: TokenStore,
    meta: Mapped,
    manifest: Manifest,
}

impl PreferenceCache {
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = open_manifest(dir, RecordKind::Preference)?;
        let store = TokenStore::open(dir, &manifest)?;
        if manifest.sequences != 3 * manifest.records {
            let msg = format!("{} sequences for {} comparisons", manifest.sequences, manifest.records);
            return Err(DatasetError::Format { path: dir.join(MANIFEST_FILE), msg });
        }
        let meta = open_meta(dir, &manifest, PAIR_META_BYTES)?;
        Ok(PreferenceCache { store, meta, manifest })
    }
    pub fn len(&self) -> usize {
        self.manifest.records as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// Comparison `i`, `None` past the end.
    pub fn get(&self, i: usize) -> Option<PairTokens<'_>> {
        if i >= self.len() {
            return None;
        }
        let m = self.meta.bytes().get(i * PAIR_META_BYTES..(i + 1) * PAIR_META_BYTES)?;
        let flag = |b: u8| (b != NONE).then_some(b == 1);
        let source = u32::from_le_bytes([m[4], m[5], m[6], m[7]]);
        Some(PairTokens {
            prompt: self.store.seq(3 * i)?,
            chosen: self.store.seq(3 * i + 1)?,
            rejected: self.store.seq(3 * i + 2)?,
            rating: Rating::ALL.get(m[0] as usize).copied(),
            kind: match m[1] {
                0 => Some(PreferenceKind::Helpfulness),
                1 => Some(PreferenceKind::Safety),
                _ => None,
            },
            source: self.manifest.sources.get(source as usize).map(String::as_str),
            chosen_safe: flag(m[2]),
            rejected_safe: flag(m[3]),
        })
    }
    pub fn iter(&self) -> impl Iterator<Item = PairTokens<'_>> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

/// One prompt from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptTokens<'a> {
    pub ids: &'a [u32],
    pub is_safety: bool,
}

/// A mapped prompt cache.
pub struct PromptCache {
    store: TokenStore,
    meta: Mapped,
    manifest: Manifest,
}

impl PromptCache {
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = open_manifest(dir, RecordKind::Prompts)?;
        let store = TokenStore::open(dir, &manifest)?;
        let meta = open_meta(dir, &manifest, PROMPT_META_BYTES)?;
        Ok(PromptCache { store, meta, manifest })
    }
    pub fn len(&self) -> usize {
        self.manifest.records as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// Prompt `i`, `None` past the end.
    pub fn get(&self, i: usize) -> Option<PromptTokens<'_>> {
        if i >= self.len() {
            return None;
        }
        Some(PromptTokens { ids: self.store.seq(i)?, is_safety: *self.meta.bytes().get(i)? == 1 })
    }
    pub fn iter(&self) -> impl Iterator<Item = PromptTokens<'_>> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}
