//! Ratings: the Llama 2 protocol's answer for one pair (Section 3.2.1), and the files that hold
//! them. A ratings file is JSONL or CSV.
//!
//! JSONL, one event per line (what `rlhf annotate serve` journals; a hand-written file may
//! carry rate events only, without `event` or `seq`):
//!
//! ```json
//! {"event": "rate", "seq": 7, "pair_id": "p3f9c...", "choice": "a", "strength": "better",
//!  "safety": "both_safe", "annotator": "alice", "time": 1764644400, "shown_first": "b"}
//! {"event": "undo", "seq": 8, "undoes": 7, "annotator": "alice"}
//! {"event": "skip", "seq": 9, "pair_id": "p3f9c...", "annotator": "alice"}
//! ```
//!
//! CSV: the sheet `rlhf annotate export` writes, with `choice`, `strength` and `safety` (and
//! optionally `annotator`) filled in; rows left blank in all three are unrated. Only `pair_id`,
//! `choice`, `strength`, `safety` and `annotator` are read.
//!
//! Names are read leniently (trimmed, any case, spaces or dashes for underscores), so that
//! `Slightly better` typed into a sheet is `slightly_better`.
use std::collections::HashMap;
use std::path::Path;

use datasets::Rating;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{AnnotateError, At, Result};
use crate::fsio::{parse_line, read_lines};

/// A reply of a pair, in the pair file's order (not the order the page showed them in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }

    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    pub fn parse(s: &str) -> Option<Side> {
        match normalise(s).as_str() {
            "a" => Some(Side::A),
            "b" => Some(Side::B),
            _ => None,
        }
    }
}

/// The three safety bins of Llama 2 Section 4.2.1 ("18% / 47% / 35%"): the chosen reply safe and
/// the other unsafe, both safe, both unsafe. The fourth case, the chosen reply unsafe and the
/// other safe, has no bin: the paper drops such pairs, as a safer reply is the better one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SafetyBin {
    OnlyChosenSafe,
    BothSafe,
    BothUnsafe,
}

impl SafetyBin {
    pub const ALL: [SafetyBin; 3] = [SafetyBin::OnlyChosenSafe, SafetyBin::BothSafe, SafetyBin::BothUnsafe];

    pub fn as_str(self) -> &'static str {
        match self {
            SafetyBin::OnlyChosenSafe => "only_chosen_safe",
            SafetyBin::BothSafe => "both_safe",
            SafetyBin::BothUnsafe => "both_unsafe",
        }
    }

    pub fn parse(s: &str) -> Option<SafetyBin> {
        SafetyBin::ALL.into_iter().find(|b| b.as_str() == normalise(s))
    }

    /// `(chosen_safe, rejected_safe)` of the preference record.
    pub fn labels(self) -> (bool, bool) {
        match self {
            SafetyBin::OnlyChosenSafe => (true, false),
            SafetyBin::BothSafe => (true, true),
            SafetyBin::BothUnsafe => (false, false),
        }
    }
}

/// `Slightly better` -> `slightly_better`.
fn normalise(s: &str) -> String {
    s.trim().to_lowercase().replace([' ', '-'], "_")
}

/// The 4-level strength, read leniently (see the module doc); `unsure` is `negligibly_better`.
pub fn parse_strength(s: &str) -> Option<Rating> {
    Rating::parse(&normalise(s))
}

/// One annotator's answer for one pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatingRow {
    pub pair_id: String,
    /// The better reply.
    pub choice: Side,
    pub strength: Rating,
    /// Required by the page; optional in files (a sheet of helpfulness pairs may leave it out).
    pub safety: Option<SafetyBin>,
    pub annotator: Option<String>,
}

/// One line of a JSONL ratings file.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Rate {
        seq: Option<u64>,
        rating: RatingRow,
    },
    /// Withdraws the rate event numbered `undoes`.
    Undo {
        seq: Option<u64>,
        undoes: u64,
        annotator: Option<String>,
    },
    /// The annotator passed on the pair (the server offers it again when nothing else is left).
    Skip {
        seq: Option<u64>,
        pair_id: String,
        annotator: Option<String>,
    },
}

impl Event {
    pub fn seq(&self) -> Option<u64> {
        match self {
            Event::Rate { seq, .. } | Event::Undo { seq, .. } | Event::Skip { seq, .. } => *seq,
        }
    }

