//! From pairs and ratings to preference records: one record per rating in force, in rating order
//! (several annotators of one pair give several records, each a comparison the reward model learns
//! from), plus the counts and the inter-annotator agreement of pairs rated more than once.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use datasets::PreferenceRecord;
use serde::Serialize;
use serde_json::Value;

use crate::error::{AnnotateError, Result};
use crate::pairs::PairRecord;
use crate::ratings::{RatingLog, RatingRow, SafetyBin, Side};

/// A preference record with where it came from. On disk the record's fields plus `pair_id`,
/// `annotator`, `chosen_model` and `rejected_model`, which the preference reader ignores.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotated {
    pub record: PreferenceRecord,
    pub pair_id: String,
    pub annotator: Option<String>,
    pub chosen_model: Option<String>,
    pub rejected_model: Option<String>,
}

impl Annotated {
    /// The record a rating makes of its pair: the chosen reply, the 4-level strength as `rating`
    /// (Llama 2 Table 27's margin reads it), the safety bin as `chosen_safe`/`rejected_safe`.
    pub fn of(pair: &PairRecord, r: &RatingRow) -> Annotated {
        let (chosen, rejected, chosen_model, rejected_model) = match r.choice {
            Side::A => (&pair.reply_a, &pair.reply_b, &pair.model_a, &pair.model_b),
            Side::B => (&pair.reply_b, &pair.reply_a, &pair.model_b, &pair.model_a),
        };
        let (chosen_safe, rejected_safe) = r.safety.map(SafetyBin::labels).unzip();
        Annotated {
            record: PreferenceRecord {
                prompt: pair.prompt.clone(),
                chosen: chosen.clone(),
                rejected: rejected.clone(),
                rating: Some(r.strength),
                kind: pair.kind,
                chosen_safe,
                rejected_safe,
                source: pair.source.clone(),
            },
            pair_id: pair.id.clone(),
            annotator: r.annotator.clone(),
            chosen_model: chosen_model.clone(),
            rejected_model: rejected_model.clone(),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(&self.record).unwrap_or(Value::Null);
        if let Some(m) = v.as_object_mut() {
            m.insert("pair_id".into(), self.pair_id.clone().into());
            for (k, x) in [("annotator", &self.annotator), ("chosen_model", &self.chosen_model), ("rejected_model", &self.rejected_model)] {
                if let Some(x) = x {
                    m.insert(k.into(), x.clone().into());
                }
            }
        }
        v
    }
}

/// Agreement between annotators on pairs rated more than once (`--overlap N`), over every two
/// annotators of such a pair.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Agreement {
    /// Pairs with two or more ratings.
    pub pairs: usize,
    /// Two annotators of one pair, counted over all such pairs.
    pub annotator_pairs: usize,
    /// Fraction of annotator pairs that chose the same reply.
    pub choice: Option<f64>,
    /// ... the same reply with the same strength.
    pub choice_and_strength: Option<f64>,
    /// Fraction of per-reply safety labels two annotators agree on (reply a's and reply b's
    /// safety, as the bin and the choice together say), where both gave a bin.
    pub safety: Option<f64>,
}

impl Agreement {
    pub fn of<'a>(ratings: impl IntoIterator<Item = &'a RatingRow>) -> Agreement {
        let mut by_pair: BTreeMap<&str, Vec<&RatingRow>> = BTreeMap::new();
        for r in ratings {
            by_pair.entry(&r.pair_id).or_default().push(r);
        }
        let (mut pairs, mut n, mut choice, mut strength, mut labels, mut labels_same) = (0, 0, 0, 0, 0, 0);
        for rs in by_pair.values().filter(|rs| rs.len() > 1) {
            pairs += 1;
            for (i, x) in rs.iter().enumerate() {
                for y in &rs[i + 1..] {
                    n += 1;
                    choice += (x.choice == y.choice) as usize;
                    strength += (x.choice == y.choice && x.strength == y.strength) as usize;
                    if let (Some(sx), Some(sy)) = (reply_safety(x), reply_safety(y)) {
                        labels += 2;
                        labels_same += (sx.0 == sy.0) as usize + (sx.1 == sy.1) as usize;
                    }
                }
            }
        }
        let frac = |k: usize, d: usize| (d > 0).then(|| k as f64 / d as f64);
        Agreement {
            pairs,
            annotator_pairs: n,
            choice: frac(choice, n),
            choice_and_strength: frac(strength, n),
            safety: frac(labels_same, labels),
        }
    }
}

/// `(reply a safe, reply b safe)` as a rating labels them.
fn reply_safety(r: &RatingRow) -> Option<(bool, bool)> {
    let (c, o) = r.safety?.labels();
    Some(match r.choice {
        Side::A => (c, o),
        Side::B => (o, c),
    })
}

/// The JSON summary `rlhf annotate import` prints (and the server logs).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImportSummary {
    pub pairs: usize,
    /// Ratings in force = records written.
    pub ratings: usize,
    pub rated_pairs: usize,
    pub unrated_pairs: usize,
    /// Ratings withdrawn by an undo, and corrected by a later rating of the same annotator.
    pub undone: usize,
    pub replaced: usize,
    pub skips: usize,
    /// CSV rows left blank.
    pub blank_rows: usize,
    pub strength: BTreeMap<&'static str, usize>,
    pub safety: BTreeMap<&'static str, usize>,
    pub annotators: BTreeMap<String, usize>,
    pub agreement: Agreement,
}

