//! The blob contract's rules, checked through the store on both implementations from one set
//! of tests: the local disk, and Azure Blob Storage on a real Azurite (`crate::azurite`). A
//! second store on the same blobs stands for a second replica: on the local disk the same data
//! directory opened again after the first closed (a restart), in Azure a store with its own
//! data directory (its own metadata) on the same container, open at the same time.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use oci::digest::Digest;
use oci::name::RepoName;

use super::backends::{Backends, BlobBackend};
use super::{GcOptions, Limits, StorageError, Store};
use crate::azurite::Azurite;

/// Where a test's blobs live.
enum Blobs {
    Filesystem(tempfile::TempDir),
    Azure {
        azurite: Azurite,
        container: String,
        /// One data directory (metadata) per replica.
        data: Vec<tempfile::TempDir>,
    },
}

impl Blobs {
    fn name(&self) -> &'static str {
        match self {
            Blobs::Filesystem(_) => "filesystem",
            Blobs::Azure { .. } => "azblob",
        }
    }

    /// Opens replica `n` (0, 1): on the local disk the one data directory again.
    fn replica(&mut self, n: usize, limits: Limits) -> Store {
        match self {
            Blobs::Filesystem(dir) => Store::open(dir.path(), limits).unwrap(),
            Blobs::Azure {
                azurite,
                container,
                data,
            } => {
                while data.len() <= n {
                    data.push(tempfile::tempdir().unwrap());
                }
                let blobs = BlobBackend::parse(
                    &format!("azblob://{container}"),
                    Some(&azurite.connection_string()),
                )
                .unwrap();
                let backends = Backends {
                    blobs,
                    ..Backends::default()
                };
                Store::open_with(data[n].path(), limits, backends).unwrap()
            }
        }
    }

    /// Whether two replicas can be open at once (not on one data directory).
    fn shared(&self) -> bool {
        matches!(self, Blobs::Azure { .. })
    }
}

/// Runs `test` on the local disk, then on a fresh Azurite.
fn on_both(test: impl Fn(&mut Blobs)) {
    let mut fs = Blobs::Filesystem(tempfile::tempdir().unwrap());
    test(&mut fs);
    test(&mut azure());
}

/// A container of its own on a fresh Azurite.
fn azure() -> Blobs {
    Blobs::Azure {
        azurite: Azurite::start(),
        container: format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        data: Vec::new(),
    }
}

fn repo() -> RepoName {
    "contract/app".parse().unwrap()
}

/// Bytes that differ at every position (a shifted block is noticed).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[0] ^ seed)
        .collect()
}

/// Reads `range` of `repo`'s blob `digest` as a client's GET does.
fn read(store: &Store, digest: &Digest, range: std::ops::Range<u64>) -> std::io::Result<Vec<u8>> {
    let blob = store
        .open_blob(&repo(), digest)
        .unwrap()
        .expect("blob held");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut out = Vec::new();
        let mut stream = blob.read(range);
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    })
}

/// Pushes `data` in `chunk`-sized requests, each committed as an acknowledged PATCH is.
fn push_chunked(store: &Store, data: &[u8], chunk: usize) -> (String, Digest) {
    let digest = Digest::sha256_of(data);
    let session = store.new_upload(&repo()).unwrap();
    let mut session = session.blocking_lock();
    for piece in data.chunks(chunk) {
        session.append(piece).unwrap();
        session.commit().unwrap();
    }
    let id = session.id().to_owned();
    store.finish_upload(&mut session, &digest).unwrap();
    (id, digest)
}

