//! Best-of-K sampling and scoring: the rollout engine (`llama::engine`) decodes the whole prompt
//! list with continuous batching over `prompt_batch_size × K` slots (a freed slot takes the next
//! prompt, across prompt batches), prefilling each prompt once into the K slots of its samples.
//! A prompt whose K rows have all ended is journaled at once ([`GenJournal`], fsync'd); when every
//! prompt of a prompt batch is generated, the batch is scored by the reward models and ranked by
//! Llama 2's combined reward `R_c` (Section 3.2.3), as [`reward::combine::RewardScorer`] gives it
//! (the scorer PPO uses too), and handed to the caller to log.
//!
//! Scoring groups stay the positional prompt batches (not completion order): a reward-model forward
//! rounds differently next to other rows, so a resumed run scores exactly the groups the
//! uninterrupted run scored, and its scores are bit-identical.
use crate::error::Result;
use crate::select::{best_index, prompt_key, PromptSamples, Sample};
use crate::shard::{GenJournal, GenRecord, GenSample};
use datasets::PromptRecord;
use llama::engine::{self, EngineConfig, Request, RowOutput};
use llama::{Llama, SamplingParams, Tokenizer};
use reward::combine::RewardScorer;
use std::collections::BTreeMap;
use std::time::Instant;

/// What sampling needs besides the prompts (the seeds come with each [`Job`]).
pub struct SampleSpec {
    pub k: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: i64,
    pub max_new_tokens: usize,
    pub iteration: usize,
    pub require_finished: bool,
    /// Rows decoded together (the engine's slots; rounded down to a multiple of K).
    pub slots: usize,
}

/// One prompt to sample: its prompt batch (the scoring group) and that batch's seed
/// ([`batch_seed`]); the prompt's own stream is [`prompt_stream`] of it.
pub struct Job<'a> {
    pub batch: usize,
    pub batch_seed: u64,
    pub prompt: &'a PromptRecord,
}

