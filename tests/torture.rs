//! Crash torture, counted: many cycles of concurrent writes (raw chunked and monolithic
//! uploads, cross-repository mounts, manifest and index puts, tag moves, tag and manifest
//! deletes, `skopeo copy`) and reads against `connected-registry serve` with a short GC
//! interval, each cycle ended by a crash at a random moment (`kill -9`) or at a random named
//! crash point in the write path (`CONNECTED_REGISTRY_CRASH_AT`, see `util::crash_point`), then
//! a restart on the same data directory, so damage would accumulate. After every restart:
//! every acknowledged write is there and byte-identical, every tag serves whole content, an
//! unacknowledged write either fully happened or left nothing, no temp file or partial blob
//! shows, and the store opened without anyone repairing it (the restart itself).
//!
//! The untagged variant runs `serve --gc-delete-untagged` and crashes inside GC's transaction
//! too (`in_gc_transaction`): an acknowledged manifest no tag reaches and older than the grace
//! may be gone; one a tag reaches (directly, through an index, as a referrer) never is.
//!
//! The sync variant kills a ReadWrite child of a parent of ours at random moments and named
//! points of its passes, until it converges: no tag its state records as synced lacks content
//! in its store, and every local image goes up to the parent exactly once.
//!
//! The token variant runs `serve --auth tokens` while a worker runs token commands through the real
//! CLI (create, regenerate a password, disable and enable, delete, scope-map update, signing-key
//! rotate) and another logs in (`/oauth2/token`) and pulls with acknowledged tokens; crashes land
//! at random moments and inside the access store's commit (`in_access_transaction`,
//! `after_access_commit`). After every restart every acknowledged token is there with its status
//! and scope map, every acknowledged password is accepted or refused as its token's state says,
//! access tokens issued before the crash still verify, and the command in flight either fully
//! happened or left nothing.
//!
//! `TORTURE_CYCLES` sets the number of cycles (default 50, sync 15, tokens 20); `TORTURE_SEED`
//! replays a run (the seed is printed first). The seed fixes the operations, the data and the crash
//! moments; thread timing still varies between runs, so a replay retraces the run, not every
//! interleaving.

#![forbid(unsafe_code)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::*;
use common::checks::{broken_references, path_of};
use common::oci::{seeded_bytes, Layout};
use common::target::Target;
use reqwest::Method;
use serde_json::json;

/// GC runs this often during the torture: it collects while writes and crashes happen.
const GC_INTERVAL: &str = "1s";
/// Content younger than this is never collected; an acknowledged blob that no manifest
/// references yet is checked while it is clearly younger than this.
const GC_GRACE: Duration = Duration::from_secs(10);
/// Upload sessions idle this long are dropped: the uploads directory must drain once the
/// torture ends.
const UPLOAD_TTL: &str = "5s";
/// The named points of the registry's write path (see `util::crash_point`).
const REGISTRY_POINTS: [&str; 3] = [
    "after_blob_fsync",
    "after_blob_rename",
    "in_meta_transaction",
];
/// The named point inside GC's removals: the untagged variant's, where GC removes something
/// every few seconds (in the default run it would seldom fire: only stale links go there).
const GC_POINT: &str = "in_gc_transaction";
/// Slack on [`GC_GRACE`] for the model of untagged deletion: GC compares whole seconds
/// (`pushed_at < now - grace`), so it may take a manifest a little under the grace after its
/// put was sent, never sooner than this much under it.
const GRACE_SLACK: Duration = Duration::from_millis(1500);
/// The named points of a sync pass.
const SYNC_POINTS: [&str; 4] = [
    "sync_before_tag_recorded",
    "sync_after_push_up",
    "after_blob_rename",
    "in_meta_transaction",
];
const REPOS: [&str; 3] = ["torture/a", "torture/b", "torture/c"];
/// Where `skopeo copy` pushes its image.
const SKOPEO_REPO: &str = "torture/skopeo";
const WORKERS: usize = 3;
/// Manifests a worker holds before it deletes more than it writes.
const MAX_OWNED: usize = 60;
/// Tags and manifests written before the last cycle that each check samples (all of them every
/// 25 cycles and at the end).
const SAMPLE: u64 = 30;

/// splitmix64: small, seedable, good enough to choose operations and crash moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        seeded_bytes(self.next(), len)
    }
}

/// `TORTURE_SEED`, or a fresh one; printed so a failure can be replayed.
fn seed(what: &str) -> u64 {
    let seed = match std::env::var("TORTURE_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("TORTURE_SEED={s:?}: expected an unsigned integer")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    eprintln!("{what}: seed {seed} (replay with TORTURE_SEED={seed})");
    seed
}

/// `TORTURE_CYCLES`, or `default`.
fn cycles(default: usize) -> usize {
    match std::env::var("TORTURE_CYCLES") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("TORTURE_CYCLES={s:?}: expected a number of cycles")),
        Err(_) => default,
    }
}

/// A write sent but not acknowledged when the registry died: after the restart it either
/// fully happened or left nothing.
#[derive(Clone, Debug)]
enum Pending {
    /// A manifest put by digest, and under `tag` when given, sent at `sent`.
    Manifest {
        repo: String,
        tag: Option<String>,
        body: Vec<u8>,
        sent: Instant,
    },
    TagDelete {
        repo: String,
        tag: String,
    },
    ManifestDelete {
        repo: String,
        digest: String,
    },
    /// A blob upload (monolithic, chunked or a mount): absent or whole. A chunked session
    /// names its location and how many bytes were sent.
    Blob {
        repo: String,
        bytes: Arc<Vec<u8>>,
        session: Option<(String, usize)>,
    },
}

/// Bytes of a blob, shared between the model and the request that sends them.
type Shared = Arc<Vec<u8>>;

/// What one worker had acknowledged: the tags and manifests it owns (no other worker touches
/// them, so their expected state is exact) and its recent blob uploads.
#[derive(Default)]
struct Owned {
    /// (repo, tag) -> manifest bytes.
    tags: BTreeMap<(String, String), Vec<u8>>,
    /// (repo, digest) -> manifest bytes.
    manifests: BTreeMap<(String, String), Vec<u8>>,
    /// (repo, digest) -> when the last put of it known to have happened was sent: the
    /// registry stores it no earlier, so untagged deletion may not take it before the grace
    /// has passed since then.
    put_at: BTreeMap<(String, String), Instant>,
    /// (repo, digest) -> bytes and when acknowledged; checked while younger than the GC grace.
    blobs: BTreeMap<(String, String), (Shared, Instant)>,
    /// Blobs of this worker's manifests, by repo: what a mount can take from.
    layers: BTreeMap<String, Vec<(String, Shared)>>,
    /// Tags and manifests written since the last check: always checked; the others by sample.
    touched: BTreeSet<(String, String)>,
    pending: Option<Pending>,
    acked: u64,
    /// Inconsistencies seen while the registry was up (a read of an owned tag that served
    /// other bytes).
    violations: Vec<String>,
}

impl Owned {
    /// Records a put of `body` (under `tag` when given) that happened, sent at `sent`.
    fn tag_put(&mut self, repo: &str, tag: Option<&str>, body: &[u8], sent: Instant) {
        self.put_at.insert((repo.into(), sha256(body)), sent);
        self.manifests
            .insert((repo.into(), sha256(body)), body.to_vec());
        self.touched.insert((repo.into(), sha256(body)));
        if let Some(tag) = tag {
            self.tags.insert((repo.into(), tag.into()), body.to_vec());
            self.touched.insert((repo.into(), tag.into()));
        }
    }

    fn manifest_deleted(&mut self, repo: &str, digest: &str) {
        self.manifests.remove(&(repo.into(), digest.into()));
        self.put_at.remove(&(repo.into(), digest.into()));
        self.tags
            .retain(|(r, _), body| !(r == repo && sha256(body) == digest));
    }

    /// (repo, digest) of the manifests this worker's tags reach, directly, as children of an
    /// index it holds or as referrers of a reached manifest: what untagged deletion must never
    /// take.
    fn reached(&self) -> BTreeSet<(String, String)> {
        let mut todo: Vec<(String, String)> = self
            .tags
            .iter()
            .map(|((repo, _), body)| (repo.clone(), sha256(body)))
            .collect();
        let mut reached = BTreeSet::new();
        while !todo.is_empty() {
            while let Some(key) = todo.pop() {
                if !reached.insert(key.clone()) {
                    continue;
                }
                let Some(body) = self.manifests.get(&key) else {
                    continue;
                };
                let index: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                for child in index["manifests"].as_array().into_iter().flatten() {
                    todo.extend(
                        child["digest"]
                            .as_str()
                            .map(|d| (key.0.clone(), d.to_owned())),
                    );
                }
            }
            for (key, body) in &self.manifests {
                let subject = subject_of(body).map(|s| (key.0.clone(), s));
                if !reached.contains(key) && subject.is_some_and(|s| reached.contains(&s)) {
                    todo.push(key.clone());
                }
            }
        }
        reached
    }

    /// Whether untagged deletion may have taken this manifest: no tag of this worker reaches
    /// it and its last put was sent longer than the grace ago (less the slack).
    fn collectable(&self, key: &(String, String), reached: &BTreeSet<(String, String)>) -> bool {
        !reached.contains(key)
            && self
                .put_at
                .get(key)
                .is_none_or(|sent| sent.elapsed() + GRACE_SLACK > GC_GRACE)
    }
}

/// One worker's cycle: random writes and reads until the registry dies or `stop` is set.
struct Worker {
    id: usize,
    api: Api,
    rng: Rng,
    cycle: usize,
    serial: usize,
    /// For the worker that runs skopeo: the layout and its manifest bytes.
    skopeo: Option<(Layout, Vec<u8>)>,
    host: String,
    /// The registry deletes untagged manifests: push more images untagged, and re-tag or
    /// build indexes over untagged manifests more often, to meet GC at the moment it takes them.
    untagged: bool,
}

/// A request that got no HTTP answer: the registry is gone.
struct Down;

