//! Management: the `scope-map` and `token` commands as values, applied to a [`Snapshot`].
//! The CLI builds a [`Command`]; `serve` applies it (through its admin socket) or, with no
//! server on the data directory, the CLI applies it to the store itself. Either way the answer
//! is the JSON `az acr` prints for the same command, so scripts written for ACR read it.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::child::{self, ChildChange, ChildSettings};
use crate::jwt::SigningKey;
use crate::password;
use crate::scope_map::{Rule, ScopeMap};
use crate::store::Snapshot;
use crate::token::{Password, Slot, Status, Token};
use util::time::rfc3339;

/// Scope maps every registry has, as ACR's: they cannot be changed or deleted.
pub const BUILT_IN_PREFIX: &str = "_repositories_";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Command {
    ScopeMapCreate {
        name: String,
        #[serde(default)]
        description: String,
        rules: Vec<Rule>,
    },
    ScopeMapUpdate {
        name: String,
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        add: Vec<Rule>,
        #[serde(default)]
        remove: Vec<Rule>,
    },
    ScopeMapShow {
        name: String,
    },
    ScopeMapList,
    ScopeMapDelete {
        name: String,
    },
    TokenCreate {
        name: String,
        /// An existing scope map, or none to make `NAME-scope-map` from `rules`.
        #[serde(default)]
        scope_map: Option<String>,
        #[serde(default)]
        rules: Vec<Rule>,
        #[serde(default)]
        status: Option<Status>,
        /// Make no passwords (`--no-passwords`); generate them later.
        #[serde(default)]
        no_passwords: bool,
        /// Seconds until the passwords expire.
        #[serde(default)]
        expiration: Option<u64>,
        /// A client token of this child registry: handed down to it, valid there only.
        #[serde(default)]
        for_child: Option<String>,
    },
    TokenUpdate {
        name: String,
        #[serde(default)]
        scope_map: Option<String>,
        #[serde(default)]
        status: Option<Status>,
    },
    TokenShow {
        name: String,
    },
    TokenList,
    TokenDelete {
        name: String,
    },
    CredentialGenerate {
        name: String,
        slots: Vec<Slot>,
        #[serde(default)]
        expiration: Option<u64>,
    },
    CredentialDelete {
        name: String,
        slot: Slot,
    },
    /// A new signing key; the old one verifies until what it signed expires.
    SigningKeyRotate,
    /// A child registry, its sync token and connection string (`child create`).
    ChildCreate {
        name: String,
        settings: ChildSettings,
        /// `HOST[:PORT]` the child reaches this registry at.
        parent_endpoint: String,
        /// `https` or `http`.
        protocol: String,
    },
    ChildUpdate {
        name: String,
        change: ChildChange,
    },
    ChildShow {
        name: String,
    },
    ChildList,
    ChildDelete {
        name: String,
    },
    /// A new connection string; the old password works `overlap` seconds more.
    ChildCredentialGenerate {
        name: String,
        overlap: u64,
    },
}

impl Command {
    /// Makes token `name`, with its two passwords, on the existing scope map `scope_map` (the
    /// first start's `admin` on `_repositories_admin`, and tests).
    pub fn create_token_on(name: &str, scope_map: &str) -> Command {
        Command::TokenCreate {
            name: name.into(),
            scope_map: Some(scope_map.into()),
            rules: Vec::new(),
            status: None,
            no_passwords: false,
            expiration: None,
            for_child: None,
        }
    }

    /// Whether the command changes anything (a read needs no write to the store).
    pub fn writes(&self) -> bool {
        !matches!(
            self,
            Command::ScopeMapShow { .. }
                | Command::ScopeMapList
                | Command::TokenShow { .. }
                | Command::TokenList
                | Command::ChildShow { .. }
                | Command::ChildList
        )
    }
}

/// Why a command was refused: said to the operator as it is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ManageError(pub String);

fn refuse<T>(message: String) -> Result<T, ManageError> {
    Err(ManageError(message))
}

