//! `rlhf`: the Llama-2-Chat alignment recipe on libtorch. A thin CLI: each subcommand parses its
//! arguments, loads what it needs and calls the library crates.
mod commands;
mod malloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "rlhf", version, about = "The Llama-2-Chat recipe (SFT, reward models, rejection sampling, PPO) on libtorch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sample a completion from a checkpoint (raw prompt or Llama-2 chat format).
    Generate(commands::generate::GenerateArgs),
    /// Encode a dialog in the Llama-2 chat format and print the token ids.
    Tokenize(commands::tokenize::TokenizeArgs),
    /// Supervised fine-tuning (Llama 2 Section 3.1).
    Sft(commands::stage::StageArgs),
    /// PPO with the Llama 2 combined reward and KL to the initial policy (Section 3.2.3).
    Ppo(commands::stage::StageArgs),
    /// Reward models: train, eval, score (Llama 2 Section 3.2.2).
    #[command(subcommand)]
    Reward(commands::reward::RewardCommand),
    /// Rejection sampling: best-of-K by reward, then SFT on the winners (Llama 2 Section 3.2.3).
    RejectionSampling(commands::stage::StageArgs),
    /// Ghost Attention: multi-turn data with a first-turn instruction, fine-tune, adherence by turn (Llama 2 Section 3.3).
    Gatt(commands::stage::StageArgs),
    /// Safety context distillation: replies with a safety preprompt kept where the safety RM prefers them, then SFT without it (Llama 2 Section 4.2.4).
    ContextDistillation(commands::stage::StageArgs),
    /// The whole recipe from one config: run (or resume) it, or show its status.
    #[command(subcommand)]
    Pipeline(commands::pipeline::PipelineCommand),
    /// Data: validate, import, demo world, RM mixtures, tokenized cache.
    #[command(subcommand)]
    Data(commands::data::DataCommand),
    /// Human preference annotation: export pairs, the rating web page, import ratings.
    #[command(subcommand)]
    Annotate(commands::annotate::AnnotateCommand),
    /// Evaluate a model.
    #[command(subcommand)]
    Eval(commands::eval::EvalCommand),
    /// Benchmarks (throughput on this machine).
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
    /// Memory per device of a stage before it runs: fits or not, the largest micro-batch that does.
    Plan(commands::plan::PlanArgs),
    /// Load an HF-layout checkpoint and save it again (dtype, sharding).
    Convert(commands::convert::ConvertArgs),
    /// Write a randomly initialised Llama checkpoint in the HF layout.
    Init(commands::init::InitArgs),
    /// Build the Llama-2 tokenizer.json from the llama-tokenizer-js package.
    #[command(subcommand)]
    Tokenizer(commands::tokenizer::TokenizerCommand),
}

fn main() {
    malloc::keep_freed_memory();
    // A panic is a bug, not a user error: say so in one line, without a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("rlhf: internal error: {info}");
    }));
    // Under torchrun only rank 0 logs progress; the other ranks say only what goes wrong.
    let rank = std::env::var("RANK").ok().and_then(|r| r.parse::<i64>().ok()).filter(|_| std::env::var_os("WORLD_SIZE").is_some());
    let default_filter = if rank.unwrap_or(0) == 0 { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("RLHF_LOG").unwrap_or_else(|_| default_filter.into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = join_distributed(&cli.command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    let result = match cli.command {
        Command::Generate(a) => commands::generate::run(a),
        Command::Tokenize(a) => commands::tokenize::run(a),
        Command::Eval(c) => commands::eval::run(c),
        Command::Data(c) => commands::data::run(c),
        Command::Annotate(c) => commands::annotate::run(c),
        Command::Sft(a) => a.run(sft::SftConfig::validate, sft::run),
        Command::Pipeline(c) => commands::pipeline::run(c),
        Command::Reward(c) => commands::reward::run(c),
        Command::Ppo(a) => a.run(ppo::PpoConfig::validate, ppo::run),
        Command::RejectionSampling(a) => a.run(rejection_sampling::RejectionSamplingConfig::validate, rejection_sampling::run),
        Command::Gatt(a) => a.run(gatt::GattConfig::validate, gatt::run),
        Command::ContextDistillation(a) => a.run(context_distillation::ContextDistillationConfig::validate, context_distillation::run),
        Command::Bench(c) => commands::bench::run(c),
        Command::Init(a) => commands::init::run(a),
        Command::Plan(a) => commands::plan::run(a),
        Command::Convert(a) => commands::convert::run(a),
        Command::Tokenizer(c) => commands::tokenizer::run(c),
    };
    if let Err(e) = result {
        match rank {
            Some(r) => eprintln!("error: [rank {r}] {e:#}"),
            None => eprintln!("error: {e:#}"),
        }
        std::process::exit(1);
    }
}

/// Joins the process group when launched by torchrun (`WORLD_SIZE` set). Only the training stages
/// run distributed; every other command refuses a world of more than one process.
fn join_distributed(command: &Command) -> anyhow::Result<()> {
    let world: i64 = std::env::var("WORLD_SIZE").ok().and_then(|w| w.trim().parse().ok()).unwrap_or(1);
    if std::env::var_os("WORLD_SIZE").is_none() {
        return Ok(());
    }
    let supported = matches!(
        command,
        Command::Sft(_) | Command::Ppo(_) | Command::RejectionSampling(_) | Command::Reward(commands::reward::RewardCommand::Train(_))
    );
    if !supported && world > 1 {
        anyhow::bail!(
            "this command runs in one process; launch it without torchrun (WORLD_SIZE={world}). \
             Distributed: rlhf sft, rlhf reward train, rlhf ppo, rlhf rejection-sampling"
        );
    }
    if supported {
        distributed::init_from_env()?;
    }
    Ok(())
}
