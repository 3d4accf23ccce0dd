//! `rlhf annotate export|serve|import`: human preference annotation (Llama 2 Section 3.2.1).
//! Parses the arguments and calls the `annotate` crate; formats in docs/annotate.md.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum AnnotateCommand {
    /// Pairs to rate from rejection-sampling sample logs or any JSONL of prompt + candidates,
    /// as a pair file (JSONL) and a CSV a spreadsheet opens.
    Export(ExportArgs),
    /// The rating web page: a prompt, two replies, the Llama 2 protocol; writes preference records.
    Serve(ServeArgs),
    /// Merge ratings (the server's journal, JSONL, or a filled-in CSV) with their pairs into
    /// preference records.
    Import(ImportArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    /// Sample logs (`samples-iter{N}.jsonl`, `sweep-iter{N}-t{T}.jsonl`) or JSONL of
    /// `{"prompt", "candidates": [...]}`; candidates of one prompt are pooled across files.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// The pair file (JSONL), written atomically.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The CSV for a spreadsheet (default: OUT with a .csv extension).
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Pairs per prompt.
    #[arg(long, default_value_t = 1)]
    per_prompt: usize,
    /// At most this many pairs in all.
    #[arg(long)]
    max_pairs: Option<usize>,
    /// Draws the pairs and which reply is `a`.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `source` of every pair and record (the batch name, e.g. `week-3`).
    #[arg(long)]
    source: Option<String>,
}

#[derive(Args)]
pub struct ServeArgs {
    /// The pair file to rate.
    #[arg(long, value_name = "FILE")]
    pairs: PathBuf,
    /// Preference records (JSONL), kept equal to the journal's ratings in force.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The ratings journal, appended and fsynced per action (default: OUT's name with
    /// `.ratings.jsonl`); a restart continues from it.
    #[arg(long, value_name = "FILE")]
    journal: Option<PathBuf>,
    /// Address to listen on. Anything but loopback needs --token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Ratings per pair by different annotators (2 or more for agreement statistics).
    #[arg(long, default_value_t = 1)]
    overlap: usize,
    /// Shared secret for the page (at least 16 characters, e.g. `openssl rand -hex 16`);
    /// required off loopback. Or set RLHF_ANNOTATE_TOKEN, which `ps` does not show.
    #[arg(long)]
    token: Option<String>,
    /// Draws the order each annotator sees a pair's replies in.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Minutes a pair shown to one annotator is kept from the others.
    #[arg(long, default_value_t = 20)]
    lease_minutes: u64,
}

#[derive(Args)]
pub struct ImportArgs {
    /// The pair file the ratings refer to.
    #[arg(long, value_name = "FILE")]
    pairs: PathBuf,
    /// Ratings: JSONL (the server's journal, or rate lines) or CSV (the exported sheet filled in).
    #[arg(long, value_name = "FILE", required = true)]
    ratings: Vec<PathBuf>,
    /// Preference records (`.jsonl` with provenance fields, or `.parquet`), written atomically.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub fn run(c: AnnotateCommand) -> Result<()> {
    match c {
        AnnotateCommand::Export(a) => export(a),
        AnnotateCommand::Serve(a) => serve(a),
        AnnotateCommand::Import(a) => import(a),
    }
}

fn export(a: ExportArgs) -> Result<()> {
    if a.per_prompt == 0 {
        bail!("--per-prompt must be at least 1");
    }
    let opts = annotate::export::ExportOptions {
        per_prompt: a.per_prompt,
        seed: a.seed,
        max_pairs: a.max_pairs,
        source: a.source,
        ..Default::default()
    };
    let (pairs, summary) = annotate::export::export(&a.inputs, &opts)?;
    if pairs.is_empty() {
        bail!("no pairs: no prompt has two distinct non-empty replies ({} rows read)", summary.rows);
    }
    let csv = a.csv.unwrap_or_else(|| a.out.with_extension("csv"));
    if csv == a.out {
        bail!("--csv and --out are the same file");
    }
    annotate::write_pairs(&a.out, &pairs)?;
    annotate::write_pairs_csv(&csv, &pairs)?;
    let mut v = serde_json::to_value(&summary)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("out".into(), a.out.display().to_string().into());
        o.insert("csv".into(), csv.display().to_string().into());
    }
    println!("{v}");
    Ok(())
}

fn serve(a: ServeArgs) -> Result<()> {
    let journal = a.journal.unwrap_or_else(|| annotate::server::default_journal(&a.out));
    let opts = annotate::server::ServeOptions {
        pairs: a.pairs,
        out: a.out,
        journal,
        addr: a.addr,
        overlap: a.overlap,
        token: a.token.or_else(|| std::env::var("RLHF_ANNOTATE_TOKEN").ok().filter(|t| !t.is_empty())),
        seed: a.seed,
        lease: Duration::from_secs(a.lease_minutes.max(1) * 60),
    };
    let server = annotate::server::Server::bind(&opts)?;
    let (pairs, ratings, done) = server.progress();
    let addr = server.local_addr();
    let url = match &opts.token {
        Some(t) => format!("http://{addr}/?token={t}"),
        None => format!("http://{addr}/"),
    };
    tracing::info!(
        "{pairs} pairs, {ratings} ratings in force ({done} pairs done); journal {}, records {}",
        opts.journal.display(),
        opts.out.display()
    );
    // The one line on stdout: where to point the browser (tests read the port from it).
    println!("annotate: serving on {url}");
    use std::io::Write;
    std::io::stdout().flush().context("stdout")?;
    Ok(server.run()?)
}

fn import(a: ImportArgs) -> Result<()> {
    let pairs = annotate::read_pairs(&a.pairs)?;
    let ids: std::collections::HashSet<&str> = pairs.iter().map(|p| p.id.as_str()).collect();
    let mut log = annotate::RatingLog::default();
    let mut blank = 0;
    for f in &a.ratings {
        let (l, stats) = annotate::read_ratings(f, &|id| ids.contains(id))?;
        // Several files: each file's own undo/replace rules, then all ratings in file order.
        for r in l.ratings() {
            log.apply(annotate::Event::Rate { seq: None, rating: r.clone() })
                .map_err(|i| anyhow::anyhow!("{}: {}", f.display(), i.detail))?;
        }
        log.undone += l.undone;
        log.skipped += l.skipped;
        log.replaced += l.replaced;
        blank += stats.blank_rows;
    }
    let (records, mut summary) = annotate::merge(&pairs, &log)?;
    summary.blank_rows = blank;
    annotate::merge::write_records(&a.out, &records)?;
    let mut v = serde_json::to_value(&summary)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("out".into(), a.out.display().to_string().into());
    }
    println!("{v}");
    Ok(())
}
