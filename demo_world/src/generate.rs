//! Generates the demo data sets (SFT, preference train/test, prompts train/test, manifest) from a
//! seed, and writes them atomically.
use crate::respond::{below, respond, wrong_response, Style};
use crate::world::{universe, Category, DemoPrompt, Family};
use crate::DemoError;
use datasets::records::{user_prompt, PreferenceKind, PreferenceRecord, PromptRecord, Rating, SftRecord};
use llama::chat::Message;
use llama::rng::SplitMix64;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// How many records to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemoSizes {
    /// SFT demonstrations (all on training prompts).
    pub sft: usize,
    /// Preference comparisons, train + test (`DemoShares::pair_test` of them in the test file).
    pub pairs: usize,
    /// Prompts for rejection sampling and PPO, train + test (`DemoShares::prompt_test` held out).
    pub prompts: usize,
}

impl Default for DemoSizes {
    fn default() -> Self {
        DemoSizes { sft: 4000, pairs: 6000, prompts: 600 }
    }
}

/// The world's mixtures and imperfections. Every share is in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoShares {
    /// SFT demonstrations on helpful prompts that give a wrong answer.
    pub sft_wrong: f64,
    /// SFT demonstrations on harmful prompts that comply (half with a warning, half without).
    pub sft_unsafe: f64,
    /// SFT demonstrations on borderline prompts that refuse (false refusals).
    pub sft_false_refusal: f64,
    /// SFT demonstrations on helpful and borderline prompts that are correct but verbose or hedged.
    pub sft_verbose: f64,
    /// SFT records that start with a system message.
    pub sft_system: f64,
    /// Harmful prompts among SFT prompts and RS/PPO prompts.
    pub harmful: f64,
    /// Borderline prompts among SFT prompts and RS/PPO prompts (helpful: the rest).
    pub borderline: f64,
    /// Comparisons collected for the safety reward model (the rest: helpfulness).
    pub safety_pairs: f64,
    /// Safety comparisons by safety label: [chosen safe & rejected unsafe, both safe, both unsafe]
    /// (Llama 2 Sec. 3.2.1: 18%, 47%, 35%).
    pub safety_labels: [f64; 3],
    /// Safe-vs-unsafe comparisons the annotator gets backwards (unsafe chosen); they are dropped,
    /// as Llama 2 drops every pair whose chosen response is unsafe and the other safe.
    pub annotator_flip: f64,
    /// Comparisons in `preference_test.jsonl` (on held-out prompts).
    pub pair_test: f64,
    /// Prompts in `prompts_test.jsonl` (held out).
    pub prompt_test: f64,
}

impl Default for DemoShares {
    fn default() -> Self {
        DemoShares {
            sft_wrong: 0.25,
            sft_unsafe: 0.30,
            sft_false_refusal: 0.20,
            sft_verbose: 0.10,
            sft_system: 0.15,
            harmful: 0.25,
            borderline: 0.20,
            safety_pairs: 0.5,
            safety_labels: [0.18, 0.47, 0.35],
            annotator_flip: 0.05,
            pair_test: 0.10,
            prompt_test: 0.20,
        }
    }
}

impl DemoShares {
    /// Checks that every share is a probability and that the mixtures add up.
    pub fn validate(&self) -> Result<(), DemoError> {
        let named = [
            ("sft_wrong", self.sft_wrong),
            ("sft_unsafe", self.sft_unsafe),
            ("sft_false_refusal", self.sft_false_refusal),
            ("sft_verbose", self.sft_verbose),
            ("sft_system", self.sft_system),
            ("harmful", self.harmful),
            ("borderline", self.borderline),
            ("safety_pairs", self.safety_pairs),
            ("safety_labels[0]", self.safety_labels[0]),
            ("safety_labels[1]", self.safety_labels[1]),
            ("safety_labels[2]", self.safety_labels[2]),
            ("annotator_flip", self.annotator_flip),
            ("pair_test", self.pair_test),
            ("prompt_test", self.prompt_test),
        ];
        for (name, value) in named {
            if !(0.0..=1.0).contains(&value) {
                return Err(DemoError::InvalidShare { name, value, why: "must be in [0, 1]" });
            }
        }
        let sums = [
            ("harmful + borderline", self.harmful + self.borderline),
            ("sft_wrong + sft_verbose", self.sft_wrong + self.sft_verbose),
            ("sft_false_refusal + sft_verbose", self.sft_false_refusal + self.sft_verbose),
        ];
        for (name, value) in sums {
            if value > 1.0 + 1e-9 {
                return Err(DemoError::InvalidShare { name, value, why: "must not exceed 1" });
            }
        }
        let labels: f64 = self.safety_labels.iter().sum();
        if labels <= 0.0 {
            return Err(DemoError::InvalidShare { name: "safety_labels (sum)", value: labels, why: "must be positive" });
        }
        if self.annotator_flip >= 1.0 && self.safety_labels[0] > 0.0 && self.safety_pairs > 0.0 {
            return Err(DemoError::InvalidShare { name: "annotator_flip", value: 1.0, why: "must be below 1" });
        }
        Ok(())
    }
}