    /// The journal line (`time` in Unix seconds; `shown_first`, which reply the page showed
    /// first, for position-bias checks).
    pub fn to_json(&self, time: u64, shown_first: Option<Side>) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        match self {
            Event::Rate { seq, rating } => {
                put("event", "rate".into());
                put("seq", json!(seq));
                put("pair_id", rating.pair_id.clone().into());
                put("choice", rating.choice.as_str().into());
                put("strength", rating.strength.as_str().into());
                if let Some(s) = rating.safety {
                    put("safety", s.as_str().into());
                }
                put("annotator", json!(rating.annotator));
                if let Some(s) = shown_first {
                    put("shown_first", s.as_str().into());
                }
            }
            Event::Undo { seq, undoes, annotator } => {
                put("event", "undo".into());
                put("seq", json!(seq));
                put("undoes", (*undoes).into());
                put("annotator", json!(annotator));
            }
            Event::Skip { seq, pair_id, annotator } => {
                put("event", "skip".into());
                put("seq", json!(seq));
                put("pair_id", pair_id.clone().into());
                put("annotator", json!(annotator));
            }
        }
        put("time", time.into());
        Value::Object(m)
    }
}

/// A field's error, before the file and row are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldIssue {
    pub field: &'static str,
    pub detail: String,
}

fn issue(field: &'static str, detail: impl Into<String>) -> FieldIssue {
    FieldIssue { field, detail: detail.into() }
}

/// The values a rating's fields accept, for error messages.
const CHOICES: &str = "expected a or b (the reply_a or reply_b of the pair file)";
const STRENGTHS: &str = "expected significantly_better, better, slightly_better, negligibly_better or unsure";
const BINS: &str = "expected only_chosen_safe (the chosen reply safe, the other not), both_safe or both_unsafe";

/// A rating from its text fields (`safety` and `annotator` may be blank).
pub fn rating_from_fields(
    pair_id: &str,
    choice: &str,
    strength: &str,
    safety: Option<&str>,
    annotator: Option<&str>,
) -> Result<RatingRow, FieldIssue> {
    let pair_id = pair_id.trim();
    if pair_id.is_empty() {
        return Err(issue("pair_id", "missing pair id"));
    }
    if choice.trim().is_empty() {
        return Err(issue("choice", format!("missing: {CHOICES}")));
    }
    let choice = Side::parse(choice).ok_or_else(|| issue("choice", format!("unknown choice {choice:?}: {CHOICES}")))?;
    if strength.trim().is_empty() {
        return Err(issue("strength", format!("missing: {STRENGTHS}")));
    }
    let strength = parse_strength(strength).ok_or_else(|| issue("strength", format!("unknown strength {strength:?}: {STRENGTHS}")))?;
    let safety = match safety.map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(SafetyBin::parse(s).ok_or_else(|| issue("safety", format!("unknown safety bin {s:?}: {BINS}")))?),
    };
    let annotator = annotator.map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
    Ok(RatingRow { pair_id: pair_id.to_string(), choice, strength, safety, annotator })
}

/// One JSONL line as an event.
pub fn event_from_json(v: &Value) -> Result<Event, FieldIssue> {
    let obj = v.as_object().ok_or_else(|| issue("", format!("expected a JSON object, got {}", datasets::parse::type_name(v))))?;
    let text = |k: &'static str| -> Result<Option<&str>, FieldIssue> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(issue(k, format!("expected a string, got {}", datasets::parse::type_name(v)))),
        }
    };
    let number = |k: &'static str| -> Result<Option<u64>, FieldIssue> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| issue(k, format!("expected a non-negative integer, got {v}"))),
        }
    };
    let seq = number("seq")?;
    let annotator = text("annotator")?.map(str::to_string);
    match text("event")?.unwrap_or("rate") {
        "rate" => {
            let rating = rating_from_fields(
                text("pair_id")?.unwrap_or(""),
                text("choice")?.unwrap_or(""),
                text("strength")?.unwrap_or(""),
                text("safety")?,
                annotator.as_deref(),
            )?;
            Ok(Event::Rate { seq, rating })
        }
        "undo" => Ok(Event::Undo {
            seq,
            undoes: number("undoes")?.ok_or_else(|| issue("undoes", "missing: the seq of the rating undone"))?,
            annotator,
        }),
        "skip" => Ok(Event::Skip { seq, pair_id: text("pair_id")?.unwrap_or("").to_string(), annotator }),
        e => Err(issue("event", format!("unknown event {e:?}: expected rate, undo or skip"))),
    }
}

/// The ratings in force, in the order they were given. Two ratings of one pair by one annotator
/// (or two anonymous ones) are one answer corrected: the later replaces the earlier and takes its
/// place at the end. An undo withdraws the rating whose `seq` it names.
#[derive(Debug, Default, Clone)]
pub struct RatingLog {
    entries: Vec<Option<(Option<u64>, RatingRow)>>,
    by_key: HashMap<(String, String), usize>,
    by_seq: HashMap<u64, usize>,
    seqs: std::collections::HashSet<u64>,
    pub undone: usize,
    pub replaced: usize,
    pub skipped: usize,
}