/// Adds the built-in scope maps and a signing key when missing (first start).
pub fn ensure_defaults(snapshot: &mut Snapshot, now: u64) -> bool {
    use crate::action::Action::*;
    let built_in: [(&str, &str, &[crate::Action]); 5] = [
        (
            "admin",
            "Can perform all read, write and delete operations on the registry",
            &[
                ContentRead,
                ContentWrite,
                ContentDelete,
                MetadataRead,
                MetadataWrite,
            ],
        ),
        (
            "pull",
            "Can pull any repository of the registry",
            &[ContentRead],
        ),
        (
            "pull_metadata_read",
            "Can perform all read operations on the registry",
            &[ContentRead, MetadataRead],
        ),
        (
            "push",
            "Can push to any repository of the registry",
            &[ContentRead, ContentWrite],
        ),
        (
            "push_metadata_write",
            "Can perform all read and write operations on the registry",
            &[ContentRead, ContentWrite, MetadataRead, MetadataWrite],
        ),
    ];
    let mut changed = false;
    for (suffix, description, actions) in built_in {
        let name = format!("{BUILT_IN_PREFIX}{suffix}");
        if let std::collections::btree_map::Entry::Vacant(slot) = snapshot.scope_maps.entry(name) {
            let rule = Rule {
                repository: crate::RepoPattern::All,
                actions: actions.to_vec(),
            };
            if let Ok(map) = ScopeMap::new(slot.key(), description, vec![rule]) {
                slot.insert(map);
                changed = true;
            }
        }
    }
    if snapshot.keys.is_empty() {
        snapshot.keys.push(SigningKey::generate(now));
        changed = true;
    }
    changed
}

/// Applies `command` to `snapshot` at `now` (unix seconds); the answer as `az acr` prints it.
/// On an error the snapshot may be half changed: callers apply to a copy.
pub fn apply(snapshot: &mut Snapshot, command: Command, now: u64) -> Result<Value, ManageError> {
    apply_as(snapshot, command, now, false)
}

