//! A parent seen through local names: wraps any [`Parent`] and translates repository names
//! between this registry's namespaces and the parent's, so the engine, the copy and the scope
//! rules work in local names whichever upstream serves them. An upstream's (`mcr/foo` here is
//! `foo` at `https://mcr.microsoft.com`) is pull-only; the main parent's keeps names as they
//! are but leaves out the prefixes the upstreams claim (a repository `mcr/foo` at the parent is
//! not this registry's `mcr/foo`), and takes no push under them.

use crate::store::BlobBytes;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::client::{
    AcrAnswer, ClientError, ClientStats, FeedAnswer, FetchedManifest, ParentManifest, TagListing,
    Uploaded,
};
use crate::parent::{BlobDownload, ChunkedUpload, Parent};
use crate::upstreams::Upstream;
use oci::{ChangeableAttributes, Digest};

/// How local names map to the parent's.
#[derive(Clone, Debug)]
enum Names {
    /// The main parent: the same names, except under the upstreams' prefixes (not its own).
    Main { claimed: Vec<String> },
    /// A foreign upstream: only names under its prefix, translated.
    Upstream(Box<Upstream>),
}

/// A [`Parent`] addressed in local names.
pub struct Namespaced {
    inner: Arc<dyn Parent>,
    names: Names,
}

impl Namespaced {
    /// The main parent, leaving out the names under `claimed` (the upstreams' prefixes).
    pub fn main(inner: Arc<dyn Parent>, claimed: Vec<String>) -> Namespaced {
        Namespaced {
            inner,
            names: Names::Main { claimed },
        }
    }

    /// The upstream `upstream`, reached through `inner`.
    pub fn upstream(inner: Arc<dyn Parent>, upstream: Upstream) -> Namespaced {
        Namespaced {
            inner,
            names: Names::Upstream(Box::new(upstream)),
        }
    }

    /// The parent's name for local repository `local`; `None`: this parent does not serve it.
    fn remote(&self, local: &str) -> Option<String> {
        match &self.names {
            Names::Main { claimed } => {
                (!claimed.iter().any(|p| local.starts_with(p.as_str()))).then(|| local.to_owned())
            }
            Names::Upstream(up) => up.remote_name(local),
        }
    }

    /// The local name of the parent's repository `remote`; `None`: it has none here.
    fn local(&self, remote: &str) -> Option<String> {
        match &self.names {
            Names::Main { .. } => self.remote(remote),
            Names::Upstream(up) => up.local_name(remote),
        }
    }

    fn locals(&self, remotes: Vec<String>) -> Vec<String> {
        remotes.iter().filter_map(|r| self.local(r)).collect()
    }

    /// The refusal of a write this parent takes none of (never reached by the engine, which
    /// asks [`Parent::accepts_push`] first).
    fn not_pushed(&self, local: &str) -> ClientError {
        ClientError::Protocol {
            url: self.inner.base().to_owned(),
            message: format!(
                "repository {local} is not pushed to this upstream (foreign upstreams are \
                 pull-only, and the parent takes nothing under their prefixes)"
            ),
        }
    }
}

