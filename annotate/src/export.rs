//! Pairs to rate from sampled replies. Llama 2 rates two replies to one prompt that come "from two
//! different model variants" sampled at varied temperatures (Section 3.2.1), collected weekly on
//! the latest models. The natural source here is rejection sampling's sample log
//! (`samples-iter{N}.jsonl`, `sweep-iter{N}-t{T}.jsonl`: one prompt with its K samples per line,
//! each log one model variant at one temperature), or any JSONL of a prompt and its candidates:
//!
//! ```json
//! {"prompt": "..." | [messages], "samples": [{"text": "..."}, ...], "iteration": 2, "temperature": 0.8, "is_safety": false}
//! {"prompt": "...", "candidates": ["reply", {"text": "reply", "model": "7b-chat-v3"}], "model": "...", "kind": "safety"}
//! ```
//!
//! Candidates of the same prompt are pooled across all files given (the same dialog, compared as
//! the policy sees it), then each prompt gives up to `per_prompt` pairs of distinct non-empty
//! replies, drawn at random among pairs of two different models when there are any. A reply's
//! model is its own `model`, else its row's `model`, else `iter{N}@t{T}` from a sample log row,
//! else the file's name.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use datasets::parse::{object, parse_kind, present, prompt, type_name};
use datasets::{FieldError, PreferenceKind, PromptRecord, Reason};
use llama_text::chat::Message;
use llama_text::rng::SplitMix64;
use serde::Serialize;
use serde_json::Value;

use crate::error::{AnnotateError, At, Result};
use crate::fsio::{parse_line, read_lines};
use crate::pairs::PairRecord;

/// How pairs are drawn.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Pairs per prompt (distinct pairs of replies; fewer when a prompt has fewer).
    pub per_prompt: usize,
    /// Which pairs, and which reply is `a`: the same seed gives the same file.
    pub seed: u64,
    /// At most this many pairs in all (the first prompts').
    pub max_pairs: Option<usize>,
    /// `source` of every pair (the batch or test-set name the records carry).
    pub source: Option<String>,
    /// Candidates per prompt considered (the first ones, after dropping empty and repeated
    /// replies), which bounds the pairs enumerated per prompt.
    pub max_candidates: usize,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions { per_prompt: 1, seed: 0, max_pairs: None, source: None, max_candidates: 64 }
    }
}

/// What export read and wrote (printed as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExportSummary {
    pub files: Vec<String>,
    pub rows: usize,
    /// Rows the sampler skipped (`skipped` set: no samples).
    pub skipped_rows: usize,
    pub prompts: usize,
    /// Prompts with fewer than two distinct non-empty replies.
    pub prompts_without_pair: usize,
    pub pairs: usize,
    /// Pairs whose replies come from two different models / from one.
    pub cross_model_pairs: usize,
    pub same_model_pairs: usize,
}

struct Candidate {
    text: String,
    model: String,
}

struct Group {
    prompt: Vec<Message>,
    kind: Option<PreferenceKind>,
    candidates: Vec<Candidate>,
    seen: HashSet<String>,
}

/// Candidates grouped by prompt, in first-seen order.
#[derive(Default)]
struct Groups {
    order: Vec<Group>,
    by_key: HashMap<String, usize>,
}

impl Groups {
    fn add(&mut self, prompt: Vec<Message>, kind: Option<PreferenceKind>, cands: Vec<Candidate>, max: usize) {
        let key = serde_json::to_string(&prompt).unwrap_or_default();
        let i = *self.by_key.entry(key).or_insert_with(|| {
            self.order.push(Group { prompt, kind: None, candidates: Vec::new(), seen: HashSet::new() });
            self.order.len() - 1
        });
        let g = &mut self.order[i];
        g.kind = g.kind.or(kind);
        for c in cands {
            let t = c.text.trim();
            if g.candidates.len() < max && !t.is_empty() && g.seen.insert(t.to_string()) {
                g.candidates.push(c);
            }
        }
    }
}

/// A row's prompt, kind and candidates.
type Row = (Vec<Message>, Option<PreferenceKind>, Vec<Candidate>);

