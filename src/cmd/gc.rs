//! `connected-registry gc`: one garbage collection of a data directory that no registry has open
//! (a running `serve` collects on its own schedule, see `--gc-interval`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use registry::storage::GcOptions;
use registry::{Limits, Store};

use super::parse_duration;

/// GC settings shared by `gc` and `serve`.
#[derive(clap::Args, Clone)]
pub struct GcFlags {
    /// Content younger than this is never collected (covers pushes in progress).
    #[arg(long = "gc-grace", env = "CONNECTED_REGISTRY_GC_GRACE", default_value = "1h", value_parser = parse_duration)]
    pub grace: Duration,

    /// Also delete manifests that no tag reaches (e.g. left behind when a tag moved or was deleted).
    #[arg(
        long = "gc-delete-untagged",
        env = "CONNECTED_REGISTRY_GC_DELETE_UNTAGGED"
    )]
    pub delete_untagged: bool,

    /// Upload sessions idle longer than this are dropped (long: sync keeps partial downloads across windows).
    #[arg(long = "upload-ttl", env = "CONNECTED_REGISTRY_UPLOAD_TTL", default_value = "7d", value_parser = parse_duration)]
    pub upload_ttl: Duration,
}

impl GcFlags {
    pub fn options(&self) -> GcOptions {
        GcOptions {
            grace: self.grace,
            delete_untagged: self.delete_untagged,
            upload_ttl: self.upload_ttl,
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Data directory to collect (the registry must not be running on it); never created.
    #[arg(long, env = "ACR_REGISTRY_DATA_VOLUME", default_value = "./data")]
    pub data: PathBuf,

    #[command(flatten)]
    pub gc: GcFlags,

    #[command(flatten)]
    pub storage: super::storage::StorageFlags,

    #[command(flatten)]
    pub metadata: super::metadata::MetadataFlags,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let backends = args.metadata.backends(&args.storage)?;
    super::check_data_dir_for(&args.data, super::MissingData::Refuse, &backends)?;
    let data = args.data.clone();
    let options = args.gc.options();
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let store = Store::open_with(&data, Limits::default(), backends).with_context(|| {
            format!(
                "cannot open {} (is `connected-registry serve` running on it? it collects by itself)",
                data.display()
            )
        })?;
        Ok(store.gc(&options)?)
    })
    .await??;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}
