//! Client tokens flowing down: tokens a parent makes for a child registry (`token create NAME
//! --for-child CHILD`) are handed to that child with its settings (`GET
//! /acr/v1/_gateway/{name}/config`, `tokens`), as password hashes only (argon2id PHC strings),
//! with their status, scope map rules and expiries. The child replaces its set of
//! parent-managed tokens with them in one transaction ([`apply`]), keeps its own tokens, and
//! verifies the hashes itself, so `docker login` works there while the parent is away. A
//! token disabled, changed or deleted at the parent is so at the child from its next sync.

use serde::{Deserialize, Serialize};

use crate::scope_map::{Rule, ScopeMap};
use crate::store::Snapshot;
use crate::token::{Password, Status, Token};

/// What a child receives: its client tokens and a generation that changes when any of them
/// does (the child applies a set only when the generation is new).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChildTokens {
    pub generation: String,
    pub tokens: Vec<ChildToken>,
}

/// One client token, as it goes down: never a password, only its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChildToken {
    pub name: String,
    pub status: Status,
    /// The scope map's name at the parent (and at the child).
    pub scope_map: String,
    pub rules: Vec<Rule>,
    /// Hashes with their slots, creation times and expiries.
    pub passwords: Vec<Password>,
}

/// The client tokens of child `name` at this registry.
pub fn tokens_for(snapshot: &Snapshot, name: &str) -> ChildTokens {
    let tokens: Vec<ChildToken> = snapshot
        .tokens
        .values()
        .filter(|t| t.for_child.as_deref() == Some(name))
        .map(|t| ChildToken {
            name: t.name.clone(),
            status: t.status,
            scope_map: t.scope_map.clone(),
            rules: snapshot
                .scope_maps
                .get(&t.scope_map)
                .map(|m| m.rules.clone())
                .unwrap_or_default(),
            passwords: t.passwords.clone(),
        })
        .collect();
    ChildTokens {
        generation: generation_of(&tokens),
        tokens,
    }
}

/// A digest of the set: the same tokens, the same generation.
fn generation_of(tokens: &[ChildToken]) -> String {
    use sha2::Digest;
    let bytes = serde_json::to_vec(tokens).unwrap_or_default();
    let digest = sha2::Sha256::digest(&bytes);
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// What applying a set did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Tokens from the parent now here.
    pub tokens: usize,
    /// Tokens from the parent left out: a token or scope map of the same name made here.
    pub skipped: Vec<String>,
}

/// Replaces this registry's parent-managed tokens (and their scope maps) with `set`; tokens
/// made here stay, and win over a parent's token of the same name.
pub fn apply(snapshot: &mut Snapshot, set: &ChildTokens) -> Applied {
    snapshot.tokens.retain(|_, t| !t.from_parent);
    let used: std::collections::BTreeSet<String> = snapshot
        .tokens
        .values()
        .map(|t| t.scope_map.clone())
        .collect();
    snapshot
        .scope_maps
        .retain(|name, m| !m.from_parent || used.contains(name));
    let mut applied = Applied::default();
    for down in &set.tokens {
        let map_taken = snapshot
            .scope_maps
            .get(&down.scope_map)
            .is_some_and(|m| !m.from_parent);
        if snapshot.tokens.contains_key(&down.name) || map_taken {
            applied.skipped.push(down.name.clone());
            continue;
        }
        let Ok(mut map) = ScopeMap::new(
            &down.scope_map,
            "from the parent registry",
            down.rules.clone(),
        ) else {
            applied.skipped.push(down.name.clone());
            continue;
        };
        map.from_parent = true;
        snapshot.scope_maps.insert(down.scope_map.clone(), map);
        let Ok(mut token) = Token::new(&down.name, &down.scope_map) else {
            applied.skipped.push(down.name.clone());
            continue;
        };
        token.status = down.status;
        token.passwords = down.passwords.clone();
        token.from_parent = true;
        snapshot.tokens.insert(down.name.clone(), token);
        applied.tokens += 1;
    }
    applied
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manage::{apply as manage, ensure_defaults, Command};
    use crate::scope_map::parse_rule;

    fn rule(words: &str) -> Rule {
        let w: Vec<String> = words.split(' ').map(String::from).collect();
        parse_rule(&w).unwrap()
    }

    #[test]
    fn a_childs_tokens_go_down_as_hashes_and_replace_the_last_set() {
        let mut parent = Snapshot::default();
        ensure_defaults(&mut parent, 1);
        manage(
            &mut parent,
            Command::ChildCreate {
                name: "edge".into(),
                settings: crate::child::ChildSettings {
                    repositories: vec!["apps/*".parse().unwrap()],
                    ..Default::default()
                },
                parent_endpoint: "p:1".into(),
                protocol: "http".into(),
            },
            1,
        )
        .unwrap();
        let made = manage(
            &mut parent,
            Command::TokenCreate {
                name: "pull".into(),
                scope_map: None,
                rules: vec![rule("apps/* content/read")],
                status: None,
                no_passwords: false,
                expiration: None,
                for_child: Some("edge".into()),
            },
            1,
        )
        .unwrap();
        let password = made["credentials"]["passwords"][0]["value"]
            .as_str()
            .unwrap()
            .to_owned();
        let set = tokens_for(&parent, "edge");
        assert_eq!(set.tokens.len(), 1);
        let text = serde_json::to_string(&set).unwrap();
        assert!(!text.contains(&password), "never a password");
        assert!(text.contains("$argon2id$"), "{text}");
        assert_eq!(tokens_for(&parent, "edge").generation, set.generation);
        assert!(tokens_for(&parent, "other").tokens.is_empty());

        let mut child = Snapshot::default();
        ensure_defaults(&mut child, 1);
        let mut local = Token::new("local", "_repositories_pull").unwrap();
        local.status = Status::Enabled;
        child.tokens.insert("local".into(), local);
        let applied = apply(&mut child, &set);
        assert_eq!(applied.tokens, 1);
        let down = &child.tokens["pull"];
        assert!(down.from_parent && down.check_password(&password, 2).is_some());
        assert!(child.scope_maps["pull-scope-map"].from_parent);

        // Deleted at the parent: gone at the child; its own token stays.
        let applied = apply(&mut child, &ChildTokens::default());
        assert_eq!(applied.tokens, 0);
        assert!(!child.tokens.contains_key("pull"));
        assert!(!child.scope_maps.contains_key("pull-scope-map"));
        assert!(child.tokens.contains_key("local"));

        // A parent's token named like one made here is left out.
        let mut clash = set.clone();
        clash.tokens[0].name = "local".into();
        let applied = apply(&mut child, &clash);
        assert_eq!(applied.skipped, ["local"]);
        assert!(!child.tokens["local"].from_parent);
    }
}
