//! Blobs: GET/HEAD with `Range`, DELETE (unlink from the repository; bytes go at GC). The
//! store opens and streams the bytes (`Store::open_blob`); this only maps them to HTTP.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;

use super::manifests::{accepted, internal};
use super::DIGEST_HEADER;
use crate::api::error::ApiError;
use crate::storage::Store;
use oci::digest::Digest;
use oci::name::RepoName;
use oci::ErrorCode;

/// A byte range `start..=end` of a blob of known size, from a `Range: bytes=...` header.
fn parse_range(value: &str, size: u64) -> Result<(u64, u64), ApiError> {
    let bad = || {
        ApiError::new(
            ErrorCode::RangeInvalid,
            format!("Range {value:?} cannot be satisfied for a blob of {size} bytes: use bytes=START-END within it"),
        )
        .with_header(header::CONTENT_RANGE, format!("bytes */{size}"))
    };
    let spec = value.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    if spec.contains(',') {
        return Err(bad());
    }
    let (start, end) = spec.split_once('-').ok_or_else(bad)?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| bad())?;
            if n == 0 || size == 0 {
                return Err(bad());
            }
            (size.saturating_sub(n), size - 1)
        }
        (start, "") => (start.parse().map_err(|_| bad())?, size.saturating_sub(1)),
        (start, end) => {
            let start: u64 = start.parse().map_err(|_| bad())?;
            let end: u64 = end.parse().map_err(|_| bad())?;
            (start, end.min(size.saturating_sub(1)))
        }
    };
    if start >= size || end < start {
        return Err(bad());
    }
    Ok((start, end))
}

pub async fn get(
    store: &Store,
    repo: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
    head_only: bool,
) -> Result<Response, ApiError> {
    let blob = store.open_blob(repo, digest)?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::BlobUnknown,
            format!("blob {digest} is not in repository {repo}"),
        )
    })?;
    let size = blob.size();
    let range = headers
        .get(header::RANGE)
        .map(|r| parse_range(r.to_str().unwrap_or(""), size))
        .transpose()?;
    let (start, end) = range.unwrap_or((0, size.saturating_sub(1)));
    let length = if size == 0 { 0 } else { end - start + 1 };
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(DIGEST_HEADER, digest.to_string())
        .header(header::ETAG, format!("\"{digest}\""));
    builder = if range.is_some() {
        builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"))
    } else {
        builder.status(StatusCode::OK)
    };
    if head_only {
        return Ok(builder.body(Body::empty()).expect("valid response"));
    }
    Ok(builder
        .body(Body::from_stream(blob.read(start..start + length)))
        .expect("valid response"))
}

pub async fn delete(store: &Store, repo: RepoName, digest: Digest) -> Result<Response, ApiError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.unlink_blob(&repo, &digest))
        .await
        .map_err(internal)??;
    Ok(accepted())
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), (0, 9));
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), (90, 99));
        assert_eq!(parse_range("bytes=-10", 100).unwrap(), (90, 99));
        assert_eq!(parse_range("bytes=95-200", 100).unwrap(), (95, 99));
        for bad in [
            "bytes=100-",
            "bytes=5-2",
            "items=0-1",
            "bytes=a-b",
            "bytes=0-1,3-4",
            "bytes=-0",
        ] {
            assert!(parse_range(bad, 100).is_err(), "{bad}");
        }
    }
}
