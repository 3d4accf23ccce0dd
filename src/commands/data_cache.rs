//! `rlhf data mix` (the Llama 2 reward-model mixtures), `rlhf data cache` (tokenize once into
//! the on-disk cache the stages map) and `rlhf data demo-scale` (the demo world at benchmark
//! scale). Each parses its arguments, calls `datasets::{mixture, cache}` and prints one JSON line.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use datasets::cache::{build_cache_with, BuildOptions, CacheSettings, Encoding, DEFAULT_CACHE_DIR};
use datasets::length::{LengthPolicy, Overlong};
use datasets::mixture::{mix_files, MixSpec};
use datasets::parse::parse_kind;
use datasets::RecordKind;
use demo_world::scale::write_demo_scale;
use llama::chat::AssistantMask;
use llama::Tokenizer;

#[derive(Args)]
pub struct MixArgs {
    /// The reward model the mix is for: helpfulness (all helpfulness data + as much again sampled
    /// from the rest) or safety (all safety data + helpfulness data at 90/10).
    #[arg(long, value_parser = ["helpfulness", "safety"])]
    target: String,
    /// Preference files (JSONL or Parquet), read in order.
    #[arg(long, required = true, num_args = 1..)]
    data: Vec<PathBuf>,
    /// The mix (`.jsonl` or `.parquet`), written atomically, in input order.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The target's own data as a share of the mix, in (0, 1] [default: 0.5 helpfulness, 0.9
    /// safety].
    #[arg(long)]
    ratio: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Share of each source held out for the test split (0: the test sets are separate files).
    #[arg(long, default_value_t = 0.0, requires = "test_out")]
    test_fraction: f64,
    /// Where the held-out comparisons go.
    #[arg(long, value_name = "FILE")]
    test_out: Option<PathBuf>,
    /// The kind of comparisons that have no `kind` field.
    #[arg(long, default_value = "helpfulness", value_parser = ["helpfulness", "safety"])]
    default_kind: String,
    /// A source sampled with the rest even when of the target's kind (Llama 2's open-source
    /// helpfulness sets in the helpfulness mix); repeatable.
    #[arg(long, value_name = "SOURCE")]
    sampled_source: Vec<String>,
}

pub fn run_mix(a: MixArgs) -> Result<()> {
    let target = parse_kind(&a.target).map_err(|e| anyhow::anyhow!(e.detail))?;
    let default_kind = parse_kind(&a.default_kind).map_err(|e| anyhow::anyhow!(e.detail))?;
    let spec = MixSpec {
        target,
        primary_share: a.ratio.unwrap_or(MixSpec::paper_share(target)),
        seed: a.seed,
        test_fraction: a.test_fraction,
        default_kind,
        sampled_sources: a.sampled_source,
    };
    let summary = mix_files(&a.data, &a.out, a.test_out.as_deref(), &spec).with_context(|| format!("mixing into {}", a.out.display()))?;
    let mut v = serde_json::to_value(&summary)?;
    v["out"] = serde_json::json!(a.out);
    v["test_out"] = serde_json::json!(a.test_out);
    println!("{v}");
    Ok(())
}

#[derive(Args)]
pub struct CacheArgs {
    /// Record kind of the files.
    #[arg(long, value_parser = ["sft", "preference", "prompts"])]
    kind: String,
    /// JSONL or Parquet files, tokenized in order into one cache.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The `tokenizer.json` to use.
    #[arg(long, value_name = "FILE", conflicts_with = "model")]
    tokenizer: Option<PathBuf>,
    /// A checkpoint folder: its `tokenizer.json`, else the Llama-2 tokenizer built by set-up.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Root of the caches (each in a folder named by its key).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CACHE_DIR)]
    cache_dir: PathBuf,
    /// SFT loss mask: every assistant reply, or only the last (Ghost Attention).
    #[arg(long, default_value = "all-turns", value_parser = ["all-turns", "last-turn"])]
    mask: String,
    /// Longest example in tokens (SFT dialog, prompt + the longer reply, prompt).
    #[arg(long, value_name = "N")]
    max_tokens: Option<usize>,
    /// What to do with longer examples: error, drop, or truncate (see `rlhf data validate`).
    #[arg(long, default_value = "error", value_parser = ["error", "drop", "truncate"], requires = "max_tokens")]
    overlong: String,
    /// Encode whole texts through `tokenizers` instead of word by word (same ids; for
    /// benchmarking the word cache).
    #[arg(long)]
    exact: bool,
    /// Rows read and tokenized at a time.
    #[arg(long, default_value_t = datasets::cache::BATCH_ROWS)]
    batch_rows: usize,
}

