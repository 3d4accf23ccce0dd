//! GAtt data (Llama 2 Section 3.3): the assistant turns of each dialog sampled from the latest
//! RLHF model with the instruction concatenated to every user turn, turn by turn, all dialogs of a
//! turn in one call of the rollout engine (`llama::generate`). "Similar to rejection sampling":
//! `best_of_k` samples a turn, the first finished one the world's checker accepts is kept; a
//! dialog whose turn has no such sample stops there (its later turns would follow a reply that
//! lost the instruction). Instructions without a checker keep the first finished sample.
use crate::data::{gatt_records, sampling_prompt};
use crate::error::Result;
use datasets::SftRecord;
use demo_world::Instruction;
use llama::{Llama, Message, SamplingParams, Tokenizer};
use serde::Serialize;

/// How the assistant turns are sampled.
#[derive(Debug, Clone)]
pub struct SampleSpec {
    pub best_of_k: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
    pub seed: u64,
    /// Keep only samples that ended with EOS (a reply cut at `max_new_tokens` is no demonstration).
    pub require_finished: bool,
}

/// One dialog with its instruction and the replies kept.
#[derive(Debug, Clone, Serialize)]
pub struct SampledDialog {
    pub instruction: Instruction,
    pub turns: Vec<String>,
    /// The kept replies: turns `1..=replies.len()`.
    pub replies: Vec<String>,
    /// Why the dialog stopped before its last turn, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// The K samples of one prompt: (text, ended with EOS).
pub type Samples = Vec<(String, bool)>;

/// K replies (text, finished) to each prompt; `None` where the prompt plus the reply budget does
/// not fit the model's positions. One engine call; sample j of prompt i draws from its own stream.
pub fn replies_to(model: &Llama, tok: &Tokenizer, prompts: &[Vec<Message>], params: &SamplingParams) -> Result<Vec<Option<Samples>>> {
    let limit = model.cfg.max_position_embeddings as usize;
    let mut ids = Vec::new();
    let mut fits = Vec::with_capacity(prompts.len());
    for p in prompts {
        let x = llama::chat::encode_prompt(tok, p)?;
        fits.push(x.len() + params.max_new_tokens <= limit);
        if x.len() + params.max_new_tokens <= limit {
            ids.push(x);
        }
    }
    let k = params.num_samples.max(1);
    let out = if ids.is_empty() { None } else { Some(llama::generate(model, &ids, params)?) };
    let mut next = 0;
    let mut result = Vec::with_capacity(prompts.len());
    for fit in fits {
        if !fit {
            result.push(None);
            continue;
        }
        let o = out.as_ref().expect("a fitting prompt was generated for");
        let mut samples = Vec::with_capacity(k);
        for j in 0..k {
            let row = next * k + j;
            samples.push((tok.decode(&o.tokens[row])?.trim().to_string(), o.finished[row]));
        }
        next += 1;
        result.push(Some(samples));
    }
    Ok(result)
}

/// The seed of turn `t`'s engine call.
fn turn_seed(seed: u64, t: usize) -> u64 {
    seed.wrapping_add((t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Samples every dialog's assistant turns (see the module docs).
pub fn sample_dialogs(
    model: &Llama,
    tok: &Tokenizer,
    dialogs: &[(Instruction, Vec<String>)],
    spec: &SampleSpec,
) -> Result<Vec<SampledDialog>> {
    let mut out: Vec<SampledDialog> = dialogs
        .iter()
        .map(|(i, t)| SampledDialog { instruction: i.clone(), turns: t.clone(), replies: Vec::new(), stopped: None })
        .collect();
    let max_turns = dialogs.iter().map(|d| d.1.len()).max().unwrap_or(0);
    for t in 0..max_turns {
        let active: Vec<usize> = (0..out.len()).filter(|&i| out[i].stopped.is_none() && out[i].turns.len() > t).collect();
        if active.is_empty() {
            break;
        }
        let prompts: Vec<Vec<Message>> =
            active.iter().map(|&i| sampling_prompt(&out[i].instruction.text, &out[i].turns, &out[i].replies)).collect();
        let params = SamplingParams {
            max_new_tokens: spec.max_new_tokens,
            temperature: spec.temperature,
            top_p: spec.top_p,
            top_k: 0,
            seed: turn_seed(spec.seed, t),
            stop_at_eos: true,
            eos_token_id: model.cfg.eos_token_id,
            num_samples: spec.best_of_k.max(1),
        };
        let samples = replies_to(model, tok, &prompts, &params)?;
        for (&i, s) in active.iter().zip(samples) {
            let d = &mut out[i];
            let Some(s) = s else {
                d.stopped = Some(format!("turn {}: the dialog no longer fits the model's positions", t + 1));
                continue;
            };
            match s.into_iter().find(|(text, finished)| {
                (*finished || !spec.require_finished) && !text.is_empty() && d.instruction.check(text) != Some(false)
            }) {
                Some((text, _)) => d.replies.push(text),
                None => {
                    d.stopped = Some(format!(
                        "turn {}: no {}sample of {} obeys the instruction",
                        t + 1,
                        if spec.require_finished { "finished " } else { "" },
                        spec.best_of_k
                    ))
                }
            }
        }
    }
    Ok(out)
}

/// The SFT records of sampled dialogs: one per kept turn ([`gatt_records`]).
pub fn records(dialogs: &[SampledDialog]) -> Vec<SftRecord> {
    dialogs.iter().flat_map(|d| gatt_records(&d.instruction.text, &d.turns, &d.replies)).collect()
}
