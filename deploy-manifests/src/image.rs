//! Split a container image reference into registry, repository, tag and digest, the way
//! Docker does, so the checker can judge tags and match registries to credentials.

/// A parsed image reference. Placeholders (`<NAME>`, `$upstream`) are kept as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host as written (`myacr.azurecr.io`, `$upstream:443`), or `None` for Docker Hub.
    pub registry: Option<String>,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// Parses `[registry/]repository[:tag][@digest]`.
pub fn parse(image: &str) -> ImageRef {
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d.to_string())),
        None => (image, None),
    };
    let (registry, path) = match rest.split_once('/') {
        Some((first, path))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.starts_with('$')
                || first.starts_with('<') =>
        {
            (Some(first.to_string()), path)
        }
        _ => (None, rest),
    };
    // The tag is after the last `:` of the last path segment (a registry port is not a tag).
    let last_slash = path.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (repository, tag) = match path[last_slash..].rfind(':') {
        Some(i) => (
            path[..last_slash + i].to_string(),
            Some(path[last_slash + i + 1..].to_string()),
        ),
        None => (path.to_string(), None),
    };
    ImageRef {
        registry,
        repository,
        tag,
        digest,
    }
}

/// The registry spelling reduced to what identifies it: lower case, no scheme, no trailing
/// slash, no default HTTPS port.
pub fn normalize_registry(address: &str) -> String {
    let mut a = address.trim().to_ascii_lowercase();
    for scheme in ["https://", "http://"] {
        if let Some(stripped) = a.strip_prefix(scheme) {
            a = stripped.to_string();
        }
    }
    while a.ends_with('/') {
        a.pop();
    }
    if let Some(stripped) = a.strip_suffix(":443") {
        a = stripped.to_string();
    }
    a
}

/// Registries whose images anyone may pull, so no credentials are needed.
pub const PUBLIC_REGISTRIES: [&str; 4] = [
    "mcr.microsoft.com",
    "docker.io",
    "registry-1.docker.io",
    "index.docker.io",
];

/// True when the registry needs no credentials (Docker Hub and Microsoft's container registry).
pub fn is_public_registry(registry: Option<&str>) -> bool {
    match registry {
        None => true,
        Some(r) => PUBLIC_REGISTRIES.contains(&normalize_registry(r).as_str()),
    }
}

/// True when the tag starts with a full `X.Y.Z` version (optionally `v`-prefixed).
pub fn is_pinned_version(tag: &str) -> bool {
    let t = tag.strip_prefix('v').unwrap_or(tag);
    let mut parts = t.splitn(3, '.');
    let num =
        |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()));
    let (a, b) = (parts.next(), parts.next());
    let c = parts.next().map(|rest| {
        let end = rest
            .find(|ch: char| !ch.is_ascii_digit())
            .unwrap_or(rest.len());
        &rest[..end]
    });
    num(a) && num(b) && num(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_references() {
        let i = parse("myacr.azurecr.io/edge/connected-registry:0.1.0");
        assert_eq!(i.registry.as_deref(), Some("myacr.azurecr.io"));
        assert_eq!(i.repository, "edge/connected-registry");
        assert_eq!(i.tag.as_deref(), Some("0.1.0"));
        let i = parse("$upstream:443/azureiotedge-hub:1.5.3");
        assert_eq!(i.registry.as_deref(), Some("$upstream:443"));
        assert_eq!(i.tag.as_deref(), Some("1.5.3"));
        let i = parse("localhost:5000/x");
        assert_eq!(i.registry.as_deref(), Some("localhost:5000"));
        assert_eq!(i.tag, None);
        let i = parse("library/nginx@sha256:abc");
        assert_eq!(i.registry, None);
        assert_eq!(i.digest.as_deref(), Some("sha256:abc"));
        let i = parse("<REGISTRY_ADDRESS>/connected-registry:0.1.0");
        assert_eq!(i.registry.as_deref(), Some("<REGISTRY_ADDRESS>"));
    }

    #[test]
    fn normalizes_registry_spellings() {
        assert_eq!(
            normalize_registry("https://MyAcr.azurecr.io/"),
            "myacr.azurecr.io"
        );
        assert_eq!(
            normalize_registry("myacr.azurecr.io:443"),
            "myacr.azurecr.io"
        );
        assert_ne!(
            normalize_registry("myacr.azurecr.io:5000"),
            "myacr.azurecr.io"
        );
    }

    #[test]
    fn pinned_versions() {
        assert!(is_pinned_version("1.5.3"));
        assert!(is_pinned_version("v0.1.0"));
        assert!(is_pinned_version("1.5.3-linux-amd64"));
        assert!(!is_pinned_version("1.5"));
        assert!(!is_pinned_version("1"));
        assert!(!is_pinned_version("stable"));
        assert!(!is_pinned_version("1.5.x"));
    }
}
