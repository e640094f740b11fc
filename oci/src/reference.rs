//! A manifest reference in a URL: a tag or a digest.

use std::fmt;

use crate::digest::Digest;
use crate::name::{validate_tag, NameError};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

/// Why a reference is refused: a bad digest or a bad tag.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReferenceError {
    #[error(transparent)]
    Digest(#[from] crate::digest::DigestError),
    #[error(transparent)]
    Tag(#[from] NameError),
}

impl Reference {
    /// Anything with a ':' must be a digest (tags cannot hold ':'); anything else is a tag.
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        if input.contains(':') {
            Ok(Reference::Digest(input.parse()?))
        } else {
            validate_tag(input)?;
            Ok(Reference::Tag(input.to_owned()))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}
