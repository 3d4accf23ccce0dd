//! The demo world at benchmark scale: `pairs` comparisons whose replies are ~`tokens_per_side`
//! tokens long, for the tokenized-cache benchmark (issue 3: 1.4M comparisons, ~300 tokens a side).
//!
//! A base demo world (20,000 comparisons, 4,000 SFT demonstrations, the default shares and
//! `seed`) gives the prompts, the labels (rating, kind, source, safety flags) and a pool of reply
//! texts (every distinct chosen, rejected and SFT reply). Comparison `i` copies base comparison
//! `u mod 20,000` and lengthens each reply by appending pool texts drawn uniformly (space
//! separated) until it has at least `tokens_per_side` tokens; the stream of comparison `i` is
//! `SplitMix64::for_step(seed, i)`, so the file is the same for the same arguments however it is
//! cut into batches.
//!
//! The counts are exact without encoding the long texts: the pieces are stripped and joined by one
//! space, so the normalised reply is `"▁p1▁p2…"` with a word boundary before every `"▁pk"` (see
//! [`datasets::cache::encode`]), and `encode(reply)` is the concatenation of the `encode(pk)`. In the chat
//! format a reply then takes that many ids plus two (the trailing `"▁"` of `" {a} "` and EOS).
use std::collections::BTreeSet;
use std::path::Path;

use llama::rng::SplitMix64;
use llama::Tokenizer;
use rayon::prelude::*;
use serde::Serialize;

use datasets::io::RecordWriter;
use datasets::records::PreferenceRecord;

use crate::{generate, DemoError, DemoShares, DemoSizes};

type Result<T, E = DemoError> = std::result::Result<T, E>;

/// Comparisons generated (in parallel) and written at a time.
const CHUNK: usize = 8192;

/// What [`write_demo_scale`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct DemoScaleSummary {
    pub path: String,
    pub pairs: usize,
    pub tokens_per_side: usize,
    pub seed: u64,
    /// Distinct texts the replies are made of.
    pub pool_texts: usize,
    /// Mean tokens per reply, `encode(reply)` (exact; see the module docs).
    pub mean_reply_tokens: f64,
    pub bytes: u64,
}

/// Writes `pairs` comparisons to `out` (JSONL or Parquet by extension), atomically.
pub fn write_demo_scale(out: &Path, pairs: usize, tokens_per_side: usize, seed: u64, tok: &Tokenizer) -> Result<DemoScaleSummary> {
    let sizes = DemoSizes { sft: 4000, pairs: 20_000, prompts: 0 };
    let base = generate(sizes, &DemoShares::default(), seed)?;
    let mut texts = BTreeSet::new();
    for p in base.preference_train.iter().chain(&base.preference_test) {
        texts.insert(p.chosen.trim().to_string());
        texts.insert(p.rejected.trim().to_string());
    }
    for r in &base.sft {
        if let Some(m) = r.messages.last() {
            texts.insert(m.content.trim().to_string());
        }
    }
    let pool: Vec<(usize, String)> =
        texts.into_iter().filter(|t| !t.is_empty()).map(|t| Ok((tok.encode(&t, false, false)?.len(), t))).collect::<Result<_>>()?;
    let base_pairs: Vec<PreferenceRecord> = base.preference_train.into_iter().chain(base.preference_test).collect();
    if pool.is_empty() || base_pairs.is_empty() {
        return Err(DemoError::Invalid("the demo world produced no comparisons to lengthen".into()));
    }

    let lengthen = |start: &str, rng: &mut SplitMix64| -> Result<(String, usize)> {
        let mut text = start.trim().to_string();
        let mut n = tok.encode(&text, false, false)?.len();
        while n < tokens_per_side {
            let (len, piece) = &pool[(rng.next_u64() % pool.len() as u64) as usize];
            text.push(' ');
            text.push_str(piece);
            n += len;
        }
        Ok((text, n))
    };
    let make = |i: usize| -> Result<(PreferenceRecord, usize)> {
        let mut rng = SplitMix64::for_step(seed, i as u64);
        let b = &base_pairs[(rng.next_u64() % base_pairs.len() as u64) as usize];
        loop {
            let (chosen, nc) = lengthen(&b.chosen, &mut rng)?;
            let (rejected, nr) = lengthen(&b.rejected, &mut rng)?;
            if chosen != rejected {
                return Ok((PreferenceRecord { chosen, rejected, ..b.clone() }, nc + nr));
            }
        }
    };

    let mut writer = RecordWriter::<PreferenceRecord>::create(out, None)?;
    let mut total_tokens = 0usize;
    for start in (0..pairs).step_by(CHUNK) {
        let chunk: Vec<(PreferenceRecord, usize)> = (start..(start + CHUNK).min(pairs)).into_par_iter().map(make).collect::<Result<_>>()?;
        total_tokens += chunk.iter().map(|(_, n)| n).sum::<usize>();
        let records: Vec<PreferenceRecord> = chunk.into_iter().map(|(r, _)| r).collect();
        writer.write_batch(&records)?;
    }
    writer.finish()?;
    let bytes = std::fs::metadata(out).map_err(|source| DemoError::Io { path: out.to_path_buf(), source })?.len();
    Ok(DemoScaleSummary {
        path: out.display().to_string(),
        pairs,
        tokens_per_side,
        seed,
        pool_texts: pool.len(),
        mean_reply_tokens: if pairs == 0 { 0.0 } else { total_tokens as f64 / (2 * pairs) as f64 },
        bytes,
    })
}
