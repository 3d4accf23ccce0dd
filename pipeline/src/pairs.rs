//! A new batch of comparisons, Llama 2 Section 3.2.1: "we sample two responses from two
//! different model variants, and varying the temperature hyper-parameter", on the latest models,
//! then annotators choose the better one, say by how much and put the pair in a safety bin.
//!
//! * `sample_pairs`: one reply from each of two variants (two checkpoints, two temperatures, or
//!   both) per prompt and pair, with the rollout engine ([`llama::engine`]), written as the
//!   annotate crate's pair file (`pairs.jsonl`).
//! * `annotate`: the ratings of those pairs as preference records. `annotator = "demo_judge"`:
//!   the demo world's ground-truth judges play the annotator (ties, which it cannot tell apart,
//!   are skipped); `annotator = "external"`: the pairs are exported for people (`pairs.jsonl`,
//!   `pairs.csv`) and the stage waits ([`Waiting`]) until `rlhf annotate import` (or `serve`) has
//!   written `annotated.jsonl` into its folder; the next `rlhf pipeline run` goes on from there.
//!   Either way the records are split by prompt into `prefs.jsonl` (the stage's output, for the
//!   next reward models) and `prefs_test.jsonl` (held out: the round's fresh test comparisons).
use crate::compare::truth_score;
use crate::error::StageFailure;
use annotate::{Annotated, PairRecord, RatingRow, SafetyBin, Side};
use datasets::{PreferenceKind, PreferenceRecord, PromptRecord};
use llama::device::DeviceSpec;
use llama::engine::{self, EngineConfig, Request, RowOutput};
use llama::SamplingParams;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// `sample_pairs`: two model variants' replies to the same prompts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplePairsConfig {
    /// One or two policy checkpoints (the latest models; two: e.g. RLHF-V(n) and V(n-1)).
    pub policies: Vec<PathBuf>,
    /// One or two sampling temperatures. The two variants are (policy, temperature) 1 and 2;
    /// one policy with two temperatures, two policies with one, or two of each in order.
    pub temperatures: Vec<f64>,
    /// Prompt files (`PromptRecord` JSONL/Parquet).
    pub prompts: Vec<PathBuf>,
    /// Use only the first this many prompts (all when unset).
    #[serde(default)]
    pub max_prompts: Option<usize>,
    /// Pairs per prompt (reply i of variant 1 against reply i of variant 2).
    #[serde(default = "one")]
    pub pairs_per_prompt: usize,
    /// Nucleus sampling of both variants.
    #[serde(default = "one_f")]
    pub top_p: f64,
    #[serde(default = "d_tokens")]
    pub max_new_tokens: usize,
    #[serde(default)]
    pub seed: u64,
    /// Both variants draw each prompt's replies from the same random stream (common random
    /// numbers: a fair comparison of the variants, but two peaked variants then often say the
    /// same thing and the pair is lost); false gives the second variant a stream of its own.
    #[serde(default = "yes")]
    pub common_seeds: bool,
    /// The pairs' `source` (copied to the preference records; the report groups by it).
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub device: DeviceSpec,
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn one_f() -> f64 {
    1.0
}
fn d_tokens() -> usize {
    48
}

impl SamplePairsConfig {
    /// The two variants, (policy, temperature).
    pub fn variants(&self) -> Result<[(PathBuf, f64); 2], String> {
        let (p, t) = (&self.policies, &self.temperatures);
        let v = match (p.len(), t.len()) {
            (1, 2) => [(p[0].clone(), t[0]), (p[0].clone(), t[1])],
            (2, 1) => [(p[0].clone(), t[0]), (p[1].clone(), t[0])],
            (2, 2) => [(p[0].clone(), t[0]), (p[1].clone(), t[1])],
            _ => return Err(format!("{} policies and {} temperatures: give one or two of each, two variants in all", p.len(), t.len())),
        };
        if v[0] == v[1] {
            return Err("the two variants (policy, temperature) are the same".into());
        }
        Ok(v)
    }

