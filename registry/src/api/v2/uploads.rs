//! Blob uploads: monolithic POST, POST then PUT, chunked PATCH with `Content-Range`, status,
//! cancel, and cross-repository mount.
//!
//! A request body streams to a blocking writer through a small bounded channel: the network and
//! the disk work in parallel, memory stays bounded, and a body that fails halfway is rolled back.

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::OwnedMutexGuard;

use super::manifests::internal;
use super::{digest, repo as parse_repo, Req, DIGEST_HEADER, UPLOAD_UUID_HEADER};
use crate::api::error::{upload_range, ApiError};
use crate::storage::StorageError;
use crate::storage::{Session, Store};
use oci::digest::Digest;
use oci::name::RepoName;
use oci::ErrorCode;

/// Body frames in flight between the network and the disk writer.
const WRITE_QUEUE: usize = 16;

fn created(repo: &RepoName, digest: &Digest) -> Response {
    Response::builder()
        .status(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{repo}/blobs/{digest}"))
        .header(DIGEST_HEADER, digest.to_string())
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .expect("valid response")
}

fn in_progress(status: StatusCode, repo: &RepoName, session: &Session) -> Response {
    Response::builder()
        .status(status)
        .header(
            header::LOCATION,
            format!("/v2/{repo}/blobs/uploads/{}", session.id()),
        )
        .header(header::RANGE, upload_range(session.len()))
        .header(UPLOAD_UUID_HEADER, session.id())
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .expect("valid response")
}

/// `Content-Range: <start>-<end>` of a chunk (distribution's form; `bytes=` tolerated).
fn content_range(req: &Req) -> Result<Option<(u64, u64)>, ApiError> {
    req.header("content-range")
        .map(parse_content_range)
        .transpose()
}

/// Parses a chunk's `Content-Range` value. The chunk's length, `end - start + 1`, must fit a
/// `u64`: `0-18446744073709551615` would otherwise overflow where the length is checked.
fn parse_content_range(value: &str) -> Result<(u64, u64), ApiError> {
    let bad = || {
        ApiError::new(
            ErrorCode::BlobUploadInvalid,
            format!("Content-Range {value:?} is malformed: use <start>-<end>, e.g. 0-1023"),
        )
        .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
    };
    let spec = value.trim();
    let spec = spec
        .strip_prefix("bytes=")
        .or_else(|| spec.strip_prefix("bytes "))
        .unwrap_or(spec);
    let spec = spec.split('/').next().unwrap_or(spec);
    let (start, end) = spec.split_once('-').ok_or_else(bad)?;
    let start: u64 = start.trim().parse().map_err(|_| bad())?;
    let end: u64 = end.trim().parse().map_err(|_| bad())?;
    if end < start || (end - start).checked_add(1).is_none() {
        return Err(bad());
    }
    Ok((start, end))
}

fn content_length(req: &Req) -> Option<u64> {
    req.header("content-length").and_then(|v| v.parse().ok())
}

/// Appends the request body to the session. With a `Content-Range`, the chunk must start where
/// the session ends and hold exactly the declared bytes; otherwise nothing is kept.
async fn append_body(
    session: OwnedMutexGuard<Session>,
    req: Req,
) -> Result<OwnedMutexGuard<Session>, ApiError> {
    let range = content_range(&req)?;
    let declared = content_length(&req);
    if let Some((start, end)) = range {
        if start != session.len() {
            return Err(StorageError::ChunkOutOfOrder {
                start,
                len: session.len(),
            }
            .into());
        }
        if let Some(len) = declared.filter(|len| *len != end - start + 1) {
            return Err(ApiError::new(
                ErrorCode::SizeInvalid,
                format!(
                    "Content-Range {start}-{end} declares {} bytes but Content-Length is {len}",
                    end - start + 1
                ),
            )
            .with_status(StatusCode::RANGE_NOT_SATISFIABLE));
        }
    }
    let expected = range.map(|(s, e)| e - s + 1).or(declared);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(WRITE_QUEUE);
    let writer = tokio::task::spawn_blocking(move || {
        let mut session = session;
        let checkpoint = session.checkpoint();
        if let Some(size) = expected.filter(|size| *size > 0) {
            if let Err(err) = session.make_room(size) {
                // Dropping the receiver ends the body below; the error is reported after it.
                return (session, checkpoint, Err(err));
            }
        }
        let mut result = Ok(());
        while let Some(chunk) = rx.blocking_recv() {
            if let Err(err) = session.append(&chunk) {
                result = Err(err);
                break;
            }
        }
        (session, checkpoint, result)
    });
    let mut received = 0u64;
    let mut failure: Option<ApiError> = None;
    let mut stream = req.body.into_data_stream();
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(bytes) => {
                received += bytes.len() as u64;
                if tx.send(bytes).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Err(err) => {
                failure = Some(ApiError::new(
                    ErrorCode::BlobUploadInvalid,
                    format!("the upload body broke off after {received} bytes: {err}"),
                ));
                break;
            }
        }
    }
    drop(tx);
    let (session, checkpoint, written) = writer.await.map_err(internal)?;
    if let Err(err) = written {
        failure = Some(err.into());
    }
    if failure.is_none() {
        if let Some(expected) = expected.filter(|e| *e != received) {
            failure = Some(ApiError::new(
                ErrorCode::SizeInvalid,
                format!("expected {expected} bytes in this request, received {received}"),
            ));
        }
    }
    match failure {
        // The chunk is the session's for every replica before the client hears it was stored.
        None => Ok(on_session(session, Session::commit).await?.0),
        Some(err) => {
            on_session(session, move |s| s.rollback(checkpoint)).await?;
            Err(err)
        }
    }
}

