//! `changeableAttributes`, the four switches ACR keeps per repository, tag and manifest
//! (`az acr repository update --write-enabled false …`): the registry stores and enforces them,
//! the `/acr/v1` API shows and changes them, and the change feed carries them to children.
//!
//! Absent means enabled: an item nobody locked has no record, so stores made before the
//! attributes existed need no migration.

use serde::{Deserialize, Serialize};

/// Whether an item may be deleted, overwritten, pulled and listed (ACR's `changeableAttributes`,
/// same JSON names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeableAttributes {
    pub delete_enabled: bool,
    pub write_enabled: bool,
    pub read_enabled: bool,
    pub list_enabled: bool,
}

impl Default for ChangeableAttributes {
    fn default() -> ChangeableAttributes {
        ChangeableAttributes::ALL_ENABLED
    }
}

impl ChangeableAttributes {
    /// What an item nobody changed has.
    pub const ALL_ENABLED: ChangeableAttributes = ChangeableAttributes {
        delete_enabled: true,
        write_enabled: true,
        read_enabled: true,
        list_enabled: true,
    };

    /// Both apply: an item inside a repository is only as enabled as the repository (ACR).
    pub fn and(self, other: ChangeableAttributes) -> ChangeableAttributes {
        ChangeableAttributes {
            delete_enabled: self.delete_enabled && other.delete_enabled,
            write_enabled: self.write_enabled && other.write_enabled,
            read_enabled: self.read_enabled && other.read_enabled,
            list_enabled: self.list_enabled && other.list_enabled,
        }
    }

    /// With the switches a `PATCH` body names changed, the others kept.
    pub fn patched(self, patch: &AttributesPatch) -> ChangeableAttributes {
        ChangeableAttributes {
            delete_enabled: patch.delete_enabled.unwrap_or(self.delete_enabled),
            write_enabled: patch.write_enabled.unwrap_or(self.write_enabled),
            read_enabled: patch.read_enabled.unwrap_or(self.read_enabled),
            list_enabled: patch.list_enabled.unwrap_or(self.list_enabled),
        }
    }
}

/// A `PATCH` body: the switches to change. Any other field is refused, so a typo
/// (`"writeEnable"`) is an error rather than a lock that silently did not happen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttributesPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_enabled: Option<bool>,
}

/// Setting every switch: how a child applies the whole set its parent logged.
impl From<ChangeableAttributes> for AttributesPatch {
    fn from(a: ChangeableAttributes) -> AttributesPatch {
        AttributesPatch {
            delete_enabled: Some(a.delete_enabled),
            write_enabled: Some(a.write_enabled),
            read_enabled: Some(a.read_enabled),
            list_enabled: Some(a.list_enabled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_keep_acr_names_and_patches_refuse_typos() {
        let json = serde_json::to_value(ChangeableAttributes::ALL_ENABLED).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"deleteEnabled": true, "writeEnabled": true,
                "readEnabled": true, "listEnabled": true})
        );
        let patch: AttributesPatch = serde_json::from_str(r#"{"writeEnabled": false}"#).unwrap();
        let locked = ChangeableAttributes::ALL_ENABLED.patched(&patch);
        assert!(!locked.write_enabled && locked.delete_enabled);
        assert!(serde_json::from_str::<AttributesPatch>(r#"{"writeEnable": false}"#).is_err());
        assert!(!ChangeableAttributes::ALL_ENABLED.and(locked).write_enabled);
    }
}