impl Worker {
    fn send(&self, rb: reqwest::blocking::RequestBuilder) -> Result<Resp, Down> {
        let r = rb.send().map_err(|_| Down)?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.bytes().map_err(|_| Down)?.to_vec();
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    fn next_tag(&mut self) -> String {
        self.serial += 1;
        format!("w{}-c{}-{}", self.id, self.cycle, self.serial)
    }

    fn run(&mut self, owned: &mut Owned, stop: &AtomicBool) {
        let mut ops = 0;
        while !stop.load(Ordering::Relaxed) && ops < 10_000 {
            ops += 1;
            // A worker holding many tags and manifests deletes more, so that a long run's
            // store (and each check of it) stays the same size.
            if owned.manifests.len() > MAX_OWNED && self.rng.chance(50) {
                if self.delete_manifest(owned).is_err() {
                    return;
                }
                continue;
            }
            let r = match self.rng.below(100) {
                0..=6 if self.untagged => self.push_referrer(owned),
                0..=34 => self.push_image(owned),
                35..=44 => self.push_index(owned),
                45..=54 => self.move_tag(owned),
                55..=62 => self.delete_tag(owned),
                63..=67 => self.delete_manifest(owned),
                68..=72 if self.skopeo.is_some() => self.skopeo_copy(owned),
                _ => self.pull(owned),
            };
            if r.is_err() {
                return;
            }
        }
    }

    /// Uploads one blob (monolithic, chunked, or mounted from another repository of this
    /// worker); returns its digest once acknowledged, `None` when refused.
    fn blob(&mut self, owned: &mut Owned, repo: &str, bytes: Arc<Vec<u8>>) -> Result<bool, Down> {
        let digest = sha256(&bytes);
        owned.pending = Some(Pending::Blob {
            repo: repo.into(),
            bytes: bytes.clone(),
            session: None,
        });
        let start = self.send(
            self.api
                .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/")),
        )?;
        let Some(loc) = start.header("location").map(|l| path_of(&l)) else {
            return Ok(false);
        };
        let done = if self.rng.chance(50) {
            self.send(
                self.api
                    .req(Method::PUT, &Api::with_digest(&loc, &digest))
                    .header("content-type", "application/octet-stream")
                    .body(bytes.to_vec()),
            )?
        } else {
            let mut loc = loc;
            let mut sent = 0;
            let pieces = 1 + self.rng.below(3) as usize;
            let step = bytes.len().div_ceil(pieces);
            while sent < bytes.len() {
                let end = (sent + step).min(bytes.len());
                owned.pending = Some(Pending::Blob {
                    repo: repo.into(),
                    bytes: bytes.clone(),
                    session: Some((loc.clone(), end)),
                });
                let r = self.send(
                    self.api
                        .req(Method::PATCH, &loc)
                        .header("content-type", "application/octet-stream")
                        .header("content-range", format!("{sent}-{}", end - 1))
                        .body(bytes[sent..end].to_vec()),
                )?;
                if r.status != 202 {
                    owned.pending = None;
                    return Ok(false);
                }
                loc = r.header("location").map(|l| path_of(&l)).unwrap_or(loc);
                sent = end;
            }
            self.send(self.api.req(Method::PUT, &Api::with_digest(&loc, &digest)))?
        };
        owned.pending = None;
        if done.status != 201 {
            return Ok(false);
        }
        owned.acked += 1;
        owned
            .blobs
            .insert((repo.into(), digest), (bytes, Instant::now()));
        Ok(true)
    }

    /// Mounts a blob of another repository of this worker into `repo`.
    fn mount(&mut self, owned: &mut Owned, repo: &str) -> Result<Option<Arc<Vec<u8>>>, Down> {
        let candidates: Vec<(String, Arc<Vec<u8>>, String)> = owned
            .layers
            .iter()
            .filter(|(r, _)| r.as_str() != repo)
            .flat_map(|(r, l)| {
                l.iter()
                    .map(move |(d, b)| (d.clone(), b.clone(), r.clone()))
            })
            .collect();
        if candidates.is_empty() {
            return Ok(None);
        }
        let (digest, bytes, from) = self.rng.pick(&candidates).clone();
        owned.pending = Some(Pending::Blob {
            repo: repo.into(),
            bytes: bytes.clone(),
            session: None,
        });
        let r = self.send(self.api.req(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?mount={digest}&from={from}"),
        ))?;
        owned.pending = None;
        if r.status != 201 {
            // Not mountable (its manifest was deleted and collected): an upload session was
            // opened instead, left to expire.
            return Ok(None);
        }
        owned.acked += 1;
        owned
            .blobs
            .insert((repo.into(), digest), (bytes.clone(), Instant::now()));
        Ok(Some(bytes))
    }

    fn put_manifest(
        &mut self,
        owned: &mut Owned,
        repo: &str,
        tag: Option<String>,
        media_type: &str,
        body: Vec<u8>,
    ) -> Result<bool, Down> {
        let sent = Instant::now();
        owned.pending = Some(Pending::Manifest {
            repo: repo.into(),
            tag: tag.clone(),
            body: body.clone(),
            sent,
        });
        let reference = tag.clone().unwrap_or_else(|| sha256(&body));
        let r = self.send(
            self.api
                .req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
                .header("content-type", media_type)
                .body(body.clone()),
        )?;
        owned.pending = None;
        if r.status != 201 {
            return Ok(false);
        }
        owned.acked += 1;
        owned.tag_put(repo, tag.as_deref(), &body, sent);
        Ok(true)
    }

    fn push_image(&mut self, owned: &mut Owned) -> Result<(), Down> {
        let repo = *self.rng.pick(&REPOS);
        let mut config = serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Labels": {"torture": format!("w{}-c{}-{}", self.id, self.cycle, self.rng.next())}},
            "rootfs": {"type": "layers", "diff_ids": []},
        }))
        .unwrap();
        config.push(b'\n');
        let config = Arc::new(config);
        if !self.blob(owned, repo, config.clone())? {
            return Ok(());
        }
        let mut layers = Vec::new();
        for _ in 0..1 + self.rng.below(2) {
            let layer = if self.rng.chance(25) {
                self.mount(owned, repo)?
            } else {
                None
            };
            let layer = match layer {
                Some(l) => l,
                None => {
                    let len = 1 + self.rng.below(32 << 10) as usize;
                    let l = Arc::new(self.rng.bytes(len));
                    if !self.blob(owned, repo, l.clone())? {
                        return Ok(());
                    }
                    l
                }
            };
            layers.push(layer);
        }
        let ldescs: Vec<Desc> = layers.iter().map(|l| Desc::of(OCI_LAYER, l)).collect();
        let body = image_manifest(OCI_MANIFEST, &Desc::of(OCI_CONFIG, &config), &ldescs);
        let tagged = if self.untagged { 60 } else { 85 };
        let tag = self.rng.chance(tagged).then(|| self.next_tag());
        if self.put_manifest(owned, repo, tag, OCI_MANIFEST, body)? {
            let kept = owned.layers.entry(repo.into()).or_default();
            kept.extend(layers.iter().map(|l| (sha256(l), l.clone())));
            kept.push((sha256(&config), config));
        }
        Ok(())
    }

    /// A signature-like referrer (an artifact manifest with a `subject`), untagged, of an image
    /// this worker holds; half the time of an untagged one. Untagged deletion must keep it
    /// while its subject is reached, and may take it once its subject is not.
    fn push_referrer(&mut self, owned: &mut Owned) -> Result<(), Down> {
        let repo = *self.rng.pick(&REPOS);
        let reached = owned.reached();
        let untagged_only = self.rng.chance(50);
        let mut subjects: Vec<Vec<u8>> = Vec::new();
        for untagged_only in [untagged_only, false] {
            subjects = owned
                .manifests
                .iter()
                .filter(|(k, body)| {
                    k.0 == repo
                        && media_type_of(body) == OCI_MANIFEST
                        && subject_of(body).is_none()
                        && !(untagged_only && reached.contains(*k))
                })
                .map(|(_, b)| b.clone())
                .collect();
            if !subjects.is_empty() {
                break;
            }
        }
        if subjects.is_empty() {
            return self.push_image(owned);
        }
        let subject = self.rng.pick(&subjects).clone();
        let empty = Arc::new(b"{}".to_vec());
        let signature = Arc::new(self.rng.bytes(64));
        if !self.blob(owned, repo, empty.clone())? || !self.blob(owned, repo, signature.clone())? {
            return Ok(());
        }
        let body = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.torture.signature",
            "config": Desc::of("application/vnd.oci.empty.v1+json", &empty).json(),
            "layers": [Desc::of("application/octet-stream", &signature).json()],
            "subject": Desc::of(OCI_MANIFEST, &subject).json(),
        }))
        .unwrap();
        self.put_manifest(owned, repo, None, OCI_MANIFEST, body)?;
        Ok(())
    }

    /// An index over two manifests this worker holds in one repository.
    fn push_index(&mut self, owned: &mut Owned) -> Result<(), Down> {
        let repo = *self.rng.pick(&REPOS);
        // Untagged children half the time in the untagged mode: GC may be taking them.
        let reached = owned.reached();
        let prefer_untagged = self.untagged && self.rng.chance(50);
        let mut children: Vec<Vec<u8>> = Vec::new();
        for untagged_only in [prefer_untagged, false] {
            children = owned
                .manifests
                .iter()
                .filter(|(k, body)| {
                    k.0 == repo
                        && media_type_of(body) == OCI_MANIFEST
                        && !(untagged_only && reached.contains(*k))
                })
                .map(|(_, b)| b.clone())
                .collect();
            if children.len() >= 2 {
                break;
            }
        }
        if children.len() < 2 {
            return self.push_image(owned);
        }
        let a = self.rng.pick(&children).clone();
        let b = self.rng.pick(&children).clone();
        let body = index_manifest(
            OCI_INDEX,
            &[
                (Desc::of(OCI_MANIFEST, &a), "amd64"),
                (Desc::of(OCI_MANIFEST, &b), "arm64"),
            ],
        );
        let tag = Some(self.next_tag());
        self.put_manifest(owned, repo, tag, OCI_INDEX, body)?;
        Ok(())
    }

    /// Points one of this worker's tags (or a new one) at another manifest it holds there; in
    /// the untagged mode half the time at an untagged one, which GC may be taking meanwhile.
    fn move_tag(&mut self, owned: &mut Owned) -> Result<(), Down> {
        let reached = owned.reached();
        let untagged_only = self.untagged && self.rng.chance(50);
        let mut choices: Vec<(String, Vec<u8>)> = Vec::new();
        for untagged_only in [untagged_only, false] {
            choices = owned
                .manifests
                .iter()
                .filter(|(k, _)| k.0 != SKOPEO_REPO && !(untagged_only && reached.contains(*k)))
                .map(|((r, _), b)| (r.clone(), b.clone()))
                .collect();
            if !choices.is_empty() {
                break;
            }
        }
        if choices.is_empty() {
            return Ok(());
        }
        let (repo, body) = self.rng.pick(&choices).clone();
        let tags: Vec<String> = owned
            .tags
            .keys()
            .filter(|(r, _)| *r == repo)
            .map(|(_, t)| t.clone())
            .collect();
        let tag = if !tags.is_empty() && self.rng.chance(70) {
            self.rng.pick(&tags).clone()
        } else {
            self.next_tag()
        };
        let media_type = media_type_of(&body);
        self.put_manifest(owned, &repo, Some(tag), &media_type, body)?;
        Ok(())
    }

    fn delete_tag(&mut self, owned: &mut Owned) -> Result<(), Down> {
        let tags: Vec<(String, String)> = owned.tags.keys().cloned().collect();
        if tags.is_empty() {
            return Ok(());
        }
        let (repo, tag) = self.rng.pick(&tags).clone();
        owned.pending = Some(Pending::TagDelete {
            repo: repo.clone(),
            tag: tag.clone(),
        });
        let r = self.send(
            self.api
                .req(Method::DELETE, &format!("/v2/{repo}/manifests/{tag}")),
        )?;
        owned.pending = None;
        if r.status == 202 {
            owned.acked += 1;
            owned.tags.remove(&(repo, tag));
        }
        Ok(())
    }

    fn delete_manifest(&mut self, owned: &mut Owned) -> Result<(), Down> {
        let all: Vec<(String, String)> = owned.manifests.keys().cloned().collect();
        if all.is_empty() {
            return Ok(());
        }
        let (repo, digest) = self.rng.pick(&all).clone();
        owned.pending = Some(Pending::ManifestDelete {
            repo: repo.clone(),
            digest: digest.clone(),
        });
        let r = self.send(
            self.api
                .req(Method::DELETE, &format!("/v2/{repo}/manifests/{digest}")),
        )?;
        owned.pending = None;
        if r.status == 202 {
            owned.acked += 1;
            owned.manifest_deleted(&repo, &digest);
            owned.layers.remove(&repo);
        }
        Ok(())
    }

    fn skopeo_copy(&mut self, owned: &mut Owned) -> Result<(), Down> {
        let Some((layout, body)) = self.skopeo.clone() else {
            return Ok(());
        };
        let tag = self.next_tag();
        let sent = Instant::now();
        owned.pending = Some(Pending::Manifest {
            repo: SKOPEO_REPO.into(),
            tag: Some(tag.clone()),
            body: body.clone(),
            sent,
        });
        let out = Command::new("skopeo")
            .args(["copy", "--dest-tls-verify=false", "--retry-times", "0"])
            .arg(layout.reference(common::sync::LAYOUT_TAG))
            .arg(format!("docker://{}/{SKOPEO_REPO}:{tag}", self.host))
            .output()
            .expect("run skopeo (./test.sh installs it)");
        if !out.status.success() {
            // Refused or cut off: `pending` stays for the check; the next request tells.
            return self.send(self.api.req(Method::GET, "/v2/")).map(|_| ());
        }
        owned.pending = None;
        owned.acked += 1;
        owned.tag_put(SKOPEO_REPO, Some(&tag), &body, sent);
        Ok(())
    }

    fn pull(&mut self, owned: &mut Owned) -> Result<(), Down> {
        let tags: Vec<((String, String), Vec<u8>)> = owned
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if tags.is_empty() {
            return Ok(());
        }
        let ((repo, tag), body) = self.rng.pick(&tags).clone();
        let r = self.send(
            self.api
                .req(Method::GET, &format!("/v2/{repo}/manifests/{tag}"))
                .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}")),
        )?;
        if r.status != 200 || r.body != body {
            owned.violations.push(format!(
                "while up: {repo}:{tag} served {} {} bytes, not the {} bytes acknowledged",
                r.status,
                r.body.len(),
                body.len()
            ));
        }
        Ok(())
    }
}