/// Runs `step` on the session on a blocking thread (it writes to the disk, or asks the object
/// store) and hands the session back with what the step returned.
async fn on_session<T: Send + 'static>(
    mut session: OwnedMutexGuard<Session>,
    step: impl FnOnce(&mut Session) -> Result<T, StorageError> + Send + 'static,
) -> Result<(OwnedMutexGuard<Session>, T), ApiError> {
    let (session, result) = tokio::task::spawn_blocking(move || {
        let result = step(&mut session);
        (session, result)
    })
    .await
    .map_err(internal)?;
    Ok((session, result?))
}

/// Verifies and installs the session's bytes as `expected`.
async fn seal(
    store: &Store,
    session: OwnedMutexGuard<Session>,
    expected: Digest,
) -> Result<(), ApiError> {
    let store = store.clone();
    on_session(session, move |s| store.finish_upload(s, &expected)).await?;
    Ok(())
}

fn digest_param(req: &Req) -> Result<Option<Digest>, ApiError> {
    req.query.get("digest").map(|d| digest(d)).transpose()
}

pub async fn start(store: &Store, repo: RepoName, req: Req) -> Result<Response, ApiError> {
    if let Some(mount) = req.query.get("mount") {
        let mount = digest(mount)?;
        let source = match req.query.get("from") {
            Some(from) => store.repo_blob(&parse_repo(from)?, &mount)?.is_some(),
            // Automatic content discovery: any blob already on disk may be mounted.
            None => store.blob_exists(&mount),
        };
        if source {
            let store2 = store.clone();
            let (repo2, mount2) = (repo.clone(), mount.clone());
            match tokio::task::spawn_blocking(move || store2.link_blob(&repo2, &mount2))
                .await
                .map_err(internal)?
            {
                Ok(_) => return Ok(created(&repo, &mount)),
                // Collected (by another replica's GC) between the check and the link: an
                // upload instead, as for a blob that cannot be mounted.
                Err(StorageError::BlobUnknown(_)) => {}
                Err(err) => return Err(err.into()),
            }
        }
    }
    let expected = digest_param(&req)?;
    let session = {
        let (store, repo) = (store.clone(), repo.clone());
        tokio::task::spawn_blocking(move || store.new_upload(&repo))
            .await
            .map_err(internal)??
    };
    let session = session.lock_owned().await;
    let Some(expected) = expected else {
        return Ok(in_progress(StatusCode::ACCEPTED, &repo, &session));
    };
    let id = session.id().to_owned();
    let session = match append_body(session, req).await {
        Ok(session) => session,
        Err(err) => {
            store.cancel_upload(&id);
            return Err(err);
        }
    };
    seal(store, session, expected.clone()).await?;
    Ok(created(&repo, &expected))
}

