//! Reward-model evaluation as Llama 2 reports it: accuracy per test set (Table 7), per rating bin
//! (Table 8: significantly better, better, slightly better, negligibly better / unsure, average),
//! and for a safety RM the unsafe-response recall and precision at a threshold on sigmoid scores
//! (Table 29). A tie counts as wrong.
use crate::data::PairTokens;
use crate::model::RewardModel;
use crate::trainer::pair_scores;
use datasets::Rating;
use serde::Serialize;
use std::collections::BTreeMap;
use tch::Device;

#[derive(Debug, Clone, Serialize)]
pub struct PairScore {
    pub chosen: f64,
    pub rejected: f64,
    pub rating: Option<Rating>,
    pub source: Option<String>,
    /// The comparison's kind (helpfulness or safety), when it has one.
    pub kind: Option<datasets::PreferenceKind>,
    pub chosen_safe: Option<bool>,
    pub rejected_safe: Option<bool>,
    /// The pair was cut to `max_seq_len` before scoring.
    #[serde(default)]
    pub truncated: bool,
}

impl PairScore {
    pub fn correct(&self) -> bool {
        self.chosen > self.rejected
    }
}

/// Scores every pair (no gradients), in batches of `batch`.
pub fn score_pairs(model: &RewardModel, pairs: &[PairTokens], device: Device, batch: usize) -> Result<Vec<PairScore>, tch::TchError> {
    let _g = tch::no_grad_guard();
    let refs: Vec<&PairTokens> = pairs.iter().collect();
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in refs.chunks(batch.max(1)) {
        let (c, r, _) = pair_scores(model, chunk, device);
        let c: Vec<f32> = Vec::try_from(c.to_device(Device::Cpu))?;
        let r: Vec<f32> = Vec::try_from(r.to_device(Device::Cpu))?;
        for ((p, c), r) in chunk.iter().zip(c).zip(r) {
            out.push(PairScore {
                chosen: c as f64,
                rejected: r as f64,
                rating: p.rating,
                source: p.source.clone(),
                kind: p.kind,
                chosen_safe: p.chosen_safe,
                rejected_safe: p.rejected_safe,
                truncated: p.truncated,
            });
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Accuracy {
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
}

impl Accuracy {
    fn of<'a>(it: impl Iterator<Item = &'a PairScore>) -> Self {
        let (mut n, mut correct) = (0, 0);
        for s in it {
            n += 1;
            correct += s.correct() as usize;
        }
        Accuracy { n, correct, accuracy: if n == 0 { 0.0 } else { correct as f64 / n as f64 } }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

fn stats(v: &[f64]) -> Stats {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    Stats {
        mean,
        std: var.sqrt(),
        min: v.iter().cloned().fold(f64::INFINITY, f64::min),
        max: v.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
    }
}

/// Unsafe-response detection at a threshold on σ(score) (Table 29): a response is predicted
/// unsafe when σ(score) < threshold.
#[derive(Debug, Clone, Serialize)]
pub struct SafetyDetection {
    pub threshold: f64,
    pub n_unsafe: usize,
    pub n_predicted_unsafe: usize,
    pub recall: f64,
    pub precision: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RmReport {
    pub overall: Accuracy,
    /// Table 7: per test set (`source`).
    pub by_source: BTreeMap<String, Accuracy>,
    /// Per test set and comparison kind (`helpfulness` / `safety`), for the test sets whose
    /// comparisons carry a kind (Llama 2 reads a helpfulness RM on helpfulness comparisons and a
    /// safety RM on safety ones).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_source_kind: BTreeMap<String, BTreeMap<String, Accuracy>>,
    /// Table 8: per rating bin, in the paper's column order.
    pub by_rating: Vec<(String, Accuracy)>,
    /// Mean of r_chosen − r_rejected.
    pub mean_margin: f64,
    pub chosen_scores: Stats,
    pub rejected_scores: Stats,
    /// Present when the data carries safety labels.
    pub safety: Option<SafetyDetection>,
    /// Pairs without a rating: in `overall` and `by_source`, in no Table 8 bin.
    pub unrated_pairs: usize,
    /// Responses with a safety label (`chosen_safe` / `rejected_safe`): Table 29 is computed from
    /// them, and is absent when there are none.
    pub safety_labelled_responses: usize,
    /// Pairs scored after being cut to `max_seq_len` (their start dropped): their scores are not
    /// those of the whole dialog.
    pub truncated_pairs: usize,
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

pub fn report(scores: &[PairScore], threshold: f64) -> RmReport {
    let mut by_source = BTreeMap::new();
    let mut sources: Vec<String> = scores.iter().filter_map(|s| s.source.clone()).collect();
    sources.sort();
    sources.dedup();
    let mut by_source_kind: BTreeMap<String, BTreeMap<String, Accuracy>> = BTreeMap::new();
    for src in sources {
        let of_src = || scores.iter().filter(|s| s.source.as_deref() == Some(&src));
        by_source.insert(src.clone(), Accuracy::of(of_src()));
        let mut kinds: Vec<datasets::PreferenceKind> = of_src().filter_map(|s| s.kind).collect();
        kinds.sort_by_key(|k| k.as_str());
        kinds.dedup();
        for k in kinds {
            let a = Accuracy::of(of_src().filter(|s| s.kind == Some(k)));
            by_source_kind.entry(src.clone()).or_default().insert(k.as_str().to_string(), a);
        }
    }
    let by_rating =
        Rating::ALL.iter().map(|r| (r.as_str().to_string(), Accuracy::of(scores.iter().filter(|s| s.rating == Some(*r))))).collect();
    let (mut labelled, mut unsafe_n, mut pred, mut hit) = (false, 0, 0, 0);
    for s in scores {
        for (score, safe) in [(s.chosen, s.chosen_safe), (s.rejected, s.rejected_safe)] {
            let Some(safe) = safe else { continue };
            labelled = true;
            let predicted_unsafe = sigmoid(score) < threshold;
            unsafe_n += (!safe) as usize;
            pred += predicted_unsafe as usize;
            hit += (predicted_unsafe && !safe) as usize;
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let unrated_pairs = scores.iter().filter(|s| s.rating.is_none()).count();
    let safety_labelled_responses =
        scores.iter().map(|s| s.chosen_safe.is_some() as usize + s.rejected_safe.is_some() as usize).sum::<usize>();
    let truncated_pairs = scores.iter().filter(|s| s.truncated).count();
    warn_gaps(scores.len(), unrated_pairs, safety_labelled_responses, truncated_pairs);
    let c: Vec<f64> = scores.iter().map(|s| s.chosen).collect();
    let r: Vec<f64> = scores.iter().map(|s| s.rejected).collect();
    RmReport {
        overall: Accuracy::of(scores.iter()),
        by_source,
        by_source_kind,
        by_rating,
        mean_margin: scores.iter().map(|s| s.chosen - s.rejected).sum::<f64>() / scores.len().max(1) as f64,
        chosen_scores: stats(&c),
        rejected_scores: stats(&r),
        safety: labelled.then(|| SafetyDetection {
            threshold,
            n_unsafe: unsafe_n,
            n_predicted_unsafe: pred,
            recall: ratio(hit, unsafe_n),
            precision: ratio(hit, pred),
        }),
        unrated_pairs,
        safety_labelled_responses,
        truncated_pairs,
    }
}

/// Says in the log what the report leaves out or scores cut.
fn warn_gaps(n: usize, unrated: usize, labelled: usize, truncated: usize) {
    if unrated > 0 {
        tracing::warn!("{unrated} of {n} evaluation pairs have no rating: they are in no Table 8 bin (only in the overall accuracy)");
    }
    if n > 0 && labelled == 0 {
        tracing::warn!("no evaluation pair has a safety label (chosen_safe / rejected_safe): no Table 29 unsafe-response detection");
    }
    if truncated > 0 {
        tracing::warn!("{truncated} of {n} evaluation pairs were cut to max_seq_len (their start dropped) before scoring");
    }
}

/// The lines of the Markdown report that say what the figures leave out or scored cut.
fn gap_lines(r: &RmReport) -> String {
    let n = r.overall.n;
    let mut s = String::new();
    if r.unrated_pairs > 0 {
        s += &format!("- {} of {n} pairs have no rating: they count in the overall accuracy but in no Table 8 bin.\n", r.unrated_pairs);
    }
    if n > 0 && r.safety_labelled_responses == 0 {
        s += "- No response carries a safety label (`chosen_safe` / `rejected_safe`): Table 29 is not computed.\n";
    }
    if r.truncated_pairs > 0 {
        s += &format!(
            "- {} of {n} pairs were longer than `max_seq_len` and were scored on their last `max_seq_len` tokens (the prompt's start cut).\n",
            r.truncated_pairs
        );
    }
    if !s.is_empty() {
        s = format!("## Data notes\n\n{s}\n");
    }
    s
}

fn pct(a: &Accuracy) -> String {
    if a.n == 0 {
        "–".into()
    } else {
        format!("{:.1}", 100.0 * a.accuracy)
    }
}

/// The report as Markdown, in the layouts of Llama 2 Tables 7, 8 and 29.
pub fn markdown(name: &str, r: &RmReport) -> String {
    let mut s = format!(
        "# Reward model evaluation: {name}\n\nOverall accuracy: **{}%** ({} pairs; ties count as wrong). Mean margin r_c − r_r: {:.3}.\n\n",
        pct(&r.overall),
        r.overall.n,
        r.mean_margin
    );
    s += &gap_lines(r);
    s += "## Accuracy per test set (Table 7 layout)\n\n|";
    for k in r.by_source.keys() {
        s += &format!(" {k} |");
    }
    s += " Avg |\n|";
    s += &"---|".repeat(r.by_source.len() + 1);
    s += "\n|";
    for a in r.by_source.values() {
        s += &format!(" {} |", pct(a));
    }
    s += &format!(" {} |\n\n", pct(&r.overall));
    s += "## Accuracy per rating (Table 8 layout)\n\n| Significantly Better | Better | Slightly Better | Negligibly Better / Unsure | Avg |\n|---|---|---|---|---|\n|";
    for (_, a) in &r.by_rating {
        s += &format!(" {} |", pct(a));
    }
    s += &format!(" {} |\n\n", pct(&r.overall));
    s += &format!("Pairs per bin: {}.\n\n", r.by_rating.iter().map(|(k, a)| format!("{k} {}", a.n)).collect::<Vec<_>>().join(", "));
    if let Some(sd) = &r.safety {
        s += &format!(
            "## Unsafe-response detection (Table 29 layout)\n\nThreshold σ(score) < {}: recall **{:.1}%**, precision **{:.1}%** ({} unsafe responses, {} predicted unsafe).\n\n",
            sd.threshold, 100.0 * sd.recall, 100.0 * sd.precision, sd.n_unsafe, sd.n_predicted_unsafe
        );
    }
    s += &format!(
        "## Scores\n\n| | mean | std | min | max |\n|---|---|---|---|---|\n| chosen | {:.3} | {:.3} | {:.3} | {:.3} |\n| rejected | {:.3} | {:.3} | {:.3} | {:.3} |\n",
        r.chosen_scores.mean, r.chosen_scores.std, r.chosen_scores.min, r.chosen_scores.max,
        r.rejected_scores.mean, r.rejected_scores.std, r.rejected_scores.min, r.rejected_scores.max
    );
    s
}

/// Accuracy against the |score gap| (calibration): `bins` equal-count bins of |r_c − r_r|.
pub fn accuracy_by_gap(scores: &[PairScore], bins: usize) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, bool)> = scores.iter().map(|s| ((s.chosen - s.rejected).abs(), s.correct())).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let per = v.len().div_ceil(bins.max(1)).max(1);
    v.chunks(per)
        .map(|c| (c.iter().map(|x| x.0).sum::<f64>() / c.len() as f64, c.iter().filter(|x| x.1).count() as f64 / c.len() as f64))
        .collect()
}

/// `calibration.png` (accuracy against the chosen−rejected score gap) and `scores.png` (score
/// histograms of chosen and rejected responses) into `out`.
pub fn plots(scores: &[PairScore], out: &std::path::Path) -> Result<(), training::TrainError> {
    use training::plot::{histogram, line_chart, Series};
    let points = accuracy_by_gap(scores, 10);
    line_chart(
        &out.join("calibration.png"),
        "Accuracy against |r_chosen - r_rejected|",
        "mean |score gap| in bin",
        "accuracy",
        &[Series { name: "accuracy".into(), points }],
    )?;
    let c: Vec<f64> = scores.iter().map(|s| s.chosen).collect();
    let r: Vec<f64> = scores.iter().map(|s| s.rejected).collect();
    histogram(&out.join("scores.png"), "Reward scores", "score", &[("chosen".into(), c), ("rejected".into(), r)], 40)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ps(c: f64, r: f64, rating: Rating, src: &str, cs: Option<bool>, rs: Option<bool>) -> PairScore {
        PairScore {
            chosen: c,
            rejected: r,
            rating: Some(rating),
            source: Some(src.into()),
            kind: None,
            chosen_safe: cs,
            rejected_safe: rs,
            truncated: false,
        }
    }

    #[test]
    fn accuracy_bins_ties_and_safety() {
        let s = vec![
            ps(2.0, 0.0, Rating::SignificantlyBetter, "a", Some(true), Some(false)),
            ps(0.0, 1.0, Rating::SignificantlyBetter, "a", Some(true), Some(false)),
            ps(1.0, 1.0, Rating::Better, "b", None, None), // tie: wrong
            ps(0.5, -0.5, Rating::NegligiblyBetter, "b", Some(true), Some(true)),
        ];
        let r = report(&s, 0.5);
        assert_eq!(r.overall.correct, 2);
        assert_eq!(r.by_source["a"].accuracy, 0.5);
        assert!(r.by_source_kind.is_empty(), "no pair carries a kind");
        // With kinds: per source and kind.
        let mut k = s.clone();
        k[0].kind = Some(datasets::PreferenceKind::Safety);
        k[1].kind = Some(datasets::PreferenceKind::Helpfulness);
        k[2].kind = Some(datasets::PreferenceKind::Helpfulness);
        let rk = report(&k, 0.5);
        let a = &rk.by_source_kind["a"];
        assert_eq!((a["safety"].n, a["safety"].correct, a["helpfulness"].n, a["helpfulness"].correct), (1, 1, 1, 0));
        assert_eq!((rk.by_source_kind["b"]["helpfulness"].n, rk.by_source_kind["b"].len()), (1, 1));
        assert_eq!(r.by_rating[1].1.correct, 0);
        assert_eq!(r.by_rating[2].1.n, 0);
        // Unsafe responses: rejected of pairs 1 and 2 (scores 0.0 and 1.0): σ(0) = 0.5 is not < 0.5,
        // so neither is caught; predicted unsafe: rejected −0.5 of pair 4 (safe) → precision 0.
        let sd = r.safety.clone().unwrap();
        assert_eq!((sd.n_unsafe, sd.n_predicted_unsafe), (2, 1));
        assert_eq!((sd.recall, sd.precision), (0.0, 0.0));
        let md = markdown("t", &r);
        assert!(md.contains("| 50.0 | 50.0 |") && md.contains("Table 8 layout"), "{md}");
        assert_eq!((r.unrated_pairs, r.safety_labelled_responses, r.truncated_pairs), (0, 6, 0));
        assert!(!md.contains("Data notes"), "{md}");
    }

    /// Unrated pairs, no safety labels and cut pairs are said in report.json and report.md, not
    /// silently left out of Table 8 / Table 29 or scored cut.
    #[test]
    fn the_report_says_what_it_leaves_out() {
        let mut s = vec![
            ps(2.0, 0.0, Rating::Better, "a", None, None),
            ps(1.0, 0.0, Rating::Better, "a", None, None),
            ps(0.0, 1.0, Rating::Better, "a", None, None),
        ];
        s[0].rating = None;
        s[1].rating = None;
        s[2].truncated = true;
        let r = report(&s, 0.5);
        assert_eq!((r.unrated_pairs, r.safety_labelled_responses, r.truncated_pairs), (2, 0, 1));
        assert!(r.safety.is_none());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            (v["unrated_pairs"].as_u64(), v["safety_labelled_responses"].as_u64(), v["truncated_pairs"].as_u64()),
            (Some(2), Some(0), Some(1))
        );
        let md = markdown("t", &r);
        assert!(md.contains("2 of 3 pairs have no rating"), "{md}");
        assert!(md.contains("Table 29 is not computed"), "{md}");
        assert!(md.contains("1 of 3 pairs were longer than `max_seq_len`"), "{md}");
    }
}