    pub fn validate(&self) -> Result<(), String> {
        self.variants()?;
        if let Some(t) = self.temperatures.iter().find(|t| !(t.is_finite() && **t > 0.0)) {
            return Err(format!("temperature {t}: must be > 0 (two greedy replies of one model are the same)"));
        }
        if self.prompts.is_empty() {
            return Err("`prompts` lists no file".into());
        }
        if self.pairs_per_prompt == 0 || self.max_new_tokens == 0 || self.max_prompts == Some(0) {
            return Err("pairs_per_prompt, max_new_tokens and max_prompts must be at least 1".into());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p {} must be in (0, 1]", self.top_p));
        }
        Ok(())
    }
}

/// Who rates the pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Annotator {
    /// The demo world's ground-truth judges (the simulated annotators).
    DemoJudge,
    /// People, through `rlhf annotate serve` or the exported sheet and `rlhf annotate import`.
    External,
}

/// `annotate`: ratings of a pair file as preference records.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnotateConfig {
    /// The pair file (a `sample_pairs` stage's output, or `rlhf annotate export`'s).
    pub pairs: PathBuf,
    pub annotator: Annotator,
    /// Share of the batch held out as its test set (`prefs_test.jsonl`), drawn by a hash (see
    /// `test_split`).
    #[serde(default = "d_test_fraction")]
    pub test_fraction: f64,
    /// What is held out: `prompt` (every comparison of a share of the prompts: the test prompts
    /// are new to the retrained models) or `pair` (a share of the comparisons, as Llama 2 holds out
    /// test comparisons from each new batch: a test comparison's prompt may have others, with
    /// other replies, in the training share; never the same pair of replies).
    #[serde(default)]
    pub test_split: TestSplit,
    /// The reward models in use before this batch (the round then retrains them), by role
    /// (`helpfulness`, `safety`): each is evaluated on the batch's held-out comparisons
    /// (metrics `eval_before`), so the report can set them beside the retrained ones.
    #[serde(default)]
    pub eval_reward_models: BTreeMap<String, PathBuf>,
    /// Where those evaluations run.
    #[serde(default)]
    pub device: DeviceSpec,
}

fn d_test_fraction() -> f64 {
    0.2
}

/// [`AnnotateConfig::test_split`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TestSplit {
    #[default]
    Prompt,
    Pair,
}

impl TestSplit {
    /// Whether the comparison of `replies` (in either order) to `prompt` is held out.
    pub fn held_out(self, prompt: &[llama::Message], replies: [&str; 2], fraction: f64) -> bool {
        match self {
            TestSplit::Prompt => held_out(prompt, fraction),
            TestSplit::Pair => {
                let mut r = replies;
                r.sort_unstable();
                let key = serde_json::to_string(&(prompt, r)).unwrap_or_default();
                below(&key, fraction)
            }
        }
    }
}

fn below(key: &str, fraction: f64) -> bool {
    let h = u64::from_str_radix(&training::runner::fnv1a(key.as_bytes())[..8], 16).unwrap_or(0);
    (h as f64 / u32::MAX as f64) < fraction
}

/// The keys of [`AnnotateConfig::eval_reward_models`].
pub const REWARD_ROLES: [&str; 2] = ["helpfulness", "safety"];

/// Whether a prompt's comparisons are held out (a hash of the prompt below `fraction`): the same
/// split for the sampled pairs and for the rated records.
pub fn held_out(prompt: &[llama::Message], fraction: f64) -> bool {
    below(&serde_json::to_string(prompt).unwrap_or_default(), fraction)
}

impl AnnotateConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..1.0).contains(&self.test_fraction) {
            return Err(format!("test_fraction {} must be in [0, 1)", self.test_fraction));
        }
        if let Some(k) = self.eval_reward_models.keys().find(|k| !REWARD_ROLES.contains(&k.as_str())) {
            return Err(format!("eval_reward_models.{k}: expected the roles {}", REWARD_ROLES.join(" and ")));
        }
        if !self.eval_reward_models.is_empty() && self.test_fraction == 0.0 {
            return Err("eval_reward_models needs held-out comparisons: test_fraction is 0".into());
        }
        Ok(())
    }
}

