//! The policy evaluation of the demo world, the only one: replies generated to prompts in the
//! Llama-2 chat format ([`replies`]) and judged against the world's ground truth
//! ([`ground_truth`]: helpfulness over non-harmful prompts, safety over harmful ones, false
//! refusals over borderline ones).
//!
//! * [`evaluate_policy`] is both, for `rlhf eval demo` and the pipeline report.
//! * Rejection sampling's before/after evaluation generates the same [`replies`] and scores them
//!   with its reward models as well as with [`ground_truth`].
//! * PPO's held-out evaluation samples with its own rollout code (it needs the log-probabilities
//!   for the KL) and judges those samples with [`ground_truth`].
//!
//! Each caller keeps its seeds: [`ReplySpec::seed_stride`] says how the seed moves from one
//! `generate` call to the next.
use crate::judge::{aggregate, judge_messages, DemoScores};
use crate::DemoError;
use datasets::PromptRecord;
use llama::chat::Message;
use llama::{generate, Llama, LlamaError, SamplingParams, Tokenizer};
use serde::Serialize;
use std::time::Instant;

/// The ground truth of replies: each `(prompt, reply)` judged ([`judge_messages`]), the
/// verdicts aggregated into rates ([`aggregate`]).
pub fn ground_truth<'a>(replies: impl IntoIterator<Item = (&'a [Message], &'a str)>) -> DemoScores {
    aggregate(&replies.into_iter().map(|(prompt, reply)| judge_messages(prompt, reply)).collect::<Vec<_>>())
}

/// How [`replies`] calls `generate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplySpec {
    /// Prompts per `generate` call (each call samples `params.num_samples` replies per prompt).
    pub batch: usize,
    /// Passes over all the prompts; the rates pool them.
    pub rounds: usize,
    /// Call `c` (0-based over rounds, then batches) uses `params.seed + c * seed_stride`
    /// (wrapping): 0 gives every call `params.seed`.
    pub seed_stride: u64,
}

/// One generated reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply<'p> {
    pub prompt: &'p PromptRecord,
    /// The decoded reply, untrimmed.
    pub text: String,
    /// Tokens generated for it.
    pub tokens: usize,
}

/// What [`replies`] generated.
#[derive(Debug, Clone, PartialEq)]
pub struct Replies<'p> {
    /// In order: rounds, prompts, then the samples of a prompt.
    pub replies: Vec<Reply<'p>>,
    /// Prompts left out (once per round) because their chat encoding plus
    /// `params.max_new_tokens` exceeds the model's positions.
    pub skipped: usize,
}

/// Replies to every prompt that fits the model's context: one `generate` call per batch of
/// `spec.batch` prompts, `spec.rounds` times over.
pub fn replies<'p>(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &'p [PromptRecord],
    params: &SamplingParams,
    spec: ReplySpec,
) -> Result<Replies<'p>, LlamaError> {
    let limit = model.cfg.max_position_embeddings as usize;
    let per_prompt = params.num_samples.max(1);
    let chunks: Vec<&[PromptRecord]> = prompts.chunks(spec.batch.max(1)).collect();
    let mut out = Replies { replies: Vec::new(), skipped: 0 };
    for round in 0..spec.rounds.max(1) {
        for (ci, chunk) in chunks.iter().enumerate() {
            let mut ids = Vec::with_capacity(chunk.len());
            let mut kept = Vec::with_capacity(chunk.len());
            for p in chunk.iter() {
                let x = llama::chat::encode_prompt(tok, &p.prompt)?;
                if x.len() + params.max_new_tokens <= limit {
                    ids.push(x);
                    kept.push(p);
                } else {
                    out.skipped += 1;
                }
            }
            let call = (round * chunks.len() + ci) as u64;
            let params = SamplingParams { seed: params.seed.wrapping_add(call.wrapping_mul(spec.seed_stride)), ..params.clone() };
            let generated = generate(model, &ids, &params)?;
            for (row, new) in generated.tokens.iter().enumerate() {
                out.replies.push(Reply { prompt: kept[row / per_prompt], text: tok.decode(new)?, tokens: new.len() });
            }
        }
    }
    Ok(out)
}

/// Ground-truth rates of a policy's replies.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyEval {
    pub scores: DemoScores,
    /// The first (prompt's last message, reply) pairs, to read.
    pub samples: Vec<(String, String)>,
    pub seconds: f64,
    pub generated_tokens: usize,
    /// Prompts too long for the model's positions with the reply budget (per round).
    pub skipped_prompts: usize,
}

/// How many (prompt, reply) pairs an evaluation keeps to read.
pub const SAMPLES_KEPT: usize = 12;

/// `samples_per_prompt` replies to every prompt (1 with greedy decoding, where every round would
/// be the same), judged and pooled: rates are over prompts x samples. Rounds after the first
/// move the seed of each `generate` call (stride 0x9E37_79B9); a single round uses `params.seed`.
pub fn evaluate_policy(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[PromptRecord],
    params: &SamplingParams,
    batch: usize,
    samples_per_prompt: usize,
) -> Result<PolicyEval, DemoError> {
    let start = Instant::now();
    let rounds = if params.temperature > 0.0 { samples_per_prompt.max(1) } else { 1 };
    let spec = ReplySpec { batch, rounds, seed_stride: if rounds > 1 { 0x9E37_79B9 } else { 0 } };
    let r = replies(model, tok, prompts, params, spec)?;
    if r.replies.is_empty() {
        let why = if r.skipped > 0 {
            format!(": all {} are longer than the model's positions allow with {} new tokens", r.skipped, params.max_new_tokens)
        } else {
            String::new()
        };
        return Err(DemoError::NoPrompts(why));
    }
    Ok(PolicyEval {
        scores: ground_truth(r.replies.iter().map(|x| (x.prompt.prompt.as_slice(), x.text.as_str()))),
        samples: r.replies.iter().take(SAMPLES_KEPT).map(|x| (last_message(&x.prompt.prompt), x.text.clone())).collect(),
        seconds: start.elapsed().as_secs_f64(),
        generated_tokens: r.replies.iter().map(|x| x.tokens).sum(),
        skipped_prompts: r.skipped,
    })
}

/// The text of a prompt's last message (the question a sample answers).
pub fn last_message(prompt: &[Message]) -> String {
    prompt.last().map(|m| m.content.clone()).unwrap_or_default()
}

/// Greedy decoding with the demo's reply budget.
pub fn greedy(max_new_tokens: usize, eos: i64) -> SamplingParams {
    SamplingParams { max_new_tokens, temperature: 0.0, top_p: 1.0, top_k: 0, seed: 0, stop_at_eos: true, eos_token_id: eos, num_samples: 1 }
}
