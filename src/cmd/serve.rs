//! `connected-registry serve`: the OCI Distribution registry on the local store.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`connected-registry serve` is not implemented yet")
}
