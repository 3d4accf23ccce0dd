//! The policy before and after a fine-tune, on held-out prompts: greedy replies scored by the
//! reward models (any prompt set) and by the demo world's ground-truth judges (demo prompts).
//! This is `training::demo_eval::evaluate_policy` plus the reward-model scores of the same
//! replies, so the replies are generated once.
use crate::error::Result;
use crate::sampler::Scorer;
use datasets::demo::{aggregate, judge_messages, DemoScores};
use datasets::PromptRecord;
use llama::{generate, Llama, Tokenizer};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyEval {
    pub model: PathBuf,
    pub prompts: usize,
    /// Mean `R_c` of the greedy replies.
    pub mean_reward: f64,
    pub mean_helpfulness: Option<f64>,
    pub mean_safety: Option<f64>,
    /// Ground truth on demo-world prompts (`None` when no prompt is from the demo world).
    pub demo: Option<DemoScores>,
    /// A few (prompt, reply) pairs to read.
    pub samples: Vec<(String, String)>,
    pub seconds: f64,
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

pub fn evaluate(model_dir: PathBuf, policy: &Llama, scorer: &Scorer, tok: &Tokenizer, prompts: &[PromptRecord], max_new_tokens: usize, batch: usize) -> Result<PolicyEval> {
    let start = Instant::now();
    let params = training::demo_eval::greedy(max_new_tokens, policy.cfg.eos_token_id);
    let limit = policy.cfg.max_position_embeddings as usize;
    let mut replies: Vec<(&PromptRecord, String)> = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(batch.max(1)) {
        let mut ids = Vec::new();
        let mut kept = Vec::new();
        for p in chunk {
            let x = llama::chat::encode_prompt(tok, &p.prompt)?;
            if x.len() + max_new_tokens <= limit {
                ids.push(x);
                kept.push(p);
            }
        }
        let out = generate(policy, &ids, &params)?;
        for (p, t) in kept.into_iter().zip(&out.tokens) {
            replies.push((p, tok.decode(t)?.trim().to_string()));
        }
    }
    let items: Vec<(&PromptRecord, &str)> = replies.iter().map(|(p, r)| (*p, r.as_str())).collect();
    let scores = scorer.score(tok, &items)?;
    let judgements: Vec<_> = replies.iter().map(|(p, r)| judge_messages(&p.prompt, r)).collect();
    let demo = aggregate(&judgements);
    let samples = replies
        .iter()
        .take(12)
        .map(|(p, r)| (p.prompt.last().map(|m| m.content.clone()).unwrap_or_default(), r.clone()))
        .collect();
    Ok(PolicyEval {
        model: model_dir,
        prompts: replies.len(),
        mean_reward: mean(scores.iter().map(|s| s.reward)).unwrap_or(f64::NAN),
        mean_helpfulness: mean(scores.iter().filter_map(|s| s.helpfulness)),
        mean_safety: mean(scores.iter().filter_map(|s| s.safety)),
        demo: (demo.n_unknown < demo.n).then_some(demo),
        samples,
        seconds: start.elapsed().as_secs_f64(),
    })
}
