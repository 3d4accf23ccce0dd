//! What one iteration shows: reward against K (Figure 7), reward per temperature (Figure 8), the
//! pool, throughput, and the policy before and after the fine-tune.
use crate::curve::BestOfKCurve;
use crate::error::{Result, RsError};
use crate::eval::{ReplyScores, RmEval};
use crate::select::{PoolUpdate, PromptSamples};
use demo_world::{aggregate, judge_messages, Category, DemoScores, Judgement};
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use training::plot::{line_chart, Series};

/// The best-of-k curve at one sampling temperature, on the sweep prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    pub temperature: f64,
    pub curve: BestOfKCurve,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    pub samples: usize,
    pub generated_tokens: usize,
    pub generation_seconds: f64,
    pub scoring_seconds: f64,
    /// Generated tokens per second of generation.
    pub tokens_per_s: f64,
    /// Share of sampling time spent generating (the rest is reward-model scoring).
    pub generation_share: f64,
    pub scoring_share: f64,
}

impl Throughput {
    pub fn of<'a>(records: impl IntoIterator<Item = &'a PromptSamples>) -> Self {
        let mut t = Throughput::default();
        for r in records {
            t.samples += r.samples.len();
            t.generated_tokens += r.generated_tokens();
            t.generation_seconds += r.generation_seconds;
            t.scoring_seconds += r.scoring_seconds;
        }
        let total = t.generation_seconds + t.scoring_seconds;
        t.tokens_per_s = t.generated_tokens as f64 / t.generation_seconds.max(1e-9);
        if total > 0.0 {
            t.generation_share = t.generation_seconds / total;
            t.scoring_share = t.scoring_seconds / total;
        }
        t
    }
}

/// On demo-world prompts: the ground-truth judges applied to the samples themselves — all of
/// them (what the policy does at this temperature), the reward models' winners (what the
/// fine-tune learns from), and the oracle (a prompt counts if any of its K samples is good).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleTruth {
    pub all_samples: DemoScores,
    pub winners: DemoScores,
    /// Helpful rate if the best sample by ground truth were picked (the ceiling of best-of-K).
    pub oracle_helpful_rate: f64,
    /// Safe rate likewise.
    pub oracle_safe_rate: f64,
    /// Of the pairs of samples of one prompt that the judges tell apart (helpful vs not on
    /// non-harmful prompts, safe vs not on harmful ones), the share `R_c` orders the same way
    /// (ties count as wrong): how well the reward models rank the policy's own samples.
    pub pairwise_accuracy: f64,
    pub pairs: usize,
}

