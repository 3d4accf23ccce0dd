//! Best-of-K sampling and scoring of one prompt batch: the rollout engine (`llama::engine`)
//! prefills each prompt once into the K slots of its samples and decodes the batch with
//! continuous batching; every reply is scored by the reward models, and the
//! samples are ranked by Llama 2's combined reward `R_c` (Section 3.2.3), as
//! [`reward::combine::RewardScorer`] gives it (the scorer PPO uses too).
use crate::error::Result;
use crate::select::{best_index, prompt_key, PromptSamples, Sample};
use datasets::PromptRecord;
use llama::engine::{self, EngineConfig, Request, RowOutput};
use llama::{Llama, SamplingParams, Tokenizer};
use reward::combine::RewardScorer;
use std::time::Instant;

/// What sampling a batch needs besides the prompts.
pub struct SampleSpec {
    pub k: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: i64,
    pub max_new_tokens: usize,
    pub seed: u64,
    pub iteration: usize,
    pub require_finished: bool,
}

/// K samples of every prompt of the batch, scored and with the winner marked. Prompts whose
/// encoding plus `max_new_tokens` exceeds the model's context come back skipped (no samples).
pub fn sample_batch(
    policy: &Llama,
    scorer: &RewardScorer,
    tok: &Tokenizer,
    prompts: &[&PromptRecord],
    spec: &SampleSpec,
) -> Result<Vec<PromptSamples>> {
    let limit = policy.cfg.max_position_embeddings as usize;
    let mut ids = Vec::with_capacity(prompts.len());
    let mut fits = Vec::with_capacity(prompts.len());
    for p in prompts {
        let x = llama::chat::encode_prompt(tok, &p.prompt)?;
        fits.push(x.len() + spec.max_new_tokens <= limit);
        if x.len() + spec.max_new_tokens <= limit {
            ids.push(x);
        }
    }
    let params = SamplingParams {
        max_new_tokens: spec.max_new_tokens,
        temperature: spec.temperature,
        top_p: spec.top_p,
        top_k: spec.top_k,
        seed: spec.seed,
        stop_at_eos: true,
        eos_token_id: policy.cfg.eos_token_id,
        num_samples: spec.k,
    };
    let t0 = Instant::now();
    let sampled: Vec<&PromptRecord> = prompts.iter().zip(&fits).filter(|(_, &f)| f).map(|(p, _)| *p).collect();
    // Each prompt's draws come from its own stream, keyed by the batch seed and the prompt itself:
    // the samples do not depend on which other prompts of the batch are still to be sampled.
    let requests: Vec<Request> = ids
        .iter()
        .zip(&sampled)
        .map(|(x, p)| Request { prompt: x, seed: prompt_stream(spec.seed, &prompt_key(&p.prompt)), expected_new_tokens: None })
        .collect();
    let mut rows: Vec<Option<RowOutput>> = vec![None; requests.len() * spec.k];
    engine::run(policy, &requests, &params, &EngineConfig::default(), |r: RowOutput| -> Result<()> {
        let i = r.request * spec.k + r.sample;
        rows[i] = Some(r);
        Ok(())
    })?;
    let out: Vec<RowOutput> = rows.into_iter().flatten().collect();
    let gen_seconds = t0.elapsed().as_secs_f64();
    let texts = out.iter().map(|r| tok.decode(&r.tokens).map(|s| s.trim().to_string())).collect::<std::result::Result<Vec<_>, _>>()?;
    let t1 = Instant::now();
    let items: Vec<(&PromptRecord, &str)> = texts.iter().enumerate().map(|(r, t)| (sampled[r / spec.k], t.as_str())).collect();
    let scores = scorer.score(tok, &items)?;
    let score_seconds = t1.elapsed().as_secs_f64();
    let share = 1.0 / sampled.len().max(1) as f64;

    let mut results = Vec::with_capacity(prompts.len());
    let mut next = 0usize;
    for (p, &fit) in prompts.iter().zip(&fits) {
        let mut r = PromptSamples {
            key: prompt_key(&p.prompt),
            prompt: p.prompt.clone(),
            is_safety: p.is_safety,
            iteration: spec.iteration,
            temperature: spec.temperature,
            samples: Vec::new(),
            best: None,
            skipped: None,
            generation_seconds: 0.0,
            scoring_seconds: 0.0,
        };
        if !fit {
            r.skipped = Some(format!("prompt + max_new_tokens exceeds the model's {limit} positions"));
            results.push(r);
            continue;
        }
        for j in 0..spec.k {
            let row = next * spec.k + j;
            let s = scores[row];
            r.samples.push(Sample {
                text: texts[row].clone(),
                tokens: out[row].tokens.len(),
                finished: out[row].finished,
                reward: s.rc,
                helpfulness: s.helpfulness,
                safety: s.safety,
            });
        }
        r.best = best_index(&r.samples, spec.require_finished);
        r.generation_seconds = gen_seconds * share;
        r.scoring_seconds = score_seconds * share;
        next += 1;
        results.push(r);
    }
    Ok(results)
}

/// The draw stream of a prompt of a batch seeded `batch_seed`, from the prompt's key.
pub fn prompt_stream(batch_seed: u64, key: &str) -> u64 {
    // FNV-1a of the key, mixed into the batch seed.
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    engine::prompt_seed(batch_seed, h)
}

/// A stream seed for (iteration, batch, temperature), so that each batch samples the same way
/// whether or not the run was interrupted before it.
pub fn batch_seed(seed: u64, iteration: usize, batch: usize, temperature: f64) -> u64 {
    let mut x = seed ^ 0x5253_5f53_4545_4400; // "RS_SEED"
    for v in [iteration as u64, batch as u64, temperature.to_bits()] {
        x = x.wrapping_add(v).wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_seeds_differ_and_repeat() {
        let a = batch_seed(0, 1, 0, 1.0);
        assert_eq!(a, batch_seed(0, 1, 0, 1.0));
        assert_ne!(a, batch_seed(0, 1, 1, 1.0));
        assert_ne!(a, batch_seed(0, 2, 0, 1.0));
        assert_ne!(a, batch_seed(0, 1, 0, 1.2));
        assert_ne!(a, batch_seed(1, 1, 0, 1.0));
    }
}
