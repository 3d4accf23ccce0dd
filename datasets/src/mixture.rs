//! The reward-model data mixtures of Llama 2 Section 3.2.2 ("Data Composition").
//!
//! * **Helpfulness RM**: all helpfulness data, plus an equal amount sampled uniformly from the
//!   rest (safety data and open-source sets): the target's own data is half the mix
//!   (`primary_share` 0.5).
//! * **Safety RM**: all safety data (Anthropic Harmless-style sets included: import them with
//!   `kind: safety`), plus helpfulness data at a 90/10 ratio (`primary_share` 0.9: one
//!   helpfulness comparison per nine safety ones).
//!
//! A comparison's side is its `kind`; a comparison without one counts as
//! [`MixSpec::default_kind`]. Comparisons of a source named in [`MixSpec::sampled_sources`] go
//! to the sampled pool even when their kind is the target's: in the paper's helpfulness mix,
//! open-source helpfulness sets are sampled with the safety data, not taken whole.
//!
//! Held-out test splits are taken first, per `source` (records without one form the
//! `unspecified` source): `round(test_fraction * n)` of each source's comparisons, drawn by a
//! stream seeded from the seed and the source's name, so that adding a source does not move the
//! others' splits. The mixture is drawn from what is left, without replacement; when the pool is
//! smaller than asked, all of it is taken and the summary says so (`sampled < requested_sampled`).
//!
//! Everything is a function of the seed and the input. Records keep their input order (files in
//! the order given): the trainers shuffle each epoch, and an input-ordered mix can be written in
//! one streaming pass. Files are read twice (labels first, then the records), so a 1.4M-row mix
//! never holds the texts in memory.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use llama_text::rng::SplitMix64;
use serde::Serialize;

use crate::error::{DatasetError, Result};
use crate::io::{RecordReader, RecordWriter};
use crate::records::{PreferenceKind, PreferenceRecord};

/// The name of the group of records without a `source`.
pub const UNSPECIFIED_SOURCE: &str = "unspecified";
const BATCH_ROWS: usize = 4096;

/// How to build a mixture.
#[derive(Debug, Clone, PartialEq)]
pub struct MixSpec {
    /// The reward model the mix is for.
    pub target: PreferenceKind,
    /// The target's own data as a share of the mix, in (0, 1]: Llama 2 uses 0.5 for
    /// helpfulness, 0.9 for safety ([`MixSpec::paper`]).
    pub primary_share: f64,
    pub seed: u64,
    /// Share of each source held out for the test split, in [0, 1). 0 when the test sets are
    /// separate files (the demo world's `preference_test.jsonl`).
    pub test_fraction: f64,
    /// The kind of a comparison that has none.
    pub default_kind: PreferenceKind,
    /// Sources sampled with the rest even when of the target's kind.
    pub sampled_sources: Vec<String>,
}

impl MixSpec {
    /// Llama 2's mix for `target`: 50/50 for helpfulness, 90/10 for safety; seed 0, no test split,
    /// unlabelled comparisons counted as helpfulness.
    pub fn paper(target: PreferenceKind) -> Self {
        MixSpec {
            target,
            primary_share: Self::paper_share(target),
            seed: 0,
            test_fraction: 0.0,
            default_kind: PreferenceKind::Helpfulness,
            sampled_sources: Vec::new(),
        }
    }

    /// 0.5 for helpfulness, 0.9 for safety.
    pub fn paper_share(target: PreferenceKind) -> f64 {
        match target {
            PreferenceKind::Helpfulness => 0.5,
            PreferenceKind::Safety => 0.9,
        }
    }

    fn validate(&self) -> Result<()> {
        if !(self.primary_share > 0.0 && self.primary_share <= 1.0) {
            return Err(DatasetError::Invalid(format!("mix ratio {} must be in (0, 1]", self.primary_share)));
        }
        if !(0.0..1.0).contains(&self.test_fraction) {
            return Err(DatasetError::Invalid(format!("test fraction {} must be in [0, 1)", self.test_fraction)));
        }
        Ok(())
    }
}

/// Where a record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assign {
    Mix,
    Test,
    Unused,
}

/// The labels a plan is made from, one entry per record (sources interned).
#[derive(Debug, Default, Clone)]
pub struct MixInput {
    kinds: Vec<Option<PreferenceKind>>,
    sources: Vec<u32>,
    names: Vec<String>,
    ids: HashMap<String, u32>,
}

impl MixInput {
    pub fn push(&mut self, kind: Option<PreferenceKind>, source: Option<&str>) {
        let name = source.unwrap_or(UNSPECIFIED_SOURCE);
        let id = match self.ids.get(name) {
            Some(&id) => id,
            None => {
                let id = self.names.len() as u32;
                self.names.push(name.to_string());
                self.ids.insert(name.to_string(), id);
                id
            }
        };
        self.kinds.push(kind);
        self.sources.push(id);
    }

