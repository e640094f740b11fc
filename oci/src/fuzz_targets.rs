//! Fuzz targets for every parser of this crate, each a `fn(&[u8])` that panics when a property
//! fails: the bounded runs at the bottom (part of `cargo test`) drive them with the `fuzzkit`
//! seeded driver, and `fuzz/` runs them under `cargo fuzz` (built with `--cfg fuzzing`).
//!
//! Properties: no parser panics on any input, and what parses prints back as it was read
//! (names, tags, references, digests, platforms), parses again to the same value (manifests,
//! feed pages), and keeps the promises its type makes (a digest's hex is lower case).

use fuzzkit::{text, Gen};

use crate::media_type::{DOCKER_LIST, DOCKER_MANIFEST, OCI_EMPTY_CONFIG, OCI_INDEX, OCI_MANIFEST};
use crate::{manifest, validate_tag, Digest, FeedPage, Platform, Reference, RepoName};

/// Characters names, tags and digests are made of, and their neighbours.
const NAME_CHARS: &str = "abz09._-/_:A@ é";

/// A repository name: the text as it is, or one built of near-valid components.
pub fn repo_name(data: &[u8]) {
    let mut g = Gen::new(data);
    let input = if g.bool() {
        text(g.rest()).into_owned()
    } else {
        (0..1 + g.below(4))
            .map(|_| g.string(NAME_CHARS, 12))
            .collect::<Vec<_>>()
            .join("/")
    };
    if let Ok(name) = input.parse::<RepoName>() {
        assert_eq!(name.as_str(), input);
        assert_eq!(name.to_string(), input);
        assert!(input.len() <= crate::name::MAX_NAME_LEN);
        assert!(input
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)));
        assert_eq!(name.to_string().parse::<RepoName>().ok(), Some(name));
    }
}

/// A tag or a reference: a valid one prints back as it was written and parses again the same.
pub fn reference(data: &[u8]) {
    let mut g = Gen::new(data);
    let input = if g.bool() {
        text(g.rest()).into_owned()
    } else {
        g.string(NAME_CHARS, 140)
    };
    let tag_ok = validate_tag(&input).is_ok();
    match Reference::parse(&input) {
        Ok(r) => {
            assert_eq!(r.to_string(), input);
            assert_eq!(matches!(r, Reference::Tag(_)), tag_ok);
            assert_eq!(Reference::parse(&r.to_string()).ok(), Some(r));
        }
        Err(e) => {
            assert!(!tag_ok, "{input:?} is a valid tag but not a reference: {e}");
            let _ = e.to_string();
        }
    }
}

