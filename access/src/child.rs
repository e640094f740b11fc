//! Child registries defined at their parent (`child create|list|show|update|delete`,
//! `child credential generate`): each child's settings, as the parent hands them out on
//! `GET /acr/v1/_gateway/{name}/config`, and its sync token, whose scope map holds
//! `content/read` and `metadata/read` on the child's repositories (plus `content/write` for a
//! ReadWrite child) and the gateway actions. The one value a child's deployment needs is the
//! connection string made here, with the sync token's password (shown once, as a token's).
//!
//! Definitions live in the access store beside tokens and scope maps, changed in the same
//! transaction, so a crash never leaves a child without its token or a token without its child.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::action::Action;
use crate::manage::ManageError;
use crate::names::check_name;
use crate::password;
use crate::scope_map::{RepoPattern, Rule, ScopeMap};
use crate::store::Snapshot;
use crate::token::{Password, Slot, Token};
use util::time::rfc3339;

/// Suffix of a child's sync token name (`NAME-sync-token`), as ACR names it.
pub const SYNC_TOKEN_SUFFIX: &str = "-sync-token";
/// Suffix of the sync token's scope map (`NAME-sync-scope-map`).
pub const SYNC_SCOPE_MAP_SUFFIX: &str = "-sync-scope-map";

/// ReadOnly (pull down only) or ReadWrite (also pushes up what its clients pushed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChildMode {
    #[default]
    ReadOnly,
    ReadWrite,
}

impl std::str::FromStr for ChildMode {
    type Err = String;
    fn from_str(s: &str) -> Result<ChildMode, String> {
        match s.to_ascii_lowercase().as_str() {
            "readonly" => Ok(ChildMode::ReadOnly),
            "readwrite" => Ok(ChildMode::ReadWrite),
            _ => Err(format!("{s:?} is not a mode: use ReadOnly or ReadWrite")),
        }
    }
}

impl std::fmt::Display for ChildMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChildMode::ReadOnly => "ReadOnly",
            ChildMode::ReadWrite => "ReadWrite",
        })
    }
}

/// The settings a child receives from its parent: strings the child's own settings parser
/// reads (`sync::settings`), so a child checks them exactly as it checks its flags.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChildSettings {
    pub mode: ChildMode,
    /// Repository patterns: a name, a prefix `team-a/*`, or `*`.
    pub repositories: Vec<RepoPattern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_limit: Option<String>,
}

/// A child as kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Child {
    pub name: String,
    pub settings: ChildSettings,
    /// The parent endpoint its connection string names (`host[:port]`).
    pub parent_endpoint: String,
    /// `https`, or `http` (tests on loopback).
    pub protocol: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
}

impl Child {
    pub fn sync_token(&self) -> String {
        format!("{}{SYNC_TOKEN_SUFFIX}", self.name)
    }

    fn scope_map(&self) -> String {
        format!("{}{SYNC_SCOPE_MAP_SUFFIX}", self.name)
    }

    /// The sync token's rules: reading (and for ReadWrite, writing) the child's
    /// repositories, and the gateway actions (which any rule grants).
    fn rules(&self) -> Vec<Rule> {
        let mut actions = vec![Action::ContentRead, Action::MetadataRead];
        if self.settings.mode == ChildMode::ReadWrite {
            actions.push(Action::ContentWrite);
        }
        actions.extend([
            Action::MessageRead,
            Action::MessageWrite,
            Action::ConfigRead,
        ]);
        self.settings
            .repositories
            .iter()
            .map(|pattern| Rule {
                repository: pattern.clone(),
                actions: actions.clone(),
            })
            .collect()
    }

    /// `ConnectedRegistryName=...;SyncTokenName=...;SyncTokenPassword=...;...`: a secret.
    fn connection_string(&self, password: &str) -> String {
        format!(
            "ConnectedRegistryName={};SyncTokenName={};SyncTokenPassword={password};ParentGatewayEndpoint={};ParentEndpointProtocol={}",
            self.name,
            self.sync_token(),
            self.parent_endpoint,
            self.protocol
        )
    }
}

/// A change to a child's settings (`child update`): what is given replaces what was.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChildChange {
    #[serde(default)]
    pub mode: Option<ChildMode>,
    #[serde(default)]
    pub repositories: Option<Vec<RepoPattern>>,
    #[serde(default)]
    pub sync_schedule: Option<String>,
    #[serde(default)]
    pub sync_window: Option<String>,
    #[serde(default)]
    pub message_ttl: Option<String>,
    #[serde(default)]
    pub platforms: Option<Vec<String>>,
    #[serde(default)]
    pub bandwidth_limit: Option<String>,
}

