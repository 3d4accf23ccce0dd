//! PLACEHOLDER (being written this session): `rlhf data validate` and `rlhf data import`.
use anyhow::{bail, Result};
use clap::Args;
#[derive(Args)]
pub struct ValidateArgs {}
#[derive(Args)]
pub struct ImportArgs {}
pub fn run_validate(_a: ValidateArgs) -> Result<()> { bail!("not built yet") }
pub fn run_import(_a: ImportArgs) -> Result<()> { bail!("not built yet") }
