//! `rlhf data validate` and `rlhf data import`: parse the arguments, call `datasets::validate`,
//! print the JSON summary. Both check every row the same way; import only swaps the row parser.
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use datasets::import::{self, ImportFormat};
use datasets::length::{LengthPolicy, Overlong};
use datasets::parse::parse_kind;
use datasets::validate::{default_rejects_path, validate_files, validate_with, Summary, ValidateOptions};
use datasets::{DatasetError, Format, PreferenceRecord, PromptRecord, SftRecord};
use llama::Tokenizer;

/// What validate and import share: the bad-row policy and the length policy.
#[derive(Args)]
pub struct CheckArgs {
    /// Skip bad rows (counted by reason, written to the rejects file) instead of failing on the
    /// first one.
    #[arg(long)]
    skip_invalid: bool,
    /// Rejects file for all inputs (default: `<input stem>.rejects.jsonl` beside each input).
    #[arg(long, value_name = "FILE")]
    rejects: Option<PathBuf>,
    /// Count tokens with this checkpoint's tokenizer (`DIR/tokenizer.json`, else the Llama-2 one).
    #[arg(long, value_name = "DIR", conflicts_with = "tokenizer")]
    model: Option<PathBuf>,
    /// Count tokens with this `tokenizer.json`.
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// Longest example, in tokens of the Llama-2 chat format (needs a tokenizer).
    #[arg(long, value_name = "N")]
    max_tokens: Option<usize>,
    /// What to do with longer examples: error (a bad row), drop, or truncate (keep the prompt's
    /// end within half the budget, cut the replies' ends).
    #[arg(long, default_value = "error", value_parser = ["error", "drop", "truncate"], requires = "max_tokens")]
    overlong: String,
    /// Rows read (and tokenized in parallel) at a time.
    #[arg(long, default_value_t = 1024)]
    batch_rows: usize,
}

#[derive(Args)]
pub struct ValidateArgs {
    /// Record kind of the files.
    #[arg(long, value_parser = ["sft", "preference", "prompts"])]
    kind: String,
    /// JSONL (`.jsonl`, `.json`) or Parquet (`.parquet`) files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Input format, instead of the extension.
    #[arg(long, value_parser = ["jsonl", "parquet"])]
    format: Option<String>,
    /// Also write the valid records (fitted to --max-tokens) here, atomically; format from the
    /// extension.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(flatten)]
    check: CheckArgs,
}

#[derive(Args)]
pub struct ImportArgs {
    /// Source format (auto: detected from the first row).
    #[arg(long, default_value = "auto", value_parser = ["hh-rlhf", "trl", "auto"])]
    format: String,
    /// Input file (JSONL or Parquet).
    input: PathBuf,
    /// Output preference file (`.jsonl` or `.parquet`).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Set `kind` on every record.
    #[arg(long, value_parser = ["helpfulness", "safety"])]
    kind: Option<String>,
    /// Set `source` on every record (the test-set name for per-set accuracy).
    #[arg(long)]
    source: Option<String>,
    /// Input file format, instead of the extension.
    #[arg(long, value_parser = ["jsonl", "parquet"])]
    input_format: Option<String>,
    #[command(flatten)]
    check: CheckArgs,
}

impl CheckArgs {
    fn options(&self, format: Option<&str>, out: Option<PathBuf>) -> Result<ValidateOptions> {
        let tokenizer = self.load_tokenizer()?;
        if self.max_tokens.is_some() && tokenizer.is_none() {
            bail!("--max-tokens needs a tokenizer: give --model DIR or --tokenizer FILE");
        }
        let overlong = Overlong::parse(&self.overlong).context("--overlong: expected error, drop or truncate")?;
        Ok(ValidateOptions {
            skip_invalid: self.skip_invalid,
            rejects: self.rejects.clone(),
            format: format.and_then(Format::parse),
            tokenizer,
            length: self.max_tokens.map(|max_tokens| LengthPolicy { max_tokens, overlong }),
            out: out.map(|p| (p, None)),
            batch_rows: self.batch_rows,
        })
    }

    fn load_tokenizer(&self) -> Result<Option<Tokenizer>> {
        Ok(match (&self.model, &self.tokenizer) {
            (Some(dir), _) => Some(llama::tokenizer::resolve(None, Some(dir))?.0),
            (None, Some(file)) => Some(Tokenizer::from_file(file)?),
            (None, None) => None,
        })
    }
}

fn print(summary: &Summary, extra: Option<(&str, &str)>) -> Result<()> {
    let mut v = serde_json::to_value(summary)?;
    if let (Some((k, x)), Some(obj)) = (extra, v.as_object_mut()) {
        obj.insert(k.into(), x.into());
    }
    println!("{v}");
    Ok(())
}

/// The fail-first error of a bad row, with the way past it: `--skip-invalid`, and where the
/// skipped rows would go (real data has a few broken rows: HH-RLHF has 13 of 2,312).
fn with_skip_hint(e: DatasetError, check: &CheckArgs) -> anyhow::Error {
    let DatasetError::Row(row) = e else { return e.into() };
    // A file in an import format fails on every row: its error already says to convert it.
    if check.skip_invalid || row.detail.contains("rlhf data import") {
        return DatasetError::Row(row).into();
    }
    let rejects = check.rejects.clone().unwrap_or_else(|| default_rejects_path(&row.file));
    anyhow!(
        "{row}\nto skip bad rows instead of stopping at the first, rerun with --skip-invalid: they are counted by reason \
         in the summary and written to {} (--rejects FILE to choose another)",
        rejects.display()
    )
}

pub fn run_validate(a: ValidateArgs) -> Result<()> {
    let opts = a.check.options(a.format.as_deref(), a.out)?;
    let summary = match a.kind.as_str() {
        "sft" => validate_files::<SftRecord>(&a.files, &opts),
        "preference" => validate_files::<PreferenceRecord>(&a.files, &opts),
        _ => validate_files::<PromptRecord>(&a.files, &opts),
    };
    print(&summary.map_err(|e| with_skip_hint(e, &a.check))?, None)
}

pub fn run_import(a: ImportArgs) -> Result<()> {
    let opts = a.check.options(a.input_format.as_deref(), Some(a.out.clone()))?;
    let format = match ImportFormat::parse(&a.format) {
        Some(f) => f,
        None => import::detect(&a.input, opts.format)?,
    };
    let kind = a.kind.as_deref().map(parse_kind).transpose().map_err(|e| anyhow::anyhow!(e.detail))?;
    let parser = format.parser(kind, a.source.clone());
    let summary = validate_with(&[a.input], parser, format.columns(), &opts).map_err(|e| with_skip_hint(e, &a.check))?;
    print(&summary, Some(("format", format.as_str())))
}