impl Parent for Namespaced {
    fn base(&self) -> &str {
        self.inner.base()
    }
    fn stats(&self) -> &ClientStats {
        self.inner.stats()
    }
    fn accepts_push(&self, repo: &str) -> bool {
        matches!(self.names, Names::Main { .. }) && self.remote(repo).is_some()
    }
    fn catalog(&self) -> BoxFuture<'_, Result<Option<Vec<String>>, ClientError>> {
        async move { Ok(self.inner.catalog().await?.map(|c| self.locals(c))) }.boxed()
    }
    fn tags<'a>(
        &'a self,
        repo: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<String>>, ClientError>> {
        async move {
            match self.remote(repo) {
                Some(remote) => self.inner.tags(&remote).await,
                None => Ok(None),
            }
        }
        .boxed()
    }
    fn acr_tags<'a>(&'a self, repo: &'a str) -> BoxFuture<'a, Result<TagListing, ClientError>> {
        async move {
            match self.remote(repo) {
                Some(remote) => self.inner.acr_tags(&remote).await,
                None => Ok(AcrAnswer::UnknownRepo),
            }
        }
        .boxed()
    }
    fn acr_manifests<'a>(
        &'a self,
        repo: &'a str,
    ) -> BoxFuture<'a, Result<AcrAnswer<Vec<ParentManifest>>, ClientError>> {
        async move {
            match self.remote(repo) {
                Some(remote) => self.inner.acr_manifests(&remote).await,
                None => Ok(AcrAnswer::UnknownRepo),
            }
        }
        .boxed()
    }
    fn acr_repository<'a>(
        &'a self,
        repo: &'a str,
    ) -> BoxFuture<'a, Result<AcrAnswer<ChangeableAttributes>, ClientError>> {
        async move {
            match self.remote(repo) {
                Some(remote) => self.inner.acr_repository(&remote).await,
                None => Ok(AcrAnswer::UnknownRepo),
            }
        }
        .boxed()
    }
    fn acr_catalog(&self) -> BoxFuture<'_, Result<AcrAnswer<Vec<String>>, ClientError>> {
        async move {
            Ok(match self.inner.acr_catalog().await? {
                AcrAnswer::Found(c) => AcrAnswer::Found(self.locals(c)),
                other => other,
            })
        }
        .boxed()
    }
    fn head_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<Option<Digest>, ClientError>> {
        async move {
            match self.remote(repo) {
                Some(remote) => self.inner.head_manifest(&remote, reference).await,
                None => Ok(None),
            }
        }
        .boxed()
    }
    fn get_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a str,
    ) -> BoxFuture<'a, Result<Option<FetchedManifest>, ClientError>> {
        async move {
            match self.remote(repo) {
                Some(remote) => self.inner.get_manifest(&remote, reference).await,
                None => Ok(None),
            }
        }
        .boxed()
    }
    fn referrers<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Vec<Digest>, ClientError>> {
        async move {
            match self.remote(repo) {
                Some(remote) => self.inner.referrers(&remote, digest).await,
                None => Ok(Vec::new()),
            }
        }
        .boxed()
    }
    fn get_blob<'a, 'b>(
        &'a self,
        repo: &'b str,
        digest: &'b Digest,
        offset: u64,
    ) -> BoxFuture<'b, Result<BlobDownload<'a>, ClientError>>
    where
        'a: 'b,
    {
        async move {
            let remote = self.remote(repo).ok_or_else(|| ClientError::Protocol {
                url: self.inner.base().to_owned(),
                message: format!("repository {repo} is not served by this upstream"),
            })?;
            self.inner.get_blob(&remote, digest, offset).await
        }
        .boxed()
    }
    fn blob_exists<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<bool, ClientError>> {
        async move {
            match self.remote(repo) {
                Some(remote) => self.inner.blob_exists(&remote, digest).await,
                None => Ok(false),
            }
        }
        .boxed()
    }
    fn mount_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        from: &'a str,
    ) -> BoxFuture<'a, Result<bool, ClientError>> {
        async move {
            match (
                self.accepts_push(repo),
                self.remote(repo),
                self.remote(from),
            ) {
                (true, Some(remote), Some(from)) => {
                    self.inner.mount_blob(&remote, digest, &from).await
                }
                (true, Some(_), None) => Ok(false),
                _ => Err(self.not_pushed(repo)),
            }
        }
        .boxed()
    }
    fn upload_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        blob: &'a dyn BlobBytes,
        size: u64,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        async move {
            match (self.accepts_push(repo), self.remote(repo)) {
                (true, Some(remote)) => self.inner.upload_blob(&remote, digest, blob, size).await,
                _ => Err(self.not_pushed(repo)),
            }
        }
        .boxed()
    }
    fn upload_blob_chunked<'a>(
        &'a self,
        upload: ChunkedUpload<'a>,
    ) -> BoxFuture<'a, Result<Uploaded, ClientError>> {
        async move {
            match (self.accepts_push(upload.repo), self.remote(upload.repo)) {
                (true, Some(remote)) => {
                    let upload = ChunkedUpload {
                        repo: &remote,
                        ..upload
                    };
                    self.inner.upload_blob_chunked(upload).await
                }
                _ => Err(self.not_pushed(upload.repo)),
            }
        }
        .boxed()
    }
    fn put_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a str,
        media_type: &'a str,
        body: Bytes,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        async move {
            match (self.accepts_push(repo), self.remote(repo)) {
                (true, Some(remote)) => {
                    self.inner
                        .put_manifest(&remote, reference, media_type, body)
                        .await
                }
                _ => Err(self.not_pushed(repo)),
            }
        }
        .boxed()
    }
    fn changes(&self, after: u64, n: usize) -> BoxFuture<'_, Result<FeedAnswer, ClientError>> {
        async move {
            Ok(match self.inner.changes(after, n).await? {
                // A change to a repository with no local name here names nothing to compare.
                FeedAnswer::Page(mut page) => {
                    page.changes = std::mem::take(&mut page.changes)
                        .into_iter()
                        .filter_map(|mut change| {
                            change.repo = self.local(&change.repo)?;
                            Some(change)
                        })
                        .collect();
                    FeedAnswer::Page(page)
                }
                other => other,
            })
        }
        .boxed()
    }
    fn feed_head(&self) -> BoxFuture<'_, Result<FeedAnswer, ClientError>> {
        self.inner.feed_head()
    }
    fn wait_for_changes(
        &self,
        after: u64,
        wait: std::time::Duration,
    ) -> BoxFuture<'_, Result<bool, ClientError>> {
        self.inner.wait_for_changes(after, wait)
    }
}

