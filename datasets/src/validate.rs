//! Record invariants, and validation of whole files: every row checked, bad rows either fail the
//! run (the default) or are skipped, counted by reason and written to a rejects file; over-long
//! rows handled by an explicit [`LengthPolicy`]; a JSON [`Summary`] at the end.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use llama_text::chat::{validate_roles, Message, Role};
use llama_text::Tokenizer;
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{DatasetError, FieldError, Reason, Result, RowError};
use crate::io::{Format, JsonLines, Parser, RecordReader, RecordWriter, Row};
use crate::length::{Fit, LengthPolicy};
use crate::parse::Record;
use crate::records::{PreferenceRecord, PromptRecord, SftRecord};

/// Messages with text (after trimming) and roles alternating user/assistant after an optional
/// system message (`llama_text::chat::validate_roles`, the chat format's own rule).
fn check_dialog(messages: &[Message], field: &str) -> Result<(), FieldError> {
    if messages.is_empty() {
        return Err(FieldError::new(field, Reason::EmptyText, "empty message list"));
    }
    if let Some(i) = messages.iter().position(|m| m.content.trim().is_empty()) {
        return Err(FieldError::new(format!("{field}[{i}].content"), Reason::EmptyText, "empty text"));
    }
    validate_roles(messages).map_err(|e| FieldError::new(field, Reason::RoleOrder, e.to_string()))
}

/// A prompt: a dialog that ends with the user's turn, for the model to answer.
fn check_prompt_dialog(prompt: &[Message], field: &str) -> Result<(), FieldError> {
    check_dialog(prompt, field)?;
    match prompt.last() {
        Some(m) if m.role != Role::User => Err(FieldError::new(
            field,
            Reason::PromptNotEndingWithUser,
            format!("the prompt must end with a user turn, but message {} is {}", prompt.len() - 1, m.role),
        )),
        _ => Ok(()),
    }
}

fn check_text(text: &str, field: &str) -> Result<(), FieldError> {
    if text.trim().is_empty() {
        return Err(FieldError::new(field, Reason::EmptyText, "empty text"));
    }
    Ok(())
}

/// An SFT dialog ends with the assistant reply it teaches.
pub fn check_sft(r: &SftRecord) -> Result<(), FieldError> {
    check_dialog(&r.messages, "messages")?;
    match r.messages.last() {
        Some(m) if m.role != Role::Assistant => Err(FieldError::new(
            "messages",
            Reason::DialogNotEndingWithAssistant,
            format!("an SFT dialog must end with an assistant reply, but message {} is {}", r.messages.len() - 1, m.role),
        )),
        _ => Ok(()),
    }
}

/// A comparison of two different, non-empty replies to a prompt. "Different" is after trimming,
/// as the chat format strips replies: two replies equal up to spaces encode identically.
pub fn check_preference(r: &PreferenceRecord) -> Result<(), FieldError> {
    check_prompt_dialog(&r.prompt, "prompt")?;
    check_text(&r.chosen, "chosen")?;
    check_text(&r.rejected, "rejected")?;
    if r.chosen.trim() == r.rejected.trim() {
        return Err(FieldError::new("rejected", Reason::ChosenEqualsRejected, "chosen and rejected are identical"));
    }
    Ok(())
}

pub fn check_prompt(r: &PromptRecord) -> Result<(), FieldError> {
    check_prompt_dialog(&r.prompt, "prompt")
}

/// Counts of valid records by a key (`kind`, `rating`, `source`, ...) and value.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Tally(pub BTreeMap<&'static str, BTreeMap<String, usize>>);

impl Tally {
    pub fn add(&mut self, key: &'static str, value: String) {
        *self.0.entry(key).or_default().entry(value).or_default() += 1;
    }
}

/// Token-length percentiles (nearest rank) of the valid records, before any truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    pub p50: usize,
    pub p90: usize,
    pub p99: usize,
    pub max: usize,
}

