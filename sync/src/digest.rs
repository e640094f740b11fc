//! Content digests: the registry's own type, so what sync verifies is exactly what the store
//! checks.

pub use registry::digest::{Algorithm, Digest, Hasher};

/// Whether `bytes` hash to `digest` (with the digest's algorithm).
pub fn matches(digest: &Digest, bytes: &[u8]) -> bool {
    digest.same_algorithm_of(bytes) == *digest
}