/// The rating a ground-truth score gap earns (bigger gap, stronger rating):
/// gap >= 2.5 significantly better, >= 1.5 better, >= 0.75 slightly better, else negligibly better.
pub fn rating_for_gap(gap: f64) -> Rating {
    if gap >= 2.5 {
        Rating::SignificantlyBetter
    } else if gap >= 1.5 {
        Rating::Better
    } else if gap >= 0.75 {
        Rating::SlightlyBetter
    } else {
        Rating::NegligiblyBetter
    }
}

/// Llama 2 Sec. 3.2.1: a safety comparison whose chosen response is unsafe while the other is safe
/// is not kept.
pub fn keep_safety_pair(chosen_safe: bool, rejected_safe: bool) -> bool {
    chosen_safe || !rejected_safe
}

/// The ground truth behind one comparison.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairTruth {
    pub chosen: Style,
    pub rejected: Style,
    /// Ground-truth score of chosen minus rejected (0 for near-equal paraphrases).
    pub gap: f64,
    /// Two phrasings of the same style, chosen by a coin flip (the paper's hard, near-equal pairs).
    pub near_equal: bool,
}

/// Everything `write_demo` writes, in memory, with the ground truth behind each record.
#[derive(Debug, Clone)]
pub struct DemoData {
    pub sft: Vec<SftRecord>,
    /// The prompt and style of each SFT demonstration.
    pub sft_truth: Vec<(DemoPrompt, Style)>,
    pub preference_train: Vec<PreferenceRecord>,
    pub preference_train_truth: Vec<PairTruth>,
    pub preference_test: Vec<PreferenceRecord>,
    pub preference_test_truth: Vec<PairTruth>,
    pub prompts_train: Vec<PromptRecord>,
    pub prompts_test: Vec<PromptRecord>,
    pub manifest: DemoManifest,
}

/// `manifest.json`: what was generated, from what, and the realised mixtures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoManifest {
    pub world: String,
    pub seed: u64,
    pub sizes: DemoSizes,
    pub shares: DemoShares,
    /// Rows per file.
    pub records: BTreeMap<String, usize>,
    /// SFT demonstrations per category and style.
    pub sft_styles: BTreeMap<String, BTreeMap<String, usize>>,
    /// Comparisons per `split/kind` and rating.
    pub ratings: BTreeMap<String, BTreeMap<String, usize>>,
    /// Safety comparisons (train + test) per safety label.
    pub safety_labels: BTreeMap<String, usize>,
    /// Safe-vs-unsafe comparisons dropped because the unsafe response was chosen.
    pub dropped_unsafe_chosen: usize,
    /// Prompts of the world per family: [train, held out].
    pub universe: BTreeMap<String, [usize; 2]>,
}

/// The version of the world written into the manifest.
pub const WORLD: &str = "rlhf demo world v1";
pub const SOURCE_HELPFUL: &str = "demo_helpful";
pub const SOURCE_SAFETY: &str = "demo_safety";
const SYSTEM_PROMPTS: [&str; 3] = [
    "You are a helpful, respectful and honest assistant.",
    "You are a helpful assistant. Answer briefly.",
    "Always answer as helpfully as possible, while being safe.",
];

fn bernoulli(rng: &mut SplitMix64, p: f64) -> bool {
    rng.next_f64() < p
}

/// Index drawn with probability proportional to `weights` (the first positive one if all are 0).
fn pick_weighted(rng: &mut SplitMix64, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return weights.iter().position(|&w| w > 0.0).unwrap_or(0);
    }
    let mut u = rng.next_f64() * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    weights.len() - 1
}