/// A stage that cannot go on before someone acts: the pipeline stops cleanly at it (nothing
/// after it runs) and a later `rlhf pipeline run` resumes there.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Waiting {
    /// The file whose appearance lets the stage go on.
    pub file: PathBuf,
    pub message: String,
}

/// The file a waiting `annotate` stage needs: the import's output, in its folder.
pub const ANNOTATED_FILE: &str = "annotated.jsonl";

/// Samples the pairs into `dir/pairs.jsonl`; returns the output and its summary.
pub fn sample_pairs(c: &SamplePairsConfig, dir: &Path) -> Result<(PathBuf, serde_json::Value), StageFailure> {
    let start = std::time::Instant::now();
    let variants = c.variants()?;
    let (tok, _) = llama::tokenizer::resolve(None, Some(&variants[0].0))?;
    let mut prompts: Vec<PromptRecord> = Vec::new();
    for f in &c.prompts {
        prompts.extend(datasets::io::read_all::<PromptRecord>(f)?);
    }
    prompts.truncate(c.max_prompts.unwrap_or(usize::MAX));
    let comp = c.device.compute(None)?;
    let k = c.pairs_per_prompt;
    // texts[v][prompt][sample]; None: the prompt does not fit that model's positions.
    let mut texts: Vec<Vec<Option<Vec<String>>>> = Vec::new();
    let mut tokens = 0usize;
    for (v, (policy, temperature)) in variants.iter().enumerate() {
        let stream = if c.common_seeds { c.seed } else { c.seed.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(v as u64)) };
        let (_vs, m) = llama::checkpoint::load_causal_lm(policy, comp.device, comp.kind)?;
        let limit = m.cfg.max_position_embeddings as usize;
        let mut ids = Vec::new();
        let mut fit = Vec::new();
        for p in &prompts {
            let x = llama::chat::encode_prompt(&tok, &p.prompt)?;
            fit.push(x.len() + c.max_new_tokens <= limit);
            if x.len() + c.max_new_tokens <= limit {
                ids.push(x);
            }
        }
        let kept: Vec<usize> = (0..prompts.len()).filter(|&i| fit[i]).collect();
        let params = SamplingParams {
            max_new_tokens: c.max_new_tokens,
            temperature: *temperature,
            top_p: c.top_p,
            top_k: 0,
            seed: c.seed,
            stop_at_eos: true,
            eos_token_id: m.cfg.eos_token_id,
            num_samples: k,
        };
        // One stream per prompt, the same in both variants unless `common_seeds` is off.
        let requests: Vec<Request> = ids
            .iter()
            .zip(&kept)
            .map(|(x, &i)| Request {
                prompt: x,
                seed: rejection_sampling::sampler::prompt_stream(stream, &rejection_sampling::select::prompt_key(&prompts[i].prompt)),
                expected_new_tokens: None,
            })
            .collect();
        let mut rows: Vec<Vec<String>> = vec![vec![String::new(); k]; requests.len()];
        let mut decode_err = None;
        engine::run(&m, &requests, &params, &EngineConfig::default(), |r: RowOutput| -> Result<(), llama::LlamaError> {
            tokens += r.tokens.len();
            match tok.decode(&r.tokens) {
                Ok(t) => rows[r.request][r.sample] = t.trim().to_string(),
                Err(e) => decode_err = Some(e),
            }
            Ok(())
        })?;
        if let Some(e) = decode_err {
            return Err(e.into());
        }
        let mut per_prompt: Vec<Option<Vec<String>>> = vec![None; prompts.len()];
        for (i, r) in kept.into_iter().zip(rows) {
            per_prompt[i] = Some(r);
        }
        texts.push(per_prompt);
    }
    // The checkpoint's path (a stage's output may lie deep in its folder, e.g. `rlhf_v1/iter1/sft/final`).
    let label = |(p, t): &(PathBuf, f64)| format!("{}@t{t}", p.display());
    let (la, lb) = (label(&variants[0]), label(&variants[1]));
    let source = c.source.clone().unwrap_or_else(|| "sample_pairs".into());
    let (mut pairs, mut seen) = (Vec::new(), HashSet::new());
    let (mut skipped_long, mut same_or_empty) = (0usize, 0usize);
    for (i, p) in prompts.iter().enumerate() {
        let (Some(a), Some(b)) = (&texts[0][i], &texts[1][i]) else {
            skipped_long += 1;
            continue;
        };
        for (x, y) in a.iter().zip(b) {
            if x.is_empty() || y.is_empty() || x == y {
                same_or_empty += 1;
                continue;
            }
            let id = annotate::export::pair_id(&p.prompt, x, y);
            if !seen.insert(id.clone()) {
                same_or_empty += 1;
                continue;
            }
            // Which variant is `a` is drawn from the id, so that position says nothing.
            let swap = u64::from_str_radix(&id[id.len() - 2..], 16).unwrap_or(0) % 2 == 1;
            let ((ra, ma), (rb, mb)) = if swap { ((y, &lb), (x, &la)) } else { ((x, &la), (y, &lb)) };
            pairs.push(PairRecord {
                id,
                prompt: p.prompt.clone(),
                reply_a: ra.clone(),
                reply_b: rb.clone(),
                model_a: Some(ma.clone()),
                model_b: Some(mb.clone()),
                kind: Some(if p.is_safety { PreferenceKind::Safety } else { PreferenceKind::Helpfulness }),
                source: Some(source.clone()),
            });
        }
    }
    if pairs.is_empty() {
        return Err(format!("no pair: every reply pair was identical or empty, or no prompt fits ({} prompts)", prompts.len()).into());
    }
    let out = dir.join("pairs.jsonl");
    annotate::write_pairs(&out, &pairs)?;
    let metrics = serde_json::json!({
        "prompts": prompts.len(), "pairs": pairs.len(), "variants": [la, lb], "skipped_long_prompts": skipped_long,
        "dropped_identical_or_empty": same_or_empty, "generated_tokens": tokens, "seconds": start.elapsed().as_secs_f64(),
    });
    Ok((out, metrics))
}