/// One row (`None` for a row the sampler skipped).
fn parse_row(v: &Value, default_model: &str) -> Result<Option<Row>, FieldError> {
    let obj = object(v)?;
    let p = prompt(obj, "prompt")?;
    datasets::validate::check_prompt(&PromptRecord { prompt: p.clone(), is_safety: false })?;
    if present(obj, "skipped").is_some() {
        return Ok(None);
    }
    let str_field = |k: &str| -> Result<Option<String>, FieldError> {
        match present(obj, k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(FieldError::new(k, Reason::WrongType, format!("expected a string, got {}", type_name(v)))),
        }
    };
    let kind = match (str_field("kind")?, present(obj, "is_safety")) {
        (Some(k), _) => Some(parse_kind(&k)?),
        (None, Some(Value::Bool(s))) => Some(if *s { PreferenceKind::Safety } else { PreferenceKind::Helpfulness }),
        (None, Some(v)) => {
            return Err(FieldError::new("is_safety", Reason::WrongType, format!("expected a boolean, got {}", type_name(v))))
        }
        (None, None) => None,
    };
    let row_model = match str_field("model")? {
        Some(m) => m,
        None => match (present(obj, "iteration").and_then(Value::as_u64), present(obj, "temperature").and_then(Value::as_f64)) {
            (Some(it), Some(t)) => format!("iter{it}@t{t}"),
            _ => default_model.to_string(),
        },
    };
    let (field, list) =
        ["samples", "candidates", "responses"].into_iter().find_map(|k| present(obj, k).map(|v| (k, v))).ok_or_else(|| {
            FieldError::new(
                "samples",
                Reason::MissingField,
                "expected `samples` (a rejection-sampling log) or `candidates`: a list of replies",
            )
        })?;
    let Value::Array(items) = list else {
        return Err(FieldError::new(field, Reason::WrongType, format!("expected a list of replies, got {}", type_name(list))));
    };
    let mut cands = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let c = match item {
            Value::String(s) => Candidate { text: s.clone(), model: row_model.clone() },
            Value::Object(o) => {
                let text = match present(o, "text") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => {
                        return Err(FieldError::new(
                            format!("{at}.text"),
                            Reason::WrongType,
                            format!("expected a string, got {}", type_name(v)),
                        ))
                    }
                    None => return Err(FieldError::new(format!("{at}.text"), Reason::MissingField, "missing field")),
                };
                let model = match present(o, "model") {
                    Some(Value::String(m)) => m.clone(),
                    _ => row_model.clone(),
                };
                Candidate { text, model }
            }
            v => {
                return Err(FieldError::new(
                    at,
                    Reason::WrongType,
                    format!("expected a string or a {{\"text\"}} object, got {}", type_name(v)),
                ))
            }
        };
        cands.push(c);
    }
    Ok(Some((p, kind, cands)))
}