/// Draws prompts family by family without replacement, reshuffling a family's deck when it runs out,
/// so small families are covered evenly.
struct PromptSampler {
    held_out: bool,
    decks: BTreeMap<Family, (Vec<usize>, usize)>,
}

impl PromptSampler {
    fn new(held_out: bool) -> Self {
        PromptSampler { held_out, decks: BTreeMap::new() }
    }

    fn families(c: Category) -> &'static [Family] {
        match c {
            Category::Helpful => &Family::HELPFUL,
            Category::Harmful => &[Family::Harmful],
            Category::Borderline => &[Family::Borderline],
        }
    }

    fn draw(&mut self, rng: &mut SplitMix64, c: Category) -> &'static DemoPrompt {
        let fams = Self::families(c);
        let family = fams[below(rng, fams.len())];
        let u = universe();
        let held_out = self.held_out;
        let (deck, pos) = self.decks.entry(family).or_insert_with(|| {
            let items = (0..u.len()).filter(|&i| u[i].family == family && u[i].held_out == held_out).collect();
            (items, usize::MAX)
        });
        if *pos >= deck.len() {
            for i in (1..deck.len()).rev() {
                deck.swap(i, below(rng, i + 1));
            }
            *pos = 0;
        }
        let p = &u[deck[*pos]];
        *pos += 1;
        p
    }

    /// A category by the SFT / prompt-set mixture.
    fn category(rng: &mut SplitMix64, s: &DemoShares) -> Category {
        [Category::Helpful, Category::Harmful, Category::Borderline]
            [pick_weighted(rng, &[1.0 - s.harmful - s.borderline, s.harmful, s.borderline])]
    }
}

fn response(p: &DemoPrompt, style: Style, variant: usize, rng: &mut SplitMix64) -> String {
    // Callers only pair styles with prompts they apply to.
    respond(p, style, variant, rng).unwrap_or_default()
}

fn sft_style(rng: &mut SplitMix64, c: Category, s: &DemoShares) -> Style {
    let u = rng.next_f64();
    match c {
        Category::Helpful if u < s.sft_wrong => Style::Wrong,
        Category::Helpful if u < s.sft_wrong + s.sft_verbose => Style::Verbose,
        Category::Borderline if u < s.sft_false_refusal => Style::FalseRefusal,
        Category::Borderline if u < s.sft_false_refusal + s.sft_verbose => Style::Verbose,
        Category::Helpful | Category::Borderline => Style::Correct,
        Category::Harmful if u < s.sft_unsafe => {
            if bernoulli(rng, 0.5) {
                Style::WarnedCompliance
            } else {
                Style::UnsafeCompliance
            }
        }
        Category::Harmful => {
            if bernoulli(rng, 0.6) {
                Style::HelpfulRefusal
            } else {
                Style::CurtRefusal
            }
        }
    }
}

fn gen_sft(n: usize, s: &DemoShares, rng: &mut SplitMix64) -> (Vec<SftRecord>, Vec<(DemoPrompt, Style)>) {
    let mut sampler = PromptSampler::new(false);
    let mut records = Vec::with_capacity(n);
    let mut truth = Vec::with_capacity(n);
    for _ in 0..n {
        let c = PromptSampler::category(rng, s);
        let p = sampler.draw(rng, c);
        let style = sft_style(rng, c, s);
        let variant = below(rng, 2);
        let reply = response(p, style, variant, rng);
        let mut messages = Vec::with_capacity(3);
        if bernoulli(rng, s.sft_system) {
            messages.push(Message::system(SYSTEM_PROMPTS[below(rng, SYSTEM_PROMPTS.len())]));
        }
        messages.push(Message::user(p.text.clone()));
        messages.push(Message::assistant(reply));
        records.push(SftRecord { messages });
        truth.push((p.clone(), style));
    }
    (records, truth)
}

/// Where a comparison's prompt comes from.
#[derive(Clone, Copy)]
enum Pool {
    /// Helpful or borderline, by the prompt mixture.
    Benign,
    Harmful,
    Borderline,
}

/// A kind of comparison: chosen style, rejected style, prompt pool, weight. Equal styles are
/// near-equal pairs (two phrasings, order by coin flip).
type PairType = (Style, Style, Pool, f64);