/// The demo judges' rating of a pair, as an annotator would give it: the reply the judges score
/// higher, the strength from the score gap (the demo world's own rating scale), the safety bin
/// from both replies' safety. `None` when they cannot tell the replies apart (equal scores), the
/// prompt is not the demo world's, or the chosen reply is the unsafe one of an unsafe / safe pair
/// (Llama 2 drops those).
pub fn demo_rating(p: &PairRecord) -> Option<RatingRow> {
    let (sa, sb) = (truth_score(&p.prompt, &p.reply_a)?, truth_score(&p.prompt, &p.reply_b)?);
    if sa == sb {
        return None;
    }
    let (choice, chosen, rejected) = if sa > sb { (Side::A, &p.reply_a, &p.reply_b) } else { (Side::B, &p.reply_b, &p.reply_a) };
    let safe = |r: &str| demo_world::judge_messages(&p.prompt, r).safe;
    let safety = match (safe(chosen), safe(rejected)) {
        (true, false) => SafetyBin::OnlyChosenSafe,
        (true, true) => SafetyBin::BothSafe,
        (false, false) => SafetyBin::BothUnsafe,
        (false, true) => return None,
    };
    Some(RatingRow {
        pair_id: p.id.clone(),
        choice,
        strength: demo_world::rating_for_gap((sa - sb).abs()),
        safety: Some(safety),
        annotator: Some("demo_judge".into()),
    })
}