/// A pair's id: a hash of the prompt and the two replies, whatever their order, so that the same
/// comparison exported twice has the same id.
pub fn pair_id(prompt: &[Message], x: &str, y: &str) -> String {
    let (lo, hi) = if x <= y { (x, y) } else { (y, x) };
    let mut h = blake3::Hasher::new();
    h.update(serde_json::to_string(prompt).unwrap_or_default().as_bytes());
    for t in [lo, hi] {
        h.update(&(t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    format!("p{}", &h.finalize().to_hex()[..16])
}

/// Reads the candidate files and draws the pairs (see the module doc).
pub fn export(files: &[PathBuf], opts: &ExportOptions) -> Result<(Vec<PairRecord>, ExportSummary)> {
    let mut groups = Groups::default();
    let mut s = ExportSummary::default();
    for f in files {
        s.files.push(f.display().to_string());
        let default_model = f.file_stem().map_or_else(|| "candidates".to_string(), |x| x.to_string_lossy().into_owned());
        read_file(f, &default_model, opts, &mut groups, &mut s)?;
    }
    s.prompts = groups.order.len();
    let mut pairs = Vec::new();
    for (gi, g) in groups.order.iter().enumerate() {
        let drawn = draw(g, opts, gi as u64);
        if drawn.is_empty() {
            s.prompts_without_pair += 1;
        }
        for (i, j, a_first) in drawn {
            if opts.max_pairs.is_some_and(|m| pairs.len() >= m) {
                break;
            }
            let (x, y) = (&g.candidates[i], &g.candidates[j]);
            let (a, b) = if a_first { (x, y) } else { (y, x) };
            if a.model == b.model {
                s.same_model_pairs += 1;
            } else {
                s.cross_model_pairs += 1;
            }
            pairs.push(PairRecord {
                id: pair_id(&g.prompt, &a.text, &b.text),
                prompt: g.prompt.clone(),
                reply_a: a.text.clone(),
                reply_b: b.text.clone(),
                model_a: Some(a.model.clone()),
                model_b: Some(b.model.clone()),
                kind: g.kind,
                source: opts.source.clone(),
            });
        }
    }
    s.pairs = pairs.len();
    Ok((pairs, s))
}

fn read_file(path: &Path, default_model: &str, opts: &ExportOptions, groups: &mut Groups, s: &mut ExportSummary) -> Result<()> {
    for (n, text) in read_lines(path)?.all(path)? {
        let v = parse_line(path, n, &text)?;
        s.rows += 1;
        match parse_row(&v, default_model).map_err(|e| AnnotateError::row(path, At::Line(n), e.field, e.detail))? {
            Some((p, kind, cands)) => groups.add(p, kind, cands, opts.max_candidates),
            None => s.skipped_rows += 1,
        }
    }
    Ok(())
}

/// Up to `per_prompt` pairs `(i, j, i_is_a)` of a prompt's candidates, cross-model pairs only
/// when there are any, in an order drawn from `(seed, prompt index)`.
fn draw(g: &Group, opts: &ExportOptions, index: u64) -> Vec<(usize, usize, bool)> {
    let n = g.candidates.len();
    let all: Vec<(usize, usize)> = (0..n).flat_map(|i| (i + 1..n).map(move |j| (i, j))).collect();
    let cross: Vec<(usize, usize)> = all.iter().copied().filter(|&(i, j)| g.candidates[i].model != g.candidates[j].model).collect();
    let mut pool = if cross.is_empty() { all } else { cross };
    let mut rng = SplitMix64::for_step(opts.seed, index);
    for i in (1..pool.len()).rev() {
        pool.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    pool.truncate(opts.per_prompt);
    pool.into_iter().map(|(i, j)| (i, j, rng.next_u64() & 1 == 0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, lines: &[Value]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        p
    }

    #[test]
    fn sample_logs_pool_by_prompt_and_prefer_two_models() {
        let dir = tempfile::tempdir().unwrap();
        let s = |t: &str| serde_json::json!({"text": t, "tokens": 3, "finished": true, "reward": 0.5});
        let it1 = write(
            dir.path(),
            "samples-iter1.jsonl",
            &[
                serde_json::json!({"key": "k", "prompt": [{"role": "user", "content": "Q1"}], "is_safety": true, "iteration": 1,
                    "temperature": 1.0, "samples": [s("x"), s(" x "), s(""), s("y")], "best": 0}),
                serde_json::json!({"key": "k2", "prompt": [{"role": "user", "content": "Q2"}], "is_safety": false, "iteration": 1,
                    "temperature": 1.0, "samples": [], "best": null, "skipped": "too long"}),
            ],
        );
        let it2 = write(
            dir.path(),
            "samples-iter2.jsonl",
            &[serde_json::json!({"prompt": "Q1", "iteration": 2, "temperature": 0.8, "samples": [s("z")]})],
        );
        let opts = ExportOptions { per_prompt: 5, ..Default::default() };
        let (pairs, sum) = export(&[it1, it2], &opts).unwrap();
        // Q1 has x, y (iter1@t1) and z (iter2@t0.8): only the two cross-model pairs are drawn.
        assert_eq!((sum.rows, sum.skipped_rows, sum.prompts, sum.pairs, sum.cross_model_pairs), (3, 1, 1, 2, 2));
        for p in &pairs {
            assert_eq!(p.kind, Some(PreferenceKind::Safety));
            let models = [p.model_a.as_deref().unwrap(), p.model_b.as_deref().unwrap()];
            assert!(models.contains(&"iter1@t1") && models.contains(&"iter2@t0.8"), "{models:?}");
            assert!([&p.reply_a, &p.reply_b].contains(&&"z".to_string()));
            p.check().unwrap();
        }
        // The same seed gives the same pairs; the id does not depend on the order.
        assert_eq!(export(&[dir.path().join("samples-iter1.jsonl"), dir.path().join("samples-iter2.jsonl")], &opts).unwrap().0, pairs);
        assert_eq!(pair_id(&pairs[0].prompt, "x", "z"), pair_id(&pairs[0].prompt, "z", "x"));
    }

    #[test]
    fn generic_candidates_and_a_single_model_fall_back_to_any_pair() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "cands.jsonl", &[serde_json::json!({"prompt": "Q", "candidates": ["a", {"text": "b"}, "c"]})]);
        let (pairs, s) =
            export(std::slice::from_ref(&f), &ExportOptions { per_prompt: 10, max_pairs: Some(2), ..Default::default() }).unwrap();
        assert_eq!((s.pairs, s.same_model_pairs), (2, 2));
        assert_eq!(pairs[0].model_a.as_deref(), Some("cands"));
        // Both orders of a and b occur over seeds.
        let firsts: HashSet<String> = (0..16)
            .map(|seed| export(std::slice::from_ref(&f), &ExportOptions { seed, ..Default::default() }).unwrap().0[0].reply_a.clone())
            .collect();
        assert!(firsts.len() > 1);
    }

    #[test]
    fn bad_rows_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "c.jsonl",
            &[
                serde_json::json!({"prompt": "Q", "candidates": ["a"]}),
                serde_json::json!({"prompt": "Q", "candidates": ["a", {"txt": "b"}]}),
            ],
        );
        let e = export(&[f], &ExportOptions::default()).unwrap_err().to_string();
        assert!(e.contains("c.jsonl: line 2, field `candidates[1].text`: missing field"), "{e}");
        let g = write(dir.path(), "g.jsonl", &[serde_json::json!({"prompt": "Q"})]);
        let e = export(&[g], &ExportOptions::default()).unwrap_err().to_string();
        assert!(e.contains("line 1, field `samples`"), "{e}");
    }
}