#[test]
fn a_blob_is_visible_only_once_verified_and_a_corrupt_or_short_upload_leaves_nothing() {
    on_both(|blobs| {
        let store = blobs.replica(0, Limits::default());
        let data = pattern(3 << 20, 1);
        let digest = Digest::sha256_of(&data);

        // Bytes in a session are not a blob, whatever their name would be.
        let session = store.new_upload(&repo()).unwrap();
        let mut session = session.blocking_lock();
        session.append(&data[..1 << 20]).unwrap();
        session.commit().unwrap();
        assert!(!store.blob_exists(&digest), "{}", blobs.name());

        // Short: refused, nothing visible, the session gone.
        let refused = store.finish_upload(&mut session, &digest);
        assert!(
            matches!(refused, Err(StorageError::DigestMismatch { .. })),
            "{refused:?}"
        );
        let short = Digest::sha256_of(&data[..1 << 20]);
        assert!(!store.blob_exists(&digest) && !store.blob_exists(&short));
        assert!(store.upload(&repo(), session.id()).is_err());
        drop(session);

        // Corrupt (one bit flipped in the middle): refused, nothing visible.
        let mut bad = data.clone();
        bad[2 << 20] ^= 4;
        let session = store.new_upload(&repo()).unwrap();
        let mut session = session.blocking_lock();
        session.append(&bad).unwrap();
        let refused = store.finish_upload(&mut session, &digest);
        assert!(
            matches!(refused, Err(StorageError::DigestMismatch { .. })),
            "{refused:?}"
        );
        assert!(!store.blob_exists(&digest) && !store.blob_exists(&Digest::sha256_of(&bad)));
        drop(session);
        assert!(
            store.list_blobs().unwrap().blobs.is_empty(),
            "{}",
            blobs.name()
        );

        // Whole: visible, listed, and read back byte for byte.
        let (_, digest) = push_chunked(&store, &data, 1 << 20);
        assert_eq!(store.blob_size(&digest), Some(data.len() as u64));
        assert_eq!(
            store.list_blobs().unwrap().blobs,
            vec![(digest.clone(), data.len() as u64)]
        );
        assert!(read(&store, &digest, 0..data.len() as u64).unwrap() == data);
        assert_eq!(store.usage().unwrap().uploads_open, 0, "{}", blobs.name());

        // A manifest refused (it references a blob not pushed) leaves no blob either.
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":3}},"layers":[]}}"#,
            Digest::sha256_of(b"not pushed")
        );
        let refused = store.put_manifest(
            &repo(),
            &oci::reference::Reference::Tag("v1".into()),
            None,
            Bytes::from(body.clone()),
            oci::Origin::Client,
        );
        assert!(refused.is_err());
        assert!(!store.blob_exists(&Digest::sha256_of(body.as_bytes())));
    });
}

#[test]
fn ranges_read_exactly_and_a_damaged_blob_is_cut_short_and_quarantined() {
    on_both(|blobs| {
        // Every complete read checked (`once` would trust the read the loop below made).
        let limits = Limits {
            verify_reads: super::VerifyReads::Always,
            ..Limits::default()
        };
        let store = blobs.replica(0, limits);
        // Larger than a block of the object store, not a multiple of anything.
        let data = pattern((9 << 20) + 12_345, 2);
        let (_, digest) = push_chunked(&store, &data, 5 << 20);
        let len = data.len() as u64;
        for range in [
            0..1,
            0..10,
            1000..300_000,
            (8 << 20) - 7..(8 << 20) + 9,
            len - 5..len,
            0..len,
        ] {
            let got = read(&store, &digest, range.clone()).unwrap();
            assert!(
                got == data[range.start as usize..range.end as usize],
                "{} range {range:?}",
                blobs.name()
            );
        }

        // Bytes that no longer hash to their name (written under it through the contract, as
        // a bad disk or a stray tool would): a complete read ends short with an error, the blob
        // is quarantined and absent after.
        let mut bad = data.clone();
        bad[100] ^= 1;
        let staged = store.inner.blobs.stage(Bytes::from(bad)).unwrap();
        let stat = store.inner.blobs.stat(&digest).unwrap().unwrap();
        assert!(store.inner.blobs.delete(&digest, &stat).unwrap());
        staged.install(&digest).unwrap();
        let cut = read(&store, &digest, 0..len).err().map(|e| e.kind());
        assert_eq!(
            cut,
            Some(std::io::ErrorKind::InvalidData),
            "{}",
            blobs.name()
        );
        assert!(!store.blob_exists(&digest), "{}", blobs.name());
        assert_eq!(store.quarantined_total(), 1);
    });
}

#[test]
fn a_session_started_on_one_replica_is_finished_on_another() {
    on_both(|blobs| {
        let data = pattern((18 << 20) + 777, 3);
        let digest = Digest::sha256_of(&data);
        let (first_part, rest) = data.split_at((6 << 20) + 1);
        let a = blobs.replica(0, Limits::default());
        let session = a.new_upload(&repo()).unwrap();
        let id = session.blocking_lock().id().to_owned();
        {
            let mut session = session.blocking_lock();
            session.append(first_part).unwrap();
            session.commit().unwrap();
        }
        drop(session);
        let a = if blobs.shared() {
            Some(a)
        } else {
            drop(a); // one data directory: the "other replica" is the restart
            None
        };
        let b = blobs.replica(1, Limits::default());
        let session = b.upload(&repo(), &id).unwrap();
        let mut session = session.blocking_lock();
        session.refresh().unwrap();
        assert_eq!(session.len(), first_part.len() as u64, "{}", blobs.name());
        // A chunk that breaks off is rolled back, as the API does.
        let checkpoint = session.checkpoint();
        session.append(&rest[..(9 << 20)]).unwrap();
        session.rollback(checkpoint).unwrap();
        assert_eq!(session.len(), first_part.len() as u64);
        session.append(rest).unwrap();
        session.commit().unwrap();
        // Another repository cannot take it over.
        assert!(b.upload(&"other/repo".parse().unwrap(), &id).is_err());
        b.finish_upload(&mut session, &digest).unwrap();
        assert_eq!(
            b.repo_blob(&repo(), &digest).unwrap(),
            Some(data.len() as u64)
        );
        assert!(read(&b, &digest, 0..data.len() as u64).unwrap() == data);
        if let Some(a) = a {
            // The first replica sees the blob (its own metadata does not link it yet).
            assert_eq!(a.blob_size(&digest), Some(data.len() as u64));
            // Its session (still in its memory) is over too: the next request there finds out.
            let over = match a.upload(&repo(), &id) {
                Ok(stale) => stale.blocking_lock().refresh().err(),
                Err(err) => Some(err),
            };
            assert!(
                matches!(over, Some(StorageError::UploadUnknown(_))),
                "{over:?}"
            );
        }
    });
}