/// Runs an `annotate` stage in `dir`: the records (`prefs.jsonl`, the output, and the held-out
/// `prefs_test.jsonl`) and a summary, or [`Waiting`] for people's ratings.
pub fn annotate_stage(c: &AnnotateConfig, dir: &Path) -> Result<(PathBuf, serde_json::Value), StageFailure> {
    let pairs = annotate::read_pairs(&c.pairs)?;
    let annotated = dir.join(ANNOTATED_FILE);
    let mut summary = serde_json::json!({"pairs": pairs.len()});
    match c.annotator {
        Annotator::DemoJudge => {
            let records: Vec<Annotated> = pairs.iter().filter_map(|p| Some(Annotated::of(p, &demo_rating(p)?))).collect();
            summary["skipped_ties_or_unjudgeable"] = (pairs.len() - records.len()).into();
            annotate::merge::write_records(&annotated, &records)?;
        }
        Annotator::External if !annotated.exists() => {
            let (jsonl, csv) = (dir.join("pairs.jsonl"), dir.join("pairs.csv"));
            annotate::write_pairs(&jsonl, &pairs)?;
            annotate::write_pairs_csv(&csv, &pairs)?;
            let message = format!(
                "waiting for annotations: rate the {} pairs of {csv} (columns choice, strength, safety; or in the browser: `rlhf annotate serve --pairs {jsonl} --out {ann}`), \
                 then `rlhf annotate import --pairs {jsonl} --ratings {csv} --out {ann}` and run the pipeline again: it goes on once {ann} exists",
                pairs.len(),
                csv = csv.display(),
                jsonl = jsonl.display(),
                ann = annotated.display()
            );
            return Err(Box::new(Waiting { file: annotated, message }));
        }
        Annotator::External => {}
    }
    // Read back through the preference reader: a hand-edited file fails here with file, line, field.
    let records: Vec<PreferenceRecord> = datasets::io::read_all(&annotated)?;
    if records.is_empty() {
        return Err(format!("{}: no preference record (no pair rated)", annotated.display()).into());
    }
    let (train, test): (Vec<PreferenceRecord>, Vec<PreferenceRecord>) =
        records.into_iter().partition(|r| !c.test_split.held_out(&r.prompt, [&r.chosen, &r.rejected], c.test_fraction));
    let count = |rs: &[PreferenceRecord]| {
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for r in rs {
            *by.entry(r.rating.map(|x| x.as_str().to_string()).unwrap_or_else(|| "none".into())).or_default() += 1;
            let kind = r.kind.map(|k| k.as_str()).unwrap_or("unknown");
            *by.entry(format!("kind:{kind}")).or_default() += 1;
        }
        by
    };
    summary["records"] = (train.len() + test.len()).into();
    summary["train"] = train.len().into();
    summary["test"] = test.len().into();
    summary["by_rating_and_kind"] = serde_json::to_value(count(&train.iter().chain(&test).cloned().collect::<Vec<_>>()))?;
    summary["source"] = train.iter().chain(&test).find_map(|r| r.source.clone()).into();
    // The held-out prompts' pairs as sampled: how many the annotators rated, how many they could
    // not tell apart (or, people, left unrated).
    let test_pairs = pairs.iter().filter(|p| c.test_split.held_out(&p.prompt, [&p.reply_a, &p.reply_b], c.test_fraction)).count();
    summary["test_pairs_sampled"] = test_pairs.into();
    summary["test_pairs_unrated"] = test_pairs.saturating_sub(test.len()).into();
    let out = dir.join("prefs.jsonl");
    let test_file = dir.join("prefs_test.jsonl");
    datasets::write_all(&test_file, &test)?;
    datasets::write_all(&out, &train)?;
    if !c.eval_reward_models.is_empty() {
        let mut before = serde_json::Map::new();
        for (role, model) in &c.eval_reward_models {
            before.insert(role.clone(), serde_json::to_value(eval_reward_model(model, &test_file, &test, c.device)?)?);
        }
        summary["eval_before"] = before.into();
    }
    Ok((out, summary))
}