/// Figures of a torture run.
#[derive(Default, Debug)]
struct Tally {
    cycles: usize,
    acked: u64,
    lost: Vec<String>,
    unacked_seen: u64,
    /// Acknowledged manifests found gone that the model let untagged deletion take.
    collected: u64,
    /// Crash points that fired, by name.
    crash_points_hit: BTreeMap<String, u64>,
}

impl Tally {
    /// Counts a crash point (`NAME:N`) that fired.
    fn hit(&mut self, point: Option<&str>) {
        let name = point.and_then(|p| p.split(':').next()).unwrap_or("?");
        *self.crash_points_hit.entry(name.to_owned()).or_default() += 1;
    }
}

/// Checks the restarted registry against what the workers hold; adopts what an unacknowledged
/// write left (it fully happened or not at all); returns what is wrong.
///
/// Tags and manifests written since the last check are all checked; of the older ones about
/// `sample` (all of them with `u64::MAX`), so that a long run's checks do not grow with its history.
///
/// With `untagged` (the registry runs `--gc-delete-untagged`), an acknowledged manifest that no
/// tag of its worker reaches and whose last put is older than the grace may be gone (it leaves
/// the model then); if there it is byte-identical. A reached one (tagged, or a child of a
/// tagged index) is there and whole, and so is a younger untagged one.
fn verify(
    api: &Api,
    t: &Target,
    owned: &mut [Owned],
    tally: &mut Tally,
    rng: &mut Rng,
    sample: u64,
    untagged: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut known_tags: BTreeSet<(String, String)> = BTreeSet::new();
    for o in owned.iter_mut() {
        problems.append(&mut o.violations);
        // The unacknowledged write: happened in full, or not at all.
        match o.pending.take() {
            Some(Pending::Manifest {
                repo,
                tag,
                body,
                sent,
            }) => {
                let digest = sha256(&body);
                let by_digest = api.get_manifest(&repo, &digest);
                let happened = match &tag {
                    Some(tag) => {
                        let r = api.get_manifest(&repo, tag);
                        let before = o.tags.get(&(repo.clone(), tag.clone()));
                        if r.status == 200 && r.body == body {
                            true
                        } else if before.is_some_and(|b| *b == r.body && r.status == 200)
                            || (before.is_none() && r.status == 404)
                        {
                            false
                        } else {
                            problems.push(format!("unacknowledged put of {repo}:{tag}: the tag serves {} ({} bytes), neither before nor after", r.status, r.body.len()));
                            false
                        }
                    }
                    None => by_digest.status == 200,
                };
                if happened {
                    if by_digest.status != 200 || by_digest.body != body {
                        problems.push(format!("unacknowledged put of {repo}@{digest} happened, but the manifest by digest is {}", by_digest.status));
                    }
                    tally.unacked_seen += 1;
                    // Already held: it may have been there all along (the put not happening),
                    // so its age still counts from the put known to have happened.
                    let key = (repo.clone(), digest.clone());
                    let before = o.put_at.get(&key).copied();
                    o.tag_put(&repo, tag.as_deref(), &body, sent);
                    if let Some(before) = before {
                        o.put_at.insert(key, before);
                    }
                }
            }
            Some(Pending::TagDelete { repo, tag })
                if api.get_manifest(&repo, &tag).status == 404 =>
            {
                o.tags.remove(&(repo, tag));
                tally.unacked_seen += 1;
            }
            Some(Pending::ManifestDelete { repo, digest })
                if api.get_manifest(&repo, &digest).status == 404 =>
            {
                o.manifest_deleted(&repo, &digest);
                o.layers.remove(&repo);
                tally.unacked_seen += 1;
            }
            Some(Pending::Blob {
                repo,
                bytes,
                session,
            }) => {
                let digest = sha256(&bytes);
                let r = api.get(&format!("/v2/{repo}/blobs/{digest}"));
                match r.status {
                    404 => {}
                    200 if r.body == *bytes => tally.unacked_seen += 1,
                    s => problems.push(format!(
                        "unacknowledged upload {repo}@{digest}: {s} with {} of {} bytes",
                        r.body.len(),
                        bytes.len()
                    )),
                }
                if let Some((loc, sent)) = session {
                    let s = api.get(&loc);
                    if s.status == 204 {
                        let held = s
                            .header("range")
                            .and_then(|r| r.strip_prefix("0-")?.parse::<usize>().ok())
                            .map_or(0, |end| end + 1);
                        if held > sent {
                            problems.push(format!(
                                "upload session {loc} claims {held} bytes, {sent} were sent"
                            ));
                        }
                    } else if s.status != 404 {
                        problems.push(format!("upload session {loc}: status {}", s.status));
                    }
                }
            }
            // Not deleted after all, or nothing was in flight.
            Some(Pending::TagDelete { .. }) | Some(Pending::ManifestDelete { .. }) | None => {}
        }
        // Every acknowledged tag: the bytes acknowledged, over whole content.
        let touched = std::mem::take(&mut o.touched);
        let held = (o.tags.len() + o.manifests.len()) as u64;
        let mut due = |key: &(String, String)| touched.contains(key) || rng.below(held) < sample;
        for ((repo, tag), body) in &o.tags {
            known_tags.insert((repo.clone(), tag.clone()));
            if !due(&(repo.clone(), tag.clone())) {
                continue;
            }
            let r = api.get_manifest(repo, tag);
            if r.status != 200 || r.body != *body {
                tally.lost.push(format!(
                    "acknowledged {repo}:{tag} lost: {} {} bytes",
                    r.status,
                    r.body.len()
                ));
                continue;
            }
            problems.extend(broken_references(api, repo, &r.json()));
        }
        let reached = o.reached();
        let mut collected = Vec::new();
        for (key, body) in &o.manifests {
            if !due(key) {
                continue;
            }
            let (repo, digest) = key;
            let collectable = untagged && o.collectable(key, &reached);
            let r = api.get_manifest(repo, digest);
            if r.status == 404 && collectable {
                collected.push(key.clone());
            } else if r.status != 200 || r.body != *body {
                tally.lost.push(format!(
                    "acknowledged manifest {repo}@{digest} lost: {}{}",
                    r.status,
                    if untagged && !reached.contains(key) {
                        " (untagged, but younger than the GC grace)"
                    } else {
                        ""
                    }
                ));
            } else if untagged && !collectable && !reached.contains(key) {
                // Untagged and young: GC may not take it, nor anything it references.
                problems.extend(broken_references(api, repo, &r.json()));
            }
        }
        tally.collected += collected.len() as u64;
        for (repo, digest) in collected {
            o.manifest_deleted(&repo, &digest);
        }
        // Blobs acknowledged recently enough that GC must have spared them.
        o.blobs
            .retain(|_, (_, at)| at.elapsed() + Duration::from_secs(3) < GC_GRACE);
        for ((repo, digest), (bytes, _)) in &o.blobs {
            let r = api.get(&format!("/v2/{repo}/blobs/{digest}"));
            if r.status != 200 || r.body != **bytes {
                tally.lost.push(format!(
                    "acknowledged blob {repo}@{digest} lost: {}",
                    r.status
                ));
            }
        }
    }
    // No tag that nobody wrote, none without whole content.
    for repo in REPOS.iter().chain([&SKOPEO_REPO]) {
        for tag in api.tags(repo) {
            if !known_tags.contains(&(repo.to_string(), tag.clone())) {
                problems.push(format!(
                    "{repo}:{tag} is listed, but no acknowledged write left it there"
                ));
            }
        }
    }
    let torn = t.corrupt_blob_files();
    if !torn.is_empty() {
        problems.push(format!("torn blob files: {torn:?}"));
    }
    let tmp: Vec<_> = std::fs::read_dir(t.data_dir().join("tmp"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    if !tmp.is_empty() {
        problems.push(format!("temp files left after the restart: {tmp:?}"));
    }
    problems
}

/// The process exited by itself (a crash point fired) within `limit`.
fn exited_within(t: &mut Target, limit: Duration) -> bool {
    common::wait_until(limit, Duration::from_millis(10), || {
        matches!(t.proc.child.try_wait(), Ok(Some(_)))
    })
}

#[test]
fn registry_survives_crashes_at_random_moments_and_named_points() {
    registry_torture("registry torture", 50, false, Target::start_with);
}

/// The same torture on a replica of issue 17: metadata in PostgreSQL, blobs and upload
/// sessions in an Azure Blob Storage container (Azurite), both kept across the crashes. Fewer
/// cycles by default (each restart reconnects to both); `TORTURE_CYCLES` sets them.
#[test]
fn a_replica_on_postgresql_and_azure_blob_storage_survives_crashes() {
    registry_torture(
        "registry torture, PostgreSQL + Azure Blob Storage",
        12,
        false,
        Target::start_replica,
    );
}

/// The riskiest GC mode: untagged manifests older than the grace are deleted while workers
/// re-tag them, build indexes over them and delete tags, and crashes land inside GC's
/// transactions (`in_gc_transaction`) a quarter of the cycles.
#[test]
fn registry_survives_crashes_while_gc_deletes_untagged_manifests() {
    registry_torture(
        "registry torture, untagged deletion",
        25,
        true,
        Target::start_with,
    );
}

/// Runs `TORTURE_CYCLES` (or `default_cycles`) cycles against one data directory; `untagged`
/// runs the registry with `--gc-delete-untagged` and checks with that model; `start` starts the
/// registry on its backend ([`Target::start_with`], [`Target::start_replica`]).
fn registry_torture(
    what: &str,
    default_cycles: usize,
    untagged: bool,
    start: fn(&std::path::Path, &[&str]) -> Target,
) {
    let seed = seed(what);
    let total = cycles(default_cycles);
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let (layout, image) = Layout::with_image(
        &dir.path().join("layout"),
        common::sync::LAYOUT_TAG,
        &[40_000, 10_000],
    );
    let skopeo_body = layout.read_blob(&image.manifest.digest);
    let grace = format!("{}s", GC_GRACE.as_secs());
    let mut args = vec![
        "--gc-interval",
        GC_INTERVAL,
        "--gc-grace",
        &grace,
        "--upload-ttl",
        UPLOAD_TTL,
    ];
    if untagged {
        args.push("--gc-delete-untagged");
    }
    let mut t = start(&dir.path().join("reg"), &args);
    let mut owned: Vec<Owned> = (0..WORKERS).map(|_| Owned::default()).collect();
    let mut tally = Tally::default();
    let started = Instant::now();
    for cycle in 0..total {
        // Half the cycles crash at a named point (or are killed if it is not reached in time);
        // with untagged deletion, half of those inside GC's removals.
        let point = rng.chance(50).then(|| {
            if untagged && rng.chance(50) {
                format!("{GC_POINT}:{}", 1 + rng.below(3))
            } else {
                format!("{}:{}", rng.pick(&REGISTRY_POINTS), 1 + rng.below(6))
            }
        });
        let armed = |t: &mut Target| {
            t.envs = point
                .iter()
                .map(|p| (util::crash_point::ENV.to_owned(), p.clone()))
                .collect();
        };
        // GC runs while the check reads: a point inside it is armed only after the check (one
        // more restart), so that it fires among the workers' writes, not under the check.
        let in_gc = point.as_deref().is_some_and(|p| p.starts_with(GC_POINT));
        if in_gc {
            t.envs.clear();
        } else {
            armed(&mut t);
        }
        t.restart();
        let api = Api::new(&t.url());
        let sample = if cycle % 25 == 0 { u64::MAX } else { SAMPLE };
        let problems = verify(&api, &t, &mut owned, &mut tally, &mut rng, sample, untagged);
        assert!(
            problems.is_empty() && tally.lost.is_empty(),
            "seed {seed}, cycle {cycle}: {} lost, problems:\n{}\n{}",
            tally.lost.len(),
            tally.lost.join("\n"),
            problems.join("\n")
        );
        if in_gc {
            armed(&mut t);
            t.restart();
        }

        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = owned
            .drain(..)
            .enumerate()
            .map(|(id, mut o)| {
                let mut w = Worker {
                    id,
                    api: Api::new(&t.url()),
                    rng: Rng(rng.next()),
                    cycle,
                    serial: 0,
                    skopeo: (id == 0).then(|| (layout.clone(), skopeo_body.clone())),
                    host: t.host(),
                    untagged,
                };
                let stop = stop.clone();
                std::thread::spawn(move || {
                    w.run(&mut o, &stop);
                    o
                })
            })
            .collect();
        let moment = Duration::from_millis(100 + rng.below(800));
        if point.is_some() && exited_within(&mut t, moment * 2) {
            tally.hit(point.as_deref());
        } else {
            std::thread::sleep(moment);
        }
        t.kill9();
        stop.store(true, Ordering::Relaxed);
        owned = workers
            .into_iter()
            .map(|w| w.join().expect("worker thread"))
            .collect();
        tally.acked = owned.iter().map(|o| o.acked).sum();
        if (cycle + 1) % 50 == 0 {
            eprintln!(
                "{what}: {} cycles so far, {} writes acknowledged, {} lost, {:.0?}",
                cycle + 1,
                tally.acked,
                tally.lost.len(),
                started.elapsed()
            );
        }
    }
    // The last cycle's writes, checked once more.
    t.envs.clear();
    t.restart();
    let api = Api::new(&t.url());
    let problems = verify(
        &api,
        &t,
        &mut owned,
        &mut tally,
        &mut rng,
        u64::MAX,
        untagged,
    );
    tally.cycles = total;
    eprintln!(
        "{what}: {} cycles, {} writes acknowledged, {} writes lost, {} unacknowledged writes found complete, {} untagged manifests collected, crash points hit {:?}, seed {seed}, {:.0?}",
        tally.cycles,
        tally.acked,
        tally.lost.len(),
        tally.unacked_seen,
        tally.collected,
        tally.crash_points_hit,
        started.elapsed()
    );
    assert!(
        problems.is_empty() && tally.lost.is_empty(),
        "seed {seed}, after the last cycle: lost:\n{}\nproblems:\n{}",
        tally.lost.join("\n"),
        problems.join("\n")
    );
    // Sessions left by the crashes expire: the uploads directory drains (bounded wait). In an
    // object store the sessions are staging blobs of the container, not looked at here.
    if !t.blobs_on_disk() {
        return;
    }
    let uploads = t.data_dir().join("uploads");
    let drained = common::wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        std::fs::read_dir(&uploads).map_or(true, |d| d.count() == 0)
    });
    assert!(
        drained,
        "upload sessions left in {} after their TTL",
        uploads.display()
    );
}

