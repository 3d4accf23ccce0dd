//! `rlhf data gatt`: Ghost Attention data (Llama 2 Section 3.3) from multi-turn dialogs and an
//! instruction list: the instruction concatenated to every user turn while `--model` samples the
//! assistant turns, then kept in the first user turn only; one SFT record per turn, to be trained
//! with `train_on = "last_turn"` (zero loss on the earlier turns).
use super::ModelArgs;
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct GattArgs {
    /// The latest RLHF model, which samples the assistant turns.
    #[command(flatten)]
    pub m: ModelArgs,
    /// Dialogs: `{"turns": [...], "instruction"?: {...}}` or `{"messages": [...]}` a row (repeatable).
    #[arg(long, required = true)]
    pub dialogs: Vec<PathBuf>,
    /// Instructions `{"text"?, "constraints"?}` a row, drawn for dialogs without one [default: the built-in list].
    #[arg(long)]
    pub instructions: Option<PathBuf>,
    /// The SFT records (JSONL); the sampled dialogs go beside it as `<out>.dialogs.jsonl`.
    #[arg(long)]
    pub out: PathBuf,
    /// Samples per turn; the first finished one the instruction's checker accepts is kept.
    #[arg(long, default_value_t = 4)]
    pub best_of_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep only samples that ended with EOS.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub require_finished: bool,
}

pub fn run(a: GattArgs) -> Result<()> {
    anyhow::ensure!(a.best_of_k > 0 && a.max_new_tokens > 0, "--best-of-k and --max-new-tokens must be at least 1");
    anyhow::ensure!(a.temperature.is_finite() && a.temperature > 0.0, "--temperature must be positive");
    anyhow::ensure!(a.top_p > 0.0 && a.top_p <= 1.0, "--top-p must be in (0, 1]");
    let list = gatt::run::instruction_list(a.instructions.as_deref())?;
    // Every input is read and checked before the model loads.
    for f in &a.dialogs {
        gatt::data::read_dialogs(f, false)?;
    }
    let tok = a.m.tokenizer()?;
    let (_vs, model) = a.m.causal_lm()?;
    let spec = gatt::SampleSpec {
        best_of_k: a.best_of_k,
        temperature: a.temperature,
        top_p: a.top_p,
        max_new_tokens: a.max_new_tokens,
        seed: a.seed,
        require_finished: a.require_finished,
    };
    let data = gatt::build_data(&model, &tok, &a.dialogs, &list, &spec)?;
    let mut side = a.out.clone().into_os_string();
    side.push(".dialogs.jsonl");
    let side = PathBuf::from(side);
    gatt::data::write_jsonl(&side, &data.dialogs).with_context(|| format!("writing {}", side.display()))?;
    gatt::data::write_jsonl(&a.out, &data.records).with_context(|| format!("writing {}", a.out.display()))?;
    let complete = data.dialogs.iter().filter(|d| d.stopped.is_none()).count();
    let turns: usize = data.dialogs.iter().map(|d| d.replies.len()).sum();
    println!(
        "{}",
        serde_json::json!({
            "out": a.out,
            "dialogs_out": side,
            "dialogs": data.dialogs.len(),
            "complete_dialogs": complete,
            "records": data.records.len(),
            "turns_kept": turns,
            "instructions": list.len(),
            "train_on": "last_turn",
        })
    );
    Ok(())
}
