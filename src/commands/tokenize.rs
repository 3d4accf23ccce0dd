//! `rlhf tokenize`: a dialog in the Llama-2 chat format, as token ids.
use anyhow::{Context, Result};
use clap::Args;
use llama::{AssistantMask, Message};
use std::path::PathBuf;

#[derive(Args)]
pub struct TokenizeArgs {
    /// Checkpoint folder whose tokenizer to use (falls back on the bundled Llama-2 tokenizer, with a
    /// warning; an error when the model's vocab_size differs from it).
    #[arg(long)]
    pub model: PathBuf,
    /// A JSON list of {"role": "system"|"user"|"assistant", "content": ...} messages.
    #[arg(long)]
    pub dialog: PathBuf,
    /// Also print which tokens belong to assistant replies (the SFT loss mask).
    #[arg(long)]
    pub mask: bool,
}

pub fn run(a: TokenizeArgs) -> Result<()> {
    let (tok, _) = llama::tokenizer::resolve(None, Some(&a.model))?;
    let text = std::fs::read_to_string(&a.dialog).with_context(|| format!("reading {}", a.dialog.display()))?;
    let msgs: Vec<Message> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON list of {{\"role\", \"content\"}} messages", a.dialog.display()))?;
    let enc = llama::encode_dialog(&tok, &msgs, AssistantMask::AllTurns).with_context(|| format!("{}", a.dialog.display()))?;
    if a.mask {
        println!("{}", serde_json::json!({"ids": enc.ids, "assistant_mask": enc.assistant_mask}));
    } else {
        println!("{}", serde_json::to_string(&enc.ids)?);
    }
    Ok(())
}