    pub fn len(&self) -> usize {
        self.kinds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }
}

/// Counts of a set of records by kind and by source.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    pub records: usize,
    pub kind: BTreeMap<String, usize>,
    pub source: BTreeMap<String, usize>,
}

/// What a mixture took from where.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MixSummary {
    pub target: String,
    pub primary_share: f64,
    pub seed: u64,
    pub test_fraction: f64,
    pub default_kind: String,
    pub sampled_sources: Vec<String>,
    /// Records without a `kind`, counted as `default_kind`.
    pub defaulted_kind: usize,
    pub input: Counts,
    /// Comparisons of the target's own data (all of it, outside the test split).
    pub primary: usize,
    /// Comparisons the ratio asks for from the rest, and those drawn (fewer when the pool is short).
    pub requested_sampled: usize,
    pub sampled: usize,
    /// The sampled pool's size (outside the test split).
    pub pool: usize,
    /// The target's share of the mix as written, `primary / mix.records`: `primary_share` is
    /// what was asked for, and differs when the pool was short.
    pub actual_primary_share: f64,
    /// Why the mix is not what was asked for (the pool was short), when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shortfall: Option<String>,
    pub mix: Counts,
    pub test: Counts,
}

/// The assignment of every record, and the summary.
#[derive(Debug, Clone)]
pub struct MixPlan {
    pub assign: Vec<Assign>,
    pub summary: MixSummary,
}

/// A stream for `name` under `seed` (FNV-1a of the name picks the step).
fn stream(seed: u64, name: &str) -> SplitMix64 {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    SplitMix64::for_step(seed, h)
}