/// [`apply`] on a registry that is ReadOnly (`registry_read_only`) or not: a ReadOnly one
/// refuses ReadWrite children.
pub fn apply_as(
    snapshot: &mut Snapshot,
    command: Command,
    now: u64,
    registry_read_only: bool,
) -> Result<Value, ManageError> {
    match command {
        Command::ChildCreate {
            name,
            settings,
            parent_endpoint,
            protocol,
        } => {
            let definition = child::Child {
                name,
                settings,
                parent_endpoint,
                protocol,
                created: now,
            };
            child::create(snapshot, definition, registry_read_only, now)
        }
        Command::ChildUpdate { name, change } => {
            child::update(snapshot, &name, change, registry_read_only)
        }
        Command::ChildShow { name } => child::show(snapshot, &name),
        Command::ChildList => Ok(child::list(snapshot)),
        Command::ChildDelete { name } => child::delete(snapshot, &name),
        Command::ChildCredentialGenerate { name, overlap } => {
            child::credential_generate(snapshot, &name, overlap, now)
        }
        Command::ScopeMapCreate {
            name,
            description,
            rules,
        } => {
            if snapshot.scope_maps.contains_key(&name) {
                return refuse(format!("scope map {name} exists: change it with scope-map update, or choose another name"));
            }
            if rules.is_empty() {
                return refuse(format!(
                    "scope map {name} needs at least one --repository REPO ACTION [ACTION...]"
                ));
            }
            let map = ScopeMap::new(&name, &description, rules).map_err(ManageError)?;
            let shown = scope_map_json(&map);
            snapshot.scope_maps.insert(name, map);
            Ok(shown)
        }
        Command::ScopeMapUpdate {
            name,
            description,
            add,
            remove,
        } => {
            not_built_in(&name)?;
            let map = scope_map_mut(snapshot, &name)?;
            if map.from_parent {
                return refuse(format!("scope map {name} is managed by this registry's parent (it came with a token made there with --for-child): change it at the parent"));
            }
            map.add(add);
            map.remove(&remove);
            if let Some(description) = description {
                map.description = description;
            }
            Ok(scope_map_json(map))
        }
        Command::ScopeMapShow { name } => Ok(scope_map_json(scope_map_mut(snapshot, &name)?)),
        Command::ScopeMapList => Ok(Value::Array(
            snapshot.scope_maps.values().map(scope_map_json).collect(),
        )),
        Command::ScopeMapDelete { name } => {
            not_built_in(&name)?;
            scope_map_mut(snapshot, &name)?;
            let users: Vec<&str> = snapshot
                .tokens
                .values()
                .filter(|t| t.scope_map == name)
                .map(|t| t.name.as_str())
                .collect();
            if !users.is_empty() {
                return refuse(format!(
                    "scope map {name} is used by token(s) {}: delete them or give them another scope map first",
                    users.join(", ")
                ));
            }
            snapshot.scope_maps.remove(&name);
            Ok(Value::Null)
        }
        Command::TokenCreate {
            name,
            scope_map,
            rules,
            status,
            no_passwords,
            expiration,
            for_child,
        } => {
            if let Some(child) = &for_child {
                if !snapshot.children.contains_key(child) {
                    return refuse(format!(
                        "no child registry {child} is defined here: `child list` shows them"
                    ));
                }
            }
            if snapshot.tokens.contains_key(&name) {
                return refuse(format!("token {name} exists: change it with token update, or make new passwords with token credential generate"));
            }
            let map_name = match (scope_map, rules.is_empty()) {
                (Some(_), false) => {
                    return refuse("give either --scope-map or --repository, not both".into())
                }
                (None, true) => {
                    return refuse(format!("token {name} needs a scope map: --scope-map NAME, or --repository REPO ACTION [ACTION...] to make one"))
                }
                (Some(map), true) => {
                    scope_map_mut(snapshot, &map)?;
                    map
                }
                (None, false) => {
                    let map_name = format!("{name}-scope-map");
                    if snapshot.scope_maps.contains_key(&map_name) {
                        return refuse(format!("scope map {map_name} exists already: use --scope-map {map_name}, or delete it first"));
                    }
                    let map = ScopeMap::new(&map_name, &format!("made for token {name}"), rules)
                        .map_err(ManageError)?;
                    snapshot.scope_maps.insert(map_name.clone(), map);
                    map_name
                }
            };
            let mut token = Token::new(&name, &map_name).map_err(ManageError)?;
            token.status = status.unwrap_or_default();
            token.for_child = for_child;
            let mut shown = Vec::new();
            if !no_passwords {
                for slot in [Slot::Password1, Slot::Password2] {
                    shown.push(new_password(&mut token, slot, expiration, now));
                }
            }
            let answer = token_json(&token, Some(&shown));
            snapshot.tokens.insert(name, token);
            Ok(answer)
        }
        Command::TokenUpdate {
            name,
            scope_map,
            status,
        } => {
            if let Some(map) = &scope_map {
                scope_map_mut(snapshot, map)?;
            }
            let token = token_mut(snapshot, &name)?;
            not_from_parent(token)?;
            if let Some(map) = scope_map {
                token.scope_map = map;
            }
            if let Some(status) = status {
                token.status = status;
            }
            Ok(token_json(token, None))
        }
        Command::TokenShow { name } => Ok(token_json(token_mut(snapshot, &name)?, None)),
        Command::TokenList => Ok(Value::Array(
            snapshot
                .tokens
                .values()
                .map(|t| token_json(t, None))
                .collect(),
        )),
        Command::TokenDelete { name } => {
            not_from_parent(token_mut(snapshot, &name)?)?;
            if let Some(owner) = snapshot.children.values().find(|c| c.sync_token() == name) {
                return refuse(format!(
                    "token {name} is the sync token of child registry {}: delete the child (child delete {})",
                    owner.name, owner.name
                ));
            }
            snapshot.tokens.remove(&name);
            Ok(Value::Null)
        }
        Command::CredentialGenerate {
            name,
            slots,
            expiration,
        } => {
            if slots.is_empty() {
                return refuse(
                    "name the password to generate: --password1, --password2 or both".into(),
                );
            }
            let token = token_mut(snapshot, &name)?;
            not_from_parent(token)?;
            let shown: Vec<Value> = slots
                .into_iter()
                .map(|slot| new_password(token, slot, expiration, now))
                .collect();
            Ok(json!({ "passwords": shown, "username": name }))
        }
        Command::CredentialDelete { name, slot } => {
            let token = token_mut(snapshot, &name)?;
            not_from_parent(token)?;
            if token.password(slot).is_none() {
                return refuse(format!("token {name} has no {slot}"));
            }
            token.passwords.retain(|p| p.name != slot);
            Ok(token_json(token, None))
        }
        Command::SigningKeyRotate => {
            for key in &mut snapshot.keys {
                key.retired.get_or_insert(now);
            }
            let key = SigningKey::generate(now);
            let answer = json!({ "kid": key.kid, "created": rfc3339(now) });
            snapshot.keys.push(key);
            Ok(answer)
        }
    }
}