/// Session `id` of `repo`, caught up with what other replicas sharing the blob store did to
/// it since this one last saw it (they may have taken the chunks in between).
async fn session_of(
    store: &Store,
    repo: &RepoName,
    id: &str,
) -> Result<OwnedMutexGuard<Session>, ApiError> {
    let store = store.clone();
    let (repo, id) = (repo.clone(), id.to_owned());
    let session = tokio::task::spawn_blocking(move || store.upload(&repo, &id))
        .await
        .map_err(internal)??;
    Ok(on_session(session.lock_owned().await, Session::refresh)
        .await?
        .0)
}

pub async fn status(store: &Store, repo: &RepoName, id: &str) -> Result<Response, ApiError> {
    let session = session_of(store, repo, id).await?;
    Ok(in_progress(StatusCode::NO_CONTENT, repo, &session))
}

pub async fn patch(
    store: &Store,
    repo: &RepoName,
    id: &str,
    req: Req,
) -> Result<Response, ApiError> {
    let session = session_of(store, repo, id).await?;
    let session = append_body(session, req).await?;
    Ok(in_progress(StatusCode::ACCEPTED, repo, &session))
}

pub async fn finish(
    store: &Store,
    repo: &RepoName,
    id: &str,
    req: Req,
) -> Result<Response, ApiError> {
    let expected = digest_param(&req)?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::DigestInvalid,
            "the final PUT of an upload needs ?digest=<algorithm>:<hex>",
        )
    })?;
    let session = session_of(store, repo, id).await?;
    let session = append_body(session, req).await?;
    seal(store, session, expected.clone()).await?;
    Ok(created(repo, &expected))
}

pub async fn cancel(store: &Store, repo: &RepoName, id: &str) -> Result<Response, ApiError> {
    let session = session_of(store, repo, id).await?;
    store.cancel_upload(session.id());
    Ok(Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .expect("valid response"))
}

/// Fuzz target for [`parse_content_range`] (bounded run below; `fuzz/` under `cargo fuzz`):
/// never a panic, and an accepted range runs forwards and has a length that fits a `u64`.
#[cfg(any(test, fuzzing))]
pub fn fuzz_content_range(data: &[u8]) {
    let value = fuzzkit::text(data);
    if let Ok((start, end)) = parse_content_range(&value) {
        assert!(start <= end, "{value:?} gave {start}-{end}");
        assert!(
            (end - start).checked_add(1).is_some(),
            "{value:?}: length overflows"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-1023").unwrap(), (0, 1023));
        assert_eq!(parse_content_range("bytes=5-5").unwrap(), (5, 5));
        assert_eq!(parse_content_range(" bytes 10-19/100 ").unwrap(), (10, 19));
        for bad in ["", "5", "5-4", "a-b", "-1", "1-", "0x1-2"] {
            assert!(parse_content_range(bad).is_err(), "{bad:?}");
        }
    }

    /// Found by fuzzing: the chunk length `end - start + 1` overflowed (a panic in debug
    /// builds, a length of 0 in release) when the range covered every `u64`.
    #[test]
    fn fuzz_regression_content_range_of_every_u64_is_refused() {
        assert!(parse_content_range("0-18446744073709551615").is_err());
        assert_eq!(
            parse_content_range("1-18446744073709551615").unwrap(),
            (1, u64::MAX)
        );
    }

    #[test]
    fn fuzz_content_range_bounded() {
        let seeds: [&[u8]; 4] = [
            b"0-1023",
            b"bytes=0-0",
            b"bytes 10-19/100",
            b"0-18446744073709551614",
        ];
        fuzzkit::run("registry::content_range", &seeds, fuzz_content_range);
    }
}