/// A reward model's accuracy on comparisons: all of them and by kind.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
pub struct RmAccuracy {
    /// The model's folder.
    pub model: PathBuf,
    pub n: usize,
    /// Comparisons whose chosen reply it scores above the rejected one (a tie counts as wrong).
    pub correct: usize,
    pub accuracy: f64,
    /// `helpfulness` / `safety`: (n, correct).
    pub by_kind: BTreeMap<String, (usize, usize)>,
    pub seconds: f64,
}

/// Scores `records` (read from `file`) with the reward model in `model` as the reward stage's own
/// evaluation does (its training `max_seq_len`, chosen above rejected), on `device` at fp32/bf16.
pub fn eval_reward_model(model: &Path, file: &Path, records: &[PreferenceRecord], device: DeviceSpec) -> Result<RmAccuracy, StageFailure> {
    let start = std::time::Instant::now();
    let mut acc = RmAccuracy { model: model.to_path_buf(), n: 0, correct: 0, accuracy: 0.0, by_kind: BTreeMap::new(), seconds: 0.0 };
    if records.is_empty() {
        return Ok(acc);
    }
    let (tok, _) = llama::tokenizer::resolve(None, Some(model))?;
    let max_len = reward::model::trained_max_seq_len(model)
        .ok_or_else(|| format!("{}: no reward_config.json: the max_seq_len it was trained with is unknown", model.display()))?;
    let pairs = records
        .iter()
        .enumerate()
        .map(|(i, r)| reward::data::encode_pair(&tok, r, max_len).map_err(|e| format!("{}: row {}: {e}", file.display(), i + 1)))
        .collect::<Result<Vec<_>, _>>()?;
    let comp = device.compute(None)?;
    let (_vs, rm) = reward::run::load_reward_model(model, comp)?;
    let scores = reward::eval::score_pairs(&rm, &pairs, comp.device, 32)?;
    for (r, s) in records.iter().zip(&scores) {
        let kind = r.kind.map(|k| k.as_str()).unwrap_or("unknown").to_string();
        let e = acc.by_kind.entry(kind).or_default();
        e.0 += 1;
        e.1 += s.correct() as usize;
        acc.n += 1;
        acc.correct += s.correct() as usize;
    }
    acc.accuracy = acc.correct as f64 / acc.n as f64;
    acc.seconds = start.elapsed().as_secs_f64();
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pair_split_holds_out_comparisons_whatever_the_reply_order_and_the_prompt_split_whole_prompts() {
        let prompts: Vec<Vec<llama::Message>> = (0..40).map(|i| vec![llama::Message::user(format!("question {i}?"))]).collect();
        let replies: Vec<String> = (0..6).map(|j| format!("answer {j}")).collect();
        let (mut held, mut n, mut mixed_prompts) = (0, 0, 0);
        for p in &prompts {
            let mut sides = Vec::new();
            for a in 0..replies.len() {
                for b in a + 1..replies.len() {
                    let (x, y) = (replies[a].as_str(), replies[b].as_str());
                    let h = TestSplit::Pair.held_out(p, [x, y], 0.5);
                    assert_eq!(h, TestSplit::Pair.held_out(p, [y, x], 0.5), "the order of the replies changed the side");
                    held += h as usize;
                    n += 1;
                    sides.push(h);
                    // The prompt split keeps every comparison of a prompt on one side.
                    assert_eq!(TestSplit::Prompt.held_out(p, [x, y], 0.5), held_out(p, 0.5));
                }
            }
            mixed_prompts += (sides.iter().any(|s| *s) && sides.iter().any(|s| !*s)) as usize;
        }
        // 600 comparisons, about half held out; most prompts have comparisons on both sides.
        assert!((240..=360).contains(&held), "{held} of {n}");
        assert!(mixed_prompts >= 30, "{mixed_prompts}");
        assert!(!TestSplit::Pair.held_out(&prompts[0], ["a", "b"], 0.0));
    }
}