/// The digest of the manifest's `subject`, for a referrer.
fn subject_of(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["subject"]["digest"].as_str().map(String::from))
}

/// The `mediaType` a manifest names (every manifest the torture writes names one).
fn media_type_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(String::from))
        .unwrap_or_else(|| OCI_MANIFEST.to_owned())
}

/// Whether every tag the child's sync state records as synced has whole content in its store
/// (opened in this process while the child is down); returns what is missing. The state is
/// read where the child keeps it: its state file, or its row in the metadata when that is
/// shared (`REGISTRY_UNDER_TEST=ours-postgres`, `ours-replica`).
fn synced_without_content(child: &Target) -> Vec<String> {
    use registry::{Reference, RepoName, Store};
    let data = child.data_dir();
    let store = Store::open_with(&data, registry::Limits::default(), child.backends())
        .expect("the child's store opens after a crash");
    let state: sync::state::SyncState = if store.metadata_is_shared() {
        store
            .sync_state("main")
            .expect("the sync state reads from the metadata after a crash")
            .map(|doc| serde_json::from_slice(&doc).expect("the sync state in the metadata parses"))
            .unwrap_or_default()
    } else {
        sync::StateFile::open(&data.join("sync"))
            .expect("the sync state file reads after a crash")
            .snapshot()
    };
    let mut missing = Vec::new();
    for (repo, tags) in &state.synced_tags {
        let Ok(name) = repo.parse::<RepoName>() else {
            missing.push(format!("state names an invalid repository {repo:?}"));
            continue;
        };
        for (tag, digest) in tags {
            let mut todo = vec![digest.clone()];
            while let Some(d) = todo.pop() {
                let m = match store.get_manifest(&name, &Reference::Digest(d.clone())) {
                    Ok(Some(m)) => m,
                    other => {
                        missing.push(format!(
                            "{repo}:{tag} recorded as synced at {digest}, manifest {d} missing: {other:?}"
                        ));
                        continue;
                    }
                };
                let v: serde_json::Value = serde_json::from_slice(&m.body).unwrap_or_default();
                for child in v["manifests"].as_array().into_iter().flatten() {
                    todo.extend(child["digest"].as_str().and_then(|s| s.parse().ok()));
                }
                let blobs = v["config"]["digest"].as_str().into_iter().chain(
                    v["layers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|l| l["digest"].as_str()),
                );
                for b in blobs {
                    let Ok(bd) = b.parse::<registry::Digest>() else {
                        continue;
                    };
                    let bytes = store
                        .read_small_blob(&bd, u64::MAX)
                        .ok()
                        .flatten()
                        .unwrap_or_default();
                    if sha256(&bytes) != b {
                        missing.push(format!(
                            "{repo}:{tag} recorded as synced at {digest}, blob {b} missing or torn"
                        ));
                    }
                }
            }
        }
    }
    missing
}

/// How many times the parent's access log shows a successful `PUT` of each manifest reference
/// under `repos`.
fn manifest_puts(log: &str) -> BTreeMap<String, usize> {
    puts_with_status(log, "201")
}

/// Manifest PUTs the parent logged as abandoned (status `-`): the child was killed while the
/// parent handled them. The parent may still have stored the manifest (its commit runs to the
/// end), and then the child's next pass finds it there and does not put it again.
fn abandoned_manifest_puts(log: &str) -> BTreeMap<String, usize> {
    puts_with_status(log, "-")
}

fn puts_with_status(log: &str, wanted: &str) -> BTreeMap<String, usize> {
    let mut puts = BTreeMap::new();
    for line in log.lines() {
        let Some(rest) = line.split(" access: PUT ").nth(1) else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(path), Some(status)) = (words.next(), words.next()) else {
            continue;
        };
        if status == wanted && path.contains("/manifests/") {
            *puts.entry(path.to_owned()).or_default() += 1;
        }
    }
    puts
}

