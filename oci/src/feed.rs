//! The change feed a connected registry of ours serves its children (`/acr/v1/_changes`): a
//! typed, versioned contract, so the parent's storage can change without breaking children in
//! the field, and a child can tell a page it cannot read from a page that is broken.
//!
//! A page is `{"version": 1, "head": H, "oldest": O, "reset": false, "changes": [Change, …]}`;
//! a change is `{"seq", "time", "repo", "origin", "type", …the kind's fields}`.
//!
//! Versions: the child sends the version it reads (`v=`); the parent answers in that version
//! when it knows it, else in its newest ([`answer_version`]). A page without `version` is
//! version 1 (parents before the field existed). A child that meets a newer page than it reads
//! gets [`FeedError::Newer`] and compares tag by tag instead. Within a version, new change
//! kinds may appear: they read as [`ChangeKind::Unknown`], never as an error. Anything else a
//! reader of this version could misread (a new origin, a renamed field) is a new version.
//!
//! `attributes_set` (a repository's, tag's or manifest's `changeableAttributes` changed) is
//! such a new kind within version 1: a child built before it reads it as unknown and compares
//! that repository in full, which is harmless; a child that knows it applies the attributes.

use serde::{Deserialize, Serialize};

use crate::attributes::ChangeableAttributes;
use crate::digest::Digest;

/// How a child's sync introduces itself (`User-Agent`, then its version): a parent tells a
/// child comparing tags from a client asking for them (an evicted tag's demand counts only
/// the latter).
pub const SYNC_USER_AGENT_PREFIX: &str = "connected-registry-sync/";

/// The newest feed version this build writes and reads.
pub const FEED_VERSION: u32 = 1;

/// The version of a page that does not say (parents before the field existed).
fn first_version() -> u32 {
    1
}

/// The version a parent answers a child that asks for `asked` (`None`: a child that does not
/// say, which reads version 1): the child's own if this side knows it, else this side's newest,
/// which a newer child still reads.
pub fn answer_version(asked: Option<u32>) -> u32 {
    asked.unwrap_or(1).clamp(1, FEED_VERSION)
}

/// One page of the change feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedPage {
    #[serde(default = "first_version")]
    pub version: u32,
    /// The newest change sequence number (0 when nothing was ever logged).
    pub head: u64,
    /// The oldest sequence number still kept (`head + 1` when the log is empty).
    #[serde(default)]
    pub oldest: u64,
    /// The parent cannot continue from the `after` asked for (it pruned past it, or never
    /// reached it): the reader compares everything once and continues from `head`.
    #[serde(default)]
    pub reset: bool,
    /// Changes after the sequence asked for, oldest first.
    #[serde(default)]
    pub changes: Vec<Change>,
}

/// Why bytes are not a feed page this side can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    /// The page is of a newer version than this side reads: fall back to comparing tag by tag
    /// (and upgrade this side to use the feed again).
    #[error("the change feed answered in version {version}, and this build reads versions up to {FEED_VERSION}")]
    Newer { version: u32 },
    /// Not a feed page at all (no `head`): whatever answered offers no feed.
    #[error("not a change feed page: {0}")]
    NotAFeed(String),
    /// A feed page of a version this side reads that does not parse: a broken parent.
    #[error("a broken change feed page: {0}")]
    Malformed(String),
}

impl FeedPage {
    /// Reads a page, looking at its version before anything else: a newer page may have any
    /// shape, and must read as [`FeedError::Newer`], not as malformed.
    pub fn from_json(bytes: &[u8]) -> Result<FeedPage, FeedError> {
        #[derive(Deserialize)]
        struct Frame {
            #[serde(default = "first_version")]
            version: u32,
            head: Option<serde_json::Value>,
        }
        let frame: Frame = serde_json::from_slice(bytes)
            .map_err(|e| FeedError::NotAFeed(format!("not a JSON object with a version: {e}")))?;
        if frame.version > FEED_VERSION {
            return Err(FeedError::Newer {
                version: frame.version,
            });
        }
        if frame.head.is_none() {
            return Err(FeedError::NotAFeed("no \"head\" field".into()));
        }
        serde_json::from_slice(bytes).map_err(|e| FeedError::Malformed(e.to_string()))
    }
}

/// Who made a change: a client of that registry, its sync engine copying from its own parent,
/// or garbage collection removing untagged manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Client,
    Sync,
    Gc,
}

/// One change to tags or manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub seq: u64,
    /// Unix seconds.
    #[serde(default)]
    pub time: u64,
    pub repo: String,
    pub origin: Origin,
    #[serde(flatten)]
    pub kind: ChangeKind,
}