/// Drops retired keys that can no longer have a valid token: retired longer ago than the
/// longest lifetime of anything they signed.
pub fn prune_keys(snapshot: &mut Snapshot, now: u64, longest_lifetime: u64) -> bool {
    let before = snapshot.keys.len();
    snapshot.keys.retain(|k| {
        k.retired
            .is_none_or(|r| now < r.saturating_add(longest_lifetime))
    });
    before != snapshot.keys.len()
}

/// Refuses changing a token this registry's parent manages: the next sync would undo it.
fn not_from_parent(token: &Token) -> Result<(), ManageError> {
    if token.from_parent {
        return refuse(format!(
            "token {} is managed by this registry's parent (made there with --for-child): change or delete it at the parent; it follows at the next sync",
            token.name
        ));
    }
    Ok(())
}

fn not_built_in(name: &str) -> Result<(), ManageError> {
    if name.starts_with(BUILT_IN_PREFIX) {
        return refuse(format!(
            "scope map {name} is built in and cannot be changed or deleted: make your own with scope-map create"
        ));
    }
    Ok(())
}

fn scope_map_mut<'a>(
    snapshot: &'a mut Snapshot,
    name: &str,
) -> Result<&'a mut ScopeMap, ManageError> {
    snapshot
        .scope_maps
        .get_mut(name)
        .ok_or_else(|| ManageError(format!("no scope map {name}: scope-map list shows them")))
}

fn token_mut<'a>(snapshot: &'a mut Snapshot, name: &str) -> Result<&'a mut Token, ManageError> {
    snapshot
        .tokens
        .get_mut(name)
        .ok_or_else(|| ManageError(format!("no token {name}: token list shows them")))
}

/// Makes a password for `slot`; answers it as `az` shows it, with its value (shown this once).
fn new_password(token: &mut Token, slot: Slot, expiration: Option<u64>, now: u64) -> Value {
    let value = password::generate();
    let kept = Password {
        name: slot,
        hash: password::hash(&value),
        created: now,
        expiry: expiration.map(|e| now.saturating_add(e)),
    };
    let mut shown = password_json(&kept);
    shown["value"] = Value::String(value);
    token.set_password(kept);
    shown
}

fn password_json(p: &Password) -> Value {
    json!({
        "creationTime": rfc3339(p.created),
        "expiry": p.expiry.map(rfc3339),
        "name": p.name.as_str(),
    })
}

fn scope_map_json(map: &ScopeMap) -> Value {
    let actions: Vec<String> = map
        .rules
        .iter()
        .flat_map(|r| {
            r.actions
                .iter()
                .map(move |a| format!("repositories/{}/{}", r.repository, a))
        })
        .collect();
    json!({
        "name": map.name,
        "description": map.description,
        "actions": actions,
        "creationDate": rfc3339(map.created),
        "type": if map.name.starts_with(BUILT_IN_PREFIX) { "SystemDefined" } else { "UserDefined" },
    })
}