impl RatingLog {
    fn key(r: &RatingRow) -> (String, String) {
        (r.pair_id.clone(), r.annotator.clone().unwrap_or_default())
    }

    /// Applies one event; the error says what is inconsistent (a repeated or unknown `seq`).
    pub fn apply(&mut self, e: Event) -> Result<(), FieldIssue> {
        if let Some(s) = e.seq() {
            if !self.seqs.insert(s) {
                return Err(issue("seq", format!("seq {s} appears twice")));
            }
        }
        match e {
            Event::Rate { seq, rating } => {
                if let Some(old) = self.by_key.remove(&Self::key(&rating)) {
                    if let Some((Some(s), _)) = self.entries[old].take() {
                        self.by_seq.remove(&s);
                    }
                    self.replaced += 1;
                }
                let i = self.entries.len();
                self.by_key.insert(Self::key(&rating), i);
                if let Some(s) = seq {
                    self.by_seq.insert(s, i);
                }
                self.entries.push(Some((seq, rating)));
            }
            Event::Undo { undoes, .. } => {
                let i = self.by_seq.remove(&undoes).ok_or_else(|| issue("undoes", format!("no rating in force has seq {undoes}")))?;
                if let Some((_, r)) = self.entries[i].take() {
                    self.by_key.remove(&Self::key(&r));
                }
                self.undone += 1;
            }
            Event::Skip { .. } => self.skipped += 1,
        }
        Ok(())
    }

    /// The ratings in force, in order.
    pub fn ratings(&self) -> impl Iterator<Item = &RatingRow> {
        self.entries.iter().flatten().map(|(_, r)| r)
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The rating `annotator` gave `pair_id`, with its seq.
    pub fn get(&self, pair_id: &str, annotator: &str) -> Option<(Option<u64>, &RatingRow)> {
        let i = *self.by_key.get(&(pair_id.to_string(), annotator.to_string()))?;
        self.entries[i].as_ref().map(|(s, r)| (*s, r))
    }
}

/// What reading a ratings file found besides the ratings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// CSV rows with no choice, strength or safety filled in.
    pub blank_rows: usize,
}

/// Reads a ratings file (`.csv` by extension, JSONL otherwise) into a log; every rating must
/// name a pair of `pair_ids`. Errors name the file, the line or row, and the field.
pub fn read_ratings(path: &Path, pair_ids: &dyn Fn(&str) -> bool) -> Result<(RatingLog, ReadStats)> {
    let is_csv = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let mut log = RatingLog::default();
    let mut stats = ReadStats::default();
    let mut apply = |at: At, e: Event| -> Result<()> {
        if let Event::Rate { rating, .. } = &e {
            if !pair_ids(&rating.pair_id) {
                return Err(AnnotateError::row(path, at, "pair_id", format!("unknown pair id {:?}: not in the pair file", rating.pair_id)));
            }
        }
        log.apply(e).map_err(|i| AnnotateError::row(path, at, i.field, i.detail))
    };
    if is_csv {
        for (at, row) in read_csv_rows(path)? {
            match row {
                Some(r) => apply(at, Event::Rate { seq: None, rating: r })?,
                None => stats.blank_rows += 1,
            }
        }
    } else {
        for (n, text) in read_lines(path)?.all(path)? {
            let v = parse_line(path, n, &text)?;
            let e = event_from_json(&v).map_err(|i| AnnotateError::row(path, At::Line(n), i.field, i.detail))?;
            apply(At::Line(n), e)?;
        }
    }
    Ok((log, stats))
}

/// The rated rows of a CSV (`None` for a row left blank), with where each sits.
fn read_csv_rows(path: &Path) -> Result<Vec<(At, Option<RatingRow>)>> {
    let bytes = std::fs::read(path).map_err(|e| AnnotateError::io(path, e))?;
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&bytes);
    // Spreadsheets saved in a locale with a decimal comma write `;` between cells.
    let header = bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let delimiter = if !header.contains(&b',') && header.contains(&b';') { b';' } else { b',' };
    let mut r = csv::ReaderBuilder::new().flexible(false).delimiter(delimiter).from_reader(bytes);
    let headers = r.headers().map_err(|e| csv_error(path, e))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.trim().eq_ignore_ascii_case(name));
    let need = |name: &str| {
        col(name).ok_or_else(|| {
            AnnotateError::file(
                path,
                format!("no `{name}` column (the header must name pair_id, choice and strength; safety and annotator are optional)"),
            )
        })
    };
    let (id, choice, strength) = (need("pair_id")?, need("choice")?, need("strength")?);
    let (safety, annotator) = (col("safety"), col("annotator"));
    let mut out = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.map_err(|e| csv_error(path, e))?;
        let at = At::CsvRow { row: i + 1, line: rec.position().map_or(i + 2, |p| p.line() as usize) };
        let cell = |c: Option<usize>| c.and_then(|c| rec.get(c)).unwrap_or("");
        let filled = [Some(choice), Some(strength), safety].into_iter().any(|c| !cell(c).trim().is_empty());
        if !filled {
            out.push((at, None));
            continue;
        }
        let r = rating_from_fields(
            cell(Some(id)),
            cell(Some(choice)),
            cell(Some(strength)),
            safety.map(|c| cell(Some(c))),
            Some(cell(annotator)),
        )
        .map_err(|i| AnnotateError::row(path, at, i.field, i.detail))?;
        out.push((at, Some(r)));
    }
    Ok(out)
}

