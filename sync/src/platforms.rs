//! The platform filter: which children of a multi-platform index this child keeps. The
//! platform itself is `oci::Platform`; which ones are wanted is sync's business.

use oci::{Descriptor, Platform};

/// Whether filter entry `wanted` admits a child of platform `child`: os and architecture
/// equal, and the variant too when the filter names one.
pub fn admits(wanted: &Platform, child: &Platform) -> bool {
    wanted.os == child.os
        && wanted.architecture == child.architecture
        && wanted
            .variant
            .as_ref()
            .is_none_or(|v| child.variant.as_ref() == Some(v))
}

/// Whether the platform filter (empty: everything) keeps an index child. Children without a
/// platform (nested indexes, artifacts) are kept: the filter cannot judge them.
pub fn keeps(filter: &[Platform], child: &Descriptor) -> bool {
    filter.is_empty()
        || child
            .platform
            .as_ref()
            .is_none_or(|p| filter.iter().any(|f| admits(f, p)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci::Digest;

    fn child(platform: Option<&str>) -> Descriptor {
        Descriptor {
            platform: platform.map(|p| p.parse().unwrap()),
            ..Descriptor::new("", Digest::sha256_of(b"x"), 1)
        }
    }

    #[test]
    fn platform_filter_matches_os_arch_and_variant_when_named() {
        let arm64: Vec<Platform> = vec!["linux/arm64".parse().unwrap()];
        assert!(keeps(&arm64, &child(Some("linux/arm64/v8"))));
        assert!(!keeps(&arm64, &child(Some("linux/amd64"))));
        assert!(keeps(&arm64, &child(None)), "no platform: kept");
        assert!(
            keeps(&[], &child(Some("linux/amd64"))),
            "no filter: everything"
        );
        let v7: Vec<Platform> = vec!["linux/arm/v7".parse().unwrap()];
        assert!(keeps(&v7, &child(Some("linux/arm/v7"))));
        assert!(!keeps(&v7, &child(Some("linux/arm/v6"))));
        assert!(!keeps(&v7, &child(Some("linux/arm"))));
    }
}
