//! `rlhf tokenizer build`: the Llama-2 tokenizer.json rebuilt from llama-tokenizer-js.
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum TokenizerCommand {
    /// Convert llama-tokenizer.js (npm llama-tokenizer-js@1.2.2) into tokenizer.json + tokenizer_config.json.
    Build(BuildArgs),
}

#[derive(Args)]
pub struct BuildArgs {
    /// Path to the package's llama-tokenizer.js.
    #[arg(long)]
    pub js: PathBuf,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
}

/// The package's own test cases: the rebuilt tokenizer must reproduce them.
const CHECKS: &[(&str, &[u32])] = &[("Hello world!", &[1, 15043, 3186, 29991]), ("[INST]", &[1, 518, 25580, 29962])];

pub fn run(c: TokenizerCommand) -> Result<()> {
    let TokenizerCommand::Build(a) = c;
    let js = std::fs::read_to_string(&a.js).with_context(|| format!("reading {}", a.js.display()))?;
    let json = llama::tokenizer_build::build_tokenizer_json(&js).with_context(|| a.js.display().to_string())?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let path = a.out.join("tokenizer.json");
    llama::checkpoint::write_atomic(&path, json.as_bytes())?;
    llama::checkpoint::write_atomic(&a.out.join("tokenizer_config.json"), llama::tokenizer_build::tokenizer_config_json().as_bytes())?;
    let tok = llama::Tokenizer::from_file(&path)?;
    for (text, want) in CHECKS {
        let got = tok.encode(text, true, false)?;
        if got != *want {
            bail!("rebuilt tokenizer encodes {text:?} as {got:?}, expected {want:?}");
        }
    }
    println!("{}", serde_json::json!({"tokenizer": path, "vocab_size": tok.vocab_size()}));
    Ok(())
}
