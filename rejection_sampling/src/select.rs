//! Selection and pooling (Llama 2 Section 3.2.3): the highest-reward sample of each prompt is the
//! new gold target, and the pool keeps, per prompt, the best sample of *all* iterations so far
//! (the paper's fix for the regressions of RLHF-V3, which only used the previous iteration's
//! samples). A worse new sample never replaces a better old one; a tie keeps the old one.
use llama::Message;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One sampled reply and its scores (sigmoid scores in [0, 1]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub text: String,
    /// Generated tokens (EOS included when sampled).
    pub tokens: usize,
    /// Ended with EOS within `max_new_tokens`.
    pub finished: bool,
    /// The score samples are ranked by: `R_c` with both reward models, else the one given.
    pub reward: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helpfulness: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety: Option<f64>,
}

/// All K samples of one prompt: one line of the sample log `samples-iter{N}.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptSamples {
    /// The pool key ([`prompt_key`]).
    pub key: String,
    pub prompt: Vec<Message>,
    pub is_safety: bool,
    pub iteration: usize,
    pub temperature: f64,
    /// In sampling order (empty when the prompt was skipped, see `skipped`).
    pub samples: Vec<Sample>,
    /// Index of the winner ([`best_index`]); `None` when no sample may win.
    pub best: Option<usize>,
    /// Why the prompt was not sampled (e.g. longer than the model's context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// This prompt's share of its batch's generation and scoring time (for the throughput report).
    #[serde(default)]
    pub generation_seconds: f64,
    #[serde(default)]
    pub scoring_seconds: f64,
}

impl PromptSamples {
    pub fn rewards(&self) -> Vec<f64> {
        self.samples.iter().map(|s| s.reward).collect()
    }

    pub fn generated_tokens(&self) -> usize {
        self.samples.iter().map(|s| s.tokens).sum()
    }

    /// The winner as a pool entry.
    pub fn winner(&self) -> Option<PoolEntry> {
        let s = &self.samples[self.best?];
        Some(PoolEntry {
            key: self.key.clone(),
            prompt: self.prompt.clone(),
            is_safety: self.is_safety,
            response: s.text.clone(),
            reward: s.reward,
            iteration: self.iteration,
            temperature: self.temperature,
        })
    }
}

/// The pool key of a prompt: its messages (roles and text) as compact JSON, so two prompts share
/// a key exactly when the policy sees the same dialog.
pub fn prompt_key(prompt: &[Message]) -> String {
    serde_json::to_string(prompt).expect("messages serialise")
}

/// The winning sample: the highest finite reward among the eligible samples (a reply with text,
/// which the fine-tune can learn from, and one that ended with EOS when `require_finished`); the
/// first one on ties. `None` when none is eligible.
pub fn best_index(samples: &[Sample], require_finished: bool) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, s) in samples.iter().enumerate() {
        if !s.reward.is_finite() || (require_finished && !s.finished) || s.text.trim().is_empty() {
            continue;
        }
        if best.is_none_or(|b| s.reward > samples[b].reward) {
            best = Some(i);
        }
    }
    best
}

/// One row of the pool: an SFT dialog (the prompt plus the winning reply) with where it came from.
/// On disk `{"messages": [...], "score", "iteration", "temperature", "is_safety"}`: the SFT reader
/// reads `messages` and ignores the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolEntry {
    pub key: String,
    pub prompt: Vec<Message>,
    pub is_safety: bool,
    pub response: String,
    pub reward: f64,
    pub iteration: usize,
    pub temperature: f64,
}

impl PoolEntry {
    pub fn messages(&self) -> Vec<Message> {
        let mut m = self.prompt.clone();
        m.push(Message::assistant(self.response.clone()));
        m
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "messages": self.messages(),
            "score": self.reward,
            "iteration": self.iteration,
            "temperature": self.temperature,
            "is_safety": self.is_safety,
        })
    }
}

/// What offering a sample to the pool did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// First winner for this prompt.
    New,
    /// Beat the pooled sample.
    Replaced,
    /// Not better than the pooled sample (ties included): the old one stays.
    Kept,
}

/// The best sample ever seen per prompt, keyed by [`prompt_key`], in key order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pool {
    entries: BTreeMap<String, PoolEntry>,
}

