//! PLACEHOLDER (being written this session): `rlhf data demo`.
use anyhow::{bail, Result};
use clap::Args;
#[derive(Args)]
pub struct DemoArgs {}
pub fn run(_a: DemoArgs) -> Result<()> { bail!("not built yet") }
