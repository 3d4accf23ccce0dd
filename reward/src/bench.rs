//! `rlhf bench reward`: reward-model training throughput in pairs/s on synthetic pairs, timed
//! through the RM trainer's own step.
use crate::config::{rm_train_defaults, RewardConfig};
use crate::data::PairTokens;
use crate::loss::MarginKind;
use crate::trainer::RewardTrainer;
use std::path::PathBuf;
use training::bench::{random_ids, time_steps, TrainBench};
use training::error::{Result, TrainError};

/// Pairs sharing a prompt of `prompt_len` tokens (BOS first); each reply has `seq_len - prompt_len`
/// tokens ending with EOS, so each full sequence is `seq_len` long.
fn synthetic_pairs(n: usize, seq_len: usize, prompt_len: usize, seed: u64) -> Vec<PairTokens> {
    let mut rng = llama::rng::SplitMix64::new(seed);
    let reply = seq_len - prompt_len;
    (0..n)
        .map(|_| {
            let mut prefix = vec![1u32];
            prefix.extend(random_ids(&mut rng, prompt_len - 1));
            let mut chosen = random_ids(&mut rng, reply - 1);
            chosen.push(2);
            let mut rejected = random_ids(&mut rng, reply - 1);
            rejected.push(2);
            PairTokens {
                prefix,
                chosen,
                rejected,
                rating: Some(datasets::Rating::Better),
                kind: None,
                source: None,
                chosen_safe: None,
                rejected_safe: None,
                truncated: false,
            }
        })
        .collect()
}

pub fn throughput(b: &TrainBench) -> Result<serde_json::Value> {
    let Some(model) = b.model.clone() else {
        return Err(TrainError::Config("bench reward needs --model DIR (a causal LM or reward checkpoint)".into()));
    };
    if b.prompt_len + 2 > b.seq_len || b.batch == 0 || b.steps == 0 {
        return Err(TrainError::Config("need prompt_len + 2 <= seq_len, batch >= 1 and steps >= 1".into()));
    }
    let cfg = RewardConfig {
        model,
        tokenizer: None,
        train_data: vec![PathBuf::from("synthetic")],
        eval_data: vec![],
        margin: MarginKind::None,
        center_coef: 0.0,
        safety_aux_loss_weight: 0.0,
        max_seq_len: b.seq_len,
        threshold: 0.5,
        save_dtype: llama::Dtype::Float32,
        token_cache: None,
        train: b.train_config(rm_train_defaults()),
        lora: b.lora(),
    };
    let pairs = synthetic_pairs(b.rows(), b.seq_len, b.prompt_len, b.seed);
    let mut run = RewardTrainer::prepare(&cfg, &pairs, &[])?;
    let step_s = time_steps(b.warmup, b.steps, |s| run.step(s).map(|_| ()))?;
    Ok(serde_json::json!({
        "pairs_per_s": b.batch as f64 / step_s,
        "step_s": step_s,
        "tokens_per_s": (2 * b.batch * b.seq_len) as f64 / step_s,
        "batch": b.batch,
        "seq_len": b.seq_len,
        "prompt_len": b.prompt_len,
        "steps": b.steps,
        "layout": "shared prompt: one row per pair",
    }))
}
