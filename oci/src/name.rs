//! Repository names and tags, checked against the OCI Distribution spec's grammar.

use std::fmt;
use std::str::FromStr;

/// Longest repository name accepted; distribution and most clients cap names at 255 bytes.
pub const MAX_NAME_LEN: usize = 255;

/// A validated repository name: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

/// Why a name or tag is refused, in words that say what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {reason}")]
pub struct NameError {
    pub what: &'static str,
    pub input: String,
    pub reason: String,
}

fn component_ok(c: &str) -> Result<(), String> {
    let bytes = c.as_bytes();
    if bytes.is_empty() {
        return Err("empty path component (no leading, trailing or double '/')".into());
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(format!(
            "component {c:?} must start and end with a lower-case letter or digit"
        ));
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__', or one or more '-'.
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return Err(format!(
                "component {c:?} has {sep:?}: use only lower-case letters, digits and single '.', '_', '__' or '-' runs between them"
            ));
        }
    }
    Ok(())
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| NameError {
            what: "repository name",
            input: input.chars().take(300).collect(),
            reason,
        };
        if input.len() > MAX_NAME_LEN {
            return Err(fail(format!("longer than {MAX_NAME_LEN} bytes")));
        }
        for component in input.split('/') {
            component_ok(component).map_err(fail)?;
        }
        Ok(RepoName(input.to_owned()))
    }
}

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), NameError> {
    let fail = |reason: &str| NameError {
        what: "tag",
        input: tag.chars().take(200).collect(),
        reason: reason.into(),
    };
    let bytes = tag.as_bytes();
    if bytes.is_empty() || bytes.len() > 128 {
        return Err(fail("a tag has 1 to 128 characters"));
    }
    if !(bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_') {
        return Err(fail("a tag starts with a letter, digit or '_'"));
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(fail("a tag holds only letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "library/ubuntu", "a.b_c__d--e/f-g", "x/y/z0"] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
        }
        for bad in [
            "", "A", "a//b", "-a", "a-", "a/", "/a", "a..b", "a___b", "a b", "a:b",
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad:?}");
        }
        assert!("a".repeat(256).parse::<RepoName>().is_err());
    }

    #[test]
    fn tags() {
        assert!(validate_tag("v1.0_rc-1").is_ok());
        assert!(validate_tag("_x").is_ok());
        for bad in ["", ".x", "-x", "a/b", "a:b", &"a".repeat(129)] {
            assert!(validate_tag(bad).is_err(), "{bad:?}");
        }
    }
}