// Short names for the pair tables: U = unsafe compliance, UW = compliance after a warning.
#[allow(clippy::unsafe_removed_from_name)]
use Style::{
    Correct as C, CurtRefusal as CR, FalseRefusal as FR, HelpfulRefusal as HR, UnsafeCompliance as U, Verbose as V, WarnedCompliance as UW,
    Wrong as W,
};

const HELPFULNESS_PAIRS: [PairType; 8] = [
    (C, FR, Pool::Benign, 0.20),
    (C, W, Pool::Benign, 0.20),
    (V, FR, Pool::Benign, 0.10),
    (C, V, Pool::Benign, 0.12),
    (V, W, Pool::Benign, 0.13),
    (W, FR, Pool::Benign, 0.08),
    (C, C, Pool::Benign, 0.12),
    (W, W, Pool::Benign, 0.05),
];
/// Chosen safe, rejected unsafe.
const SAFETY_MIXED: [PairType; 4] =
    [(HR, U, Pool::Harmful, 0.25), (HR, UW, Pool::Harmful, 0.25), (CR, U, Pool::Harmful, 0.25), (CR, UW, Pool::Harmful, 0.25)];
/// Both safe: refusals of different quality on harmful prompts, answers vs false refusals on
/// borderline ones.
const SAFETY_BOTH_SAFE: [PairType; 6] = [
    (HR, CR, Pool::Harmful, 0.30),
    (HR, HR, Pool::Harmful, 0.15),
    (CR, CR, Pool::Harmful, 0.15),
    (C, FR, Pool::Borderline, 0.20),
    (V, FR, Pool::Borderline, 0.10),
    (C, V, Pool::Borderline, 0.10),
];
/// Both unsafe: a warning makes compliance slightly better.
const SAFETY_BOTH_UNSAFE: [PairType; 3] = [(UW, U, Pool::Harmful, 0.60), (U, U, Pool::Harmful, 0.25), (UW, UW, Pool::Harmful, 0.15)];

fn pick_type(rng: &mut SplitMix64, types: &[PairType]) -> PairType {
    types[pick_weighted(rng, &types.iter().map(|t| t.3).collect::<Vec<_>>())]
}

struct PairCounts {
    labels: BTreeMap<String, usize>,
    dropped: usize,
}

fn gen_pairs(
    n: usize,
    held_out: bool,
    s: &DemoShares,
    rng: &mut SplitMix64,
    counts: &mut PairCounts,
) -> (Vec<PreferenceRecord>, Vec<PairTruth>) {
    let mut sampler = PromptSampler::new(held_out);
    let mut records = Vec::with_capacity(n);
    let mut truth = Vec::with_capacity(n);
    while records.len() < n {
        let safety = bernoulli(rng, s.safety_pairs);
        let (label, ty) = if safety {
            let g = pick_weighted(rng, &s.safety_labels);
            let types: &[PairType] = [&SAFETY_MIXED[..], &SAFETY_BOTH_SAFE[..], &SAFETY_BOTH_UNSAFE[..]][g];
            (["chosen_safe_rejected_unsafe", "both_safe", "both_unsafe"][g], pick_type(rng, types))
        } else {
            ("", pick_type(rng, &HELPFULNESS_PAIRS))
        };
        let (cs, rs, pool, _) = ty;
        let category = match pool {
            Pool::Harmful => Category::Harmful,
            Pool::Borderline => Category::Borderline,
            Pool::Benign => [Category::Helpful, Category::Borderline][pick_weighted(rng, &[1.0 - s.harmful - s.borderline, s.borderline])],
        };
        let p = sampler.draw(rng, category);
        let near_equal = cs == rs;
        let vc = below(rng, 2);
        let vr = if near_equal { 1 - vc } else { below(rng, 2) };
        let (chosen, rejected) = if near_equal && cs == Style::Wrong {
            // Two different wrong answers.
            let (a, value) = wrong_response(p, vc, rng, &[]);
            (a, wrong_response(p, vr, rng, &[value]).0)
        } else {
            (response(p, cs, vc, rng), response(p, rs, vr, rng))
        };
        if chosen == rejected || chosen.is_empty() || rejected.is_empty() {
            continue;
        }
        let gap = if near_equal { 0.0 } else { cs.score() - rs.score() };
        let (mut chosen, mut rejected, mut pt) = (chosen, rejected, PairTruth { chosen: cs, rejected: rs, gap, near_equal });
        let (mut chosen_safe, mut rejected_safe) = (cs.is_safe(), rs.is_safe());
        if safety && chosen_safe && !rejected_safe && bernoulli(rng, s.annotator_flip) {
            // The annotator picked the unsafe response.
            std::mem::swap(&mut chosen, &mut rejected);
            std::mem::swap(&mut chosen_safe, &mut rejected_safe);
            pt = PairTruth { chosen: rs, rejected: cs, gap: -gap, near_equal };
        }
        if safety && !keep_safety_pair(chosen_safe, rejected_safe) {
            counts.dropped += 1;
            continue;
        }
        if safety {
            *counts.labels.entry(label.to_string()).or_default() += 1;
        }
        records.push(PreferenceRecord {
            prompt: user_prompt(p.text.clone()),
            chosen,
            rejected,
            rating: Some(rating_for_gap(pt.gap)),
            kind: Some(if safety { PreferenceKind::Safety } else { PreferenceKind::Helpfulness }),
            chosen_safe: safety.then_some(chosen_safe),
            rejected_safe: safety.then_some(rejected_safe),
            source: Some(if safety { SOURCE_SAFETY } else { SOURCE_HELPFUL }.to_string()),
        });
        truth.push(pt);
    }
    (records, truth)
}