impl Percentiles {
    pub fn of(mut lengths: Vec<usize>) -> Option<Percentiles> {
        lengths.sort_unstable();
        let at = |q: f64| lengths[((q * lengths.len() as f64).ceil() as usize).clamp(1, lengths.len()) - 1];
        (!lengths.is_empty()).then(|| Percentiles { p50: at(0.5), p90: at(0.9), p99: at(0.99), max: at(1.0) })
    }
}

/// What the length policy did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OverlongCounts {
    pub max_tokens: usize,
    pub policy: &'static str,
    /// Valid rows longer than `max_tokens`.
    pub over: usize,
    pub truncated: usize,
    pub dropped: usize,
}

/// The JSON summary `rlhf data validate` and `rlhf data import` print.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub kind: &'static str,
    pub files: Vec<String>,
    pub rows: usize,
    /// Rows that parsed and passed every check (over-long rows under `--overlong error` do not).
    pub valid: usize,
    pub invalid: usize,
    pub invalid_by_reason: BTreeMap<&'static str, usize>,
    /// Rejects files written (only with `--skip-invalid`).
    pub rejects: Vec<String>,
    pub counts: Tally,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Percentiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlong: Option<OverlongCounts>,
    /// Records written to `out` (valid rows, less those the length policy dropped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out: Option<String>,
}

/// How to validate.
#[derive(Debug, Clone)]
pub struct ValidateOptions {
    /// Skip bad rows (counted, written to the rejects file) instead of failing on the first.
    pub skip_invalid: bool,
    /// One rejects file for all inputs; default: `<input stem>.rejects.jsonl` beside each input.
    pub rejects: Option<PathBuf>,
    /// Input format; default: from each file's extension.
    pub format: Option<Format>,
    /// Token lengths (percentiles, and the length policy) need a tokenizer.
    pub tokenizer: Option<Tokenizer>,
    pub length: Option<LengthPolicy>,
    /// Where the valid records go (format from the extension unless given), atomically.
    pub out: Option<(PathBuf, Option<Format>)>,
    /// Rows read, and tokenized in parallel, at a time.
    pub batch_rows: usize,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        ValidateOptions { skip_invalid: false, rejects: None, format: None, tokenizer: None, length: None, out: None, batch_rows: 1024 }
    }
}

/// `dir/data.jsonl` -> `dir/data.rejects.jsonl`.
pub fn default_rejects_path(input: &Path) -> PathBuf {
    let stem = input.file_stem().and_then(|s| s.to_str()).unwrap_or("data");
    input.with_file_name(format!("{stem}.rejects.jsonl"))
}

/// Validates `files` of `R` records in their canonical schema.
pub fn validate_files<R: Record>(files: &[PathBuf], opts: &ValidateOptions) -> Result<Summary> {
    let parse: Parser<R> = std::sync::Arc::new(R::from_json);
    validate_with(files, parse, R::COLUMNS, opts)
}

/// Validates `files` whose rows `parse` turns into records (an importer), reading `columns` of
/// Parquet inputs.
pub fn validate_with<R: Record>(files: &[PathBuf], parse: Parser<R>, columns: &[&str], opts: &ValidateOptions) -> Result<Summary> {
    let mut run = Run::<R>::new(files, opts)?;
    for file in files {
        run.file(RecordReader::open_with(file, opts.format, parse.clone(), columns)?)?;
    }
    run.finish()
}

/// One validation run's state.
struct Run<'a, R: Record> {
    opts: &'a ValidateOptions,
    summary: Summary,
    lengths: Vec<usize>,
    /// Where rejected rows go now: the shared file, or the current input's own.
    rejects: Option<JsonLines>,
    out: Option<RecordWriter<R>>,
}

