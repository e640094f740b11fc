//! `connected-registry recover --data DIR`: rebuilds a lost metadata database (`meta.redb`)
//! from the blob files (`registry::storage::recover`), with the repositories and tags sync's
//! state remembers (`DATA/sync/state.json`). What cannot be rebuilt is said in README
//! ("Damaged files, scrub and recover").

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use registry::storage::recover::KnownTag;
use registry::{Limits, RepoName, StorageError, Store};

/// The metadata file `recover` rebuilds.
const META_FILE: &str = "meta.redb";

#[derive(clap::Args)]
pub struct Args {
    /// Data directory whose blobs/ are still there (no registry may be running on it); never created.
    #[arg(long, env = "ACR_REGISTRY_DATA_VOLUME", default_value = "./data")]
    pub data: PathBuf,

    /// Rebuild even though meta.redb exists: it is moved aside to meta.redb.before-recover-UNIXTIME first.
    #[arg(long)]
    pub force: bool,

    /// Repository that receives, by digest, the manifests no known tag reaches.
    #[arg(long, default_value = "lost-and-found", value_name = "REPO")]
    pub orphans_repo: String,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub storage: super::storage::StorageFlags,

    /// Only `redb`: recover rebuilds meta.redb (metadata in PostgreSQL is restored from
    /// PostgreSQL's own backups).
    #[command(flatten)]
    pub metadata: super::metadata::MetadataFlags,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.metadata.metadata()?.is_shared() {
        anyhow::bail!(
            "recover rebuilds {META_FILE} in the data directory from its blob files; the \
             metadata given (--metadata {}) is in PostgreSQL, shared by every replica: restore \
             it from PostgreSQL's own backups instead",
            args.metadata.shown()
        );
    }
    let orphans: RepoName = args
        .orphans_repo
        .parse()
        .map_err(|e| anyhow::anyhow!("--orphans-repo {:?}: {e}", args.orphans_repo))?;
    let data = args.data.clone();
    let backends = args.storage.backends()?;
    let blobs = data.join("blobs");
    let on_disk = matches!(backends.blobs, registry::storage::BlobBackend::Filesystem);
    if on_disk && !blobs.is_dir() {
        anyhow::bail!(
            "no blobs at {}: recover rebuilds the metadata from the blob files, and there are none (check --data)",
            blobs.display()
        );
    }
    let meta = data.join(META_FILE);
    if meta.exists() {
        if !args.force {
            anyhow::bail!(
                "{} exists: recover rebuilds a missing database; to rebuild anyway (it is moved aside, not deleted) add --force",
                meta.display()
            );
        }
        move_aside(&data, &meta, backends.clone()).await?;
    }
    let known = known_tags(&data)?;
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let store = Store::open_with(&data, Limits::default(), backends)
            .with_context(|| format!("cannot create a new {}", data.join(META_FILE).display()))?;
        Ok(store.recover(&known, &orphans)?)
    })
    .await??;
    forget_positions(&args.data)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "looked at {} blob files: {} manifests; {} tags put back from sync's state; {} manifests kept by digest in {}; repositories: {}",
            report.blobs,
            report.manifests,
            report.tags_restored,
            report.orphan_manifests,
            args.orphans_repo,
            report.repos.join(", ")
        );
        for line in &report.tags_lost {
            println!("tag not recovered: {line}");
        }
        for line in &report.manifests_unplaced {
            println!("manifest not recovered: {line}");
        }
    }
    Ok(
        if report.tags_lost.is_empty() && report.manifests_unplaced.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}

/// Moves an existing database aside, after making sure no process has it open (redb's lock):
/// moving a live registry's database would lose everything it writes afterwards.
async fn move_aside(
    data: &Path,
    meta: &Path,
    backends: registry::storage::Backends,
) -> anyhow::Result<()> {
    let probe = data.to_owned();
    let opened =
        tokio::task::spawn_blocking(move || Store::open_with(&probe, Limits::default(), backends))
            .await?;
    if let Err(err @ (StorageError::InUse(_) | StorageError::WrongStorage(_))) = opened {
        return Err(err.into());
    }
    drop(opened);
    let aside = meta.with_file_name(format!(
        "{META_FILE}.before-recover-{}",
        util::time::now_secs()
    ));
    std::fs::rename(meta, &aside)
        .with_context(|| format!("cannot move {} to {}", meta.display(), aside.display()))?;
    eprintln!("moved {} to {}", meta.display(), aside.display());
    Ok(())
}

/// The tags sync wrote (repo, tag, digest), from its state file: the only record of repository
/// names and tags outside the database.
fn known_tags(data: &Path) -> anyhow::Result<Vec<KnownTag>> {
    if !data.join("sync").join("state.json").is_file() {
        return Ok(Vec::new());
    }
    let state = sync::StateFile::open(&data.join("sync"))?;
    Ok(state.read(|s| {
        s.synced_tags
            .iter()
            .flat_map(|(repo, tags)| {
                tags.iter().map(|(tag, digest)| KnownTag {
                    repo: repo.clone(),
                    tag: tag.clone(),
                    digest: digest.clone(),
                })
            })
            .collect()
    }))
}

/// The change log starts over in the new database: positions sync kept in the old one (what it
/// pushed up, what it reconciled) would skip the new log's first entries, and the parent's feed
/// position is dropped so the next pass compares everything once.
fn forget_positions(data: &Path) -> anyhow::Result<()> {
    if !data.join("sync").join("state.json").is_file() {
        return Ok(());
    }
    let state = sync::StateFile::open(&data.join("sync"))?;
    state.update(|s| {
        s.pushed_seq = 0;
        s.reconciled_seq = 0;
        s.parent_feed = None;
        s.compared_all = None;
    })?;
    Ok(())
}