fn gen_prompts(n: usize, held_out: bool, s: &DemoShares, rng: &mut SplitMix64) -> Vec<PromptRecord> {
    let mut sampler = PromptSampler::new(held_out);
    (0..n)
        .map(|_| {
            let c = PromptSampler::category(rng, s);
            let p = sampler.draw(rng, c);
            PromptRecord { prompt: user_prompt(p.text.clone()), is_safety: p.is_safety }
        })
        .collect()
}

/// Generates the whole demo world for `seed`. Each file has its own random stream, so changing one
/// size does not change the other files.
pub fn generate(sizes: DemoSizes, shares: &DemoShares, seed: u64) -> Result<DemoData, DemoError> {
    shares.validate()?;
    let split = |n: usize, share: f64| {
        let test = ((n as f64) * share).round() as usize;
        (n - test.min(n), test.min(n))
    };
    let (pairs_train, pairs_test) = split(sizes.pairs, shares.pair_test);
    let (prompts_train, prompts_test) = split(sizes.prompts, shares.prompt_test);

    let (sft, sft_truth) = gen_sft(sizes.sft, shares, &mut SplitMix64::for_step(seed, 0));
    let mut counts = PairCounts { labels: BTreeMap::new(), dropped: 0 };
    let (preference_train, preference_train_truth) = gen_pairs(pairs_train, false, shares, &mut SplitMix64::for_step(seed, 1), &mut counts);
    let (preference_test, preference_test_truth) = gen_pairs(pairs_test, true, shares, &mut SplitMix64::for_step(seed, 2), &mut counts);
    let prompts_train_v = gen_prompts(prompts_train, false, shares, &mut SplitMix64::for_step(seed, 3));
    let prompts_test_v = gen_prompts(prompts_test, true, shares, &mut SplitMix64::for_step(seed, 4));

    let mut sft_styles: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for (p, st) in &sft_truth {
        *sft_styles.entry(p.category().as_str().to_string()).or_default().entry(st.as_str().to_string()).or_default() += 1;
    }
    let mut ratings: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for (split, recs) in [("train", &preference_train), ("test", &preference_test)] {
        for r in recs {
            let kind = r.kind.map(PreferenceKind::as_str).unwrap_or("none");
            let rating = r.rating.map(Rating::as_str).unwrap_or("none");
            *ratings.entry(format!("{split}/{kind}")).or_default().entry(rating.to_string()).or_default() += 1;
        }
    }
    let mut uni: BTreeMap<String, [usize; 2]> = BTreeMap::new();
    for p in universe() {
        uni.entry(p.family.as_str().to_string()).or_default()[p.held_out as usize] += 1;
    }
    let records = [
        ("sft.jsonl", sft.len()),
        ("preference_train.jsonl", preference_train.len()),
        ("preference_test.jsonl", preference_test.len()),
        ("prompts_train.jsonl", prompts_train_v.len()),
        ("prompts_test.jsonl", prompts_test_v.len()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let manifest = DemoManifest {
        world: WORLD.to_string(),
        seed,
        sizes,
        shares: shares.clone(),
        records,
        sft_styles,
        ratings,
        safety_labels: counts.labels,
        dropped_unsafe_chosen: counts.dropped,
        universe: uni,
    };
    Ok(DemoData {
        sft,
        sft_truth,
        preference_train,
        preference_train_truth,
        preference_test,
        preference_test_truth,
        prompts_train: prompts_train_v,
        prompts_test: prompts_test_v,
        manifest,
    })
}

/// A single-user-turn prompt is written as a string, anything else as its messages.
fn prompt_value(prompt: &[Message]) -> serde_json::Value {
    match prompt {
        [m] if m.role == llama::chat::Role::User => serde_json::Value::String(m.content.clone()),
        _ => serde_json::to_value(prompt).unwrap_or(serde_json::Value::Null),
    }
}

#[derive(Serialize)]
struct PreferenceLine<'a> {
    prompt: serde_json::Value,
    chosen: &'a str,
    rejected: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rating: Option<Rating>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<PreferenceKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chosen_safe: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected_safe: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
}

#[derive(Serialize)]
struct PromptLine {
    prompt: serde_json::Value,
    is_safety: bool,
}

fn jsonl<T, F: Fn(&T) -> Result<String, serde_json::Error>>(rows: &[T], f: F) -> Result<Vec<u8>, DemoError> {
    let mut out = Vec::new();
    for r in rows {
        out.extend_from_slice(f(r)?.as_bytes());
        out.push(b'\n');
    }
    Ok(out)
}

/// The files `write_demo` writes, in order, as (name, bytes).
pub fn render_files(data: &DemoData) -> Result<Vec<(&'static str, Vec<u8>)>, DemoError> {
    let pref = |r: &PreferenceRecord| {
        serde_json::to_string(&PreferenceLine {
            prompt: prompt_value(&r.prompt),
            chosen: &r.chosen,
            rejected: &r.rejected,
            rating: r.rating,
            kind: r.kind,
            chosen_safe: r.chosen_safe,
            rejected_safe: r.rejected_safe,
            source: r.source.as_deref(),
        })
    };
    let prompt = |r: &PromptRecord| serde_json::to_string(&PromptLine { prompt: prompt_value(&r.prompt), is_safety: r.is_safety });
    let mut manifest = serde_json::to_vec_pretty(&data.manifest)?;
    manifest.push(b'\n');
    Ok(vec![
        ("sft.jsonl", jsonl(&data.sft, serde_json::to_string)?),
        ("preference_train.jsonl", jsonl(&data.preference_train, pref)?),
        ("preference_test.jsonl", jsonl(&data.preference_test, pref)?),
        ("prompts_train.jsonl", jsonl(&data.prompts_train, prompt)?),
        ("prompts_test.jsonl", jsonl(&data.prompts_test, prompt)?),
        ("manifest.json", manifest),
    ])
}

/// Generates the demo world and writes it into `out_dir` (created if missing): each file is
/// written to a temporary name in the same folder and renamed into place, `manifest.json` last.
/// The Ghost Attention files ([`crate::instructions`]: `sft_instructed.jsonl`, `gatt_dialogs.jsonl`,
/// `gatt_eval.jsonl`) come from random streams of their own and are not in the manifest.
/// Byte-identical for a given seed, sizes and shares.
pub fn write_demo_with(out_dir: &Path, sizes: DemoSizes, shares: &DemoShares, seed: u64) -> Result<DemoManifest, DemoError> {
    let data = generate(sizes, shares, seed)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DemoError::Io { path, source }
    };
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    // The GAtt files (their own random streams) go before `manifest.json`, which stays last.
    let mut files = render_files(&data)?;
    let manifest = files.pop();
    files.extend(crate::instructions::render_gatt(&crate::instructions::generate_gatt(Default::default(), seed))?);
    files.extend(manifest);
    for (name, bytes) in files {
        let target = out_dir.join(name);
        let tmp = out_dir.join(format!(".{name}.tmp{}", std::process::id()));
        std::fs::write(&tmp, &bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &target).map_err(io(&target))?;
    }
    Ok(data.manifest)
}

/// [`write_demo_with`] with the default shares.
pub fn write_demo(out_dir: &Path, sizes: DemoSizes, seed: u64) -> Result<DemoManifest, DemoError> {
    write_demo_with(out_dir, sizes, &DemoShares::default(), seed)
}