/// What changed; on the wire the `type` field names the kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChangeKind {
    /// A manifest was stored (a referrer pushed by digest, a platform manifest, or the target
    /// of a tag, which comes as its own `TagSet` too).
    ManifestPut {
        digest: Digest,
        #[serde(default)]
        media_type: String,
    },
    /// A manifest was deleted (tags that pointed at it come as their own `TagDeleted`).
    ManifestDeleted {
        digest: Digest,
    },
    TagSet {
        tag: String,
        digest: Digest,
    },
    TagDeleted {
        tag: String,
    },
    /// The `changeableAttributes` of the repository (neither `tag` nor `digest`), of a tag, or
    /// of a manifest were set to `attributes` (the whole set, not a difference).
    AttributesSet {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tag: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<Digest>,
        attributes: ChangeableAttributes,
    },
    /// A kind a newer parent wrote that this version does not know: the reader compares the
    /// repository in full rather than failing.
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    /// The JSON children in the field read today: the field names must not move.
    #[test]
    fn a_change_keeps_its_wire_names() {
        let change = Change {
            seq: 7,
            time: 100,
            repo: "apps/a".into(),
            origin: Origin::Client,
            kind: ChangeKind::TagSet {
                tag: "1".into(),
                digest: d(1).parse().unwrap(),
            },
        };
        let json = serde_json::to_value(&change).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"seq": 7, "time": 100, "repo": "apps/a", "origin": "client",
                "type": "tag_set", "tag": "1", "digest": d(1)})
        );
        let put = ChangeKind::ManifestPut {
            digest: d(2).parse().unwrap(),
            media_type: "m".into(),
        };
        assert_eq!(
            serde_json::to_value(&put).unwrap(),
            serde_json::json!({"type": "manifest_put", "digest": d(2), "media_type": "m"})
        );
    }

    #[test]
    fn attributes_set_keeps_its_wire_names() {
        let set = ChangeKind::AttributesSet {
            tag: Some("1".into()),
            digest: None,
            attributes: ChangeableAttributes {
                write_enabled: false,
                ..ChangeableAttributes::ALL_ENABLED
            },
        };
        assert_eq!(
            serde_json::to_value(&set).unwrap(),
            serde_json::json!({"type": "attributes_set", "tag": "1", "attributes":
                {"deleteEnabled": true, "writeEnabled": false, "readEnabled": true, "listEnabled": true}})
        );
    }

    #[test]
    fn a_page_without_a_version_is_version_1() {
        let page = FeedPage::from_json(br#"{"head":3,"oldest":1,"reset":false,"changes":[]}"#);
        assert_eq!(page.unwrap().version, 1);
    }

    #[test]
    fn a_newer_page_is_refused_by_its_version_whatever_its_shape() {
        let newer = format!(r#"{{"version":{},"cursor":"x"}}"#, FEED_VERSION + 1);
        assert_eq!(
            FeedPage::from_json(newer.as_bytes()),
            Err(FeedError::Newer {
                version: FEED_VERSION + 1
            })
        );
        assert!(matches!(
            FeedPage::from_json(b"{\"version\":1}"),
            Err(FeedError::NotAFeed(_))
        ));
        assert!(matches!(
            FeedPage::from_json(b"[1]"),
            Err(FeedError::NotAFeed(_))
        ));
        assert!(matches!(
            FeedPage::from_json(b"{\"head\":1,\"changes\":[{\"seq\":1}]}"),
            Err(FeedError::Malformed(_))
        ));
    }

    #[test]
    fn an_unknown_kind_reads_as_unknown() {
        let page = format!(
            r#"{{"version":1,"head":2,"changes":[
                {{"seq":1,"time":1,"repo":"a","origin":"sync","type":"repo_renamed","to":"b"}},
                {{"seq":2,"time":1,"repo":"a","origin":"client","type":"manifest_deleted","digest":"{}"}}]}}"#,
            d(3)
        );
        let page = FeedPage::from_json(page.as_bytes()).unwrap();
        assert_eq!(page.changes[0].kind, ChangeKind::Unknown);
        assert!(matches!(
            page.changes[1].kind,
            ChangeKind::ManifestDeleted { .. }
        ));
    }

    #[test]
    fn a_parent_answers_the_version_asked_for_or_its_newest() {
        assert_eq!(answer_version(None), 1);
        assert_eq!(answer_version(Some(1)), 1);
        assert_eq!(answer_version(Some(FEED_VERSION + 1)), FEED_VERSION);
        assert_eq!(answer_version(Some(0)), 1);
    }
}
