//! `rlhf bench sft`: SFT training throughput on prompt-masked synthetic rows, timed through the
//! SFT trainer's own step.
use crate::config::{sft_train_defaults, SftConfig};
use crate::data::Example;
use crate::trainer::SftTrainer;
use std::path::PathBuf;
use training::bench::{random_ids, time_steps, TrainBench};
use training::error::{Result, TrainError};

/// Rows of exactly `seq_len` tokens: BOS + random prompt (masked) + random completion + EOS.
fn synthetic_examples(n: usize, seq_len: usize, prompt_len: usize, seed: u64) -> Vec<Example> {
    let mut rng = llama::rng::SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let mut ids = vec![1u32];
            ids.extend(random_ids(&mut rng, seq_len - 2));
            ids.push(2);
            Example { ids, loss_mask: (0..seq_len).map(|i| i >= prompt_len).collect() }
        })
        .collect()
}

pub fn throughput(b: &TrainBench) -> Result<serde_json::Value> {
    if b.prompt_len >= b.seq_len || b.batch == 0 || b.steps == 0 {
        return Err(TrainError::Config("need prompt_len < seq_len, batch >= 1 and steps >= 1".into()));
    }
    let mut train = b.train_config(sft_train_defaults());
    train.lr = 1e-5;
    train.epochs = 1;
    let cfg = SftConfig {
        model: b.model.clone(),
        init_preset: b.preset.clone(),
        tokenizer: None,
        train_data: vec![PathBuf::from("synthetic")],
        eval_data: None,
        eval_fraction: 0.0,
        max_seq_len: b.seq_len,
        packing: false,
        train_on: llama::AssistantMask::AllTurns,
        save_dtype: llama::Dtype::Float32,
        token_cache: None,
        train,
        lora: b.lora(),
    };
    let examples = synthetic_examples(b.rows(), b.seq_len, b.prompt_len, b.seed);
    let (mut run, _) = SftTrainer::prepare(&cfg, &examples, &[])?;
    let step_s = time_steps(b.warmup, b.steps, |s| run.step(s).map(|rec| tracing::debug!("{rec}")))?;
    Ok(serde_json::json!({
        "tokens_per_s": (b.batch * b.seq_len) as f64 / step_s,
        "completion_tokens_per_s": (b.batch * (b.seq_len - b.prompt_len)) as f64 / step_s,
        "step_s": step_s,
        "batch": b.batch,
        "seq_len": b.seq_len,
        "completion_tokens": b.seq_len - b.prompt_len,
        "steps": b.steps,
        "device": format!("{:?}", b.device.device()?),
    }))
}