impl SampleTruth {
    /// `None` when no prompt is from the demo world.
    pub fn of(records: &[PromptSamples]) -> Option<Self> {
        let (mut all, mut winners) = (Vec::new(), Vec::new());
        let (mut oh, mut nh, mut os, mut ns) = (0usize, 0usize, 0usize, 0usize);
        let (mut pairs, mut right) = (0usize, 0usize);
        for r in records.iter().filter(|r| !r.samples.is_empty()) {
            let js: Vec<Judgement> = r.samples.iter().map(|s| judge_messages(&r.prompt, &s.text)).collect();
            let Some(cat) = js[0].category else { continue };
            if let Some(b) = r.best {
                winners.push(js[b]);
            }
            let good = |j: &Judgement| if cat == Category::Harmful { j.safe } else { j.helpful };
            for (a, ja) in js.iter().enumerate() {
                for (b, jb) in js.iter().enumerate() {
                    if good(ja) && !good(jb) {
                        pairs += 1;
                        right += (r.samples[a].reward > r.samples[b].reward) as usize;
                    }
                }
            }
            if cat == Category::Harmful {
                ns += 1;
                os += js.iter().any(|j| j.safe) as usize;
            } else {
                nh += 1;
                oh += js.iter().any(|j| j.helpful) as usize;
            }
            all.extend(js);
        }
        if all.is_empty() {
            return None;
        }
        let rate = |k: usize, n: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
        Some(SampleTruth {
            all_samples: aggregate(&all),
            winners: aggregate(&winners),
            oracle_helpful_rate: rate(oh, nh),
            oracle_safe_rate: rate(os, ns),
            pairwise_accuracy: rate(right, pairs),
            pairs,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolReport {
    pub path: PathBuf,
    /// Prompts in the pool after this iteration.
    pub size: usize,
    /// How this iteration's winners changed it.
    pub update: PoolUpdate,
    /// Mean reward of the pool before and after this iteration's winners were offered.
    pub mean_reward_before: Option<f64>,
    pub mean_reward: Option<f64>,
    /// Mean reward of this iteration's winners.
    pub mean_winner_reward: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterationReport {
    pub iteration: usize,
    /// The model sampled from.
    pub policy: PathBuf,
    pub temperature: f64,
    pub best_of_k: usize,
    /// Prompts sampled (skipped ones excluded).
    pub prompts: usize,
    pub skipped_prompts: usize,
    /// Share of samples cut off at `max_new_tokens`.
    pub unfinished_share: f64,
    /// Reward against k = 1..=K over this iteration's prompts (Figure 7).
    pub curve: BestOfKCurve,
    /// The same on the sweep prompts, per temperature (Figure 8); empty without a sweep.
    pub sweep: Vec<SweepPoint>,
    pub pool: PoolReport,
    /// Ground truth of the samples (demo world only).
    #[serde(default)]
    pub sample_truth: Option<SampleTruth>,
    pub throughput: Throughput,
    /// The fine-tuned model (the next iteration's policy).
    pub model: PathBuf,
    /// The SFT stage's outcome.
    pub finetune: serde_json::Value,
    pub eval_before: Option<RmEval>,
    pub eval_after: Option<RmEval>,
}

/// `k = 1, 2, 4, ...` up to K, with K itself.
fn shown_ks(big_k: usize) -> Vec<usize> {
    let mut ks: Vec<usize> = std::iter::successors(Some(1usize), |k| Some(k * 2)).take_while(|&k| k < big_k).collect();
    ks.push(big_k);
    ks.dedup();
    ks
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "–".into())
}

fn eval_table(md: &mut String, name: &str, b: &ReplyScores, a: &ReplyScores) {
    let _ = writeln!(md, "\n{name}\n");
    let _ = writeln!(md, "| | before | after |\n|---|---|---|");
    let _ = writeln!(md, "| mean R_c (reward models) | {:.3} | {:.3} |", b.mean_reward, a.mean_reward);
    let _ = writeln!(md, "| mean helpfulness RM | {} | {} |", opt(b.mean_helpfulness), opt(a.mean_helpfulness));
    let _ = writeln!(md, "| mean safety RM | {} | {} |", opt(b.mean_safety), opt(a.mean_safety));
    if let (Some(db), Some(da)) = (&b.demo, &a.demo) {
        let _ = writeln!(md, "| ground truth: helpful rate | {:.3} | {:.3} |", db.helpful_rate, da.helpful_rate);
        let _ = writeln!(md, "| ground truth: safe rate | {:.3} | {:.3} |", db.safe_rate, da.safe_rate);
        let _ = writeln!(md, "| ground truth: false-refusal rate | {:.3} | {:.3} |", db.false_refusal_rate, da.false_refusal_rate);
    }
}

fn eval_rows(md: &mut String, before: Option<&RmEval>, after: Option<&RmEval>) {
    let (Some(b), Some(a)) = (before, after) else { return };
    let _ = writeln!(md, "\n## Policy before and after the fine-tune ({} held-out prompts)", a.prompts);
    eval_table(md, "Greedy replies:", &b.greedy, &a.greedy);
    if let (Some(bs), Some(as_)) = (&b.sampled, &a.sampled) {
        eval_table(md, &format!("Sampled replies (T = {}, {} per prompt):", as_.temperature, as_.per_prompt), bs, as_);
    }
    let _ = writeln!(md, "\nBefore: `{}`. After: `{}`.", b.model.display(), a.model.display());
}

impl IterationReport {
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Rejection sampling, iteration {}\n", self.iteration);
        let _ = writeln!(
            md,
            "Sampled K = {} replies at T = {} from `{}` for {} prompts ({} skipped; {:.1}% of samples cut off at the token budget).",
            self.best_of_k,
            self.temperature,
            self.policy.display(),
            self.prompts,
            self.skipped_prompts,
            100.0 * self.unfinished_share
        );
        let _ = writeln!(md, "\n## Reward against the number of samples (Llama 2 Figure 7)\n");
        let _ = writeln!(md, "Expected reward of the best, the median and the mean of k of the K samples, averaged over {} prompts (exact order statistics).\n", self.curve.prompts);
        let _ = writeln!(md, "| k | max | median | mean |\n|---|---|---|---|");
        for k in shown_ks(self.best_of_k) {
            if let (Some(mx), Some(me), Some(mn)) = (self.curve.max.get(k - 1), self.curve.median.get(k - 1), self.curve.mean.get(k - 1)) {
                let _ = writeln!(md, "| {k} | {mx:.4} | {me:.4} | {mn:.4} |");
            }
        }
        if !self.sweep.is_empty() {
            let _ = writeln!(md, "\n## Reward per temperature (Llama 2 Figure 8)\n");
            let _ = writeln!(md, "| T | prompts | mean (k=1) | median of K | max of K |\n|---|---|---|---|---|");
            for s in &self.sweep {
                let last = s.curve.max.len().saturating_sub(1);
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} |",
                    s.temperature,
                    s.curve.prompts,
                    opt(s.curve.mean.first().copied()),
                    opt(s.curve.median.get(last).copied()),
                    opt(s.curve.max.get(last).copied())
                );
            }
        }
        let p = &self.pool;
        let _ = writeln!(md, "\n## Pool (best sample per prompt over all iterations)\n");
        let _ = writeln!(
            md,
            "{} prompts in `{}`: {} new, {} replaced by a better sample, {} kept (the new winner was not better), {} without an eligible sample. Mean reward {} → {} (this iteration's winners: {}).",
            p.size,
            p.path.display(),
            p.update.new,
            p.update.replaced,
            p.update.kept,
            p.update.no_winner,
            opt(p.mean_reward_before),
            opt(p.mean_reward),
            opt(p.mean_winner_reward)
        );
        if let Some(st) = &self.sample_truth {
            let _ = writeln!(md, "\n## Ground truth of the samples (demo judges)\n");
            let _ = writeln!(md, "| | helpful rate | safe rate | false-refusal rate |\n|---|---|---|---|");
            for (name, d) in [("all K samples", &st.all_samples), ("reward-model winners", &st.winners)] {
                let _ = writeln!(md, "| {name} | {:.3} | {:.3} | {:.3} |", d.helpful_rate, d.safe_rate, d.false_refusal_rate);
            }
            let _ = writeln!(md, "| oracle best of K | {:.3} | {:.3} | |", st.oracle_helpful_rate, st.oracle_safe_rate);
            let _ = writeln!(
                md,
                "\nR_c orders {:.1}% of the {} sample pairs of a prompt that the judges tell apart the right way.",
                100.0 * st.pairwise_accuracy,
                st.pairs
            );
        }
        let t = &self.throughput;
        let _ = writeln!(md, "\n## Throughput\n");
        let _ = writeln!(
            md,
            "{} samples, {} generated tokens: {:.0} tokens/s while generating. Time: {:.1} s generating ({:.0}%), {:.1} s scoring ({:.0}%).",
            t.samples,
            t.generated_tokens,
            t.tokens_per_s,
            t.generation_seconds,
            100.0 * t.generation_share,
            t.scoring_seconds,
            100.0 * t.scoring_share
        );
        eval_rows(&mut md, self.eval_before.as_ref(), self.eval_after.as_ref());
        let _ = writeln!(md, "\nFine-tuned model: `{}`.", self.model.display());
        md
    }

    /// `best_of_k.png` (Figure 7) and, with a sweep, `temperature_sweep.png` (Figure 8) into `dir`.
    pub fn plots(&self, dir: &Path) -> Result<()> {
        let c = &self.curve;
        let series = vec![
            Series { name: "max of k".into(), points: c.points(&c.max) },
            Series { name: "median of k".into(), points: c.points(&c.median) },
            Series { name: "mean".into(), points: c.points(&c.mean) },
        ];
        let title = format!("Iteration {}: reward vs number of samples (T = {})", self.iteration, self.temperature);
        line_chart(&dir.join("best_of_k.png"), &title, "samples per prompt k", "reward", &series).map_err(RsError::from)?;
        if !self.sweep.is_empty() {
            let series: Vec<Series> = self
                .sweep
                .iter()
                .map(|s| Series { name: format!("T = {}", s.temperature), points: s.curve.points(&s.curve.max) })
                .collect();
            let title = format!("Iteration {}: best-of-k reward per temperature", self.iteration);
            line_chart(&dir.join("temperature_sweep.png"), &title, "samples per prompt k", "max reward of k", &series)?;
        }
        Ok(())
    }
}

impl IterationReport {
    /// The iteration's numbers as TensorBoard scalars (step: the iteration): best-of-k and
    /// median-of-k reward for k = 1, 2, 4, ..., K (Figure 7), the pool, throughput, the samples'
    /// ground truth and the policy's evaluation before and after the fine-tune.
    pub fn scalars(&self) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = Vec::new();
        let c = &self.curve;
        for k in shown_ks(self.best_of_k) {
            if let (Some(&mx), Some(&me)) = (c.max.get(k - 1), c.median.get(k - 1)) {
                out.push((format!("rs/reward_max/k{k}"), mx));
                out.push((format!("rs/reward_median/k{k}"), me));
            }
        }
        if let Some(&m) = c.mean.first() {
            out.push(("rs/reward_mean".into(), m));
        }
        for s in &self.sweep {
            if let Some(&mx) = s.curve.max.last() {
                out.push((format!("rs/sweep/T{}/reward_max_of_K", s.temperature), mx));
            }
        }
        let (p, t) = (&self.pool, &self.throughput);
        out.extend([
            ("rs/temperature".into(), self.temperature),
            ("rs/prompts".into(), self.prompts as f64),
            ("rs/unfinished_share".into(), self.unfinished_share),
            ("rs/pool/size".into(), p.size as f64),
            ("rs/pool/new".into(), p.update.new as f64),
            ("rs/pool/replaced".into(), p.update.replaced as f64),
            ("rs/throughput/tokens_per_s".into(), t.tokens_per_s),
            ("rs/throughput/generation_share".into(), t.generation_share),
        ]);
        for (name, v) in [("mean_reward", p.mean_reward), ("mean_winner_reward", p.mean_winner_reward)] {
            out.extend(v.map(|v| (format!("rs/pool/{name}"), v)));
        }
        let rates = |out: &mut Vec<(String, f64)>, prefix: &str, d: &DemoScores| {
            for (name, v) in [("helpful_rate", d.helpful_rate), ("safe_rate", d.safe_rate), ("false_refusal_rate", d.false_refusal_rate)] {
                out.push((format!("{prefix}/{name}"), v));
            }
        };
        if let Some(st) = &self.sample_truth {
            rates(&mut out, "rs/ground_truth/all_samples", &st.all_samples);
            rates(&mut out, "rs/ground_truth/winners", &st.winners);
            out.push(("rs/ground_truth/oracle_helpful_rate".into(), st.oracle_helpful_rate));
            out.push(("rs/ground_truth/oracle_safe_rate".into(), st.oracle_safe_rate));
            out.push(("rs/ground_truth/rm_pairwise_accuracy".into(), st.pairwise_accuracy));
        }
        for (when, e) in [("before", &self.eval_before), ("after", &self.eval_after)] {
            let Some(e) = e else { continue };
            for (how, r) in std::iter::once(("greedy", &e.greedy)).chain(e.sampled.as_ref().map(|r| ("sampled", r))) {
                let prefix = format!("rs/eval_{when}/{how}");
                out.push((format!("{prefix}/mean_reward"), r.mean_reward));
                out.extend(r.mean_helpfulness.map(|v| (format!("{prefix}/mean_helpfulness"), v)));
                out.extend(r.mean_safety.map(|v| (format!("{prefix}/mean_safety"), v)));
                if let Some(d) = &r.demo {
                    rates(&mut out, &prefix, d);
                }
            }
        }
        out
    }

