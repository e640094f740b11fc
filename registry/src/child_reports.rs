//! The latest status report of each child registry (`POST /acr/v1/_gateway/{name}/status`),
//! kept in memory and in `DATA/child-reports/NAME.json` (temp file, fsync, rename: a crash
//! leaves the old report or the new one), so a restarted parent still shows its children as
//! they last reported, with the right age. A child is shown `Offline` once its report is older
//! than `--child-offline-after`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

use oci::gateway::{ChildNode, ConnectionState, StatusReport};
use serde::{Deserialize, Serialize};

/// The directory of the kept reports, in the data directory.
pub const DIR_NAME: &str = "child-reports";

/// `--child-offline-after`'s default: five of a child's default poll intervals (PT1M), so a
/// child missing one or two polls (a slow pass, a restart) is not called offline.
pub const DEFAULT_OFFLINE_AFTER: Duration = Duration::from_secs(300);

/// A report as received.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Received {
    /// Unix seconds, on this registry's clock.
    received: u64,
    report: StatusReport,
}

/// Every child's latest report.
pub struct ChildReports {
    dir: PathBuf,
    offline_after: Duration,
    latest: RwLock<BTreeMap<String, Received>>,
}

impl ChildReports {
    /// The reports kept in `data` (a damaged file is skipped, with a warning: the child's next
    /// report replaces it).
    pub fn open(data: &Path, offline_after: Duration) -> ChildReports {
        let dir = data.join(DIR_NAME);
        let mut latest = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let Some(name) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".json"))
                else {
                    continue;
                };
                match std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                {
                    Ok(received) => {
                        latest.insert(name.to_owned(), received);
                    }
                    Err(err) => {
                        tracing::warn!(path = %path.display(), %err, "a kept child report cannot be read: skipped until that child reports again")
                    }
                }
            }
        }
        ChildReports {
            dir,
            offline_after,
            latest: RwLock::new(latest),
        }
    }

    pub fn offline_after(&self) -> Duration {
        self.offline_after
    }

    /// Keeps `report` as child `name`'s latest, received now. `name` must be a child defined
    /// here (the caller checked it: only its sync token reaches the route), which also makes it
    /// a safe file name. Blocking (a file write and fsync).
    pub fn record(&self, name: &str, report: StatusReport) -> Result<(), String> {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(format!("{name:?} cannot name a child registry"));
        }
        let received = Received {
            received: util::time::now_secs(),
            report,
        };
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let bytes = serde_json::to_vec(&received).map_err(|e| e.to_string())?;
        util::atomic_file::write(&self.dir.join(format!("{name}.json")), &bytes, Some(0o600))
            .map_err(|e| e.to_string())?;
        self.latest
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), received);
        Ok(())
    }

    /// The children as this registry sees them now: `defined` (the children defined here, in
    /// order; `None`: whatever reported), each with its latest report, its age, its state
    /// (`Offline` when the report is older than the setting, or there is none) and its lag
    /// behind `head` (this registry's newest change-log sequence; `None`: unknown, no lag).
    pub fn children(&self, defined: Option<&[String]>, head: Option<u64>) -> Vec<ChildNode> {
        let now = util::time::now_secs();
        let offline_after = self.offline_after.as_secs();
        let latest = self.latest.read().unwrap_or_else(|p| p.into_inner());
        let names: Vec<String> = match defined {
            Some(names) => names.to_vec(),
            None => latest.keys().cloned().collect(),
        };
        names
            .into_iter()
            .map(|name| match latest.get(&name) {
                None => ChildNode {
                    name,
                    state: ConnectionState::Offline,
                    ..ChildNode::default()
                },
                Some(received) => {
                    let age = now.saturating_sub(received.received);
                    let report = &received.report;
                    let state = if age > offline_after {
                        ConnectionState::Offline
                    } else {
                        report.connection_state
                    };
                    let mut node = ChildNode {
                        name,
                        state,
                        report_age_seconds: Some(age),
                        lag: head
                            .zip(report.parent_feed_seq)
                            .map(|(h, seq)| h.saturating_sub(seq)),
                        report: Some(Box::new(report.clone())),
                    };
                    // Its children's ages were as of its report: older by this report's age.
                    if let Some(report) = &mut node.report {
                        for child in &mut report.children {
                            child.age_by(age, offline_after);
                        }
                    }
                    node
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_survive_a_restart_and_unknown_children_are_offline() {
        let dir = tempfile::tempdir().unwrap();
        let reports = ChildReports::open(dir.path(), Duration::from_secs(60));
        let report = StatusReport {
            name: "edge".into(),
            connection_state: ConnectionState::Online,
            parent_feed_seq: Some(7),
            ..StatusReport::default()
        };
        reports.record("edge", report.clone()).unwrap();
        assert!(reports.record("../x", report.clone()).is_err());
        let again = ChildReports::open(dir.path(), Duration::from_secs(60));
        let nodes = again.children(Some(&["edge".into(), "never".into()]), Some(10));
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].state, ConnectionState::Online);
        assert_eq!(nodes[0].lag, Some(3));
        assert!(nodes[0].report_age_seconds.is_some_and(|a| a < 60));
        assert_eq!(nodes[1].state, ConnectionState::Offline);
        assert!(nodes[1].report.is_none());
        // With a zero offline setting, a report a second old is stale.
        let stale = ChildReports::open(dir.path(), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(
            stale.children(None, None)[0].state,
            ConnectionState::Offline
        );
    }
}