/// `--tokenizer FILE`, else `--model DIR`'s `tokenizer.json`, else the Llama-2 tokenizer.
fn tokenizer_path(tokenizer: Option<PathBuf>, model: Option<&Path>) -> Result<PathBuf> {
    if let Some(t) = tokenizer {
        return Ok(t);
    }
    if let Some(local) = model.map(|m| m.join("tokenizer.json")).filter(|p| p.exists()) {
        return Ok(local);
    }
    llama::tokenizer::default_tokenizer_path()
        .filter(|p| p.exists())
        .context("no tokenizer: pass --tokenizer or --model, or run scripts/setup (or set RLHF_TOKENIZER)")
}

pub fn run_cache(a: CacheArgs) -> Result<()> {
    let kind = match a.kind.as_str() {
        "sft" => RecordKind::Sft,
        "preference" => RecordKind::Preference,
        _ => RecordKind::Prompts,
    };
    let mask = if a.mask == "last-turn" { AssistantMask::LastTurn } else { AssistantMask::AllTurns };
    let length = match a.max_tokens {
        Some(max_tokens) => {
            let Some(overlong) = Overlong::parse(&a.overlong) else { bail!("unknown --overlong {}", a.overlong) };
            Some(LengthPolicy { max_tokens, overlong })
        }
        None => None,
    };
    let tokenizer = tokenizer_path(a.tokenizer, a.model.as_deref())?;
    let options = BuildOptions { encoding: a.exact.then_some(Encoding::Exact), batch_rows: Some(a.batch_rows) };
    let handle = build_cache_with(kind, &a.files, &tokenizer, &CacheSettings { mask, length }, &a.cache_dir, options)
        .with_context(|| format!("building the {} cache in {}", kind.as_str(), a.cache_dir.display()))?;
    let s = &handle.stats;
    println!(
        "{}",
        serde_json::json!({
            "dir": handle.dir,
            "reused": handle.reused,
            "records": s.records,
            "tokens": s.tokens,
            "seconds": s.seconds,
            "hash_seconds": s.hash_seconds,
            "records_per_s": s.records_per_s,
            "tokens_per_s": s.tokens_per_s,
            "encoding": s.encoding,
            "dropped": handle.manifest.dropped,
            "truncated": handle.manifest.truncated,
            "max_example_tokens": handle.manifest.max_example_tokens,
        })
    );
    Ok(())
}

#[derive(Args)]
pub struct DemoScaleArgs {
    /// Comparisons to write.
    #[arg(long, default_value_t = 1_400_000)]
    pairs: usize,
    /// Approximate tokens per reply (chosen and rejected each).
    #[arg(long, default_value_t = 300)]
    tokens_per_side: usize,
    /// Output file (`.jsonl` or `.parquet`), written atomically.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The `tokenizer.json` that measures reply lengths (default: the Llama-2 tokenizer).
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
}

pub fn run_demo_scale(a: DemoScaleArgs) -> Result<()> {
    let tok = Tokenizer::from_file(&tokenizer_path(a.tokenizer, None)?)?;
    let summary =
        write_demo_scale(&a.out, a.pairs, a.tokens_per_side, a.seed, &tok).with_context(|| format!("writing {}", a.out.display()))?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