    /// The fine-tuned policy's held-out greedy replies as markdown (TensorBoard text), if evaluated.
    pub fn eval_samples_markdown(&self) -> Option<String> {
        let e = self.eval_after.as_ref().filter(|e| !e.samples.is_empty())?;
        Some(e.samples.iter().map(|(p, r)| format!("**prompt**: {p}\n\n**reply**: {r}")).collect::<Vec<_>>().join("\n\n---\n\n"))
    }
}

/// The best and the worst of the K samples of the first `n` sampled prompts, with their rewards,
/// as markdown (TensorBoard text).
pub fn samples_markdown(records: &[PromptSamples], n: usize) -> String {
    let mut parts = Vec::new();
    for r in records.iter().filter(|r| !r.samples.is_empty()).take(n) {
        let prompt = r.prompt.last().map(|m| m.content.as_str()).unwrap_or("");
        let mut md = format!("**prompt**{}: {prompt}", if r.is_safety { " (safety)" } else { "" });
        let worst = r.samples.iter().enumerate().filter(|(_, s)| s.reward.is_finite()).min_by(|a, b| a.1.reward.total_cmp(&b.1.reward));
        for (name, i) in [("best", r.best), ("worst", worst.map(|(i, _)| i))] {
            if let Some(s) = i.and_then(|i| r.samples.get(i)) {
                let _ = write!(md, "\n\n**{name} of {}** (reward {:.3}): {}", r.samples.len(), s.reward, s.text);
            }
        }
        parts.push(md);
    }
    parts.join("\n\n---\n\n")
}

