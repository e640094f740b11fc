//! The settings a child registry receives from its parent (`GET /acr/v1/_gateway/{name}/config`,
//! defined there by `child create`): fetched at start and before every sync pass, kept in the
//! data directory (`sync/parent-config.json`, replaced atomically) so a child whose parent is
//! unreachable at start runs on what it last received. They sit under the child's own
//! settings: flag > file > parent > default ([`ParentConfig::under`]).

use std::path::{Path, PathBuf};

use reqwest::header::ACCEPT;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::client::{ClientError, ParentClient, Scope};
use crate::settings::{RawRepoRule, RawSettings};

/// The file, in the sync directory of the data directory.
pub const FILE_NAME: &str = "parent-config.json";

/// What the parent hands out, as strings the child's settings parser reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentConfig {
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub repositories: Vec<String>,
    #[serde(default)]
    pub sync_schedule: Option<String>,
    #[serde(default)]
    pub sync_window: Option<String>,
    #[serde(default)]
    pub message_ttl: Option<String>,
    #[serde(default)]
    pub platforms: Vec<String>,
    /// The cap on the child's transfers to and from this parent.
    #[serde(default)]
    pub bandwidth_limit: Option<String>,
    /// The client tokens the parent made for this child (`token create --for-child`), as
    /// password hashes: handed to the registry's access store (`access::child_tokens`), never
    /// kept in this file. `None`: a parent that hands out none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<serde_json::Value>,
}

/// Where the parent's layer of the settings came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// Fetched from the parent now.
    Fresh,
    /// The copy kept from an earlier start: the parent could not be reached.
    Cached,
}

impl Received {
    /// As `serve --print-config` names the source.
    pub fn source(self) -> &'static str {
        match self {
            Received::Fresh => "parent",
            Received::Cached => "parent (cached)",
        }
    }
}

impl ParentConfig {
    /// The parent's layer as raw settings.
    pub fn raw(&self) -> RawSettings {
        RawSettings {
            mode: self.mode.clone(),
            sync_schedule: self.sync_schedule.clone(),
            sync_window: self.sync_window.clone(),
            message_ttl: self.message_ttl.clone(),
            repos: self
                .repositories
                .iter()
                .map(|pattern| RawRepoRule {
                    pattern: pattern.clone(),
                    ..RawRepoRule::default()
                })
                .collect(),
            platforms: self.platforms.clone(),
            bandwidth_limit: self.bandwidth_limit.clone(),
            ..RawSettings::default()
        }
    }

    /// `local` (the child's file and flags) over this: a value set locally wins; repositories
    /// given locally replace the parent's rather than add to them.
    pub fn under(&self, local: RawSettings) -> RawSettings {
        let mut base = self.raw();
        if !local.repos.is_empty() {
            base.repos.clear();
        }
        base.overlay(local)
    }

    pub fn path(data: &Path) -> PathBuf {
        data.join("sync").join(FILE_NAME)
    }

    /// The copy kept in `data`, if any (a damaged one is ignored, with a warning).
    pub fn cached(data: &Path) -> Option<ParentConfig> {
        let path = ParentConfig::path(data);
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(config) => Some(config),
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "the kept parent settings cannot be read: ignored");
                None
            }
        }
    }

    /// Keeps this in `data` (temp file, fsync, rename): a crash leaves the old copy or this one.
    pub fn keep(&self, data: &Path) -> Result<(), String> {
        let path = ParentConfig::path(data);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        // The tokens live in the access store, not here.
        let settings = ParentConfig {
            tokens: None,
            ..self.clone()
        };
        let bytes = serde_json::to_vec_pretty(&settings).map_err(|e| e.to_string())?;
        util::atomic_file::write(&path, &bytes, Some(0o600)).map_err(|e| e.to_string())
    }
}

/// The connected registry's name in a connection string: the name its parent knows it by.
pub fn child_name(connection_string: &str) -> Result<String, crate::settings::SettingsError> {
    let cs: connection_string::ConnectionString = connection_string.parse()?;
    Ok(cs.connected_registry_name)
}

impl ParentClient {
    /// This child's settings at its parent (`GET /acr/v1/_gateway/{name}/config`); `None` when
    /// the parent defines no such child or has no such route (a parent that is not ours).
    pub async fn gateway_config(&self, name: &str) -> Result<Option<ParentConfig>, ClientError> {
        let url = format!("{}/acr/v1/_gateway/{name}/config", self.base());
        let resp = self
            .send(Method::GET, &url, &Scope::Catalog, true, &|rb| {
                rb.header(ACCEPT, "application/json")
            })
            .await?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => return Ok(None),
            _ => return Err(crate::client::status_error(&reqwest::Method::GET, &url, resp).await),
        }
        let bytes = resp.bytes().await.map_err(|e| ClientError::Transport {
            url: url.clone(),
            message: e.to_string(),
        })?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ClientError::Protocol {
                url,
                message: format!("the parent's settings for this child are not valid JSON: {e}"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_settings_win_and_repositories_replace() {
        let parent = ParentConfig {
            mode: Some("ReadWrite".into()),
            repositories: vec!["apps/*".into()],
            sync_window: Some("PT2H".into()),
            ..ParentConfig::default()
        };
        let local = RawSettings {
            mode: Some("ReadOnly".into()),
            ..RawSettings::default()
        };
        let raw = parent.under(local);
        assert_eq!(raw.mode.as_deref(), Some("ReadOnly"));
        assert_eq!(raw.sync_window.as_deref(), Some("PT2H"));
        assert_eq!(raw.repos.len(), 1);
        let local = RawSettings {
            repos: vec![RawRepoRule {
                pattern: "mine".into(),
                ..RawRepoRule::default()
            }],
            ..RawSettings::default()
        };
        let raw = parent.under(local);
        assert_eq!(raw.repos.len(), 1);
        assert_eq!(raw.repos[0].pattern, "mine");
    }

    #[test]
    fn kept_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ParentConfig::cached(dir.path()).is_none());
        let config = ParentConfig {
            mode: Some("ReadOnly".into()),
            repositories: vec!["a".into()],
            ..ParentConfig::default()
        };
        config.keep(dir.path()).unwrap();
        assert_eq!(ParentConfig::cached(dir.path()), Some(config));
    }
}
