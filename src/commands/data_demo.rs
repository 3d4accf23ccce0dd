//! `rlhf data demo`: writes the synthetic demo world (SFT, preference train/test, prompt
//! train/test and a manifest) whose every prompt has a ground-truth judge.
use anyhow::{Context, Result};
use clap::Args;
use demo_world::{write_demo_with, DemoShares, DemoSizes};
use std::path::PathBuf;

#[derive(Args)]
pub struct DemoArgs {
    /// Output folder (created if missing; the files in it are replaced atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// SFT demonstrations [default: 4000].
    #[arg(long)]
    pub sft: Option<usize>,
    /// Preference comparisons, train + test (10% test) [default: 6000].
    #[arg(long)]
    pub pairs: Option<usize>,
    /// RS/PPO prompts, train + test (20% held out) [default: 600].
    #[arg(long)]
    pub prompts: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Share of SFT answers to helpful prompts that are wrong [default: 0.25].
    #[arg(long)]
    pub wrong_share: Option<f64>,
    /// Share of SFT answers to harmful prompts that comply [default: 0.30].
    #[arg(long)]
    pub unsafe_share: Option<f64>,
    /// Share of SFT answers to borderline prompts that refuse [default: 0.20].
    #[arg(long)]
    pub false_refusal_share: Option<f64>,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let d = DemoSizes::default();
    let sizes = DemoSizes { sft: a.sft.unwrap_or(d.sft), pairs: a.pairs.unwrap_or(d.pairs), prompts: a.prompts.unwrap_or(d.prompts) };
    let mut shares = DemoShares::default();
    shares.sft_wrong = a.wrong_share.unwrap_or(shares.sft_wrong);
    shares.sft_unsafe = a.unsafe_share.unwrap_or(shares.sft_unsafe);
    shares.sft_false_refusal = a.false_refusal_share.unwrap_or(shares.sft_false_refusal);
    let manifest =
        write_demo_with(&a.out, sizes, &shares, a.seed).with_context(|| format!("writing the demo world to {}", a.out.display()))?;
    println!(
        "{}",
        serde_json::json!({
            "out": a.out,
            "seed": manifest.seed,
            "records": manifest.records,
            "safety_labels": manifest.safety_labels,
            "dropped_unsafe_chosen": manifest.dropped_unsafe_chosen,
        })
    );
    Ok(())
}