/// The records of the ratings in force, in order, and the summary. Every rating must name a
/// pair of `pairs` (the readers check this with the file and row at hand).
pub fn merge(pairs: &[PairRecord], log: &RatingLog) -> Result<(Vec<Annotated>, ImportSummary)> {
    let index: HashMap<&str, &PairRecord> = pairs.iter().map(|p| (p.id.as_str(), p)).collect();
    let mut out = Vec::with_capacity(log.len());
    let mut s = ImportSummary { pairs: pairs.len(), undone: log.undone, replaced: log.replaced, skips: log.skipped, ..Default::default() };
    let mut rated = std::collections::HashSet::new();
    for r in log.ratings() {
        let p = index
            .get(r.pair_id.as_str())
            .ok_or_else(|| AnnotateError::Config(format!("a rating names the unknown pair {:?}", r.pair_id)))?;
        out.push(Annotated::of(p, r));
        rated.insert(r.pair_id.as_str());
        *s.strength.entry(r.strength.as_str()).or_default() += 1;
        *s.safety.entry(r.safety.map_or("none", SafetyBin::as_str)).or_default() += 1;
        *s.annotators.entry(r.annotator.clone().unwrap_or_else(|| "(unnamed)".into())).or_default() += 1;
    }
    s.ratings = out.len();
    s.rated_pairs = rated.len();
    s.unrated_pairs = pairs.len() - rated.len();
    s.agreement = Agreement::of(log.ratings());
    Ok((out, s))
}

/// Writes the records: JSONL with the provenance fields, or Parquet (the record's columns only)
/// by extension; atomically either way.
pub fn write_records(path: &Path, records: &[Annotated]) -> Result<()> {
    match datasets::Format::from_path(path) {
        Ok(datasets::Format::Parquet) => {
            let plain: Vec<PreferenceRecord> = records.iter().map(|a| a.record.clone()).collect();
            datasets::write_all(path, &plain)?;
            Ok(())
        }
        _ => {
            let rows: Vec<Value> = records.iter().map(Annotated::to_json).collect();
            crate::fsio::write_jsonl_atomic(path, &rows)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datasets::Rating;
    use llama_text::chat::Message;

    fn pair() -> PairRecord {
        PairRecord {
            id: "p1".into(),
            prompt: vec![Message::user("Q?")],
            reply_a: "A.".into(),
            reply_b: "B.".into(),
            model_a: Some("ma".into()),
            model_b: Some("mb".into()),
            kind: None,
            source: Some("batch1".into()),
        }
    }

    fn r(choice: Side, strength: Rating, safety: Option<SafetyBin>) -> RatingRow {
        RatingRow { pair_id: "p1".into(), choice, strength, safety, annotator: Some("x".into()) }
    }

    #[test]
    fn record_follows_the_choice_and_the_bin() {
        let a = Annotated::of(&pair(), &r(Side::B, Rating::SlightlyBetter, Some(SafetyBin::OnlyChosenSafe)));
        assert_eq!((a.record.chosen.as_str(), a.record.rejected.as_str()), ("B.", "A."));
        assert_eq!((a.chosen_model.as_deref(), a.rejected_model.as_deref()), (Some("mb"), Some("ma")));
        assert_eq!((a.record.chosen_safe, a.record.rejected_safe), (Some(true), Some(false)));
        assert_eq!(a.record.rating, Some(Rating::SlightlyBetter));
        assert_eq!(a.record.source.as_deref(), Some("batch1"));
        let v = a.to_json();
        assert_eq!(v["pair_id"], "p1");
        assert_eq!(v["rating"], "slightly_better");
        // What `rlhf data validate` reads back is the record itself.
        let back = datasets::parse::parse_preference(&v).unwrap();
        assert_eq!(back, a.record);
        let none = Annotated::of(&pair(), &r(Side::A, Rating::Better, None));
        assert_eq!((none.record.chosen_safe, none.record.rejected_safe), (None, None));
    }

    #[test]
    fn agreement_counts_every_two_annotators() {
        // Three annotators of one pair: (x,y) agree on B/better, (x,z) and (y,z) do not.
        let rs = [
            r(Side::B, Rating::Better, Some(SafetyBin::BothSafe)),
            r(Side::B, Rating::Better, Some(SafetyBin::OnlyChosenSafe)),
            r(Side::A, Rating::Better, Some(SafetyBin::BothSafe)),
        ];
        let a = Agreement::of(&rs);
        assert_eq!((a.pairs, a.annotator_pairs), (1, 3));
        assert_eq!(a.choice, Some(1.0 / 3.0));
        assert_eq!(a.choice_and_strength, Some(1.0 / 3.0));
        // Reply labels (a, b): x (safe, safe), y (unsafe, safe), z (safe, safe):
        // x-y agree on b only, x-z on both, y-z on b only: 4 of 6.
        assert_eq!(a.safety, Some(4.0 / 6.0));
        assert_eq!(Agreement::of(&rs[..1]), Agreement::default());
    }
}
