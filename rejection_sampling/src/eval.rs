//! The policy before and after a fine-tune, on held-out prompts: replies scored by the reward
//! models (any prompt set) and by the demo world's ground-truth judges (demo prompts): an
//! RM-score evaluation ([`RmEval`]) whose replies and ground truth are the demo world's one policy
//! evaluation (`demo_world::eval::{replies, ground_truth}`). Greedy replies always (plus the
//! reward-model scores of the same replies, so they are generated once); optionally also sampled
//! replies, as a chat model is used (the Llama-2-Chat reference samples at T = 0.6, top-p 0.9): greedy decoding hides
//! how often a policy still complies with a harmful request when it samples.
use crate::error::Result;
use datasets::PromptRecord;
use demo_world::eval::{ground_truth, last_message, ReplySpec, SAMPLES_KEPT};
use demo_world::DemoScores;
use llama::{Llama, SamplingParams, Tokenizer};
use reward::combine::RewardScorer;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;

/// Scores of one set of replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyScores {
    /// 0 for greedy.
    pub temperature: f64,
    /// Replies per prompt.
    pub per_prompt: usize,
    pub replies: usize,
    /// Mean `R_c` of the replies.
    pub mean_reward: f64,
    pub mean_helpfulness: Option<f64>,
    pub mean_safety: Option<f64>,
    /// Ground truth on demo-world prompts (`None` when no prompt is from the demo world).
    pub demo: Option<DemoScores>,
}

/// The policy's held-out replies scored by the reward models (and, on demo prompts, the ground truth).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RmEval {
    pub model: PathBuf,
    pub prompts: usize,
    /// Greedy replies.
    pub greedy: ReplyScores,
    /// Sampled replies, when configured.
    #[serde(default)]
    pub sampled: Option<ReplyScores>,
    /// A few greedy (prompt, reply) pairs to read.
    pub samples: Vec<(String, String)>,
    pub seconds: f64,
}

/// How the evaluation decodes.
#[derive(Debug, Clone, Copy)]
pub struct EvalSpec {
    pub max_new_tokens: usize,
    pub batch: usize,
    /// `(temperature, replies per prompt, top_p)` of the sampled evaluation.
    pub sampled: Option<(f64, usize, f64)>,
    pub seed: u64,
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

/// Replies (`params.num_samples` per prompt) to every prompt that fits the context, trimmed: call
/// `b` seeded `params.seed + b`.
fn replies<'p>(
    policy: &Llama,
    tok: &Tokenizer,
    prompts: &'p [PromptRecord],
    params: &SamplingParams,
    batch: usize,
) -> Result<Vec<(&'p PromptRecord, String)>> {
    let spec = ReplySpec { batch, rounds: 1, seed_stride: 1 };
    let r = demo_world::eval::replies(policy, tok, prompts, params, spec)?;
    Ok(r.replies.into_iter().map(|x| (x.prompt, x.text.trim().to_string())).collect())
}

fn score(
    scorer: &RewardScorer,
    tok: &Tokenizer,
    replies: &[(&PromptRecord, String)],
    temperature: f64,
    per_prompt: usize,
) -> Result<ReplyScores> {
    let items: Vec<(&PromptRecord, &str)> = replies.iter().map(|(p, r)| (*p, r.as_str())).collect();
    let scores = scorer.score(tok, &items)?;
    let demo = ground_truth(replies.iter().map(|(p, r)| (p.prompt.as_slice(), r.as_str())));
    Ok(ReplyScores {
        temperature,
        per_prompt,
        replies: replies.len(),
        mean_reward: mean(scores.iter().map(|s| s.rc)).unwrap_or(f64::NAN),
        mean_helpfulness: mean(scores.iter().filter_map(|s| s.helpfulness)),
        mean_safety: mean(scores.iter().filter_map(|s| s.safety)),
        demo: (demo.n_unknown < demo.n).then_some(demo),
    })
}

pub fn evaluate(
    model_dir: PathBuf,
    policy: &Llama,
    scorer: &RewardScorer,
    tok: &Tokenizer,
    prompts: &[PromptRecord],
    spec: &EvalSpec,
) -> Result<RmEval> {
    let start = Instant::now();
    let params = demo_world::eval::greedy(spec.max_new_tokens, policy.cfg.eos_token_id);
    let greedy_replies = replies(policy, tok, prompts, &params, spec.batch)?;
    let greedy = score(scorer, tok, &greedy_replies, 0.0, 1)?;
    let sampled = match spec.sampled {
        Some((t, k, top_p)) => {
            let p = SamplingParams { temperature: t, top_p, num_samples: k.max(1), seed: spec.seed, ..params.clone() };
            let r = replies(policy, tok, prompts, &p, spec.batch.div_ceil(k.max(1)))?;
            Some(score(scorer, tok, &r, t, k.max(1))?)
        }
        None => None,
    };
    let samples = greedy_replies.iter().take(SAMPLES_KEPT).map(|(p, r)| (last_message(&p.prompt), r.clone())).collect();
    Ok(RmEval { model: model_dir, prompts: greedy_replies.len(), greedy, sampled, samples, seconds: start.elapsed().as_secs_f64() })
}
