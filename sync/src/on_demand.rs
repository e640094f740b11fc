//! Pull-through's source: the registry's `api::on_demand::Source` over sync's parent client,
//! so a pull that misses here reaches the parent with sync's credentials, TLS trust, retries
//! and bandwidth cap (one throttle for sync and on-demand transfers alike).
//!
//! [`PullThrough::for_repo`] is the one place that decides which parent serves a repository's
//! misses: the upstream whose prefix claims the name (`upstreams` of the sync config, its
//! `onDemand` patterns), else the main parent for the repositories in the on-demand scope.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};

use crate::client::ClientError;
use crate::namespaced::{Route, UpstreamParents};
use crate::parent::Parent;
use crate::service::SyncService;
use registry::api::on_demand::{FetchedManifest, Source, SourceError};
use registry::storage::fill::Incoming;
use registry::{Digest, Reference, RepoName};

/// Chunks a parent download may run ahead of the fill writing them.
const CHUNKS_AHEAD: usize = 8;

/// Which parent serves which repository's misses.
#[derive(Clone)]
pub struct PullThrough {
    service: Arc<SyncService>,
    upstreams: UpstreamParents,
}

impl PullThrough {
    /// `service` runs the main parent's schedule; `upstreams` maps names to the other
    /// registries (none: the main parent serves every name).
    pub fn new(service: Arc<SyncService>, upstreams: UpstreamParents) -> PullThrough {
        PullThrough { service, upstreams }
    }

    /// The parent that serves misses of `repo`, `None` when the repository is outside the
    /// on-demand scope. Read at every call: the scope follows the settings sync runs with now
    /// (a child's parent may change them).
    pub fn for_repo(&self, repo: &str) -> Option<Arc<dyn Parent>> {
        match self.upstreams.route(repo) {
            Route::Upstream(upstream) => return Some(upstream),
            Route::NotOnDemand => return None,
            Route::Parent => {}
        }
        let engine = self.service.engine();
        let settings = &engine.settings;
        settings
            .on_demand
            .covers(&settings.repos, repo)
            .then(|| engine.client.clone())
    }

    /// How long a held tag goes unconfirmed with the parent before a pull checks it.
    fn revalidate(&self) -> Option<std::time::Duration> {
        self.service.engine().settings.on_demand_revalidate
    }

    /// How long a miss waits for the parent, as configured now.
    pub fn timeout(&self) -> std::time::Duration {
        self.service.engine().settings.on_demand_timeout
    }
}

/// A parent error as a client of this registry reads it: whether the parent was unreachable,
/// in words that name no internal address (the details go to the log).
fn source_error(err: ClientError, what: &str) -> SourceError {
    tracing::warn!(error = %err, "on-demand fetch of {what} from the parent failed");
    match &err {
        ClientError::Transport { .. } => {
            SourceError::Unreachable("the connection to the parent failed".into())
        }
        ClientError::Stalled { secs, .. } => {
            SourceError::Unreachable(format!("the parent sent no byte for {secs} s"))
        }
        ClientError::Status { status, .. } if *status >= 500 => {
            SourceError::Unreachable(format!("the parent answered {status} (unavailable)"))
        }
        ClientError::Status { status, .. } => {
            SourceError::Refused(format!("the parent refused {what} ({status})"))
        }
        ClientError::Auth { .. } => SourceError::Refused(format!(
            "the parent refused this registry's credentials for {what}: check the sync token"
        )),
        ClientError::Protocol { message, .. } => SourceError::Refused(format!(
            "the parent's answer for {what} was refused: {message}"
        )),
        ClientError::Trust(_) | ClientError::Certificate { .. } => SourceError::Unreachable(
            "the parent's TLS certificate cannot be verified (see the log)".into(),
        ),
    }
}

fn is_not_found(err: &ClientError) -> bool {
    matches!(err, ClientError::Status { status: 404, .. })
}

impl Source for PullThrough {
    fn serves(&self, repo: &RepoName) -> bool {
        self.for_repo(repo.as_str()).is_some()
    }

    fn revalidate_after(&self) -> Option<std::time::Duration> {
        self.revalidate()
    }

    fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> BoxFuture<'static, Result<Option<FetchedManifest>, SourceError>> {
        let parent = self.for_repo(repo.as_str());
        let (repo, reference) = (repo.to_string(), reference.to_string());
        async move {
            let Some(parent) = parent else {
                return Ok(None);
            };
            match parent.get_manifest(&repo, &reference).await {
                Ok(found) => Ok(found.map(|m| FetchedManifest {
                    digest: m.digest,
                    media_type: m.media_type,
                    body: m.body,
                })),
                Err(err) if is_not_found(&err) => Ok(None),
                Err(err) => Err(source_error(err, &format!("manifest {repo}:{reference}"))),
            }
        }
        .boxed()
    }

    fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> BoxFuture<'static, Result<Option<Incoming>, SourceError>> {
        let parent = self.for_repo(repo.as_str());
        let (repo, digest) = (repo.to_string(), digest.clone());
        async move {
            let Some(parent) = parent else {
                return Ok(None);
            };
            // The download borrows the parent: a task owns both and hands the chunks over.
            let (opened_tx, opened) = tokio::sync::oneshot::channel();
            let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_AHEAD);
            tokio::spawn(async move {
                let download = match parent.get_blob(&repo, &digest, 0).await {
                    Ok(download) => download,
                    Err(err) => {
                        let _ = opened_tx.send(Err(err));
                        return;
                    }
                };
                let _ = opened_tx.send(Ok(download.size));
                let mut skip = download.skip;
                let mut chunks = download.chunks;
                while let Some(chunk) = chunks.next().await {
                    let chunk = chunk.map(|mut c| {
                        let drop = skip.min(c.len() as u64);
                        skip -= drop;
                        c.split_off(drop as usize)
                    });
                    let chunk = chunk.map_err(|e| {
                        tracing::warn!(error = %e, "on-demand blob download from the parent broke off");
                        "the download from the parent broke off".to_owned()
                    });
                    if tx.send(chunk).await.is_err() {
                        return;
                    }
                }
            });
            let what = "the blob";
            let size = match opened.await {
                Err(_) => return Err(SourceError::Refused("the download task ended".into())),
                Ok(Err(err)) if is_not_found(&err) => return Ok(None),
                Ok(Err(err)) => return Err(source_error(err, what)),
                Ok(Ok(size)) => size,
            };
            let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|chunk| (chunk, rx))
            })
            .boxed();
            Ok(Some(Incoming { size, chunks }))
        }
        .boxed()
    }
}
