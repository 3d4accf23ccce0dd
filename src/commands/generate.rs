//! `rlhf generate`: one prompt, raw (BOS + text) or in the Llama-2 chat format.
use anyhow::{bail, Result};
use clap::Args;
use llama::{Message, Role, SamplingParams};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub m: super::ModelArgs,
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
}

pub fn run(a: GenerateArgs) -> Result<()> {
    if a.system.is_some() && !a.chat {
        bail!("--system needs --chat");
    }
    let tok = a.m.tokenizer()?;
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
    let (_vs, model) = a.m.causal_lm()?;
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
    let out = llama::generate(&model, std::slice::from_ref(&ids), &params)?;
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
