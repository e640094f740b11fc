//! What exporting or importing a bundle can fail with, each saying what to do about it.

use registry::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file ends before an entry it announces: a copy cut short. Nothing was stored.
    #[error("the bundle {file} is truncated: {detail}; nothing was stored from it (copy the file again)")]
    Truncated { file: String, detail: String },
    /// An entry's bytes do not match its name or the size its manifest gives.
    #[error("the bundle {file} is altered: {detail}; nothing of that entry was stored (copy the file again, or export it again)")]
    Altered { file: String, detail: String },
    /// Content a manifest needs is neither in the bundle nor in this store.
    #[error("{0}")]
    Missing(String),
    /// The file is not a bundle (or not one this version reads).
    #[error("{0}")]
    Invalid(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StorageError),
}

impl BundleError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BundleError {
        let context = context.into();
        move |source| BundleError::Io { context, source }
    }
}