#[test]
fn sync_child_survives_crashes_during_its_passes() {
    let seed = seed("sync torture");
    let total = cycles(15);
    let mut rng = Rng(seed ^ 0x5EED);
    let dir = tempfile::tempdir().unwrap();
    let parent = common::start_registry(&dir.path().join("parent"), &[]);
    let up = Api::new(&parent.url());
    let parent_url = parent.url();
    let args = [
        "--parent",
        parent_url.as_str(),
        // What sync alone brings down is checked: no pull-through.
        "--on-demand",
        "off",
        "--mode",
        "ReadWrite",
        "--repo",
        "down/*",
        "--repo",
        "torture/*",
        // Always open (hourly windows an hour long), polling the parent every second.
        "--sync-schedule",
        "0 * * * *",
        "--sync-window",
        "PT1H",
        "--sync-poll-interval",
        "PT1S",
        "--sync-retry-max",
        "PT1S",
    ];
    let mut child = Target::start_with(&dir.path().join("child"), &args);
    let mut local = Owned::default();
    let mut tally = Tally::default();
    let started = Instant::now();
    for cycle in 0..total {
        // The parent changes: a new tag, and now and then `latest` moves to it.
        let size = 50_000 + rng.below(400_000) as usize;
        let (_, desc, _) = up.push_image("down/app", &format!("c{cycle}"), 2, size);
        if rng.chance(40) {
            let body = up.get_manifest("down/app", &desc.digest).expect(200).body;
            up.put_manifest("down/app", "latest", OCI_MANIFEST, &body)
                .expect(201);
        }
        let point = rng
            .chance(50)
            .then(|| format!("{}:{}", rng.pick(&SYNC_POINTS), 1 + rng.below(3)));
        child.envs = point
            .iter()
            .map(|p| (util::crash_point::ENV.to_owned(), p.clone()))
            .collect();
        child.restart();
        // Clients push here meanwhile: store and forward takes these up.
        let mut w = Worker {
            id: 0,
            api: Api::new(&child.url()),
            rng: Rng(rng.next()),
            cycle,
            serial: 0,
            skopeo: None,
            host: child.host(),
            untagged: false,
        };
        let pushes = 1 + rng.below(3);
        let pusher = std::thread::spawn(move || {
            for _ in 0..pushes {
                if w.push_image(&mut local).is_err() {
                    break;
                }
            }
            local
        });
        let moment = Duration::from_millis(200 + rng.below(2500));
        if point.is_some() && exited_within(&mut child, moment * 2) {
            tally.hit(point.as_deref());
        } else {
            std::thread::sleep(moment);
        }
        child.kill9();
        local = pusher.join().expect("pusher thread");
        // A pending local push either happened in full or not: the restart's check is the
        // registry torture's; here it is simply dropped (it may or may not go up).
        local.pending = None;
        let missing = synced_without_content(&child);
        assert!(
            missing.is_empty(),
            "seed {seed}, cycle {cycle}: tags recorded as synced without their content:\n{}",
            missing.join("\n")
        );
        tally.cycles += 1;
    }
    tally.acked = local.acked;
    // Left alone, the child converges: every parent tag here, every local image up there.
    child.envs.clear();
    child.restart();
    let here = Api::new(&child.url());
    let converged =
        common::wait_until(Duration::from_secs(120), Duration::from_millis(500), || {
            let down = up.tags("down/app").iter().all(|tag| {
                let p = up.get_manifest("down/app", tag);
                let c = here.get_manifest("down/app", tag);
                c.status == 200 && c.body == p.body
            });
            let upward = local.tags.iter().all(|((repo, tag), body)| {
                let p = up.get_manifest(repo, tag);
                p.status == 200 && p.body == *body
            });
            down && upward
        });
    // The parent logs a request once its response is sent: give the last lines a moment.
    let expected: Vec<String> = local
        .tags
        .iter()
        .flat_map(|((repo, tag), body)| {
            [tag.clone(), sha256(body)].map(|r| format!("/v2/{repo}/manifests/{r}"))
        })
        .collect();
    let mut puts = manifest_puts(&parent.log_text());
    let mut abandoned = abandoned_manifest_puts(&parent.log_text());
    common::wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        let log = parent.log_text();
        (puts, abandoned) = (manifest_puts(&log), abandoned_manifest_puts(&log));
        expected
            .iter()
            .all(|p| puts.contains_key(p) || abandoned.contains_key(p))
    });
    eprintln!(
        "sync torture: {} cycles, crash points hit {:?}, {} local images acknowledged, {} manifest PUTs at the parent, converged: {converged}, seed {seed}, {:.0?}",
        tally.cycles,
        tally.crash_points_hit,
        local.tags.len(),
        puts.iter().filter(|(p, _)| p.starts_with("/v2/torture/")).count(),
        started.elapsed()
    );
    assert!(
        converged,
        "seed {seed}: the child did not converge within two minutes; child log:\n{}",
        child.log_text()
    );
    let twice: Vec<_> = puts
        .iter()
        .filter(|(p, &n)| p.starts_with("/v2/torture/") && n > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "seed {seed}: local manifests pushed up more than once: {twice:?}"
    );
    // Each local image was put up once: one PUT answered 201, or none, when the one PUT made
    // was abandoned by the child's kill -9 after the parent had stored it (it serves it:
    // `converged`), so that the next pass found it there.
    for path in &expected {
        let once = match puts.get(path) {
            Some(&n) => n == 1,
            None => abandoned.contains_key(path),
        };
        let repo = path.split("/manifests/").next().unwrap_or(path);
        assert!(
            once,
            "seed {seed}: {path} not pushed up exactly once; the parent's lines for {repo}:\n{}",
            parent
                .log_text()
                .lines()
                .filter(|l| l.contains(repo))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    child.kill9();
    let missing = synced_without_content(&child);
    assert!(missing.is_empty(), "seed {seed}: {missing:?}");
}

// ---------------------------------------------------------------------------------------------
// Access control: tokens, passwords, scope maps and signing keys under crashes.

/// Repositories the token torture's tokens may pull (each token one of them).
const TOKEN_REPOS: [&str; 2] = ["tokens/app", "tokens/base"];
/// Repositories scope-map updates add to and take from a token's own scope map.
const EXTRA_REPOS: [&str; 3] = ["tokens/extra-1", "tokens/extra-2", "tokens/extra-3"];
/// The named points of the access store's writes (see `util::crash_point`).
const ACCESS_POINTS: [&str; 2] = ["in_access_transaction", "after_access_commit"];
/// The service every access token is issued for and presented to: the same across restarts
/// (which change the port, and with it the `Host` the service name would otherwise come from).
const TOKEN_SERVICE: &str = "torture.registry";
/// Tokens the reader logs in and pulls with each cycle; the CLI worker leaves them alone then.
const READER_TOKENS: usize = 3;
/// Tokens kept before the CLI worker deletes more than it makes.
const MAX_TOKENS: usize = 30;
/// Untouched tokens whose passwords each check logs in with (argon2id costs tens of
/// milliseconds a login): the tokens touched since the last check are all checked.
const PASSWORD_SAMPLE: u64 = 4;
/// Access tokens issued before a crash that each check presents again.
const JWT_SAMPLE: usize = 6;
/// Passwords of some tokens expire this many seconds after they are made: they expire during
/// the run, and must be refused from then on.
const SHORT_EXPIRY: u64 = 4;

/// Seconds since 1970 by this machine's clock (the one the registry reads too).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One token as acknowledged by the CLI.
#[derive(Clone, Debug)]
struct KnownToken {
    /// The repository its own scope map lets it pull (never taken away).
    repo: String,
    enabled: bool,
    /// password1 and password2; `None` when not known (made by a command whose answer was lost).
    passwords: [Option<String>; 2],
    /// Bounds (unix seconds) of each password's expiry, when it was made with one.
    expiry: [Option<(u64, u64)>; 2],
    /// The last password replaced by `token credential generate`: refused from then on.
    replaced: Option<String>,
}

/// A token command (`token ...`, `scope-map update`) through the real CLI.
#[derive(Clone, Debug)]
enum TokenOp {
    Create {
        name: String,
        repo: String,
        expires: bool,
    },
    SetEnabled {
        name: String,
        enabled: bool,
    },
    /// `token credential generate NAME --password2`.
    Regenerate {
        name: String,
    },
    Delete {
        name: String,
    },
    /// `scope-map update NAME-scope-map --add-repository|--remove-repository REPO content/read`.
    ScopeMapUpdate {
        map: String,
        repo: String,
        add: bool,
    },
    /// `signing-key rotate`: access tokens signed before stay valid until they expire.
    RotateKey,
    /// `token show`, compared with the model (a read while the registry runs).
    Show {
        name: String,
    },
}

impl TokenOp {
    fn args(&self) -> Vec<String> {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match self {
            TokenOp::Create {
                name,
                repo,
                expires,
            } => {
                let mut args = words(&["token", "create", name, "--repository", repo]);
                args.push("content/read".into());
                if *expires {
                    args.extend(["--expiration".into(), format!("{SHORT_EXPIRY}s")]);
                }
                args
            }
            TokenOp::SetEnabled { name, enabled } => {
                let status = if *enabled { "enabled" } else { "disabled" };
                words(&["token", "update", name, "--status", status])
            }
            TokenOp::Regenerate { name } => {
                words(&["token", "credential", "generate", name, "--password2"])
            }
            TokenOp::Delete { name } => words(&["token", "delete", name]),
            TokenOp::ScopeMapUpdate { map, repo, add } => {
                let flag = if *add {
                    "--add-repository"
                } else {
                    "--remove-repository"
                };
                words(&["scope-map", "update", map, flag, repo, "content/read"])
            }
            TokenOp::RotateKey => words(&["signing-key", "rotate"]),
            TokenOp::Show { name } => words(&["token", "show", name]),
        }
    }

    fn name(&self) -> &str {
        match self {
            TokenOp::Create { name, .. }
            | TokenOp::SetEnabled { name, .. }
            | TokenOp::Regenerate { name }
            | TokenOp::Delete { name }
            | TokenOp::Show { name } => name,
            TokenOp::ScopeMapUpdate { map, .. } => map.trim_end_matches("-scope-map"),
            TokenOp::RotateKey => "",
        }
    }
}

/// What the CLI acknowledged, across restarts.
#[derive(Default)]
struct AccessModel {
    tokens: BTreeMap<String, KnownToken>,
    /// Deleted tokens, with the passwords they had: refused from then on.
    deleted: BTreeMap<String, Vec<String>>,
    /// Scope maps made for the tokens (kept when a token is deleted), by name: their actions.
    scope_maps: BTreeMap<String, BTreeSet<String>>,
    /// Access tokens the reader was issued, newest last.
    issued: Vec<IssuedJwt>,
    /// Tokens changed since the last check: all checked, the others by sample.
    touched: BTreeSet<String>,
    /// The write in flight when the registry died, and when it was sent (unix seconds).
    pending: Option<(TokenOp, u64)>,
    /// When and why a command failed (the registry died, or a refusal that is a bug).
    failure: Option<(Instant, String)>,
    acked: u64,
    violations: Vec<String>,
    /// Logins with a known password and access tokens presented again by the checks.
    passwords_checked: u64,
    jwts_checked: u64,
}

/// An access token from `/oauth2/token`, kept to present again after a crash.
#[derive(Clone, Debug)]
struct IssuedJwt {
    token: String,
    repo: String,
    jwt: String,
    /// Unix seconds before which it is surely valid (issued no earlier than the request).
    valid_until: u64,
}

/// The action a token's own scope map starts with, as `scope-map show` lists it.
fn pull_action(repo: &str) -> String {
    format!("repositories/{repo}/content/read")
}

/// Runs `connected-registry ARGS... --data DATA --output json`: its answer when it exits 0,
/// its stderr otherwise.
fn token_cli(data: &std::path::Path, args: &[String]) -> Result<serde_json::Value, String> {
    let out = Command::new(common::bin())
        .args(args)
        .arg("--data")
        .arg(data)
        .args(["--output", "json"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run connected-registry: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "{args:?}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The HTTP client of the token torture: every request names [`TOKEN_SERVICE`] as the host the
/// client addressed (as a proxy in front would), so access tokens outlive the port.
fn token_client() -> reqwest::blocking::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "x-forwarded-host",
        reqwest::header::HeaderValue::from_static(TOKEN_SERVICE),
    );
    reqwest::blocking::Client::builder()
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build HTTP client")
}

/// `GET /oauth2/token` with Basic NAME:PASSWORD asking to pull `repo`: the status and, on 200,
/// the access token and its lifetime in seconds. `Err(Down)` when no answer came.
fn token_login(
    http: &reqwest::blocking::Client,
    base: &str,
    name: &str,
    password: &str,
    repo: &str,
) -> Result<(u16, Option<(String, u64)>), Down> {
    let url = format!("{base}/oauth2/token?service={TOKEN_SERVICE}&scope=repository:{repo}:pull");
    let r = http
        .get(url)
        .header("authorization", common::access::basic(name, password))
        .send()
        .map_err(|_| Down)?;
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().unwrap_or_default();
    let issued = body["token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .map(|t| (t.to_owned(), body["expires_in"].as_u64().unwrap_or(0)));
    Ok((status, issued))
}

/// `GET PATH` with `Authorization: Bearer JWT`: status and body.
fn bearer_get(
    http: &reqwest::blocking::Client,
    base: &str,
    path: &str,
    jwt: &str,
) -> Result<(u16, Vec<u8>), Down> {
    let r = http
        .get(format!("{base}{path}"))
        .header("authorization", format!("Bearer {jwt}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .map_err(|_| Down)?;
    let status = r.status().as_u16();
    Ok((status, r.bytes().map_err(|_| Down)?.to_vec()))
}

/// The CLI worker: token commands while the registry runs, each recorded once acknowledged.
struct TokenWorker {
    data: std::path::PathBuf,
    rng: Rng,
    cycle: usize,
    serial: usize,
    /// The reader's tokens this cycle: not changed by this worker.
    reserved: BTreeSet<String>,
}

impl TokenWorker {
    fn run(&mut self, m: &mut AccessModel, stop: &AtomicBool) {
        let mut ops = 0;
        while !stop.load(Ordering::Relaxed) && ops < 1_000 {
            ops += 1;
            let op = self.choose(m);
            if self.apply(m, op).is_err() {
                return;
            }
        }
    }

    fn choose(&mut self, m: &AccessModel) -> TokenOp {
        let names: Vec<&String> = m
            .tokens
            .keys()
            .filter(|n| !self.reserved.contains(*n))
            .collect();
        let roll = self.rng.below(100);
        if names.len() < 3 || (roll < 25 && m.tokens.len() < MAX_TOKENS) {
            self.serial += 1;
            return TokenOp::Create {
                name: format!("t{}-{}", self.cycle, self.serial),
                repo: self.rng.pick(&TOKEN_REPOS).to_string(),
                expires: self.rng.chance(15),
            };
        }
        let name = self.rng.pick(&names).to_string();
        let token = &m.tokens[&name];
        match roll {
            0..=24 | 60..=69 => TokenOp::Delete { name },
            25..=39 => TokenOp::Regenerate { name },
            40..=59 => TokenOp::SetEnabled {
                enabled: !token.enabled,
                name,
            },
            70..=84 => {
                let map = format!("{name}-scope-map");
                let repo = self.rng.pick(&EXTRA_REPOS).to_string();
                let add = !m
                    .scope_maps
                    .get(&map)
                    .is_some_and(|a| a.contains(&pull_action(&repo)));
                TokenOp::ScopeMapUpdate { map, repo, add }
            }
            85..=89 => TokenOp::RotateKey,
            _ => TokenOp::Show { name },
        }
    }

    /// Runs `op` through the CLI and records what it acknowledged; `Err` when it failed (the
    /// registry died, or refused: the check tells which).
    fn apply(&mut self, m: &mut AccessModel, op: TokenOp) -> Result<(), ()> {
        let writes = !matches!(op, TokenOp::Show { .. });
        let sent = unix_now();
        if writes {
            m.pending = Some((op.clone(), sent));
        }
        let answer = match token_cli(&self.data, &op.args()) {
            Ok(answer) => answer,
            Err(why) => {
                m.failure = Some((Instant::now(), why));
                return Err(());
            }
        };
        m.pending = None;
        let acked = unix_now();
        if writes {
            m.acked += 1;
            m.touched.insert(op.name().to_owned());
        }
        let mut wrong = |what: String| m.violations.push(format!("{op:?}: {what}: {answer}"));
        match &op {
            TokenOp::Create {
                name,
                repo,
                expires,
            } => {
                let password = |i: usize| {
                    answer["credentials"]["passwords"][i]["value"]
                        .as_str()
                        .map(String::from)
                };
                if password(0).is_none() || password(1).is_none() {
                    wrong("token create answered without both passwords".into());
                }
                let expiry = expires.then_some((sent + SHORT_EXPIRY, acked + SHORT_EXPIRY));
                m.tokens.insert(
                    name.clone(),
                    KnownToken {
                        repo: repo.clone(),
                        enabled: true,
                        passwords: [password(0), password(1)],
                        expiry: [expiry, expiry],
                        replaced: None,
                    },
                );
                m.scope_maps.insert(
                    format!("{name}-scope-map"),
                    BTreeSet::from([pull_action(repo)]),
                );
            }
            TokenOp::SetEnabled { name, enabled } => {
                if let Some(t) = m.tokens.get_mut(name) {
                    t.enabled = *enabled;
                }
            }
            TokenOp::Regenerate { name } => {
                let value = answer["passwords"][0]["value"].as_str().map(String::from);
                if value.is_none() {
                    wrong("credential generate answered no password".into());
                }
                if let Some(t) = m.tokens.get_mut(name) {
                    if let Some(old) = t.passwords[1].take() {
                        t.replaced = Some(old);
                    }
                    t.passwords[1] = value;
                    t.expiry[1] = None;
                }
            }
            TokenOp::Delete { name } => {
                if let Some(t) = m.tokens.remove(name) {
                    let gone = t.passwords.iter().flatten().chain(&t.replaced);
                    m.deleted.insert(name.clone(), gone.cloned().collect());
                }
            }
            TokenOp::ScopeMapUpdate { map, repo, add } => {
                let actions = m.scope_maps.entry(map.clone()).or_default();
                if *add {
                    actions.insert(pull_action(repo));
                } else {
                    actions.remove(&pull_action(repo));
                }
                let shown: BTreeSet<String> = answer["actions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(String::from))
                    .collect();
                if shown != *actions {
                    let expected = actions.clone();
                    wrong(format!(
                        "scope map answered {shown:?}, expected {expected:?}"
                    ));
                }
            }
            TokenOp::RotateKey => {
                if answer["kid"].as_str().is_none() {
                    wrong("signing-key rotate answered no kid".into());
                }
            }
            TokenOp::Show { name } => {
                let enabled = m.tokens[name].enabled;
                let expected = if enabled { "enabled" } else { "disabled" };
                if answer["status"] != expected {
                    wrong(format!(
                        "token show while serving: expected status {expected}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What the reader did in a cycle.
#[derive(Default)]
struct ReaderLog {
    issued: Vec<IssuedJwt>,
    logins: u64,
    violations: Vec<String>,
}

/// The reader: logs in with `tokens` (name, password, repo: none of them changed this cycle)
/// and pulls `manifests[repo]` with the access token, until the registry dies or `stop`.
fn token_reader(
    base: &str,
    tokens: &[(String, String, String)],
    manifests: &BTreeMap<String, Vec<u8>>,
    mut rng: Rng,
    stop: &AtomicBool,
) -> ReaderLog {
    let http = token_client();
    let mut log = ReaderLog::default();
    let mut rounds = 0;
    while !tokens.is_empty() && !stop.load(Ordering::Relaxed) && rounds < 10_000 {
        rounds += 1;
        let (name, password, repo) = rng.pick(tokens);
        let sent = unix_now();
        let Ok((status, issued)) = token_login(&http, base, name, password, repo) else {
            return log;
        };
        let Some((jwt, lifetime)) = issued.filter(|_| status == 200) else {
            log.violations.push(format!(
                "reader: {name} (acknowledged, enabled, untouched) refused by /oauth2/token: {status}"
            ));
            return log;
        };
        log.logins += 1;
        let path = format!("/v2/{repo}/manifests/latest");
        let Ok((status, body)) = bearer_get(&http, base, &path, &jwt) else {
            return log;
        };
        if status != 200 || body != manifests[repo] {
            log.violations.push(format!(
                "reader: {name}'s access token pulled {path}: {status}, {} bytes",
                body.len()
            ));
            return log;
        }
        log.issued.push(IssuedJwt {
            token: name.clone(),
            repo: repo.clone(),
            jwt,
            valid_until: sent + lifetime,
        });
    }
    log
}

/// Token commands through the real CLI (create, regenerate, disable and enable, delete,
/// scope-map update, signing-key rotate) and logins and pulls with acknowledged tokens, against `serve --auth
/// tokens`, each cycle ended by `kill -9` at a random moment or by a crash inside the access
/// store's commit (`in_access_transaction`, `after_access_commit`). After every restart: every
/// acknowledged token there with its status and scope map, every acknowledged password accepted
/// or refused as its token's state says, access tokens issued before the crash still verified
/// (the signing key survived), the command in flight fully done or not at all, and the store
/// opened with no repair (the restart and the check's first command).
#[test]
fn access_control_survives_crashes_during_token_commands() {
    let what = "token torture";
    let seed = seed(what);
    let total = cycles(20);
    let mut rng = Rng(seed ^ 0x70CE);
    let dir = tempfile::tempdir().unwrap();
    // Refused logins are part of the check: no lockout may turn them into 429s.
    let args = ["--auth", "tokens", "--login-attempts", "1000000"];
    let mut t = Target::start_with(&dir.path().join("reg"), &args);
    let data = t.data_dir();
    let admin = common::access::admin_password(&data);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "authorization",
        common::access::basic("admin", &admin)
            .parse()
            .expect("a header value"),
    );
    let admin_api = Api {
        http: reqwest::blocking::Client::builder()
            .default_headers(headers)
            .build()
            .expect("build HTTP client"),
        base: t.url(),
    };
    let manifests: Arc<BTreeMap<String, Vec<u8>>> = Arc::new(
        TOKEN_REPOS
            .iter()
            .map(|repo| {
                (
                    repo.to_string(),
                    admin_api.push_image(repo, "latest", 1, 2_000).0,
                )
            })
            .collect(),
    );
    let http = token_client();
    let mut m = AccessModel::default();
    let mut tally = Tally::default();
    let mut logins = 0;
    let mut offline_acked = 0;
    let started = Instant::now();
    for cycle in 0..total {
        // Half the cycles crash at a named point of the access store (or are killed if it is
        // not reached in time).
        let point = rng
            .chance(50)
            .then(|| format!("{}:{}", rng.pick(&ACCESS_POINTS), 1 + rng.below(4)));
        t.envs = point
            .iter()
            .map(|p| (util::crash_point::ENV.to_owned(), p.clone()))
            .collect();
        t.restart();
        let base = t.url();
        let sample = if cycle % 10 == 0 {
            u64::MAX
        } else {
            PASSWORD_SAMPLE
        };
        let problems = verify_access(
            &data, &base, &http, &admin, &mut m, &mut tally, &mut rng, &manifests, sample,
        );
        assert!(
            problems.is_empty() && tally.lost.is_empty(),
            "seed {seed}, cycle {cycle}: {} lost:\n{}\nproblems:\n{}",
            tally.lost.len(),
            tally.lost.join("\n"),
            problems.join("\n")
        );

        // The reader's tokens: enabled, password1 known, not expiring; left alone this cycle.
        let mut candidates: Vec<(String, String, String)> = m
            .tokens
            .iter()
            .filter(|(_, k)| k.enabled && k.expiry[0].is_none())
            .filter_map(|(n, k)| Some((n.clone(), k.passwords[0].clone()?, k.repo.clone())))
            .collect();
        let mut readers = Vec::new();
        while readers.len() < READER_TOKENS && !candidates.is_empty() {
            let i = rng.below(candidates.len() as u64) as usize;
            readers.push(candidates.swap_remove(i));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut worker = TokenWorker {
            data: data.clone(),
            rng: Rng(rng.next()),
            cycle,
            serial: 0,
            reserved: readers.iter().map(|(n, _, _)| n.clone()).collect(),
        };
        let cli = {
            let stop = stop.clone();
            let mut m = std::mem::take(&mut m);
            std::thread::spawn(move || {
                worker.run(&mut m, &stop);
                m
            })
        };
        let reader = {
            let stop = stop.clone();
            let manifests = manifests.clone();
            let reader_rng = Rng(rng.next());
            std::thread::spawn(move || token_reader(&base, &readers, &manifests, reader_rng, &stop))
        };
        let moment = Duration::from_millis(200 + rng.below(800));
        let fired = point.is_some() && exited_within(&mut t, moment * 2);
        if fired {
            tally.hit(point.as_deref());
        } else if point.is_none() {
            std::thread::sleep(moment);
        }
        let killed_at = Instant::now();
        t.kill9();
        stop.store(true, Ordering::Relaxed);
        m = cli.join().expect("CLI worker thread");
        let read = reader.join().expect("reader thread");
        // A command fails only because the registry died under it.
        if let Some((at, why)) = m.failure.take() {
            if !fired && at < killed_at {
                m.violations
                    .push(format!("a command failed while serve was up: {why}"));
            }
        }
        m.violations.extend(read.violations);
        m.issued.extend(read.issued);
        // Now and then a command while no registry runs: the CLI changes the store itself, and
        // the next start must serve that. The command in flight stays unsettled (its token
        // left alone) until the check.
        if rng.chance(30) {
            let in_flight = m.pending.take();
            let mut offline = TokenWorker {
                data: data.clone(),
                rng: Rng(rng.next()),
                cycle,
                serial: 1_000,
                reserved: in_flight
                    .iter()
                    .map(|(op, _)| op.name().to_owned())
                    .collect(),
            };
            let op = offline.choose(&m);
            if offline.apply(&mut m, op).is_ok() {
                offline_acked += 1;
            } else if let Some((_, why)) = m.failure.take() {
                m.violations
                    .push(format!("with no registry running, a command failed: {why}"));
            }
            m.pending = in_flight;
        }
        let keep = m.issued.len().saturating_sub(50);
        m.issued.drain(..keep);
        logins += read.logins;
        tally.acked = m.acked;
    }
    // The last cycle's commands, checked once more, and every token.
    t.envs.clear();
    t.restart();
    let problems = verify_access(
        &data,
        &t.url(),
        &http,
        &admin,
        &mut m,
        &mut tally,
        &mut rng,
        &manifests,
        u64::MAX,
    );
    tally.cycles = total;
    eprintln!(
        "{what}: {} cycles, {} token commands acknowledged ({offline_acked} with no registry running), {} lost, {} unacknowledged commands found done, {logins} logins and pulls, {} passwords and {} access tokens checked after restarts, {} tokens and {} deleted at the end, crash points hit {:?}, seed {seed}, {:.0?}",
        tally.cycles,
        tally.acked,
        tally.lost.len(),
        tally.unacked_seen,
        m.passwords_checked,
        m.jwts_checked,
        m.tokens.len(),
        m.deleted.len(),
        tally.crash_points_hit,
        started.elapsed()
    );
    assert!(
        problems.is_empty() && tally.lost.is_empty(),
        "seed {seed}, after the last cycle: lost:\n{}\nproblems:\n{}",
        tally.lost.join("\n"),
        problems.join("\n")
    );
}

/// Checks the restarted registry's token set against `m`: settles the command in flight (it
/// fully happened or left nothing) and adopts what it did; every acknowledged token, status
/// and scope map there, no token nobody made; passwords of the tokens touched since the last
/// check, and of about `sample` others (all with `u64::MAX`), accepted or refused as the model
/// says; access tokens issued before the crash still verified. Acknowledged state found
/// missing goes to `tally.lost`; returns the other problems.
#[allow(clippy::too_many_arguments)]
fn verify_access(
    data: &std::path::Path,
    base: &str,
    http: &reqwest::blocking::Client,
    admin: &str,
    m: &mut AccessModel,
    tally: &mut Tally,
    rng: &mut Rng,
    manifests: &BTreeMap<String, Vec<u8>>,
    sample: u64,
) -> Vec<String> {
    let mut problems = std::mem::take(&mut m.violations);
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // The whole set as the restarted registry serves it (through its admin socket): the store
    // opened, as it was, with nobody repairing it.
    let (listed, maps) = match (
        token_cli(data, &words(&["token", "list"])),
        token_cli(data, &words(&["scope-map", "list"])),
    ) {
        (Ok(tokens), Ok(maps)) => (tokens, maps),
        (Err(e), _) | (_, Err(e)) => {
            problems.push(format!("the restarted registry's token set: {e}"));
            return problems;
        }
    };
    let status: BTreeMap<String, String> = listed
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let field = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
            (field("name"), field("status"))
        })
        .collect();
    let maps: BTreeMap<String, BTreeSet<String>> = maps
        .as_array()
        .into_iter()
        .flatten()
        .map(|map| {
            let actions = map["actions"].as_array().into_iter().flatten();
            let actions = actions.filter_map(|a| a.as_str().map(String::from));
            (
                map["name"].as_str().unwrap_or_default().to_owned(),
                actions.collect(),
            )
        })
        .collect();
    let login = |name: &str, password: &str, repo: &str| {
        token_login(http, base, name, password, repo).map(|(status, _)| status)
    };

    // The command in flight: done whole, or not at all.
    if let Some((op, _sent)) = m.pending.take() {
        m.touched.insert(op.name().to_owned());
        let done = match &op {
            TokenOp::Create { name, repo, .. } => {
                let map = format!("{name}-scope-map");
                match status.get(name) {
                    None => {
                        if maps.contains_key(&map) {
                            problems
                                .push(format!("{op:?} not done, yet its scope map {map} is there"));
                        }
                        false
                    }
                    Some(_) => {
                        match token_cli(data, &words(&["token", "show", name])) {
                            Ok(shown)
                                if shown["status"] == "enabled"
                                    && shown["scopeMapId"] == map.as_str() => {}
                            shown => {
                                problems.push(format!("{op:?} half done: token show {shown:?}"))
                            }
                        }
                        if maps.get(&map) != Some(&BTreeSet::from([pull_action(repo)])) {
                            problems.push(format!(
                                "{op:?} half done: its scope map is {:?}",
                                maps.get(&map)
                            ));
                        }
                        m.tokens.insert(
                            name.clone(),
                            KnownToken {
                                repo: repo.clone(),
                                enabled: true,
                                passwords: [None, None],
                                expiry: [None, None],
                                replaced: None,
                            },
                        );
                        m.scope_maps
                            .insert(map, BTreeSet::from([pull_action(repo)]));
                        true
                    }
                }
            }
            TokenOp::SetEnabled { name, enabled } => {
                let now = if *enabled { "enabled" } else { "disabled" };
                let done = status.get(name).is_some_and(|s| s == now);
                if let Some(k) = m.tokens.get_mut(name).filter(|_| done) {
                    k.enabled = *enabled;
                }
                done
            }
            TokenOp::Regenerate { name } => {
                let Some(k) = m.tokens.get_mut(name) else {
                    problems.push(format!("{op:?} on a token the model does not hold"));
                    return problems;
                };
                match (&k.passwords[1], k.enabled && k.expiry[1].is_none()) {
                    (Some(old), true) => match login(name, old, &k.repo) {
                        Ok(200) => false,
                        Ok(401) => {
                            k.replaced = k.passwords[1].take();
                            true
                        }
                        other => {
                            problems
                                .push(format!("{op:?}: the old password2 got {:?}", other.ok()));
                            false
                        }
                    },
                    // Not telling from outside: the old password2 is forgotten.
                    _ => {
                        k.passwords[1] = None;
                        false
                    }
                }
            }
            TokenOp::Delete { name } => {
                let done = !status.contains_key(name);
                if done {
                    if let Some(k) = m.tokens.remove(name) {
                        let gone = k.passwords.iter().flatten().chain(&k.replaced);
                        m.deleted.insert(name.clone(), gone.cloned().collect());
                    }
                }
                done
            }
            TokenOp::ScopeMapUpdate { map, repo, add } => {
                let mut after = m.scope_maps.get(map).cloned().unwrap_or_default();
                if *add {
                    after.insert(pull_action(repo));
                } else {
                    after.remove(&pull_action(repo));
                }
                let done = maps.get(map) == Some(&after);
                if done {
                    m.scope_maps.insert(map.clone(), after);
                }
                done
            }
            // Either way every access token signed before still verifies (checked below).
            TokenOp::RotateKey | TokenOp::Show { .. } => false,
        };
        tally.unacked_seen += u64::from(done);
    }

    // Every acknowledged token, status and scope map; nothing nobody made.
    for (name, k) in &m.tokens {
        let expected = if k.enabled { "enabled" } else { "disabled" };
        match status.get(name) {
            None => tally.lost.push(format!("token {name}: acknowledged, gone")),
            Some(s) if s != expected => tally
                .lost
                .push(format!("token {name}: acknowledged {expected}, now {s}")),
            Some(_) => {}
        }
    }
    for name in m.deleted.keys() {
        if status.contains_key(name) {
            tally
                .lost
                .push(format!("token {name}: deletion acknowledged, it is back"));
        }
    }
    for name in status.keys() {
        if name != "admin" && !m.tokens.contains_key(name) {
            problems.push(format!("token {name}: nobody made it"));
        }
    }
    for (map, actions) in &m.scope_maps {
        if maps.get(map) != Some(actions) {
            tally.lost.push(format!(
                "scope map {map}: acknowledged {actions:?}, now {:?}",
                maps.get(map)
            ));
        }
    }

    // Passwords: touched tokens all, the others by sample (each login hashes once).
    let mut checked: BTreeSet<String> = m.touched.clone();
    let names: Vec<&String> = m.tokens.keys().chain(m.deleted.keys()).collect();
    for _ in 0..sample.min(names.len() as u64) {
        checked.insert(rng.pick(&names).to_string());
    }
    if sample == u64::MAX {
        checked.extend(names.into_iter().cloned());
    }
    for name in &checked {
        if let Some(k) = m.tokens.get(name) {
            for (slot, password) in k.passwords.iter().enumerate() {
                let Some(password) = password else { continue };
                let before = unix_now();
                let Ok(got) = login(name, password, &k.repo) else {
                    problems.push("the restarted registry stopped answering".into());
                    return problems;
                };
                let after = unix_now();
                m.passwords_checked += 1;
                let expected = match (k.enabled, k.expiry[slot]) {
                    (false, _) => Some(401),
                    (true, None) => Some(200),
                    (true, Some((earliest, _))) if after < earliest => Some(200),
                    (true, Some((_, latest))) if before >= latest => Some(401),
                    // Expiring about now: either answer is right.
                    (true, Some(_)) => None,
                };
                match expected {
                    Some(200) if got != 200 => tally.lost.push(format!(
                        "token {name}: acknowledged password{} refused ({got})",
                        slot + 1
                    )),
                    Some(401) if got != 401 => problems.push(format!(
                        "token {name} ({}): password{} answered {got}, expected 401",
                        if k.enabled { "expired" } else { "disabled" },
                        slot + 1
                    )),
                    _ => {}
                }
            }
            if let Some(old) = &k.replaced {
                match login(name, old, &k.repo) {
                    Ok(401) => {}
                    got => problems.push(format!(
                        "token {name}: its replaced password2 answered {:?}, expected 401",
                        got.ok()
                    )),
                }
            }
        } else if let Some(passwords) = m.deleted.get(name) {
            for password in passwords {
                match login(name, password, TOKEN_REPOS[0]) {
                    Ok(401) => {}
                    got => problems.push(format!(
                        "token {name} (deleted): a password answered {:?}, expected 401",
                        got.ok()
                    )),
                }
            }
        }
    }
    match login("admin", admin, TOKEN_REPOS[0]) {
        Ok(200) => {}
        got => tally
            .lost
            .push(format!("the admin token's login answered {:?}", got.ok())),
    }

    // Access tokens issued before the crash, unexpired: the signing key survived.
    let now = unix_now();
    m.issued.retain(|i| i.valid_until > now + 5);
    for _ in 0..JWT_SAMPLE.min(m.issued.len()) {
        let issued = m.issued[rng.below(m.issued.len() as u64) as usize].clone();
        m.jwts_checked += 1;
        match bearer_get(http, base, "/v2/", &issued.jwt) {
            Ok((200, _)) => {}
            got => {
                tally.lost.push(format!(
                    "an access token of {} issued before the crash no longer verifies: {:?}",
                    issued.token,
                    got.ok().map(|(s, _)| s)
                ));
                continue;
            }
        }
        // It pulls while its token is enabled (its own repository is never taken from its
        // scope map), and not once the token is disabled or deleted.
        let enabled = m.tokens.get(&issued.token).map(|k| k.enabled);
        let path = format!("/v2/{}/manifests/latest", issued.repo);
        match (enabled, bearer_get(http, base, &path, &issued.jwt)) {
            (Some(true), Ok((200, body))) if body == manifests[&issued.repo] => {}
            (Some(true), got) => tally.lost.push(format!(
                "{}'s access token (enabled) cannot pull {path}: {:?}",
                issued.token,
                got.ok().map(|(s, _)| s)
            )),
            (_, Ok((401, _))) => {}
            (_, got) => problems.push(format!(
                "{}'s access token (token disabled or deleted) pulled {path}: {:?}",
                issued.token,
                got.ok().map(|(s, _)| s)
            )),
        }
    }
    m.touched.clear();
    problems
}

/// The first start with no token makes `admin` and writes its password to
/// `DATA/admin-password`: a crash anywhere in that (at each write of the access store, before
/// and after its commit) must not leave an `admin` token whose password nobody has. After the
/// crash, a plain start serves, and the password in the file logs in.
#[test]
fn a_crash_during_the_first_start_never_leaves_admin_without_its_password() {
    let args = ["--auth", "tokens"];
    // The first start writes the store twice: the built-in scope maps and the signing key
    // (straight to the store: no `after_access_commit` there), then the admin token.
    let moments = [
        ("in_access_transaction", 1),
        ("in_access_transaction", 2),
        ("after_access_commit", 1),
    ];
    for (point, arrival) in moments {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let armed = format!("{point}:{arrival}");
        let log = dir.path().join("crashed.log");
        let crashed = common::serve_until_exit(
            &data,
            &args,
            &[(util::crash_point::ENV, &armed)],
            log.clone(),
            Duration::from_secs(30),
        );
        assert!(
            crashed.is_some_and(|s| !s.success()),
            "{armed}: the first start did not stop at the crash point ({crashed:?}):\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let server = common::start_registry(&data, &args);
        let password = std::fs::read_to_string(data.join("admin-password")).unwrap_or_else(|e| {
            panic!(
                "{armed}: no DATA/admin-password after a crash in the first start ({e}); tokens: {:?}",
                token_cli(&data, &["token".into(), "list".into()])
            )
        });
        let v2 = format!("{}/v2/", server.url());
        let status = common::curl(&["-u", &format!("admin:{}", password.trim()), &v2]).0;
        assert_eq!(
            status, 200,
            "{armed}: the admin password in DATA/admin-password does not log in after a crash in the first start"
        );
    }
}