impl<'a, R: Record> Run<'a, R> {
    fn new(files: &[PathBuf], opts: &'a ValidateOptions) -> Result<Self> {
        let summary = Summary {
            kind: R::KIND.as_str(),
            files: files.iter().map(|f| f.display().to_string()).collect(),
            overlong: opts.length.map(|p| OverlongCounts { max_tokens: p.max_tokens, policy: p.overlong.as_str(), ..Default::default() }),
            ..Default::default()
        };
        let rejects = match (&opts.rejects, opts.skip_invalid) {
            (Some(p), true) => {
                // The rejects file is truncated up front: never one of the inputs.
                let same = |f: &PathBuf| f == p || f.canonicalize().ok().is_some_and(|c| p.canonicalize().ok() == Some(c));
                if files.iter().any(same) {
                    return Err(DatasetError::Invalid(format!("--rejects {} is also an input", p.display())));
                }
                Some(JsonLines::create(p.clone())?)
            }
            _ => None,
        };
        let out = opts.out.as_ref().map(|(p, f)| RecordWriter::create(p, *f)).transpose()?;
        Ok(Run { opts, summary, lengths: Vec::new(), rejects, out })
    }

    fn file(&mut self, mut reader: RecordReader<R>) -> Result<()> {
        let own_rejects = self.opts.skip_invalid && self.opts.rejects.is_none();
        if own_rejects {
            self.rejects = Some(JsonLines::create(default_rejects_path(reader.path()))?);
        }
        loop {
            let batch = reader.next_batch(self.opts.batch_rows.max(1))?;
            if batch.is_empty() {
                break;
            }
            for (row, len) in self.measure(batch)? {
                self.row(reader.path(), row, len)?;
            }
        }
        if own_rejects {
            self.close_rejects()?;
        }
        Ok(())
    }

    fn close_rejects(&mut self) -> Result<()> {
        if let Some(r) = self.rejects.take() {
            self.summary.rejects.push(r.path().display().to_string());
            r.finish()?;
        }
        Ok(())
    }

    /// Token lengths of the valid records of a batch, in parallel (when there is a tokenizer).
    fn measure(&self, batch: Vec<Row<R>>) -> Result<Vec<(Row<R>, Option<usize>)>> {
        let Some(tok) = &self.opts.tokenizer else {
            return Ok(batch.into_iter().map(|r| (r, None)).collect());
        };
        batch
            .into_par_iter()
            .map(|row| {
                let len = row.record.as_ref().ok().map(|r| r.token_len(tok)).transpose()?;
                Ok((row, len))
            })
            .collect()
    }

    fn row(&mut self, file: &Path, row: Row<R>, len: Option<usize>) -> Result<()> {
        self.summary.rows += 1;
        let record = match row.record {
            Ok(r) => r,
            Err(e) => return self.reject(e),
        };
        let fit = match (len, self.opts.length, &self.opts.tokenizer) {
            (Some(len), Some(policy), Some(tok)) => policy.apply(tok, &record, len)?,
            _ => Fit::Kept,
        };
        if let Fit::Rejected(e) = fit {
            return self.reject(RowError::new(file, row.loc, e, record.to_json().to_string()));
        }
        self.summary.valid += 1;
        record.tally(&mut self.summary.counts);
        self.lengths.extend(len);
        if let Some(c) = self.summary.overlong.as_mut() {
            match fit {
                Fit::Truncated(_) => (c.over, c.truncated) = (c.over + 1, c.truncated + 1),
                Fit::Dropped => (c.over, c.dropped) = (c.over + 1, c.dropped + 1),
                Fit::Kept | Fit::Rejected(_) => {}
            }
        }
        match (fit, &mut self.out) {
            (Fit::Kept, Some(w)) => w.write(record),
            (Fit::Truncated(r), Some(w)) => w.write(r),
            _ => Ok(()),
        }
    }

    fn reject(&mut self, e: RowError) -> Result<()> {
        let Some(rejects) = self.rejects.as_mut() else {
            return Err(e.into());
        };
        self.summary.invalid += 1;
        *self.summary.invalid_by_reason.entry(e.reason.as_str()).or_default() += 1;
        rejects.write(&e.to_reject_json())
    }

    fn finish(mut self) -> Result<Summary> {
        self.close_rejects()?;
        if let Some(w) = self.out.take() {
            self.summary.out = self.opts.out.as_ref().map(|(p, _)| p.display().to_string());
            self.summary.written = Some(w.finish()?);
        }
        self.summary.tokens = Percentiles::of(std::mem::take(&mut self.lengths));
        Ok(self.summary)
    }
}
