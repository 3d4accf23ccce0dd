//! The files of a cache folder, written append-only and read memory-mapped.
//!
//! | file | content |
//! |---|---|
//! | `tokens.u32` | every sequence's ids, back to back, little-endian `u32` |
//! | `offsets.u64` | `sequences + 1` little-endian `u64`: sequence `j` is `tokens[offsets[j]..offsets[j+1]]` |
//! | `mask.u8` | SFT only: one byte per id of `tokens.u32`, 1 where the loss is taken (assistant reply or its EOS) |
//! | `meta.bin` | fixed-width per-record metadata (see [`PAIR_META_BYTES`], [`PROMPT_META_BYTES`]) |
//! | `manifest.json` | [`super::Manifest`]: what was tokenized, how, and the counts; written last |
//!
//! Sequences per record: SFT 1 (the dialog), preference 3 (prompt, chosen, rejected), prompts 1.
// The workspace denies unsafe code; this module memory-maps the cache (see the SAFETY notes).
#![allow(unsafe_code)]
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{DatasetError, Result};

pub const TOKENS_FILE: &str = "tokens.u32";
pub const OFFSETS_FILE: &str = "offsets.u64";
pub const MASK_FILE: &str = "mask.u8";
pub const META_FILE: &str = "meta.bin";
pub const MANIFEST_FILE: &str = "manifest.json";

/// Preference metadata per record: `[rating, kind, chosen_safe, rejected_safe, source (u32 LE)]`;
/// rating is the index in [`crate::Rating::ALL`], kind 0 helpfulness / 1 safety, flags 0/1, and
/// [`NONE`] (or `u32::MAX` for the source) for an absent field. The source indexes the
/// manifest's `sources` list.
pub const PAIR_META_BYTES: usize = 8;
/// Prompt metadata per record: `[is_safety]`.
pub const PROMPT_META_BYTES: usize = 1;
/// An absent optional field in `meta.bin`.
pub const NONE: u8 = u8::MAX;

const BUF: usize = 1 << 20;

/// Appends sequences (and their masks) and metadata to the files of a folder being built.
pub struct StoreWriter {
    dir: PathBuf,
    tokens: BufWriter<File>,
    offsets: BufWriter<File>,
    mask: Option<BufWriter<File>>,
    meta: BufWriter<File>,
    scratch: Vec<u8>,
    pub n_tokens: u64,
    pub n_sequences: u64,
}

impl StoreWriter {
    /// Creates the files in `dir` (`with_mask`: also `mask.u8`).
    pub fn create(dir: &Path, with_mask: bool) -> Result<Self> {
        let open = |name: &str| -> Result<BufWriter<File>> {
            let p = dir.join(name);
            Ok(BufWriter::with_capacity(BUF, File::create(&p).map_err(|e| DatasetError::io(&p, e))?))
        };
        let mut w = StoreWriter {
            dir: dir.to_path_buf(),
            tokens: open(TOKENS_FILE)?,
            offsets: open(OFFSETS_FILE)?,
            mask: if with_mask { Some(open(MASK_FILE)?) } else { None },
            meta: open(META_FILE)?,
            scratch: Vec::new(),
            n_tokens: 0,
            n_sequences: 0,
        };
        w.offsets.write_all(&0u64.to_le_bytes()).map_err(|e| w.err(OFFSETS_FILE, e))?;
        Ok(w)
    }

    fn err(&self, name: &str, e: std::io::Error) -> DatasetError {
        DatasetError::io(self.dir.join(name), e)
    }

    /// Appends one sequence; `mask` (one flag per id) when the store has a mask file.
    pub fn push(&mut self, ids: &[u32], mask: Option<&[bool]>) -> Result<()> {
        self.scratch.clear();
        self.scratch.extend(ids.iter().flat_map(|id| id.to_le_bytes()));
        self.tokens.write_all(&self.scratch).map_err(|e| DatasetError::io(self.dir.join(TOKENS_FILE), e))?;
        if let Some(m) = self.mask.as_mut() {
            self.scratch.clear();
            match mask {
                Some(flags) if flags.len() == ids.len() => self.scratch.extend(flags.iter().map(|&b| u8::from(b))),
                _ => return Err(DatasetError::Invalid("cache: a mask must have one flag per id".into())),
            }
            m.write_all(&self.scratch).map_err(|e| DatasetError::io(self.dir.join(MASK_FILE), e))?;
        }
        self.n_tokens += ids.len() as u64;
        self.n_sequences += 1;
        self.offsets.write_all(&self.n_tokens.to_le_bytes()).map_err(|e| self.err(OFFSETS_FILE, e))
    }

    /// Appends one record's metadata.
    pub fn push_meta(&mut self, bytes: &[u8]) -> Result<()> {
        self.meta.write_all(bytes).map_err(|e| DatasetError::io(self.dir.join(META_FILE), e))
    }

    /// Flushes and syncs every file.
    pub fn finish(self) -> Result<()> {
        let dir = self.dir;
        let mut files = vec![(TOKENS_FILE, self.tokens), (OFFSETS_FILE, self.offsets), (META_FILE, self.meta)];
        if let Some(m) = self.mask {
            files.push((MASK_FILE, m));
        }
        for (name, w) in files {
            let io = |e| DatasetError::io(dir.join(name), e);
            let file = w.into_inner().map_err(|e| io(e.into_error()))?;
            file.sync_all().map_err(io)?;
        }
        Ok(())
    }
}

/// A read-only file mapped into memory (an empty file is an empty slice: nothing to map).
pub struct Mapped {
    map: Option<Mmap>,
}

impl Mapped {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| DatasetError::io(path, e))?;
        let len = file.metadata().map_err(|e| DatasetError::io(path, e))?.len();
        if len == 0 {
            return Ok(Mapped { map: None });
        }
        // SAFETY: the cache is immutable once renamed into place (built in a temp folder, never
        // written after); truncating it under a reader is outside the contract, as for any mmap.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| DatasetError::io(path, e))?;
        Ok(Mapped { map: Some(map) })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

#[cfg(not(target_endian = "little"))]
compile_error!("the tokenized cache maps little-endian files as native integers");

/// Views mapped bytes as `T` (`u32` or `u64`): checks length and alignment (an mmap is page
/// aligned, so this cannot fail for our files). Little-endian only (see the `compile_error!`).
pub(crate) fn as_words<'a, T: Word>(bytes: &'a [u8], path: &Path) -> Result<&'a [T]> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size) || bytes.as_ptr().align_offset(std::mem::align_of::<T>()) != 0 {
        return Err(DatasetError::Format {
            path: path.into(),
            msg: format!("{} bytes is not a whole, aligned number of {size}-byte words", bytes.len()),
        });
    }
    // SAFETY: length and alignment checked above; `T` is a plain integer for which every bit
    // pattern is valid; the bytes live as long as the map borrowed for `'a`.
    Ok(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) })
}

/// Integers every bit pattern of which is valid (sealed: only these two).
pub(crate) trait Word: Copy {}
impl Word for u32 {}
impl Word for u64 {}
