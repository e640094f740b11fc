//! The one error type of the certs crate: every variant names the file or input at fault.

use std::path::PathBuf;

use crate::tls::TlsError;

/// What went wrong, and where. The messages are meant for an operator: each names the file
/// (or the flag) to fix.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A certificate or key file that cannot be loaded (not PEM, wrong key, encrypted, ...).
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    /// A file that is PEM but whose contents are unusable for the task.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// Bad input on the command line or in a config (a hostname, a number of days, ...).
    #[error("{0}")]
    Input(String),
    /// Generating or signing a certificate failed (internal: the inputs were already checked).
    #[error("internal: cannot {what}: {message}")]
    Generate { what: String, message: String },
    /// A network failure while fetching a server's chain (doctor).
    #[error("{target}: {message}")]
    Connect { target: String, message: String },
}

impl CertError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        source: std::io::Error,
    ) -> Self {
        CertError::Io {
            path: path.into(),
            action,
            source,
        }
    }

    pub(crate) fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        CertError::File {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn generate(what: impl Into<String>, err: impl std::fmt::Display) -> Self {
        CertError::Generate {
            what: what.into(),
            message: err.to_string(),
        }
    }
}
