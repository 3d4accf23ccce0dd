//! Simulated annotation on the demo world: comparisons between an iteration's own samples,
//! labeled by the ground-truth judges. Llama 2 collects every weekly batch of comparisons on
//! samples of the latest models (Section 3.2.1), so that the reward models stay accurate on the
//! distribution the policy now produces; this file is that batch for the demo (`iter{N}/
//! judged_pairs.jsonl`), ready for `rlhf reward train` next to the original comparisons.
use crate::select::PromptSamples;
use datasets::{PreferenceKind, PreferenceRecord};
use demo_world::{judge_messages, keep_safety_pair, rating_for_gap, Category, Judgement};
use std::collections::HashSet;

/// The judges' score of a reply, on the demo world's scale: correct 3, wrong 1, false refusal
/// 0.5 on non-harmful prompts; refusal 3, compliance 0 on harmful ones.
fn truth_score(cat: Category, j: &Judgement) -> f64 {
    match cat {
        Category::Harmful => {
            if j.safe {
                3.0
            } else {
                0.0
            }
        }
        _ if j.helpful => 3.0,
        _ if j.refusal => 0.5,
        _ => 1.0,
    }
}

/// Up to `per_prompt` comparisons per demo prompt between distinct samples the judges score
/// differently, the better one as `chosen`, rated by the score gap. Non-demo prompts give none.
pub fn judged_pairs(records: &[PromptSamples], per_prompt: usize, source: &str) -> Vec<PreferenceRecord> {
    let mut out = Vec::new();
    for r in records {
        let mut seen = HashSet::new();
        let scored: Vec<(&str, f64, bool, Category)> = r
            .samples
            .iter()
            .filter(|s| !s.text.trim().is_empty() && seen.insert(s.text.as_str()))
            .filter_map(|s| {
                let j = judge_messages(&r.prompt, &s.text);
                j.category.map(|c| (s.text.as_str(), truth_score(c, &j), j.safe, c))
            })
            .collect();
        let mut n = 0;
        'pairs: for (i, a) in scored.iter().enumerate() {
            for b in &scored[i + 1..] {
                if n >= per_prompt {
                    break 'pairs;
                }
                let (c, rj) = if a.1 > b.1 {
                    (a, b)
                } else if b.1 > a.1 {
                    (b, a)
                } else {
                    continue;
                };
                let safety = c.3 == Category::Harmful;
                if safety && !keep_safety_pair(c.2, rj.2) {
                    continue;
                }
                out.push(PreferenceRecord {
                    prompt: r.prompt.clone(),
                    chosen: c.0.to_string(),
                    rejected: rj.0.to_string(),
                    rating: Some(rating_for_gap(c.1 - rj.1)),
                    kind: Some(if safety { PreferenceKind::Safety } else { PreferenceKind::Helpfulness }),
                    chosen_safe: safety.then_some(c.2),
                    rejected_safe: safety.then_some(rj.2),
                    source: Some(source.to_string()),
                });
                n += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::{prompt_key, Sample};
    use datasets::Rating;
    use llama::Message;

    fn rec(prompt: &str, texts: &[&str]) -> PromptSamples {
        let p = vec![Message::user(prompt)];
        PromptSamples {
            key: prompt_key(&p),
            prompt: p,
            is_safety: false,
            iteration: 1,
            temperature: 1.0,
            samples: texts
                .iter()
                .map(|t| Sample { text: t.to_string(), tokens: 5, finished: true, reward: 0.5, helpfulness: None, safety: None })
                .collect(),
            best: Some(0),
            skipped: None,
            generation_seconds: 0.0,
            scoring_seconds: 0.0,
        }
    }

    #[test]
    fn pairs_prefer_correct_answers_and_skip_ties_and_unknown_prompts() {
        let r = rec(
            "What is the capital of France?",
            &[
                "The capital of France is Madrid.",
                "The capital of France is Paris.",
                "The capital of France is Paris.",
                "The capital of France is Rome.",
            ],
        );
        let pairs = judged_pairs(&[r, rec("Tell me a joke.", &["a", "b"])], 8, "onpolicy");
        // Distinct texts: Madrid (1), Paris (3), Rome (1): Paris beats both; Madrid vs Rome is a tie.
        assert_eq!(pairs.len(), 2, "{pairs:?}");
        for p in &pairs {
            assert_eq!(p.chosen, "The capital of France is Paris.");
            assert_eq!(p.rating, Some(Rating::Better));
            assert_eq!(p.kind, Some(PreferenceKind::Helpfulness));
        }
    }
}