impl Pool {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `e` if its prompt has no entry yet or `e` scores strictly higher.
    pub fn offer(&mut self, e: PoolEntry) -> Offer {
        if !e.reward.is_finite() {
            return Offer::Kept;
        }
        match self.entries.get_mut(&e.key) {
            None => {
                self.entries.insert(e.key.clone(), e);
                Offer::New
            }
            Some(old) if e.reward > old.reward => {
                *old = e;
                Offer::Replaced
            }
            Some(_) => Offer::Kept,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&PoolEntry> {
        self.entries.get(key)
    }

    pub fn entries(&self) -> impl Iterator<Item = &PoolEntry> {
        self.entries.values()
    }

    pub fn mean_reward(&self) -> Option<f64> {
        (!self.is_empty()).then(|| self.entries().map(|e| e.reward).sum::<f64>() / self.len() as f64)
    }

    /// The pool as JSON lines (key order).
    pub fn to_jsonl(&self) -> String {
        let mut s = String::new();
        for e in self.entries() {
            s.push_str(&e.to_json().to_string());
            s.push('\n');
        }
        s
    }
}

/// Counts of one iteration's offers to the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolUpdate {
    pub new: usize,
    pub replaced: usize,
    pub kept: usize,
    /// Prompts with no eligible sample this iteration.
    pub no_winner: usize,
}

impl PoolUpdate {
    pub fn record(&mut self, o: Offer) {
        match o {
            Offer::New => self.new += 1,
            Offer::Replaced => self.replaced += 1,
            Offer::Kept => self.kept += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(reward: f64, finished: bool) -> Sample {
        Sample { text: format!("r{reward}"), tokens: 3, finished, reward, helpfulness: None, safety: None }
    }

    fn entry(key: &str, reward: f64, iteration: usize, response: &str) -> PoolEntry {
        PoolEntry {
            key: key.into(),
            prompt: vec![Message::user(key)],
            is_safety: false,
            response: response.into(),
            reward,
            iteration,
            temperature: 1.0,
        }
    }

    #[test]
    fn best_index_takes_highest_first_on_ties_and_skips_unfinished() {
        assert_eq!(best_index(&[s(0.2, true), s(0.9, true), s(0.9, true), s(0.1, true)], true), Some(1));
        // The 0.95 reply was cut off: with require_finished it cannot win.
        assert_eq!(best_index(&[s(0.2, true), s(0.95, false), s(0.5, true)], true), Some(2));
        assert_eq!(best_index(&[s(0.2, true), s(0.95, false), s(0.5, true)], false), Some(1));
        assert_eq!(best_index(&[s(0.2, false)], true), None);
        assert_eq!(best_index(&[s(f64::NAN, true), s(0.1, true)], true), Some(1));
        assert_eq!(best_index(&[], true), None);
        // An empty reply is no demonstration (the pool is an SFT dataset), however it scores.
        let empty = Sample { text: " \n".into(), ..s(0.99, true) };
        assert_eq!(best_index(&[s(0.2, true), empty.clone(), s(0.5, true)], true), Some(2));
        assert_eq!(best_index(&[empty], false), None);
    }

    #[test]
    fn pool_keeps_the_best_ever_and_ties_keep_the_old() {
        let mut pool = Pool::new();
        assert_eq!(pool.offer(entry("a", 0.6, 1, "old a")), Offer::New);
        assert_eq!(pool.offer(entry("b", 0.3, 1, "old b")), Offer::New);
        // Iteration 2: a is worse (kept), b is better (replaced).
        assert_eq!(pool.offer(entry("a", 0.4, 2, "new a")), Offer::Kept);
        assert_eq!(pool.offer(entry("b", 0.8, 2, "new b")), Offer::Replaced);
        // Iteration 3: a tie keeps the old sample; NaN never enters.
        assert_eq!(pool.offer(entry("a", 0.6, 3, "tied a")), Offer::Kept);
        assert_eq!(pool.offer(entry("c", f64::NAN, 3, "nan")), Offer::Kept);
        assert_eq!(pool.len(), 2);
        let a = pool.get("a").unwrap();
        assert_eq!((a.response.as_str(), a.iteration, a.reward), ("old a", 1, 0.6));
        let b = pool.get("b").unwrap();
        assert_eq!((b.response.as_str(), b.iteration), ("new b", 2));
        assert!((pool.mean_reward().unwrap() - 0.7).abs() < 1e-12);
    }

    #[test]
    fn pool_rows_read_back_as_sft_records() {
        let mut pool = Pool::new();
        pool.offer(entry("What is 2 plus 2?", 0.9, 1, "2 plus 2 is 4."));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.jsonl");
        std::fs::write(&path, pool.to_jsonl()).unwrap();
        let recs: Vec<datasets::SftRecord> = datasets::io::read_all(&path).unwrap();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].messages, vec![Message::user("What is 2 plus 2?"), Message::assistant("2 plus 2 is 4.")]);
        let v: serde_json::Value = serde_json::from_str(pool.to_jsonl().trim()).unwrap();
        assert_eq!((v["score"].as_f64(), v["iteration"].as_u64(), v["temperature"].as_f64()), (Some(0.9), Some(1), Some(1.0)));
    }

    #[test]
    fn winner_of_a_prompt() {
        let p = PromptSamples {
            key: prompt_key(&[Message::user("hi")]),
            prompt: vec![Message::user("hi")],
            is_safety: true,
            iteration: 2,
            temperature: 1.2,
            samples: vec![s(0.1, true), s(0.7, true)],
            best: best_index(&[s(0.1, true), s(0.7, true)], true),
            skipped: None,
            generation_seconds: 0.0,
            scoring_seconds: 0.0,
        };
        let w = p.winner().unwrap();
        assert_eq!((w.response.as_str(), w.reward, w.iteration, w.is_safety), ("r0.7", 0.7, 2, true));
        assert_eq!(w.key, r#"[{"role":"user","content":"hi"}]"#);
    }
}