fn refuse<T>(message: String) -> Result<T, ManageError> {
    Err(ManageError(message))
}

/// Refuses a ReadWrite child of a ReadOnly registry, as ACR does: what the child pushes up
/// would have nowhere to go.
fn check_mode(mode: ChildMode, registry_read_only: bool) -> Result<(), ManageError> {
    if mode == ChildMode::ReadWrite && registry_read_only {
        return refuse(
            "this registry is ReadOnly, so its children must be ReadOnly too (what a ReadWrite child pushes up could go no further): use --mode ReadOnly".into(),
        );
    }
    Ok(())
}

/// Makes child `name`, its sync token and scope map; answers it with its connection string.
pub fn create(
    snapshot: &mut Snapshot,
    mut child: Child,
    registry_read_only: bool,
    now: u64,
) -> Result<Value, ManageError> {
    check_name("child registry", &child.name).map_err(ManageError)?;
    check_mode(child.settings.mode, registry_read_only)?;
    let name = child.name.clone();
    if snapshot.children.contains_key(&name) {
        return refuse(format!("child registry {name} exists: change it with child update, or make a new connection string with child credential generate"));
    }
    if child.settings.repositories.is_empty() {
        return refuse(format!(
            "child registry {name} needs at least one --repository PATTERN (a name, team-a/* or *)"
        ));
    }
    if child.parent_endpoint.is_empty()
        || child.parent_endpoint.contains("://")
        || child.parent_endpoint.contains(['/', ';', ' '])
    {
        return refuse(format!(
            "parent endpoint {:?} must be HOST[:PORT] (how the child reaches this registry), without a scheme or path: give --parent-endpoint",
            child.parent_endpoint
        ));
    }
    let (token_name, map_name) = (child.sync_token(), child.scope_map());
    if snapshot.tokens.contains_key(&token_name) {
        return refuse(format!(
            "token {token_name} exists already: delete it, or choose another child name"
        ));
    }
    if snapshot.scope_maps.contains_key(&map_name) {
        return refuse(format!(
            "scope map {map_name} exists already: delete it, or choose another child name"
        ));
    }
    child.created = now;
    let map = ScopeMap::new(
        &map_name,
        &format!("sync scope of child registry {name}"),
        child.rules(),
    )
    .map_err(ManageError)?;
    let token = Token::new(&token_name, &map_name).map_err(ManageError)?;
    snapshot.scope_maps.insert(map_name, map);
    snapshot.tokens.insert(token_name, token);
    let password = new_password(snapshot, &child, Slot::Password1, now);
    let mut answer = child_json(&child);
    answer["connectionString"] = Value::String(child.connection_string(&password));
    snapshot.children.insert(name, child);
    Ok(answer)
}

/// Changes child `name`'s settings; its sync token's scope follows.
pub fn update(
    snapshot: &mut Snapshot,
    name: &str,
    change: ChildChange,
    registry_read_only: bool,
) -> Result<Value, ManageError> {
    let child = child_mut(snapshot, name)?;
    let s = &mut child.settings;
    if let Some(mode) = change.mode {
        check_mode(mode, registry_read_only)?;
        s.mode = mode;
    }
    if let Some(repositories) = change.repositories {
        if repositories.is_empty() {
            return refuse(format!(
                "child registry {name} needs at least one repository"
            ));
        }
        s.repositories = repositories;
    }
    macro_rules! replace {
        ($($f:ident),*) => { $( if change.$f.is_some() { s.$f = change.$f; } )* };
    }
    replace!(sync_schedule, sync_window, message_ttl, bandwidth_limit);
    if let Some(platforms) = change.platforms {
        s.platforms = platforms;
    }
    let child = child.clone();
    let map = snapshot
        .scope_maps
        .get_mut(&child.scope_map())
        .ok_or_else(|| {
            ManageError(format!(
                "the scope map {} of child registry {name} is gone: delete the child and create it again",
                child.scope_map()
            ))
        })?;
    map.rules.clear();
    map.add(child.rules());
    Ok(child_json(&child))
}

pub fn show(snapshot: &mut Snapshot, name: &str) -> Result<Value, ManageError> {
    Ok(child_json(child_mut(snapshot, name)?))
}