/// A token as `az acr token show` prints it; `passwords` (with values) right after creation.
fn token_json(token: &Token, passwords: Option<&[Value]>) -> Value {
    let passwords: Vec<Value> = match passwords {
        Some(shown) => shown.to_vec(),
        None => token.passwords.iter().map(password_json).collect(),
    };
    let mut answer = json!({
        "name": token.name,
        "creationDate": rfc3339(token.created),
        "credentials": { "certificates": [], "passwords": passwords, "username": token.name },
        "scopeMapId": token.scope_map,
        "status": match token.status { Status::Enabled => "enabled", Status::Disabled => "disabled" },
        "provisioningState": "Succeeded",
    });
    if let Some(child) = &token.for_child {
        answer["forChild"] = json!(child);
    }
    if token.from_parent {
        answer["managedBy"] = json!("parent");
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(words: &str) -> Vec<Rule> {
        let w: Vec<String> = words.split(' ').map(String::from).collect();
        vec![crate::scope_map::parse_rule(&w).unwrap()]
    }

    #[test]
    fn token_create_makes_its_scope_map_and_shows_passwords_once() {
        let mut snap = Snapshot::default();
        ensure_defaults(&mut snap, 1);
        let out = apply(
            &mut snap,
            Command::TokenCreate {
                name: "ci".into(),
                scope_map: None,
                rules: rules("team-a/* content/read content/write"),
                status: None,
                no_passwords: false,
                expiration: Some(3600),
                for_child: None,
            },
            10,
        )
        .unwrap();
        let pw = out["credentials"]["passwords"][0]["value"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(out["credentials"]["passwords"][1]["name"], "password2");
        assert_eq!(out["scopeMapId"], "ci-scope-map");
        let token = &snap.tokens["ci"];
        assert_eq!(token.check_password(&pw, 11), Some(Slot::Password1));
        assert_eq!(token.check_password(&pw, 3610), None, "expired");
        let shown = apply(&mut snap, Command::TokenShow { name: "ci".into() }, 12).unwrap();
        assert!(!shown.to_string().contains(&pw));
        assert!(shown["credentials"]["passwords"][0].get("value").is_none());
    }

    #[test]
    fn refusals_say_what_to_do() {
        let mut snap = Snapshot::default();
        ensure_defaults(&mut snap, 1);
        let err = apply(
            &mut snap,
            Command::ScopeMapDelete {
                name: "_repositories_admin".into(),
            },
            1,
        )
        .unwrap_err();
        assert!(err.0.contains("built in"), "{err}");
        let err = apply(&mut snap, Command::TokenShow { name: "x".into() }, 1).unwrap_err();
        assert!(err.0.contains("token list"), "{err}");
        apply(
            &mut snap,
            Command::TokenCreate {
                name: "t".into(),
                scope_map: Some("_repositories_pull".into()),
                rules: vec![],
                status: None,
                no_passwords: true,
                expiration: None,
                for_child: None,
            },
            1,
        )
        .unwrap();
        apply(
            &mut snap,
            Command::ScopeMapCreate {
                name: "m".into(),
                description: String::new(),
                rules: rules("a content/read"),
            },
            1,
        )
        .unwrap();
        apply(
            &mut snap,
            Command::TokenUpdate {
                name: "t".into(),
                scope_map: Some("m".into()),
                status: None,
            },
            1,
        )
        .unwrap();
        let err = apply(&mut snap, Command::ScopeMapDelete { name: "m".into() }, 1).unwrap_err();
        assert!(err.0.contains("used by token(s) t"), "{err}");
    }

    #[test]
    fn rotation_keeps_the_old_key_until_its_tokens_expire() {
        let mut snap = Snapshot::default();
        ensure_defaults(&mut snap, 1);
        let first = snap.signing_key().unwrap().kid.clone();
        apply(&mut snap, Command::SigningKeyRotate, 100).unwrap();
        assert_ne!(snap.signing_key().unwrap().kid, first);
        assert_eq!(snap.keys.len(), 2);
        assert!(!prune_keys(&mut snap, 150, 100));
        assert!(prune_keys(&mut snap, 200, 100));
        assert_eq!(snap.keys.len(), 1);
    }
}