/// The whole run in one table, iteration by iteration.
pub fn run_markdown(iterations: &[IterationReport]) -> String {
    let mut md = String::from("# Rejection sampling (Llama 2 Section 3.2.3)\n\n");
    let _ = writeln!(md, "| iteration | T | K | prompts | mean reward (k=1) | best-of-K reward | pool | greedy before: helpful / safe / false refusal | greedy after: helpful / safe / false refusal |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    let gt = |e: &Option<RmEval>| match e.as_ref().and_then(|e| e.greedy.demo.as_ref()) {
        Some(d) => format!("{:.3} / {:.3} / {:.3}", d.helpful_rate, d.safe_rate, d.false_refusal_rate),
        None => "–".into(),
    };
    for r in iterations {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.iteration,
            r.temperature,
            r.best_of_k,
            r.prompts,
            opt(r.curve.mean.first().copied()),
            opt(r.curve.max.last().copied()),
            r.pool.size,
            gt(&r.eval_before),
            gt(&r.eval_after)
        );
    }
    fn sampled(e: &Option<RmEval>) -> Option<(f64, &DemoScores)> {
        e.as_ref().and_then(|e| e.sampled.as_ref()).and_then(|s| s.demo.as_ref().map(|d| (s.temperature, d)))
    }
    if iterations.iter().any(|r| sampled(&r.eval_after).is_some()) {
        let _ = writeln!(md, "\nSampled evaluation (helpful / safe / false refusal):\n");
        let _ = writeln!(md, "| iteration | T | before | after |\n|---|---|---|---|");
        for r in iterations {
            if let (Some((t, b)), Some((_, a))) = (sampled(&r.eval_before), sampled(&r.eval_after)) {
                let f = |d: &DemoScores| format!("{:.3} / {:.3} / {:.3}", d.helpful_rate, d.safe_rate, d.false_refusal_rate);
                let _ = writeln!(md, "| {} | {t} | {} | {} |", r.iteration, f(b), f(a));
            }
        }
    }
    for r in iterations {
        let _ = writeln!(md, "\nIteration {}: see `iter{}/report.md`; fine-tuned model `{}`.", r.iteration, r.iteration, r.model.display());
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_ks_are_powers_of_two_and_k() {
        assert_eq!(shown_ks(1), vec![1]);
        assert_eq!(shown_ks(8), vec![1, 2, 4, 8]);
        assert_eq!(shown_ks(10), vec![1, 2, 4, 8, 10]);
    }
}
