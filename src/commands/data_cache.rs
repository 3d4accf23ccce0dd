//! PLACEHOLDER (being written this session): `rlhf data mix` and `rlhf data cache`.
use anyhow::{bail, Result};
use clap::Args;
#[derive(Args)]
pub struct MixArgs {}
#[derive(Args)]
pub struct CacheArgs {}
pub fn run_mix(_a: MixArgs) -> Result<()> { bail!("not built yet") }
pub fn run_cache(_a: CacheArgs) -> Result<()> { bail!("not built yet") }
