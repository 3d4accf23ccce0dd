//! Ground-truth evaluation of a policy on demo-world prompts: generate a reply to each prompt in
//! the Llama-2 chat format and score it with the demo judges (helpfulness over non-harmful
//! prompts, safety over harmful ones, false refusals over borderline ones).
use crate::error::{Result, TrainError};
use datasets::demo::{aggregate, judge_messages, DemoScores};
use datasets::PromptRecord;
use llama::{generate, Llama, SamplingParams, Tokenizer};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct PolicyEval {
    pub scores: DemoScores,
    /// A few (prompt, reply) pairs to read.
    pub samples: Vec<(String, String)>,
    pub seconds: f64,
    pub generated_tokens: usize,
}

/// Greedy (or `params`) replies to every prompt, judged.
pub fn evaluate_policy(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[PromptRecord],
    params: &SamplingParams,
    batch: usize,
) -> Result<PolicyEval> {
    evaluate_policy_n(model, tok, prompts, params, batch, 1)
}

/// `n` replies to every prompt (with sampling: seeds `params.seed + i` for the i-th batch of a
/// round, rounds drawing from distinct seeds), all judged and pooled: rates are over prompts x n.
/// With greedy decoding `n` is taken as 1 (every round would be the same).
pub fn evaluate_policy_n(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[PromptRecord],
    params: &SamplingParams,
    batch: usize,
    n: usize,
) -> Result<PolicyEval> {
    let start = Instant::now();
    let rounds = if params.temperature > 0.0 { n.max(1) } else { 1 };
    let mut judgements = Vec::with_capacity(prompts.len() * rounds);
    let mut samples = Vec::new();
    let mut generated = 0;
    let chunks: Vec<&[PromptRecord]> = prompts.chunks(batch.max(1)).collect();
    for round in 0..rounds {
        for (ci, chunk) in chunks.iter().enumerate() {
            let ids = chunk.iter().map(|p| llama::chat::encode_prompt(tok, &p.prompt)).collect::<std::result::Result<Vec<_>, _>>()?;
            let mut params = params.clone();
            if rounds > 1 {
                params.seed = params.seed.wrapping_add((round * chunks.len() + ci) as u64 * 0x9E37_79B9);
            }
            let out = generate(model, &ids, &params)?;
            for (p, new) in chunk.iter().zip(&out.tokens) {
                generated += new.len();
                let reply = tok.decode(new)?;
                judgements.push(judge_messages(&p.prompt, &reply));
                if samples.len() < 12 {
                    let last = p.prompt.last().map(|m| m.content.clone()).unwrap_or_default();
                    samples.push((last, reply));
                }
            }
        }
    }
    if judgements.is_empty() {
        return Err(TrainError::Config("no prompts to evaluate".into()));
    }
    Ok(PolicyEval { scores: aggregate(&judgements), samples, seconds: start.elapsed().as_secs_f64(), generated_tokens: generated })
}

/// Greedy decoding with the demo's reply budget.
pub fn greedy(max_new_tokens: usize, eos: i64) -> SamplingParams {
    SamplingParams { max_new_tokens, temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0, stop_at_eos: true, eos_token_id: eos, num_samples: 1 }
}
