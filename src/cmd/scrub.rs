//! `connected-registry scrub --data DIR [--repair]`: hashes every blob and manifest file of a
//! data directory no registry has open, quarantines the damaged ones, lists content the
//! metadata needs that is missing, and with `--repair` fetches that again from the parent
//! (configured as `sync` and `serve` take it). Exit 0 when nothing damaged or missing remains,
//! 1 otherwise, 2 when it could not run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use registry::storage::scrub::{Kind, Missing, ScrubReport};
use registry::{Limits, RepoName, Store};
use sync::ParentClient;

#[derive(clap::Args)]
pub struct Args {
    /// Data directory to scrub (no registry may be running on it: stop `serve` first); never created.
    #[arg(long, env = "ACR_REGISTRY_DATA_VOLUME", default_value = "./data")]
    pub data: PathBuf,

    /// Fetch damaged and missing content again from the parent (--parent, --connection-string
    /// or --sync-config, as `sync` takes them).
    #[arg(long)]
    pub repair: bool,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub sync: Box<super::sync::SyncFlags>,

    #[command(flatten)]
    pub storage: super::storage::StorageFlags,

    #[command(flatten)]
    pub metadata: super::metadata::MetadataFlags,
}

/// The report with what the repair did.
#[derive(serde::Serialize)]
struct Outcome {
    #[serde(flatten)]
    scrub: ScrubReport,
    repaired: Vec<String>,
    /// Missing content not repaired, with why.
    unrepaired: Vec<String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = if args.repair {
        let Some(prepared) = super::sync::Prepared::from_flags(&args.sync)? else {
            anyhow::bail!(
                "--repair needs a parent to fetch from: give --parent URL, --connection-string, \
                 ACR_REGISTRY_CONNECTION_STRING, or a --sync-config file with `parent`"
            );
        };
        Some(prepared.into_client())
    } else {
        None
    };
    let backends = args.metadata.backends(&args.storage)?;
    super::check_data_dir_for(&args.data, super::MissingData::Refuse, &backends)?;
    let data = args.data.clone();
    let (store, scrub) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let store = Store::open_with(&data, Limits::default(), backends).with_context(|| {
            format!(
                "cannot open {}: scrub needs the data directory to itself (stop `serve` on it first)",
                data.display()
            )
        })?;
        let report = store.scrub()?;
        Ok((store, report))
    })
    .await??;
    let mut outcome = Outcome {
        repaired: Vec::new(),
        unrepaired: Vec::new(),
        scrub,
    };
    match &client {
        Some(client) => {
            // Blobs first: a manifest put back is served at once, and its blobs must be there.
            let mut todo = outcome.scrub.missing.clone();
            todo.sort_by_key(|m| m.kind == Kind::Manifest);
            for missing in todo {
                let name = format!("{} {}", missing.repo, missing.digest);
                match repair(&store, client, &missing).await {
                    Ok(()) => outcome.repaired.push(name),
                    Err(err) => outcome.unrepaired.push(format!("{name}: {err:#}")),
                }
            }
        }
        None => {
            outcome.unrepaired = outcome
                .scrub
                .missing
                .iter()
                .map(|m| format!("{} {}: not repaired (no --repair)", m.repo, m.digest))
                .collect()
        }
    }
    print(&outcome, args.json)?;
    let clean = outcome.unrepaired.is_empty() && (args.repair || outcome.scrub.damaged.is_empty());
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print(outcome: &Outcome, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(outcome)?);
        return Ok(());
    }
    let s = &outcome.scrub;
    println!(
        "checked {} files ({} bytes); damaged {}; missing {}; repaired {}",
        s.checked,
        s.checked_bytes,
        s.damaged.len(),
        s.missing.len(),
        outcome.repaired.len()
    );
    for digest in &s.damaged {
        println!("damaged (moved to quarantine/): {digest}");
    }
    for line in &outcome.repaired {
        println!("repaired: {line}");
    }
    for line in &outcome.unrepaired {
        println!("missing: {line}");
    }
    for path in &s.stray {
        println!("stray file (not named by a digest, left alone): {path}");
    }
    Ok(())
}

/// Fetches one missing file from the parent: a manifest's bytes are put back under its digest,
/// a blob goes through an upload session, so it is verified before it is installed.
async fn repair(store: &Store, client: &ParentClient, missing: &Missing) -> anyhow::Result<()> {
    let digest = &missing.digest;
    match missing.kind {
        Kind::Manifest => {
            let fetched = client
                .get_manifest(&missing.repo, &digest.to_string())
                .await?
                .ok_or_else(|| anyhow::anyhow!("the parent does not have it"))?;
            let store = store.clone();
            let digest = digest.clone();
            tokio::task::spawn_blocking(move || {
                store.restore_manifest_file(&digest, &fetched.body)
            })
            .await??;
        }
        Kind::Blob => {
            let repo: RepoName = missing.repo.parse()?;
            let id = format!("scrub-{}", digest.hex());
            let session = store.open_upload(&repo, &id)?;
            let mut session = session.lock().await;
            let mut stream = client
                .get_blob(&missing.repo, digest, session.len())
                .await?;
            let result = async {
                while let Some(chunk) = client.next_chunk(&mut stream).await? {
                    tokio::task::block_in_place(|| session.append(&chunk))?;
                }
                tokio::task::block_in_place(|| store.finish_upload(&mut session, digest))?;
                anyhow::Ok(())
            }
            .await;
            if result.is_err() {
                store.cancel_upload(&id);
            }
            result?;
        }
    }
    Ok(())
}