/// Two replicas writing one session at once (only where replicas share the blobs) cannot
/// interleave their chunks: the commit of the one that did not see the other's is refused, and
/// once it caught up the session holds the first one's bytes only.
#[test]
fn of_two_replicas_committing_to_one_session_at_once_the_second_is_refused() {
    let mut blobs = azure();
    let (a, b) = (
        blobs.replica(0, Limits::default()),
        blobs.replica(1, Limits::default()),
    );
    let on_a = a.new_upload(&repo()).unwrap();
    let id = on_a.blocking_lock().id().to_owned();
    // Both replicas hold the session as it stands: empty.
    let on_b = b.upload(&repo(), &id).unwrap();
    let mut on_b = on_b.blocking_lock();
    on_b.refresh().unwrap();
    {
        let mut on_a = on_a.blocking_lock();
        on_a.append(b"chunk taken by a").unwrap();
        on_a.commit().unwrap();
    }
    on_b.append(b"chunk taken by b").unwrap();
    let refused = on_b.commit();
    assert!(
        matches!(&refused, Err(StorageError::UploadInvalid(m)) if m.contains("another replica")),
        "{refused:?}"
    );
    on_b.refresh().unwrap();
    assert_eq!(on_b.len(), 16, "b caught up with what a committed");
    let digest = Digest::sha256_of(b"chunk taken by a");
    b.finish_upload(&mut on_b, &digest).unwrap();
    assert!(read(&b, &digest, 0..16).unwrap() == b"chunk taken by a");
}

#[test]
fn gc_spares_what_was_written_or_touched_within_its_grace() {
    on_both(|blobs| {
        let store = blobs.replica(0, Limits::default());
        let (_, stray) = push_chunked(&store, b"pushed, never referenced", 1 << 20);
        let (_, kept) = push_chunked(&store, b"pushed again just before GC", 1 << 20);
        let idle = store.new_upload(&repo()).unwrap();
        let idle = idle.blocking_lock().id().to_owned();
        let grace = Duration::from_secs(3);
        std::thread::sleep(grace + Duration::from_millis(1100));
        // Pushed again (linked again: a touch) just now: within the grace.
        store.link_blob(&repo(), &kept).unwrap();
        let fresh = store.new_upload(&repo()).unwrap();
        let fresh = fresh.blocking_lock().id().to_owned();
        let report = store
            .gc(&GcOptions {
                grace,
                delete_untagged: false,
                upload_ttl: grace,
            })
            .unwrap();
        assert_eq!(report.blobs_deleted, 1, "{} {report:?}", blobs.name());
        assert!(!store.blob_exists(&stray));
        assert!(store.blob_exists(&kept), "{}", blobs.name());
        assert_eq!(report.uploads_expired, 1, "{} {report:?}", blobs.name());
        assert!(store.upload(&repo(), &idle).is_err());
        assert!(store.upload(&repo(), &fresh).is_ok());
    });
}

