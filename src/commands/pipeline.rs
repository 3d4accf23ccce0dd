//! `rlhf pipeline run CONFIG --out DIR` and `rlhf pipeline status DIR`: the Llama 2 recipe as one
//! config, run by the `pipeline` crate (see its docs for the config, manifests and report).
use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum PipelineCommand {
    /// Run (or resume) every stage of a pipeline config.
    Run(RunArgs),
    /// Print the stage table of a pipeline folder.
    Status(StatusArgs),
    /// Run one stage's ground-truth evaluation job (the child of `eval_in_background`).
    #[command(hide = true)]
    GroundTruth(GroundTruthArgs),
}

#[derive(Args)]
pub struct GroundTruthArgs {
    /// The job file (`<stage>/ground_truth_job.json`).
    pub job: PathBuf,
}

#[derive(Args)]
pub struct RunArgs {
    pub config: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// Override a value of the pipeline config (`stages.sft.config.train.lr=1e-3` addresses a stage by name).
    #[arg(long = "set")]
    pub sets: Vec<String>,
}

#[derive(Args)]
pub struct StatusArgs {
    pub dir: PathBuf,
}

pub fn run(c: PipelineCommand) -> Result<()> {
    match c {
        PipelineCommand::Run(a) => {
            let mut value = pipeline::PipelineConfig::read_toml(&a.config)?;
            for s in &a.sets {
                let (target, set) = pipeline::set_target(&mut value, s)?;
                super::config::apply_set(target, &set)?;
            }
            let cfg = pipeline::PipelineConfig::from_toml(value, &a.config)?;
            let summary = pipeline::run(&cfg, &a.config, &a.out)?;
            if let Some(w) = &summary.waiting {
                eprintln!("pipeline: stopped at stage {}: {}", w.stage, w.message);
            }
            println!("{}", serde_json::to_string(&summary)?);
        }
        PipelineCommand::Status(a) => print!("{}", pipeline::status(&a.dir)?),
        PipelineCommand::GroundTruth(a) => pipeline::background::run_job(&a.job)?,
    }
    Ok(())
}
