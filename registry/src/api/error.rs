//! `ApiError`: an error as an HTTP client sees it, with the OCI error code, the spec's status
//! and the spec's JSON body; and the one mapping from each storage and parse error to it.

use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};
use oci::{Class, Classify, DigestError, ErrorCode, NameError, ReferenceError};

use crate::storage::StorageError;

/// An error as the client sees it: code, status, and a message that says what to fix.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub status: StatusCode,
    pub message: String,
    /// Whose fault it is and whether a retry can help; in the body's `detail` and the log.
    pub class: Class,
    /// Extra headers some errors carry (e.g. `Range` on a 416 for an upload).
    pub headers: Vec<(header::HeaderName, String)>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            status: StatusCode::from_u16(code.status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message: message.into(),
            class: Class::of_status(code.status()),
            headers: Vec::new(),
        }
    }

    /// Another status; the class follows it (`Class::of_status`).
    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self.class = Class::of_status(status.as_u16());
        self
    }

    /// A class the status alone does not tell (a 500 that is this machine's disk, not a bug).
    pub fn with_class(mut self, class: Class) -> ApiError {
        self.class = class;
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: String) -> ApiError {
        self.headers.push((name, value));
        self
    }

    /// The answer to any client write on a read-only registry (the words ACR's connected
    /// registry uses): 405 `UNSUPPORTED`, whatever the route (`/v2` and `/acr` alike).
    pub fn read_only() -> ApiError {
        ApiError::new(
            ErrorCode::Unsupported,
            "This operation is not allowed on this registry",
        )
    }

    /// A method a route does not serve.
    pub fn unsupported(method: &http::Method, what: &str) -> ApiError {
        ApiError::new(
            ErrorCode::Unsupported,
            format!("{method} is not supported on {what}"),
        )
    }

    /// Logs the error once, as a refusal (the client's fault: debug) or a failure (warn), with
    /// whose fault it is and whether a retry can help; then answers it.
    pub fn logged(self, path: &str) -> Response {
        let (fault, retryable) = (self.class.fault.as_str(), self.class.retryable);
        if matches!(self.class.fault, oci::Fault::Client) {
            tracing::debug!(path, fault, retryable, error = %self, "request refused");
        } else {
            tracing::warn!(path, fault, retryable, error = %self, "request failed");
        }
        self.into_response()
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
        let detail = serde_json::json!({
            "fault": self.class.fault.as_str(),
            "retryable": self.class.retryable,
        });
        let body = serde_json::json!({
            "errors": [{ "code": self.code.as_str(), "message": self.message, "detail": detail }]
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

impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> ApiError {
        let message = err.to_string();
        let class = err.class();
        let api = match err {
            StorageError::NoSpace { .. } => ApiError::new(ErrorCode::Unknown, message)
                .with_status(StatusCode::INSUFFICIENT_STORAGE),
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
            StorageError::Io { .. }
            | StorageError::Db(_)
            | StorageError::InUse(_)
            | StorageError::WrongStorage(_)
            | StorageError::LeaseLost { .. } => {
                tracing::error!("internal storage error: {message}");
                ApiError::new(
                    ErrorCode::Unknown,
                    format!("internal storage error: {message}"),
                )
            }
            StorageError::Unavailable(_) => {
                tracing::error!("{message}");
                ApiError::new(ErrorCode::Unknown, message)
                    .with_status(StatusCode::SERVICE_UNAVAILABLE)
                    .with_header(header::RETRY_AFTER, "1".into())
            }
            StorageError::Remote { retry, .. } => {
                tracing::error!("blob storage error: {message}");
                let status = if retry {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                ApiError::new(ErrorCode::Unknown, format!("blob storage error: {message}"))
                    .with_status(status)
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
            // ACR answers a locked item's refusal with 405 (its REGISTRY_DISALLOWED_OPERATION);
            // DENIED is the OCI code clients know.
            StorageError::Locked(_) => ApiError::new(ErrorCode::Denied, message)
                .with_status(StatusCode::METHOD_NOT_ALLOWED),
        };
        api.with_class(class)
    }
}

impl Classify for ApiError {
    fn class(&self) -> Class {
        self.class
    }
}

/// The `Range` header value for an upload holding `len` bytes (`0-<last byte>`; `0-0` when empty,
/// as distribution answers).
pub fn upload_range(len: u64) -> String {
    format!("0-{}", len.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci::Fault;

    #[test]
    fn storage_errors_keep_their_class_on_the_wire() {
        let full = StorageError::Io {
            context: "write blob".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        };
        let api = ApiError::from(full);
        assert_eq!(api.status, StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(api.class, Class::new(Fault::Local, true));
        let db = ApiError::from(StorageError::Db("table gone".into()));
        assert_eq!(db.class.fault, Fault::Local);
        let bad = ApiError::from(StorageError::ManifestInvalid("no layers".into()));
        assert_eq!(bad.class, Class::new(Fault::Client, false));
    }
}