/// GC across replicas: the sweep deletes a blob only if it is still the version GC looked at,
/// and a link touches the blob first, the touch being its check that the blob is there. Each
/// is one operation on the store, so of a link and a delete racing it there are two orders,
/// and in each one of the two loses cleanly: touched first, the delete keeps the blob; deleted
/// first, the link is refused and nothing names the deleted blob. (In Azure another replica
/// touches; on the local disk, where GC's lock orders one process's own links and deletes, the
/// same holds for processes sharing a directory.)
#[test]
fn of_a_link_and_a_gc_delete_racing_it_one_loses_cleanly() {
    on_both(|blobs| {
        let a = blobs.replica(0, Limits::default());
        let shown = format!("{:?}", a.inner.blobs);
        assert!(!shown.contains(crate::azurite::KEY), "{shown}");
        let (_, digest) = push_chunked(&a, b"shared blob", 1 << 20);
        let other: RepoName = "contract/other".parse().unwrap();

        // GC looked; a replica links the blob (touching it); GC's delete then fails.
        let seen = a.inner.blobs.stat(&digest).unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        a.link_blob(&other, &digest).unwrap();
        assert!(
            !a.inner.blobs.delete(&digest, &seen).unwrap(),
            "{}: deleted a blob touched since GC looked",
            blobs.name()
        );
        assert!(a.blob_exists(&digest));

        // GC looked and deleted first: the touch finds nothing, the link is refused.
        let seen = a.inner.blobs.stat(&digest).unwrap().unwrap();
        assert!(a.inner.blobs.delete(&digest, &seen).unwrap());
        assert!(!a.inner.blobs.touch(&digest).unwrap());
        let third: RepoName = "contract/third".parse().unwrap();
        let refused = a.link_blob(&third, &digest).unwrap_err();
        assert!(matches!(refused, StorageError::BlobUnknown(_)), "{refused}");
        assert_eq!(a.repo_blob(&third, &digest).unwrap(), None);
        assert!(!a.blob_exists(&digest), "{}", blobs.name());
    });
}

/// GC keeps a blob touched since its cutoff, so a store must never date a touch earlier than
/// it happened. Azure's Last-Modified has whole seconds and is read as the end of its second:
/// read as its start, a blob touched at .9 of a second looked 0.9 s older than it was, and a
/// link through another replica just after GC's cutoff could lose its blob (seen in
/// tests/replicas_gc.rs, one run in 13, with a 1 s grace).
#[test]
fn a_touch_is_never_dated_before_it_happened() {
    on_both(|blobs| {
        let store = blobs.replica(0, Limits::default());
        let (_, digest) = push_chunked(&store, b"linked three times", 1 << 20);
        for n in 0..3 {
            std::thread::sleep(Duration::from_millis(330));
            let before = std::time::SystemTime::now();
            let other: RepoName = format!("contract/touch{n}").parse().unwrap();
            store.link_blob(&other, &digest).unwrap();
            let stat = store.inner.blobs.stat(&digest).unwrap().unwrap();
            // Slack for the kernel's coarse clock, which dates files up to a tick early.
            assert!(
                stat.modified + Duration::from_millis(20) >= before,
                "{}: touched at {before:?}, dated {:?}",
                blobs.name(),
                stat.modified
            );
        }
    });
}

/// Pull-through writes (a blob filled from a parent while clients read it) on both: every
/// reader gets every byte while the fill is still writing, then the blob is stored whole.
#[test]
fn a_blob_filled_from_elsewhere_streams_to_its_readers_and_is_stored_whole() {
    use super::fill::{Fills, Incoming};
    use futures_util::FutureExt;
    on_both(|blobs| {
        let store = blobs.replica(0, Limits::default());
        // Several of the fill's publishing steps (4 MiB) and of the object store's blocks.
        let data = pattern((13 << 20) + 99, 5);
        let digest = Digest::sha256_of(&data);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let got = rt.block_on(async {
            let fills = Fills::default();
            let chunks: Vec<Result<Bytes, String>> = data
                .chunks(256 << 10)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let size = Some(data.len() as u64);
            let open = async move {
                let chunks = futures_util::stream::iter(chunks)
                    .then(|c| async move {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        c
                    })
                    .boxed();
                Ok(Incoming { size, chunks })
            }
            .boxed();
            let fill = fills.fill(&store, &repo(), &digest, open);
            let mut readers = Vec::new();
            for range in [None, Some(1000..(9 << 20))] {
                let fill = fill.clone();
                let store = store.clone();
                readers.push(tokio::spawn(async move {
                    fill.opened().await.unwrap();
                    let mut stream = fill.read(&store, range);
                    let mut out = Vec::new();
                    while let Some(chunk) = stream.next().await {
                        out.extend_from_slice(&chunk.unwrap());
                    }
                    out
                }));
            }
            let mut got = Vec::new();
            for reader in readers {
                got.push(reader.await.unwrap());
            }
            assert_eq!(fill.finished().await, Ok(data.len() as u64));
            got
        });
        assert!(got[0] == data, "{}: whole read", blobs.name());
        assert!(got[1] == data[1000..(9 << 20)], "{}: range", blobs.name());
        assert_eq!(
            store.repo_blob(&repo(), &digest).unwrap(),
            Some(data.len() as u64)
        );
        assert_eq!(store.usage().unwrap().uploads_open, 0, "{}", blobs.name());
    });
}
