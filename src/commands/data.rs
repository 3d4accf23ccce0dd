//! `rlhf data ...`: validation, import, the demo world, RM mixtures and the tokenized cache.
//! Each verb lives in its own file (`data_<verb>.rs`).
use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Check every row of SFT, preference or prompt files and print a JSON summary.
    Validate(super::data_validate::ValidateArgs),
    /// Convert Anthropic HH-RLHF or TRL conversational preference data to our preference records.
    Import(super::data_validate::ImportArgs),
    /// Write the synthetic demo world (SFT, preference and prompt sets with ground-truth judges).
    Demo(super::data_demo::DemoArgs),
    /// Build the Llama 2 helpfulness / safety reward-model mixtures.
    Mix(super::data_cache::MixArgs),
    /// Tokenize once into the on-disk, memory-mapped cache that `rlhf sft` and `rlhf reward train` read with `token_cache`.
    Cache(super::data_cache::CacheArgs),
    /// Write the demo world at benchmark scale (1.4M comparisons, ~300 tokens a reply).
    DemoScale(super::data_cache::DemoScaleArgs),
    /// Ghost Attention data: sample multi-turn dialogs with an instruction on every user turn, keep it in the first only.
    Gatt(super::data_gatt::GattArgs),
}

pub fn run(c: DataCommand) -> Result<()> {
    match c {
        DataCommand::Validate(a) => super::data_validate::run_validate(a),
        DataCommand::Import(a) => super::data_validate::run_import(a),
        DataCommand::Demo(a) => super::data_demo::run(a),
        DataCommand::Mix(a) => super::data_cache::run_mix(a),
        DataCommand::Cache(a) => super::data_cache::run_cache(a),
        DataCommand::DemoScale(a) => super::data_cache::run_demo_scale(a),
        DataCommand::Gatt(a) => super::data_gatt::run(a),
    }
}
