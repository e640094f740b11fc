//! `connected-registry proxy`: not built yet.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`connected-registry proxy` is not implemented yet")
}
