//! Ground-truth evaluation of a policy on demo-world prompts: generate a reply to each prompt in
//! the Llama-2 chat format and score it with the demo judges (helpfulness over non-harmful
//! prompts, safety over harmful ones, false refusals over borderline ones).
use crate::error::{Result, TrainError};
use datasets::demo::{judge_messages, aggregate, DemoScores};
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
pub fn evaluate_policy(model: &Llama, tok: &Tokenizer, prompts: &[PromptRecord], params: &SamplingParams, batch: usize) -> Result<PolicyEval> {
    let start = Instant::now();
    let mut judgements = Vec::with_capacity(prompts.len());
    let mut samples = Vec::new();
    let mut generated = 0;
    for chunk in prompts.chunks(batch.max(1)) {
        let ids = chunk
            .iter()
            .map(|p| llama::chat::encode_prompt(tok, &p.prompt))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let out = generate(model, &ids, params)?;
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
    if judgements.is_empty() {
        return Err(TrainError::Config("no prompts to evaluate".into()));
    }
    Ok(PolicyEval { scores: aggregate(&judgements), samples, seconds: start.elapsed().as_secs_f64(), generated_tokens: generated })
}

/// Greedy decoding with the demo's reply budget.
pub fn greedy(max_new_tokens: usize, eos: i64) -> SamplingParams {
    SamplingParams { max_new_tokens, temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0, stop_at_eos: true, eos_token_id: eos, num_samples: 1 }
}
