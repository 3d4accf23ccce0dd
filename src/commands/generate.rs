//! `rlhf generate`: one prompt, raw (BOS + text) or in the Llama-2 chat format.
use anyhow::{bail, Result};
use clap::Args;
use llama::{checkpoint, Message, Role, SamplingParams};
use std::path::PathBuf;

#[derive(Args)]
pub struct GenerateArgs {
    /// HF-layout checkpoint folder.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as a user turn of the Llama-2 chat format.
    #[arg(long)]
    pub chat: bool,
    /// System message (with --chat).
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.6)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub top_k: i64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print {"completion", "token_ids", ...} as one JSON line.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = "auto")]
    pub device: String,
    #[arg(long)]
    pub dtype: Option<String>,
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    super::set_threads(a.threads);
    if a.system.is_some() && !a.chat {
        bail!("--system needs --chat");
    }
    let (tok, _) = llama::tokenizer::resolve(None, Some(&a.model))?;
    let ids = if a.chat {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(Message { role: Role::System, content: s.clone() });
        }
        msgs.push(Message { role: Role::User, content: a.prompt.clone() });
        llama::chat::encode_prompt(&tok, &msgs)?
    } else {
        tok.encode(&a.prompt, true, false)?
    };
    let (device, kind) = super::device_and_kind(&a.device, a.dtype.as_deref())?;
    let (_vs, model) = checkpoint::load_causal_lm(&a.model, device, kind)?;
    let params = SamplingParams {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        seed: a.seed,
        stop_at_eos: true,
        eos_token_id: model.cfg.eos_token_id,
        num_samples: 1,
    };
    let out = llama::generate(&model, &[ids.clone()], &params)?;
    let new = &out.tokens[0];
    let completion = tok.decode(new)?;
    if a.json {
        let v = serde_json::json!({
            "completion": completion,
            "token_ids": new,
            "prompt_ids": ids,
            "logprobs": out.logprobs[0],
            "finished": out.finished[0],
        });
        println!("{v}");
    } else {
        println!("{completion}");
    }
    Ok(())
}