/// K samples of every job, continuous across prompt batches. Generated prompts go to `journal` as
/// they finish (those already in it are not regenerated); each prompt batch, once all of its
/// prompts are generated, is scored and passed to `emit` (its records in job order, the winner
/// marked). Prompts whose encoding plus `max_new_tokens` exceeds the model's context come back
/// skipped (no samples).
pub fn sample_prompts(
    policy: &Llama,
    scorer: &RewardScorer,
    tok: &Tokenizer,
    jobs: &[Job],
    spec: &SampleSpec,
    journal: &mut GenJournal,
    mut emit: impl FnMut(Vec<PromptSamples>) -> Result<()>,
) -> Result<()> {
    let limit = policy.cfg.max_position_embeddings as usize;
    let k = spec.k;
    let keys: Vec<String> = jobs.iter().map(|j| prompt_key(&j.prompt.prompt)).collect();
    let mut ids: Vec<Option<Vec<u32>>> = Vec::with_capacity(jobs.len());
    for j in jobs {
        let x = llama::chat::encode_prompt(tok, &j.prompt.prompt)?;
        ids.push((x.len() + spec.max_new_tokens <= limit).then_some(x));
    }
    // Scoring groups (prompt batches) in batch order, each with its jobs in order.
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, j) in jobs.iter().enumerate() {
        groups.entry(j.batch).or_default().push(i);
    }
    let mut gen: Vec<Option<GenRecord>> = keys.iter().map(|key| journal.get(key).cloned()).collect();
    let mut left: BTreeMap<usize, usize> =
        groups.iter().map(|(&b, idx)| (b, idx.iter().filter(|&&i| ids[i].is_some() && gen[i].is_none()).count())).collect();
    let group = |b: usize, gen: &[Option<GenRecord>]| -> Result<Vec<PromptSamples>> {
        score_group(scorer, tok, jobs, &keys, &groups[&b], gen, spec, limit)
    };
    // Groups generated before an interruption are scored first.
    for (&b, _) in left.iter().filter(|(_, &n)| n == 0) {
        emit(group(b, &gen)?)?;
    }
    let pending: Vec<usize> = (0..jobs.len()).filter(|&i| ids[i].is_some() && gen[i].is_none()).collect();
    if pending.is_empty() {
        return Ok(());
    }
    let params = SamplingParams {
        max_new_tokens: spec.max_new_tokens,
        temperature: spec.temperature,
        top_p: spec.top_p,
        top_k: spec.top_k,
        seed: 0,
        stop_at_eos: true,
        eos_token_id: policy.cfg.eos_token_id,
        num_samples: k,
    };
    // Each prompt's draws come from its own stream, keyed by its batch's seed and the prompt
    // itself: its samples depend neither on the other prompts in flight nor on an interruption.
    let requests: Vec<Request> = pending
        .iter()
        .map(|&i| Request {
            prompt: ids[i].as_deref().unwrap_or_default(),
            seed: prompt_stream(jobs[i].batch_seed, &keys[i]),
            expected_new_tokens: None,
        })
        .collect();
    let mut rows: Vec<Vec<Option<RowOutput>>> = vec![vec![None; k]; pending.len()];
    let mut arrived = vec![0usize; pending.len()];
    let mut clock = Instant::now();
    engine::run(policy, &requests, &params, &EngineConfig::continuous(spec.slots), |r: RowOutput| -> Result<()> {
        let (q, j) = (r.request, r.sample);
        rows[q][j] = Some(r);
        arrived[q] += 1;
        if arrived[q] < k {
            return Ok(());
        }
        let i = pending[q];
        let samples = std::mem::take(&mut rows[q])
            .into_iter()
            .flatten()
            .map(|r| Ok(GenSample { text: tok.decode(&r.tokens)?.trim().to_string(), tokens: r.tokens.len(), finished: r.finished }))
            .collect::<Result<Vec<_>>>()?;
        let rec = GenRecord { key: keys[i].clone(), samples, generation_seconds: clock.elapsed().as_secs_f64() };
        journal.append(rec.clone())?;
        gen[i] = Some(rec);
        let b = jobs[i].batch;
        let n = left.get_mut(&b).map(|n| {
            *n -= 1;
            *n
        });
        if n == Some(0) {
            emit(group(b, &gen)?)?;
        }
        // Scoring and logging time is not generation time.
        clock = Instant::now();
        Ok(())
    })?;
    Ok(())
}

/// Scores one prompt batch's generated replies together (prompt order, sample order) and builds
/// its records.
#[allow(clippy::too_many_arguments)]
fn score_group(
    scorer: &RewardScorer,
    tok: &Tokenizer,
    jobs: &[Job],
    keys: &[String],
    idx: &[usize],
    gen: &[Option<GenRecord>],
    spec: &SampleSpec,
    limit: usize,
) -> Result<Vec<PromptSamples>> {
    let t1 = Instant::now();
    let mut items: Vec<(&PromptRecord, &str)> = Vec::new();
    for &i in idx {
        if let Some(g) = &gen[i] {
            items.extend(g.samples.iter().map(|s| (jobs[i].prompt, s.text.as_str())));
        }
    }
    let scores = scorer.score(tok, &items)?;
    let scored = idx.iter().filter(|&&i| gen[i].is_some()).count();
    let score_share = t1.elapsed().as_secs_f64() / scored.max(1) as f64;
    let mut out = Vec::with_capacity(idx.len());
    let mut next = 0usize;
    for &i in idx {
        let p = jobs[i].prompt;
        let mut r = PromptSamples {
            key: keys[i].clone(),
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
        let Some(g) = &gen[i] else {
            r.skipped = Some(format!("prompt + max_new_tokens exceeds the model's {limit} positions"));
            out.push(r);
            continue;
        };
        for s in &g.samples {
            let sc = scores[next];
            next += 1;
            r.samples.push(Sample {
                text: s.text.clone(),
                tokens: s.tokens,
                finished: s.finished,
                reward: sc.rc,
                helpfulness: sc.helpfulness,
                safety: sc.safety,
            });
        }
        r.best = best_index(&r.samples, spec.require_finished);
        r.generation_seconds = g.generation_seconds;
        r.scoring_seconds = score_share;
        out.push(r);
    }
    Ok(out)
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