fn csv_error(path: &Path, e: csv::Error) -> AnnotateError {
    let at = e.position().map(|p| At::CsvRow { row: (p.record() as usize).max(1), line: p.line() as usize });
    let detail = match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("{len} cells where the header has {expected_len} (a quote left open, or a stray comma?)")
        }
        csv::ErrorKind::Utf8 { .. } => "invalid UTF-8 (save the sheet as CSV UTF-8)".to_string(),
        _ => e.to_string(),
    };
    match at {
        Some(at) => AnnotateError::row(path, at, "", detail),
        None => AnnotateError::file(path, detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(id: &str, who: Option<&str>, seq: Option<u64>) -> Event {
        Event::Rate {
            seq,
            rating: RatingRow {
                pair_id: id.into(),
                choice: Side::A,
                strength: Rating::Better,
                safety: None,
                annotator: who.map(String::from),
            },
        }
    }

    #[test]
    fn lenient_names() {
        assert_eq!(parse_strength(" Slightly better"), Some(Rating::SlightlyBetter));
        assert_eq!(parse_strength("UNSURE"), Some(Rating::NegligiblyBetter));
        assert_eq!(parse_strength("much better"), None);
        assert_eq!(SafetyBin::parse("Both-Unsafe"), Some(SafetyBin::BothUnsafe));
        assert_eq!(Side::parse(" B "), Some(Side::B));
        assert_eq!(Side::parse("1"), None);
    }

    #[test]
    fn events_round_trip_through_the_journal_line() {
        let mut r = rate("p1", Some("ann"), Some(4));
        if let Event::Rate { rating, .. } = &mut r {
            rating.safety = Some(SafetyBin::OnlyChosenSafe);
        }
        let u = Event::Undo { seq: Some(5), undoes: 4, annotator: Some("ann".into()) };
        let s = Event::Skip { seq: Some(6), pair_id: "p2".into(), annotator: Some("ann".into()) };
        for e in [r, u, s] {
            assert_eq!(event_from_json(&e.to_json(99, Some(Side::B))).unwrap(), e);
        }
    }

    #[test]
    fn csv_with_semicolons_and_blank_rows() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("r.csv");
        std::fs::write(&f, "\u{feff}pair_id;choice;strength;safety\r\np1;B;Better;both unsafe\r\np2;;;\r\n").unwrap();
        let (log, stats) = read_ratings(&f, &|_| true).unwrap();
        let r: Vec<&RatingRow> = log.ratings().collect();
        assert_eq!((r.len(), stats.blank_rows), (1, 1));
        assert_eq!((r[0].choice, r[0].strength, r[0].safety), (Side::B, Rating::Better, Some(SafetyBin::BothUnsafe)));
    }

    #[test]
    fn log_replaces_per_annotator_and_undoes_by_seq() {
        let mut log = RatingLog::default();
        log.apply(rate("p1", Some("x"), Some(1))).unwrap();
        log.apply(rate("p1", Some("y"), Some(2))).unwrap();
        log.apply(rate("p2", Some("x"), Some(3))).unwrap();
        log.apply(rate("p1", Some("x"), Some(4))).unwrap(); // x corrects p1: moves to the end
        let order: Vec<(&str, &str)> = log.ratings().map(|r| (r.pair_id.as_str(), r.annotator.as_deref().unwrap_or(""))).collect();
        assert_eq!(order, [("p1", "y"), ("p2", "x"), ("p1", "x")]);
        assert_eq!(log.replaced, 1);
        // seq 1 was replaced: nothing to undo there; 2 is in force.
        assert_eq!(log.apply(Event::Undo { seq: Some(5), undoes: 1, annotator: None }).unwrap_err().field, "undoes");
        log.apply(Event::Undo { seq: Some(6), undoes: 2, annotator: None }).unwrap();
        assert_eq!(log.len(), 2);
        assert!(log.get("p1", "y").is_none());
        assert_eq!(log.apply(rate("p3", None, Some(6))).unwrap_err().field, "seq");
    }
}
