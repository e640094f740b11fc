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
//! `TORTURE_CYCLES` sets the number of cycles (default 50, sync 15); `TORTURE_SEED` replays a run
//! (the seed is printed first). The seed fixes the operations, the data and the crash moments;
//! thread timing still varies between runs, so a replay retraces the run, not every interleaving.

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
    registry_torture("registry torture", 50, false);
}

/// The riskiest GC mode: untagged manifests older than the grace are deleted while workers
/// re-tag them, build indexes over them and delete tags, and crashes land inside GC's
/// transactions (`in_gc_transaction`) a quarter of the cycles.
#[test]
fn registry_survives_crashes_while_gc_deletes_untagged_manifests() {
    registry_torture("registry torture, untagged deletion", 25, true);
}

/// Runs `TORTURE_CYCLES` (or `default_cycles`) cycles against one data directory; `untagged`
/// runs the registry with `--gc-delete-untagged` and checks with that model.
fn registry_torture(what: &str, default_cycles: usize, untagged: bool) {
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
    let mut t = Target::start_with(&dir.path().join("reg"), &args);
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
    // Sessions left by the crashes expire: the uploads directory drains (bounded wait).
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
/// (opened in this process while the child is down); returns what is missing.
fn synced_without_content(data: &std::path::Path) -> Vec<String> {
    use registry::{Reference, RepoName, Store};
    let state = sync::StateFile::open(&data.join("sync"))
        .expect("the sync state file reads after a crash")
        .snapshot();
    let store = Store::open(data, registry::Limits::default())
        .expect("the child's store opens after a crash");
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
                    let bytes = std::fs::read(store.blob_path(&bd)).unwrap_or_default();
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
    let mut puts = BTreeMap::new();
    for line in log.lines() {
        let Some(rest) = line.split(" access: PUT ").nth(1) else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(path), Some("201")) = (words.next(), words.next()) else {
            continue;
        };
        if path.contains("/manifests/") {
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
        let missing = synced_without_content(&child.data_dir());
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
    common::wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        puts = manifest_puts(&parent.log_text());
        expected.iter().all(|p| puts.contains_key(p))
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
    for path in &expected {
        assert_eq!(
            puts.get(path),
            Some(&1),
            "seed {seed}: {path} not pushed up exactly once"
        );
    }
    child.kill9();
    let missing = synced_without_content(&child.data_dir());
    assert!(missing.is_empty(), "seed {seed}: {missing:?}");
}