/// Uniform in `0..n` (n > 0); the modulo bias is below 2^-40 for any n we meet.
fn below(rng: &mut SplitMix64, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

/// The first `k` of `items` after a seeded partial Fisher-Yates shuffle: a uniform sample.
fn sample(items: &mut [usize], k: usize, rng: &mut SplitMix64) {
    for i in 0..k.min(items.len()) {
        let j = i + below(rng, items.len() - i);
        items.swap(i, j);
    }
}

/// Decides where each record goes (module docs).
pub fn plan_mix(input: &MixInput, spec: &MixSpec) -> Result<MixPlan> {
    spec.validate()?;
    let n = input.len();
    let mut assign = vec![Assign::Unused; n];
    let kind_of = |i: usize| input.kinds[i].unwrap_or(spec.default_kind);

    // 1. Held-out test split, per source.
    if spec.test_fraction > 0.0 {
        let mut by_source: Vec<Vec<usize>> = vec![Vec::new(); input.names.len()];
        for i in 0..n {
            by_source[input.sources[i] as usize].push(i);
        }
        for (id, mut members) in by_source.into_iter().enumerate() {
            let k = (spec.test_fraction * members.len() as f64).round() as usize;
            sample(&mut members, k, &mut stream(spec.seed, &format!("test/{}", input.names[id])));
            for &i in &members[..k] {
                assign[i] = Assign::Test;
            }
        }
    }

    // 2. All of the target's own data; a uniform sample of the rest.
    let sampled_sources: HashSet<u32> = spec.sampled_sources.iter().filter_map(|s| input.ids.get(s.as_str()).copied()).collect();
    let mut pool = Vec::new();
    let mut primary = 0usize;
    for (i, a) in assign.iter_mut().enumerate() {
        if *a == Assign::Test {
            continue;
        }
        if kind_of(i) == spec.target && !sampled_sources.contains(&input.sources[i]) {
            *a = Assign::Mix;
            primary += 1;
        } else {
            pool.push(i);
        }
    }
    let defaulted = input.kinds.iter().filter(|k| k.is_none()).count();
    if primary == 0 {
        return Err(DatasetError::EmptyMix { target: spec.target.as_str(), reason: no_primary_reason(input, spec, defaulted) });
    }
    let requested = (primary as f64 * (1.0 - spec.primary_share) / spec.primary_share).round() as usize;
    let take = requested.min(pool.len());
    sample(&mut pool, take, &mut stream(spec.seed, "mix"));
    for &i in &pool[..take] {
        assign[i] = Assign::Mix;
    }

    let counts = |which: Option<Assign>| {
        let mut c = Counts::default();
        for i in (0..n).filter(|&i| which.is_none_or(|w| assign[i] == w)) {
            c.records += 1;
            *c.kind.entry(kind_of(i).as_str().to_string()).or_default() += 1;
            *c.source.entry(input.names[input.sources[i] as usize].clone()).or_default() += 1;
        }
        c
    };
    let summary = MixSummary {
        target: spec.target.as_str().into(),
        primary_share: spec.primary_share,
        seed: spec.seed,
        test_fraction: spec.test_fraction,
        default_kind: spec.default_kind.as_str().into(),
        sampled_sources: spec.sampled_sources.clone(),
        defaulted_kind: defaulted,
        input: counts(None),
        primary,
        requested_sampled: requested,
        sampled: take,
        pool: pool.len(),
        actual_primary_share: primary as f64 / (primary + take) as f64,
        shortfall: (take < requested).then(|| shortfall(spec, primary, requested, take)),
        mix: counts(Some(Assign::Mix)),
        test: counts(Some(Assign::Test)),
    };
    if let Some(why) = &summary.shortfall {
        tracing::warn!("{why}");
    }
    Ok(MixPlan { assign, summary })
}

/// Why no comparison is the target's own: none in the input, all held out, none of its kind
/// (saying how many had no `kind` and were counted as `default_kind`), or all from sampled sources.
fn no_primary_reason(input: &MixInput, spec: &MixSpec, defaulted: usize) -> String {
    let (target, n) = (spec.target.as_str(), input.len());
    if n == 0 {
        return "the inputs have no comparisons".into();
    }
    let of_kind = (0..n).filter(|&i| input.kinds[i].unwrap_or(spec.default_kind) == spec.target).count();
    if of_kind == 0 {
        let mut why = format!("none of the {n} comparisons is of kind {target}");
        if defaulted > 0 {
            why += &format!(
                "; {defaulted} have no `kind` and count as {} (the default kind): set `kind` in the data \
                 (`rlhf data import --kind {target}`) or pass --default-kind {target}",
                spec.default_kind.as_str()
            );
        }
        return why;
    }
    format!(
        "all {of_kind} comparisons of kind {target} are in the test split or from a sampled source ({})",
        if spec.sampled_sources.is_empty() { "none given".to_string() } else { spec.sampled_sources.join(", ") }
    )
}

/// The summary's note when the pool could not fill the other-kind share.
fn shortfall(spec: &MixSpec, primary: usize, requested: usize, took: usize) -> String {
    let actual = primary as f64 / (primary + took) as f64;
    format!(
        "{} mix: asked for a {} share of {} ({requested} other comparisons for {primary}), but the pool has only {took}: \
         the mix is {:.1}% {}",
        spec.target.as_str(),
        spec.primary_share,
        spec.target.as_str(),
        100.0 * actual,
        spec.target.as_str()
    )
}

/// The mix and the test split of records in memory (input order kept).
pub fn mix_records(records: &[PreferenceRecord], spec: &MixSpec) -> Result<(Vec<PreferenceRecord>, Vec<PreferenceRecord>, MixSummary)> {
    let mut input = MixInput::default();
    for r in records {
        input.push(r.kind, r.source.as_deref());
    }
    let plan = plan_mix(&input, spec)?;
    let pick = |w: Assign| records.iter().zip(&plan.assign).filter(|(_, &a)| a == w).map(|(r, _)| r.clone()).collect();
    Ok((pick(Assign::Mix), pick(Assign::Test), plan.summary))
}

/// Mixes preference files into `out` (and the test split into `test_out`), streaming: one pass
/// for the labels, one to copy the chosen records. The first bad row is the error. Outputs are
/// written atomically (JSONL or Parquet by extension).
pub fn mix_files(inputs: &[PathBuf], out: &Path, test_out: Option<&Path>, spec: &MixSpec) -> Result<MixSummary> {
    spec.validate()?;
    if spec.test_fraction > 0.0 && test_out.is_none() {
        return Err(DatasetError::Invalid("a test fraction above 0 needs a test output file".into()));
    }
    let mut input = MixInput::default();
    for path in inputs {
        for_each_record(path, |r| input.push(r.kind, r.source.as_deref()))?;
    }
    let plan = plan_mix(&input, spec)?;
    let mut mix = RecordWriter::<PreferenceRecord>::create(out, None)?;
    let mut test = test_out.map(|p| RecordWriter::<PreferenceRecord>::create(p, None)).transpose()?;
    let mut i = 0usize;
    for path in inputs {
        let mut failed = None;
        for_each_record(path, |r| {
            let result = match (plan.assign.get(i), test.as_mut()) {
                (Some(Assign::Mix), _) => mix.write(r),
                (Some(Assign::Test), Some(t)) => t.write(r),
                _ => Ok(()),
            };
            if let (Err(e), None) = (result, &failed) {
                failed = Some(e);
            }
            i += 1;
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
    }
    if i != input.len() {
        return Err(DatasetError::Invalid(format!("inputs changed while mixing: {} records, then {i}", input.len())));
    }
    mix.finish()?;
    if let Some(t) = test {
        t.finish()?;
    }
    Ok(plan.summary)
}

/// Calls `f` on every record of `path`, in order; the first bad row is the error.
fn for_each_record(path: &Path, mut f: impl FnMut(PreferenceRecord)) -> Result<()> {
    let mut reader = RecordReader::<PreferenceRecord>::open(path)?;
    loop {
        let batch = reader.next_batch(BATCH_ROWS)?;
        if batch.is_empty() {
            return Ok(());
        }
        for row in batch {
            f(row.record?);
        }
    }
}