pub fn list(snapshot: &Snapshot) -> Value {
    Value::Array(snapshot.children.values().map(child_json).collect())
}

/// Deletes child `name` with its sync token and scope map: the child's connection string
/// stops working at once.
pub fn delete(snapshot: &mut Snapshot, name: &str) -> Result<Value, ManageError> {
    let child = child_mut(snapshot, name)?.clone();
    snapshot.tokens.remove(&child.sync_token());
    snapshot.scope_maps.remove(&child.scope_map());
    // Its client tokens were valid there only.
    snapshot
        .tokens
        .retain(|_, t| t.for_child.as_deref() != Some(name));
    snapshot.children.remove(name);
    Ok(Value::Null)
}

/// A new connection string for child `name`: a new password in the sync token's other slot;
/// the current one keeps working for `overlap` seconds (so the child can be redeployed), then
/// is refused.
pub fn credential_generate(
    snapshot: &mut Snapshot,
    name: &str,
    overlap: u64,
    now: u64,
) -> Result<Value, ManageError> {
    let child = child_mut(snapshot, name)?.clone();
    let token_name = child.sync_token();
    let token = snapshot.tokens.get_mut(&token_name).ok_or_else(|| {
        ManageError(format!(
            "the sync token {token_name} of child registry {name} is gone: delete the child and create it again"
        ))
    })?;
    // The slot the child uses now: the newest password that still works.
    let current = token
        .passwords
        .iter()
        .filter(|p| !p.expired(now))
        .max_by_key(|p| p.created)
        .map(|p| p.name);
    let next = match current {
        Some(Slot::Password1) => Slot::Password2,
        _ => Slot::Password1,
    };
    let retires = now.saturating_add(overlap);
    for p in &mut token.passwords {
        if p.name != next {
            p.expiry = Some(p.expiry.map_or(retires, |e| e.min(retires)));
        }
    }
    let password = new_password(snapshot, &child, next, now);
    let mut answer = child_json(&child);
    answer["connectionString"] = Value::String(child.connection_string(&password));
    answer["previousPasswordExpiry"] = current.map_or(Value::Null, |_| rfc3339(retires).into());
    Ok(answer)
}

/// The settings child `name` receives on `GET /acr/v1/_gateway/{name}/config`.
pub fn config_of(snapshot: &Snapshot, name: &str) -> Option<Value> {
    let child = snapshot.children.get(name)?;
    let mut value = serde_json::to_value(&child.settings).ok()?;
    value["name"] = Value::String(child.name.clone());
    value["tokens"] = serde_json::to_value(crate::child_tokens::tokens_for(snapshot, name)).ok()?;
    Some(value)
}

/// Whether `token` is the sync token of child `name` (the only caller of its gateway routes).
pub fn is_sync_token_of(snapshot: &Snapshot, name: &str, token: &str) -> bool {
    snapshot
        .children
        .get(name)
        .is_some_and(|c| c.sync_token() == token)
}

fn child_mut<'a>(snapshot: &'a mut Snapshot, name: &str) -> Result<&'a mut Child, ManageError> {
    snapshot
        .children
        .get_mut(name)
        .ok_or_else(|| ManageError(format!("no child registry {name}: child list shows them")))
}

/// Puts a new password in `slot` of the child's sync token; its value (shown this once).
fn new_password(snapshot: &mut Snapshot, child: &Child, slot: Slot, now: u64) -> String {
    let value = password::generate();
    if let Some(token) = snapshot.tokens.get_mut(&child.sync_token()) {
        token.set_password(Password {
            name: slot,
            hash: password::hash(&value),
            created: now,
            expiry: None,
        });
    }
    value
}

