//! Errors: `StorageError` from the store, and `ApiError`, which mirrors the OCI error codes
//! and renders the spec's JSON body with the spec's status.

use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};

use crate::digest::{Digest, DigestError};
use crate::name::NameError;
use crate::reference::ReferenceError;

/// The OCI Distribution error codes (plus `UNKNOWN` for internal failures and `RANGE_INVALID`
/// for an unsatisfiable `Range` on a blob GET, which the spec answers with 416 but names no code for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    RangeInvalid,
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }

    /// The status the spec gives each code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown => StatusCode::NOT_FOUND,
            ErrorCode::BlobUploadInvalid
            | ErrorCode::DigestInvalid
            | ErrorCode::ManifestBlobUnknown
            | ErrorCode::ManifestInvalid
            | ErrorCode::NameInvalid
            | ErrorCode::SizeInvalid => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Denied => StatusCode::FORBIDDEN,
            ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error as the client sees it: code, status, and a message that says what to fix.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub status: StatusCode,
    pub message: String,
    /// Extra headers some errors carry (e.g. `Range` on a 416 for an upload).
    pub headers: Vec<(header::HeaderName, String)>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            status: code.status(),
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: String) -> ApiError {
        self.headers.push((name, value));
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.code.as_str(),
            self.status,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{ "code": self.code.as_str(), "message": self.message, "detail": null }]
        });
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        for (name, value) in self.headers {
            if let Ok(value) = value.parse() {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

impl From<NameError> for ApiError {
    fn from(err: NameError) -> ApiError {
        let code = if err.what == "tag" {
            ErrorCode::ManifestInvalid
        } else {
            ErrorCode::NameInvalid
        };
        ApiError::new(code, err.to_string())
    }
}

impl From<DigestError> for ApiError {
    fn from(err: DigestError) -> ApiError {
        ApiError::new(ErrorCode::DigestInvalid, err.to_string())
    }
}

impl From<ReferenceError> for ApiError {
    fn from(err: ReferenceError) -> ApiError {
        match err {
            ReferenceError::Digest(e) => e.into(),
            ReferenceError::Tag(e) => e.into(),
        }
    }
}

/// What the store can fail with. Each variant maps to one OCI code.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("metadata store: {0}")]
    Db(String),
    #[error("digest mismatch: the content's digest is {actual}, not the claimed {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {0} is not known in this repository")]
    BlobUnknown(Digest),
    #[error(
        "upload session {0:?} is unknown (finished, cancelled, expired, or of another repository)"
    )]
    UploadUnknown(String),
    #[error("{0}")]
    UploadInvalid(String),
    #[error("chunk starts at byte {start}, but the upload holds {len} bytes: send chunks in order, starting at {len}")]
    ChunkOutOfOrder { start: u64, len: u64 },
    #[error("{0}")]
    SizeInvalid(String),
    #[error("{0}")]
    ManifestInvalid(String),
    #[error("manifest too large: {size} bytes, over the limit of {limit} bytes (setting --max-manifest-size)")]
    ManifestTooLarge { size: u64, limit: u64 },
    #[error(
        "manifest references {0}, which this repository does not hold: push it before the manifest"
    )]
    ManifestBlobUnknown(Digest),
    #[error("manifest unknown")]
    ManifestUnknown,
    #[error("repository unknown")]
    NameUnknown,
    #[error("{0}")]
    Denied(String),
}

impl StorageError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StorageError {
        let context = context.into();
        move |source| StorageError::Io { context, source }
    }
}

macro_rules! db_error {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(err: $t) -> StorageError {
                StorageError::Db(err.to_string())
            }
        }
    )*};
}
db_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> ApiError {
        let message = err.to_string();
        match err {
            StorageError::Io { ref source, .. }
                if source.kind() == std::io::ErrorKind::StorageFull =>
            {
                tracing::error!("{message}");
                ApiError::new(
                    ErrorCode::Unknown,
                    "the registry's disk is full; nothing was stored: retry after space is freed",
                )
                .with_status(StatusCode::INSUFFICIENT_STORAGE)
            }
            StorageError::Io { .. } | StorageError::Db(_) => {
                tracing::error!("internal storage error: {message}");
                ApiError::new(
                    ErrorCode::Unknown,
                    format!("internal storage error: {message}"),
                )
            }
            StorageError::DigestMismatch { .. } => ApiError::new(ErrorCode::DigestInvalid, message),
            StorageError::BlobUnknown(_) => ApiError::new(ErrorCode::BlobUnknown, message),
            StorageError::UploadUnknown(_) => ApiError::new(ErrorCode::BlobUploadUnknown, message),
            StorageError::UploadInvalid(_) => ApiError::new(ErrorCode::BlobUploadInvalid, message),
            StorageError::ChunkOutOfOrder { len, .. } => {
                ApiError::new(ErrorCode::BlobUploadInvalid, message)
                    .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .with_header(header::RANGE, upload_range(len))
            }
            StorageError::SizeInvalid(_) => ApiError::new(ErrorCode::SizeInvalid, message),
            StorageError::ManifestInvalid(_) => ApiError::new(ErrorCode::ManifestInvalid, message),
            StorageError::ManifestTooLarge { .. } => {
                ApiError::new(ErrorCode::ManifestInvalid, message)
                    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
            }
            StorageError::ManifestBlobUnknown(_) => {
                ApiError::new(ErrorCode::ManifestBlobUnknown, message)
            }
            StorageError::ManifestUnknown => ApiError::new(ErrorCode::ManifestUnknown, message),
            StorageError::NameUnknown => ApiError::new(ErrorCode::NameUnknown, message),
            StorageError::Denied(_) => ApiError::new(ErrorCode::Denied, message),
        }
    }
}

/// The `Range` header value for an upload holding `len` bytes (`0-<last byte>`; `0-0` when empty,
/// as distribution answers).
pub fn upload_range(len: u64) -> String {
    format!("0-{}", len.saturating_sub(1))
}
