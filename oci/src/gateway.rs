//! Status flowing up a tree of connected registries: the report a child sends its parent at
//! every sync pass (`POST /acr/v1/_gateway/{name}/status`), and the tree a registry shows of
//! itself and everything beneath it (`GET /acr/v1/_gateway/_tree`), which is the same shape:
//! a report whose `children` carry their own latest reports, recursively. One type for both
//! ends, so what a parent reads is by construction what its child wrote.
//!
//! Times are RFC 3339 strings as each registry's clock had them (display only); ages are
//! measured by the registry that received the report, on its own clock, so a child with a
//! wrong clock still shows how stale it is.

use serde::{Deserialize, Serialize};

/// How a registry stands with its parent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnectionState {
    /// In step: its last pass completed (a registry with no parent is always `Online`).
    #[default]
    Online,
    /// A pass is running, or none has finished since it started.
    Syncing,
    /// It cannot reach its parent (its last pass failed with an error a retry may fix); at a
    /// parent: the child's last report is older than the parent's `--child-offline-after`.
    Offline,
    /// Its last pass failed with an error no retry fixes (a refused token, an unknown
    /// certificate, a setting): someone has to act.
    Unhealthy,
}

impl std::fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnectionState::Online => "Online",
            ConnectionState::Syncing => "Syncing",
            ConnectionState::Offline => "Offline",
            ConnectionState::Unhealthy => "Unhealthy",
        })
    }
}

/// The errors of the last pass that had any (kept after later passes succeed, so an operator
/// sees what went wrong last and when).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastError {
    /// When that pass finished (RFC 3339).
    #[serde(default)]
    pub at: Option<String>,
    /// The first error.
    pub message: String,
    /// Every error of that pass (at most [`MAX_ERROR_DETAILS`]).
    #[serde(default)]
    pub details: Vec<String>,
    /// Whether every one of them may pass by itself (see `oci::fault`).
    #[serde(default)]
    pub retryable: bool,
}

/// Most error lines a report carries: a pass failing on every tag must not make the report
/// (and every ancestor's tree) grow with the number of tags.
pub const MAX_ERROR_DETAILS: usize = 10;

/// What a registry says about itself, with its children's latest reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// The name its parent knows it by (its connection string's `ConnectedRegistryName`);
    /// empty for a registry with no parent.
    #[serde(default)]
    pub name: String,
    /// The connected-registry version it runs.
    #[serde(default)]
    pub version: String,
    /// `ReadOnly` or `ReadWrite`.
    #[serde(default)]
    pub mode: String,
    #[serde(default)]
    pub connection_state: ConnectionState,
    /// Start of its last pass that completed (RFC 3339).
    #[serde(default)]
    pub last_successful_sync: Option<String>,
    #[serde(default)]
    pub last_error: Option<LastError>,
    /// Tags brought down (updated) since the process started.
    #[serde(default)]
    pub tags_synced: u64,
    /// Bytes brought down since the process started.
    #[serde(default)]
    pub bytes_synced: u64,
    /// Changes made here by clients not yet pushed up (ReadWrite; 0 for ReadOnly).
    #[serde(default)]
    pub uploads_waiting: u64,
    /// Free bytes on its data directory's file system.
    #[serde(default)]
    pub disk_free_bytes: u64,
    /// Used bytes on that file system.
    #[serde(default)]
    pub disk_used_bytes: u64,
    /// The last sequence number of its parent's change feed it has read (`None`: it compares
    /// in full, or has not read one yet). Its parent's head minus this is its lag.
    #[serde(default)]
    pub parent_feed_seq: Option<u64>,
    /// Its own change log's newest sequence number: its children's lag is measured from it.
    #[serde(default)]
    pub feed_seq: u64,
    /// Its children, as it last heard from them.
    #[serde(default)]
    pub children: Vec<ChildNode>,
}

/// A child as its parent sees it: the state the parent decides (the child's own, or
/// `Offline` when its report is too old), how old the report is and how far behind it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChildNode {
    pub name: String,
    pub state: ConnectionState,
    /// Seconds since the report was received (added up along the path from the registry
    /// showing the tree); `None`: it never reported.
    #[serde(default)]
    pub report_age_seconds: Option<u64>,
    /// Change-feed entries the child has not read yet: the parent's head minus the child's
    /// `parentFeedSeq` (`None`: the child does not read the feed, or never reported).
    #[serde(default)]
    pub lag: Option<u64>,
    /// Its latest report (with its own children), if any.
    #[serde(default)]
    pub report: Option<Box<StatusReport>>,
}

impl ChildNode {
    /// Adds `seconds` to this node's age and its descendants' (a report carried up one more
    /// level is that much older), and marks `Offline` whatever is now older than
    /// `offline_after` seconds.
    pub fn age_by(&mut self, seconds: u64, offline_after: u64) {
        if let Some(age) = &mut self.report_age_seconds {
            *age = age.saturating_add(seconds);
            if *age > offline_after {
                self.state = ConnectionState::Offline;
            }
        }
        if let Some(report) = &mut self.report {
            for child in &mut report.children {
                child.age_by(seconds, offline_after);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_and_ages_along_the_path() {
        let grandchild = ChildNode {
            name: "g".into(),
            state: ConnectionState::Online,
            report_age_seconds: Some(50),
            lag: Some(0),
            report: Some(Box::default()),
        };
        let mut child = ChildNode {
            name: "c".into(),
            state: ConnectionState::Syncing,
            report_age_seconds: Some(20),
            lag: Some(3),
            report: Some(Box::new(StatusReport {
                name: "c".into(),
                children: vec![grandchild],
                ..StatusReport::default()
            })),
        };
        let json = serde_json::to_string(&child).unwrap();
        assert!(json.contains("\"reportAgeSeconds\":20"), "{json}");
        assert_eq!(serde_json::from_str::<ChildNode>(&json).unwrap(), child);
        child.age_by(40, 60);
        assert_eq!(child.report_age_seconds, Some(60));
        assert_eq!(child.state, ConnectionState::Syncing);
        let g = &child.report.as_ref().unwrap().children[0];
        assert_eq!(g.report_age_seconds, Some(90));
        assert_eq!(g.state, ConnectionState::Offline);
    }
}