/// Who serves a local repository, for a miss fetched on demand.
pub enum Route {
    /// The main parent, under the same name (no upstream claims it).
    Parent,
    /// This upstream, addressed in local names (pass the local name as is).
    Upstream(Arc<dyn Parent>),
    /// An upstream's prefix claims it, but its `onDemand` patterns leave it out.
    NotOnDemand,
}

/// Every upstream's client in local names, beside the mapping: what pull-through asks which
/// parent serves a miss, and containerd's `?ns=` requests are mapped by.
#[derive(Clone)]
pub struct UpstreamParents {
    map: Arc<crate::upstreams::Upstreams>,
    /// One per entry of `map`, in its order.
    parents: Vec<Arc<dyn Parent>>,
}

impl UpstreamParents {
    /// `parents` holds one client per entry of `map`, in its order, each a [`Namespaced`]
    /// upstream.
    pub fn new(map: Arc<crate::upstreams::Upstreams>, parents: Vec<Arc<dyn Parent>>) -> Self {
        UpstreamParents { map, parents }
    }

    /// The mapping alone.
    pub fn map(&self) -> &Arc<crate::upstreams::Upstreams> {
        &self.map
    }

    /// Which parent serves a miss of local repository `local`.
    pub fn route(&self, local: &str) -> Route {
        let entries = self.map.entries();
        match entries.iter().position(|u| u.remote_name(local).is_some()) {
            None => Route::Parent,
            Some(i) if entries[i].serves_on_demand(local) => match self.parents.get(i) {
                Some(parent) => Route::Upstream(parent.clone()),
                None => Route::NotOnDemand,
            },
            Some(_) => Route::NotOnDemand,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{image_manifest, FakeParent, FakeStore, IMAGE};
    use crate::upstreams::{RawUpstream, Upstreams};

    /// An engine syncing `patterns` (local names) from `parent` seen through `wrap`, mode
    /// `mode`, into a store of its own.
    fn engine(
        parent: Arc<FakeParent>,
        wrap: impl FnOnce(Arc<dyn Parent>) -> Namespaced,
        mode: &str,
        patterns: &[&str],
        dir: &std::path::Path,
    ) -> (crate::Engine, Arc<FakeStore>) {
        let blobs = dir.join("blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        let settings = crate::RawSettings {
            parent: Some("http://fake-parent".into()),
            mode: Some(mode.into()),
            repos: patterns
                .iter()
                .map(|p| crate::settings::RawRepoRule {
                    pattern: (*p).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
        .validate()
        .unwrap()
        .unwrap();
        let store = Arc::new(FakeStore::new(&blobs));
        let state = Arc::new(crate::StateFile::open(&dir.join("sync")).unwrap());
        let engine = crate::Engine::new(
            Arc::new(wrap(parent)),
            store.clone(),
            settings,
            state,
            Arc::new(crate::NoProgress),
        );
        (engine, store)
    }

    fn mcr() -> Upstream {
        let raw = RawUpstream {
            prefix: "mcr/".into(),
            url: "http://fake-mcr".into(),
            ..Default::default()
        };
        Upstreams::validate(vec![raw], "http://fake-parent")
            .unwrap()
            .entries()[0]
            .clone()
    }

    /// An upstream's repositories come down under the prefix, from their names there.
    #[tokio::test]
    async fn an_upstream_syncs_into_its_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let parent = Arc::new(FakeParent::default());
        let config = b"{}".as_slice();
        let body = image_manifest(config, &[b"agent"]);
        parent.put_blob(config);
        parent.put_blob(b"agent");
        let digest = parent.put_manifest("agent", Some("1.0"), IMAGE, &body);
        let (engine, store) = engine(
            parent,
            |p| Namespaced::upstream(p, mcr()),
            "ReadOnly",
            &["mcr/*"],
            dir.path(),
        );
        let summary = engine.run_pass(None).await;
        assert!(summary.errors.is_empty(), "{summary:?}");
        assert_eq!(store.tag("mcr/agent", "1.0"), Some(digest));
        assert_eq!(store.tag("agent", "1.0"), None);
    }

    /// The parent's own repositories under a claimed prefix are left out, and a client's push
    /// under it does not go up (ReadWrite), while the rest does.
    #[tokio::test]
    async fn the_parent_leaves_claimed_prefixes_alone() {
        let dir = tempfile::tempdir().unwrap();
        let parent = Arc::new(FakeParent::default());
        let config = b"{}".as_slice();
        let web = image_manifest(config, &[b"web"]);
        let impostor = image_manifest(config, &[b"impostor"]);
        for blob in [config, b"web".as_slice(), b"impostor".as_slice()] {
            parent.put_blob(blob);
        }
        let web_digest = parent.put_manifest("apps/web", Some("v1"), IMAGE, &web);
        parent.put_manifest("mcr/agent", Some("1.0"), IMAGE, &impostor);
        let (engine, store) = engine(
            parent.clone(),
            |p| Namespaced::main(p, vec!["mcr/".into()]),
            "ReadWrite",
            &["*"],
            dir.path(),
        );
        let pushed = image_manifest(config, &[b"pushed"]);
        store.client_blob("mcr/local", config);
        store.client_blob("mcr/local", b"pushed");
        store.client_manifest("mcr/local", "v1", IMAGE, pushed.clone());
        store.client_blob("apps/mine", config);
        store.client_blob("apps/mine", b"pushed");
        let mine = store.client_manifest("apps/mine", "v1", IMAGE, pushed);
        let summary = engine.run_pass(None).await;
        assert!(summary.errors.is_empty(), "{summary:?}");
        assert_eq!(store.tag("apps/web", "v1"), Some(web_digest));
        assert_eq!(store.tag("mcr/agent", "1.0"), None);
        assert_eq!(parent.tag("apps/mine", "v1"), Some(mine));
        assert_eq!(parent.tag("mcr/local", "v1"), None);
        assert!(engine.state.read(|s| s.pushed_seq) > 0);
    }

    /// The change feed names local repositories: an upstream's under its prefix, the parent's
    /// without those under a claimed prefix.
    #[tokio::test]
    async fn feed_changes_are_named_locally() {
        use oci::{Change, ChangeKind, FeedPage, Origin};
        let change = |seq: u64, repo: &str| Change {
            seq,
            time: 0,
            repo: repo.into(),
            origin: Origin::Client,
            kind: ChangeKind::TagDeleted { tag: "v1".into() },
        };
        let page = FeedPage {
            version: oci::feed::FEED_VERSION,
            head: 2,
            oldest: 1,
            reset: false,
            changes: vec![change(1, "agent"), change(2, "mcr/agent")],
        };
        let repos = |answer: FeedAnswer| match answer {
            FeedAnswer::Page(p) => p.changes.into_iter().map(|c| c.repo).collect::<Vec<_>>(),
            _ => panic!("not a page"),
        };
        let parent = Arc::new(FakeParent::default());
        parent.answer_feed_with(FeedAnswer::Page(page));
        let upstream = Namespaced::upstream(parent.clone(), mcr());
        assert_eq!(
            repos(upstream.changes(0, 10).await.unwrap()),
            ["mcr/agent", "mcr/mcr/agent"]
        );
        let main = Namespaced::main(parent, vec!["mcr/".into()]);
        assert_eq!(repos(main.changes(0, 10).await.unwrap()), ["agent"]);
    }
}