/// A digest: text, or a structured near-valid one (either algorithm, any length, mixed case);
/// a well-formed one must parse, and what parses prints back as it was written.
pub fn digest(data: &[u8]) {
    let mut g = Gen::new(data);
    let input = match g.below(3) {
        0 => text(g.rest()).into_owned(),
        mode => {
            let (algo, len) = *g.pick(&[("sha256", 64), ("sha512", 128), ("md5", 32), ("", 64)]);
            let len = if g.below(4) == 0 { g.below(200) } else { len };
            let alphabet = if mode == 1 {
                "0123456789abcdef"
            } else {
                "0123456789abcdefABG:"
            };
            let hex: String = (0..len)
                .map(|_| *g.pick(&alphabet.chars().collect::<Vec<_>>()))
                .collect();
            format!("{algo}:{hex}")
        }
    };
    let well_formed = input.split_once(':').is_some_and(|(algo, hex)| {
        let len = match algo {
            "sha256" => 64,
            "sha512" => 128,
            _ => return false,
        };
        hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    match input.parse::<Digest>() {
        Ok(d) => {
            assert!(well_formed, "{input:?} parsed but is not ALGORITHM:HEX");
            assert_eq!(d.to_string(), input);
            assert_eq!(d.to_string().parse::<Digest>().ok(), Some(d.clone()));
            let json = serde_json::to_string(&d).expect("a digest serializes");
            assert_eq!(serde_json::from_str::<Digest>(&json).ok(), Some(d));
        }
        Err(e) => {
            assert!(!well_formed, "{input:?} is well formed but refused: {e}");
            assert!(e.input.chars().count() <= 200);
        }
    }
}

/// `os/architecture[/variant]` as `--platform` takes it: what parses prints back as written.
pub fn platform(data: &[u8]) {
    let mut g = Gen::new(data);
    let input = if g.bool() {
        text(g.rest()).into_owned()
    } else {
        (0..g.below(5))
            .map(|_| g.string("linuxarm64v8 /", 6))
            .collect::<Vec<_>>()
            .join("/")
    };
    if let Ok(p) = input.parse::<Platform>() {
        assert_eq!(p.to_string(), input);
        assert_eq!(p.to_string().parse::<Platform>().ok(), Some(p.clone()));
        let json = serde_json::to_string(&p).expect("a platform serializes");
        assert_eq!(serde_json::from_str::<Platform>(&json).ok(), Some(p));
    }
}

/// The media types a manifest is served or pushed with, the odd ones included.
const CONTENT_TYPES: [Option<&str>; 9] = [
    None,
    Some(OCI_MANIFEST),
    Some(OCI_INDEX),
    Some(DOCKER_MANIFEST),
    Some(DOCKER_LIST),
    Some(OCI_EMPTY_CONFIG),
    Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
    Some(""),
    Some(" ;x"),
];

/// A manifest or index body with a chosen `Content-Type`: it parses or is refused with a
/// message, never a panic; a manifest parsed once parses the same with its own media type, and
/// its descriptors survive a JSON round trip.
pub fn manifest(data: &[u8]) {
    let mut g = Gen::new(data);
    let content_type = *g.pick(&CONTENT_TYPES);
    let body = g.rest();
    let Ok(m) = manifest::parse(content_type, body) else {
        return;
    };
    let again = manifest::parse(Some(&m.media_type), body);
    if !m.media_type.trim().is_empty() && !m.media_type.contains(';') {
        assert_eq!(again, Ok(m.clone()));
    }
    if crate::media_type::is_known(&m.media_type) {
        assert_eq!(
            crate::media_type::is_index(&m.media_type),
            matches!(m.content, manifest::Content::Index { .. })
        );
    }
    for d in m.blobs().chain(m.children()).chain(m.subject.as_ref()) {
        let json = serde_json::to_vec(d).expect("a descriptor serializes");
        let back: crate::Descriptor = serde_json::from_slice(&json).expect("reads back");
        assert_eq!(&back, d);
    }
}

/// A change-feed page: read or refused with the right kind of error; a page read once is
/// written and read back to the same page.
pub fn feed_page(data: &[u8]) {
    match FeedPage::from_json(data) {
        Ok(page) => {
            assert!(page.version <= crate::FEED_VERSION);
            let json = serde_json::to_vec(&page).expect("a page serializes");
            assert_eq!(FeedPage::from_json(&json).ok(), Some(page));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:0101010101010101010101010101010101010101010101010101010101010101";

    fn image() -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},"layers":[{{"mediaType":"x","digest":"{D1}","size":3,"urls":["http://a"],"annotations":{{"k":"v","n":1.5}}}}],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":5}},"annotations":{{"a":"b"}}}}"#
        )
    }

    fn index() -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":7,"platform":{{"architecture":"arm64","os":"linux","variant":"v8","os.version":"1","os.features":["x"]}}}}],"artifactType":"t"}}"#
        )
    }

    fn feed() -> String {
        format!(
            r#"{{"version":1,"head":9,"oldest":1,"reset":false,"changes":[{{"seq":2,"time":3,"repo":"a/b","origin":"client","type":"tag_set","tag":"v1","digest":"{D1}"}},{{"seq":3,"repo":"a","origin":"sync","type":"manifest_put","digest":"{D1}","media_type":"m"}},{{"seq":4,"repo":"a","origin":"gc","type":"manifest_deleted","digest":"{D1}"}},{{"seq":5,"repo":"a","origin":"client","type":"tag_deleted","tag":"x"}},{{"seq":6,"repo":"a","origin":"client","type":"new_kind"}}]}}"#
        )
    }

    /// Seeds for the text targets: a leading mode byte (odd: the rest is the text) and a
    /// valid value, so mutations stay close to what a client sends.
    fn texts(values: &[&str]) -> Vec<Vec<u8>> {
        values
            .iter()
            .map(|v| [b"\x01".as_slice(), v.as_bytes()].concat())
            .collect()
    }

    fn refs(v: &[Vec<u8>]) -> Vec<&[u8]> {
        v.iter().map(Vec::as_slice).collect()
    }

    #[test]
    fn fuzz_repo_name() {
        let seeds = texts(&[
            "library/ubuntu",
            "a.b_c__d--e/f-g",
            "x/y/z0",
            &"a/".repeat(127),
        ]);
        fuzzkit::run("oci::repo_name", &refs(&seeds), repo_name);
    }

    #[test]
    fn fuzz_reference() {
        let seeds = texts(&["v1.0_rc-1", "latest", D1, &"t".repeat(128)]);
        fuzzkit::run("oci::reference", &refs(&seeds), reference);
    }

    #[test]
    fn fuzz_digest() {
        let sha512 = format!("sha512:{}", "0".repeat(128));
        let seeds = texts(&[D1, &sha512]);
        fuzzkit::run("oci::digest", &refs(&seeds), digest);
    }

    #[test]
    fn fuzz_platform() {
        let seeds = texts(&["linux/arm64/v8", "windows/amd64", "linux/arm/v7"]);
        fuzzkit::run("oci::platform", &refs(&seeds), platform);
    }

    #[test]
    fn fuzz_manifest() {
        // Content type index 0 (none), 1 (OCI manifest), 2 (OCI index), 4 (Docker list).
        let seeds: Vec<Vec<u8>> = [
            (0u8, image()),
            (1, image()),
            (2, index()),
            (4, index()),
            (0, index()),
        ]
        .iter()
        .map(|(ct, body)| [&[*ct][..], body.as_bytes()].concat())
        .collect();
        fuzzkit::run("oci::manifest", &refs(&seeds), manifest);
    }

    #[test]
    fn fuzz_feed_page() {
        let page = feed();
        let seeds: [&[u8]; 3] = [
            page.as_bytes(),
            br#"{"head":0}"#,
            br#"{"version":2,"head":"x"}"#,
        ];
        fuzzkit::run("oci::feed_page", &seeds, feed_page);
    }
}
