//! The actions a scope map grants, named as ACR names them (`content/read`), and their
//! spelling in a Docker token scope (`pull`), which is what clients ask for.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One thing a token may do to a repository, or, for the gateway actions, to the registry a
/// child registry syncs from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Action {
    /// Pull: manifests and blobs.
    ContentRead,
    /// Push: uploads, manifests, tags.
    ContentWrite,
    /// Delete manifests and tags.
    ContentDelete,
    /// Listings: catalog, tags, the `/acr` properties.
    MetadataRead,
    /// Change attributes (`PATCH /acr/...`).
    MetadataWrite,
    /// Read the change feed (a child's sync token).
    MessageRead,
    /// Report status and push up (a child's sync token).
    MessageWrite,
    /// Read a child's own settings (a child's sync token).
    ConfigRead,
}

impl Action {
    pub const ALL: [Action; 8] = [
        Action::ContentRead,
        Action::ContentWrite,
        Action::ContentDelete,
        Action::MetadataRead,
        Action::MetadataWrite,
        Action::MessageRead,
        Action::MessageWrite,
        Action::ConfigRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::ContentRead => "content/read",
            Action::ContentWrite => "content/write",
            Action::ContentDelete => "content/delete",
            Action::MetadataRead => "metadata/read",
            Action::MetadataWrite => "metadata/write",
            Action::MessageRead => "message/read",
            Action::MessageWrite => "message/write",
            Action::ConfigRead => "config/read",
        }
    }

    /// The action's name in a Docker token scope (`repository:NAME:pull,push`).
    pub fn scope_name(self) -> &'static str {
        match self {
            Action::ContentRead => "pull",
            Action::ContentWrite => "push",
            Action::ContentDelete => "delete",
            Action::MetadataRead => "metadata_read",
            Action::MetadataWrite => "metadata_write",
            Action::MessageRead => "message_read",
            Action::MessageWrite => "message_write",
            Action::ConfigRead => "config_read",
        }
    }

    /// The actions a Docker scope's action name stands for (`*` is every one).
    pub fn from_scope_name(name: &str) -> Vec<Action> {
        if name == "*" {
            return Action::ALL.to_vec();
        }
        Action::ALL
            .into_iter()
            .filter(|a| a.scope_name() == name)
            .collect()
    }

    /// Whether this action is one of a child registry's (`message/*`, `config/read`).
    pub fn is_gateway(self) -> bool {
        matches!(
            self,
            Action::MessageRead | Action::MessageWrite | Action::ConfigRead
        )
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Action, String> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
                format!("{s:?} is not an action: use one of {}", known.join(", "))
            })
    }
}

impl TryFrom<String> for Action {
    type Error = String;
    fn try_from(s: String) -> Result<Action, String> {
        s.parse()
    }
}

impl From<Action> for String {
    fn from(a: Action) -> String {
        a.as_str().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Action::ALL {
            assert_eq!(a.as_str().parse::<Action>().unwrap(), a);
            assert_eq!(Action::from_scope_name(a.scope_name()), vec![a]);
        }
        assert_eq!(Action::from_scope_name("*").len(), 8);
        assert!(Action::from_scope_name("admin").is_empty());
        let err = "content/pull".parse::<Action>().unwrap_err();
        assert!(err.contains("content/read"), "{err}");
    }
}