fn child_json(child: &Child) -> Value {
    let s = &child.settings;
    json!({
        "name": child.name,
        "mode": s.mode.to_string(),
        "repositories": s.repositories.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        "syncSchedule": s.sync_schedule,
        "syncWindow": s.sync_window,
        "messageTtl": s.message_ttl,
        "platforms": s.platforms,
        "bandwidthLimit": s.bandwidth_limit,
        "syncTokenName": child.sync_token(),
        "parentGatewayEndpoint": child.parent_endpoint,
        "parentEndpointProtocol": child.protocol,
        "creationDate": rfc3339(child.created),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manage::ensure_defaults;
    use crate::scope_map::Target;

    fn child(name: &str, mode: ChildMode, repos: &[&str]) -> Child {
        Child {
            name: name.into(),
            settings: ChildSettings {
                mode,
                repositories: repos.iter().map(|r| r.parse().unwrap()).collect(),
                ..ChildSettings::default()
            },
            parent_endpoint: "parent:8443".into(),
            protocol: "https".into(),
            created: 0,
        }
    }

    fn password_of(answer: &Value) -> String {
        let cs = answer["connectionString"].as_str().unwrap();
        cs.split(';')
            .find_map(|p| p.strip_prefix("SyncTokenPassword="))
            .unwrap()
            .to_owned()
    }

    #[test]
    fn create_makes_the_token_its_scope_and_a_connection_string() {
        let mut snap = Snapshot::default();
        ensure_defaults(&mut snap, 1);
        let answer = create(
            &mut snap,
            child("edge1", ChildMode::ReadOnly, &["apps/*"]),
            false,
            10,
        )
        .unwrap();
        let cs = answer["connectionString"].as_str().unwrap();
        assert!(
            cs.starts_with(
                "ConnectedRegistryName=edge1;SyncTokenName=edge1-sync-token;SyncTokenPassword="
            ),
            "{cs}"
        );
        assert!(cs.ends_with(";ParentGatewayEndpoint=parent:8443;ParentEndpointProtocol=https"));
        let token = &snap.tokens["edge1-sync-token"];
        assert!(token.check_password(&password_of(&answer), 11).is_some());
        let map = &snap.scope_maps[&token.scope_map];
        assert!(map.allows(Target::Repository("apps/a"), Action::ContentRead));
        assert!(map.allows(Target::Repository("apps/a"), Action::MetadataRead));
        assert!(!map.allows(Target::Repository("apps/a"), Action::ContentWrite));
        assert!(!map.allows(Target::Repository("other"), Action::ContentRead));
        assert!(map.allows(Target::Registry, Action::ConfigRead));
        assert!(is_sync_token_of(&snap, "edge1", "edge1-sync-token"));
        assert_eq!(config_of(&snap, "edge1").unwrap()["mode"], "ReadOnly");
        assert!(show(&mut snap, "edge1")
            .unwrap()
            .get("connectionString")
            .is_none());
    }

    #[test]
    fn a_read_only_registry_refuses_a_read_write_child() {
        let mut snap = Snapshot::default();
        let err = create(&mut snap, child("c", ChildMode::ReadWrite, &["*"]), true, 1).unwrap_err();
        assert!(err.0.contains("ReadOnly"), "{err}");
        assert!(snap.children.is_empty() && snap.tokens.is_empty());
    }

    #[test]
    fn update_moves_the_scope_and_delete_takes_the_token() {
        let mut snap = Snapshot::default();
        create(&mut snap, child("c", ChildMode::ReadOnly, &["a"]), false, 1).unwrap();
        let change = ChildChange {
            repositories: Some(vec!["b".parse().unwrap()]),
            mode: Some(ChildMode::ReadWrite),
            ..ChildChange::default()
        };
        update(&mut snap, "c", change, false).unwrap();
        let map = &snap.scope_maps["c-sync-scope-map"];
        assert!(!map.allows(Target::Repository("a"), Action::ContentRead));
        assert!(map.allows(Target::Repository("b"), Action::ContentWrite));
        delete(&mut snap, "c").unwrap();
        assert!(snap.tokens.is_empty() && snap.scope_maps.is_empty());
    }

    #[test]
    fn a_new_credential_retires_the_old_after_the_overlap() {
        let mut snap = Snapshot::default();
        let first = create(
            &mut snap,
            child("c", ChildMode::ReadOnly, &["a"]),
            false,
            100,
        )
        .unwrap();
        let second = credential_generate(&mut snap, "c", 60, 200).unwrap();
        let (old, new) = (password_of(&first), password_of(&second));
        let token = &snap.tokens["c-sync-token"];
        assert_eq!(token.check_password(&old, 259), Some(Slot::Password1));
        assert_eq!(token.check_password(&old, 260), None);
        assert_eq!(token.check_password(&new, 1000), Some(Slot::Password2));
        let third = credential_generate(&mut snap, "c", 0, 300).unwrap();
        let token = &snap.tokens["c-sync-token"];
        assert_eq!(token.check_password(&new, 300), None);
        assert_eq!(
            token.check_password(&password_of(&third), 300),
            Some(Slot::Password1)
        );
    }
}
