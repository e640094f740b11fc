//! Blobs: GET/HEAD with `Range`, DELETE (unlink from the repository; bytes go at GC). The
//! store opens and streams the bytes (`Store::open_blob`); this only maps them to HTTP.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;

use super::manifests::{accepted, internal};
use super::DIGEST_HEADER;
use crate::api::error::ApiError;
use crate::api::on_demand::OnDemand;
use crate::storage::fill::Fill;
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
    on_demand: Option<&OnDemand>,
    repo: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
    head_only: bool,
) -> Result<Response, ApiError> {
    let Some(blob) = store.open_blob(repo, digest)? else {
        // Not here: from the parent, when this repository is pulled through. Not for a HEAD:
        // clients pull blobs with GET, while a push HEADs every blob it is about to upload, and
        // a push must never wait on the parent.
        if let Some(on_demand) = on_demand.filter(|_| !head_only) {
            if let Some((fill, size)) = on_demand.blob(store, repo, digest).await? {
                return filling(store, &fill, size, digest, headers, head_only);
            }
        }
        return Err(ApiError::new(
            ErrorCode::BlobUnknown,
            format!("blob {digest} is not in repository {repo}"),
        ));
    };
    let (builder, bytes) = sized(blob_answer(digest), headers, blob.size())?;
    if head_only {
        return Ok(builder.body(Body::empty()).expect("valid response"));
    }
    Ok(builder
        .body(Body::from_stream(blob.read(bytes)))
        .expect("valid response"))
}

/// The headers every blob answer carries.
fn blob_answer(digest: &Digest) -> axum::http::response::Builder {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(DIGEST_HEADER, digest.to_string())
        .header(header::ETAG, format!("\"{digest}\""))
}

/// The status and length of an answer for a blob of `size` bytes, as the `Range` header asks
/// (206 with `Content-Range`) or whole (200); and the bytes to send.
fn sized(
    builder: axum::http::response::Builder,
    headers: &HeaderMap,
    size: u64,
) -> Result<(axum::http::response::Builder, std::ops::Range<u64>), ApiError> {
    let range = headers
        .get(header::RANGE)
        .map(|r| parse_range(r.to_str().unwrap_or(""), size))
        .transpose()?;
    let (start, end) = range.unwrap_or((0, size.saturating_sub(1)));
    let length = if size == 0 { 0 } else { end - start + 1 };
    let builder = builder
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT_RANGES, "bytes");
    let builder = if range.is_some() {
        builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"))
    } else {
        builder.status(StatusCode::OK)
    };
    Ok((builder, start..start + length))
}

/// The answer for a blob being fetched on demand: its bytes as they arrive (a `Range` too),
/// the last one only once verified. Without a known size the whole blob is sent, unsized.
fn filling(
    store: &Store,
    fill: &Fill,
    size: Option<u64>,
    digest: &Digest,
    headers: &HeaderMap,
    head_only: bool,
) -> Result<Response, ApiError> {
    let builder = blob_answer(digest);
    let Some(size) = size else {
        let body = if head_only {
            Body::empty()
        } else {
            Body::from_stream(fill.read(store, None))
        };
        return Ok(builder
            .status(StatusCode::OK)
            .body(body)
            .expect("valid response"));
    };
    let (builder, bytes) = sized(builder, headers, size)?;
    let body = if head_only {
        Body::empty()
    } else {
        Body::from_stream(fill.read(store, Some(bytes)))
    };
    Ok(builder.body(body).expect("valid response"))
}

pub async fn delete(store: &Store, repo: RepoName, digest: Digest) -> Result<Response, ApiError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.unlink_blob(&repo, &digest))
        .await
        .map_err(internal)??;
    Ok(accepted())
}

/// Fuzz target for [`parse_range`] (bounded run below; `fuzz/` under `cargo fuzz`): any
/// `Range` value against any blob size, and well-formed ranges against sizes they fit: never a
/// panic, and an accepted range lies inside the blob and runs forwards.
#[cfg(any(test, fuzzing))]
pub fn fuzz_parse_range(data: &[u8]) {
    let mut g = fuzzkit::Gen::new(data);
    let size = g.u64();
    let value = match g.below(3) {
        0 => fuzzkit::text(g.rest()).into_owned(),
        1 => format!("bytes={}-{}", g.u64(), g.u64()),
        _ => {
            let n = g.u64();
            if g.bool() {
                format!("bytes=-{n}")
            } else {
                format!("bytes={n}-")
            }
        }
    };
    match parse_range(&value, size) {
        Ok((start, end)) => assert!(
            start <= end && end < size,
            "{value:?} of {size} gave {start}-{end}"
        ),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fuzz_parse_range, parse_range};

    #[test]
    fn fuzz_parse_range_bounded() {
        // A one-byte size (width byte, size, no flip), then mode 0 (text) and the value.
        let seeds: [&[u8]; 4] = [
            b"\x00\x64\x00\x00bytes=0-9",
            b"\x00\x64\x00\x00bytes=-10",
            b"\x00\x64\x00\x00bytes=90-",
            b"\x00\x00\x00\x00bytes=0-0",
        ];
        fuzzkit::run("registry::parse_range", &seeds, fuzz_parse_range);
    }

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
