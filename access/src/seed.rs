//! Seeding from a config file (`serve --access-config FILE`): scope maps and tokens an operator
//! writes down once (a deployment manifest, a provisioning script) and every start applies.
//!
//! The file creates or updates what it names and never deletes anything else, so tokens made
//! with the CLI survive a restart. It never holds a password: only argon2id PHC hashes
//! (`connected-registry token hash-password` makes one), so the file can sit in a manifest
//! without giving a credential away. Errors name the entry and the key at fault, never a value.
//!
//! ```toml
//! [[scopeMap]]
//! name = "team-a"
//! description = "team A pushes and pulls its own repositories"
//! repositories = [{ repository = "team-a/*", actions = ["content/read", "content/write"] }]
//!
//! [[token]]
//! name = "ci"
//! scopeMap = "team-a"                  # or: repositories = [...] (makes ci-scope-map)
//! status = "enabled"
//! password1Hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! password1Expiry = "2027-01-01T00:00:00Z"
//! ```

use std::path::Path;

use serde::Deserialize;

use crate::manage::{ManageError, BUILT_IN_PREFIX};
use crate::scope_map::{parse_rule, Rule, ScopeMap};
use crate::store::Snapshot;
use crate::token::{Password, Slot, Status, Token};
use crate::Authority;

/// A seed file, parsed.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    #[serde(default, rename = "scopeMap")]
    pub scope_maps: Vec<SeedScopeMap>,
    #[serde(default, rename = "token")]
    pub tokens: Vec<SeedToken>,
}

/// One `[[scopeMap]]`: what it should be after the start (its rules replace the stored ones).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedScopeMap {
    pub name: String,
    /// Left as it is when not given.
    #[serde(default)]
    pub description: Option<String>,
    pub repositories: Vec<SeedRule>,
}

/// `{ repository = "team-a/*", actions = ["content/read"] }`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedRule {
    pub repository: String,
    pub actions: Vec<String>,
}

/// One `[[token]]`. What it does not name (status, a password) is left as it is.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SeedToken {
    pub name: String,
    #[serde(default)]
    pub scope_map: Option<String>,
    /// Rules of the token's own scope map (`NAME-scope-map`), instead of `scopeMap`.
    #[serde(default)]
    pub repositories: Vec<SeedRule>,
    #[serde(default)]
    pub status: Option<Status>,
    #[serde(default)]
    pub password1_hash: Option<String>,
    /// RFC 3339 (`2027-01-01T00:00:00Z`); none: never expires.
    #[serde(default)]
    pub password1_expiry: Option<String>,
    #[serde(default)]
    pub password2_hash: Option<String>,
    #[serde(default)]
    pub password2_expiry: Option<String>,
}

/// What applying a seed did, for the start's log line (names and counts only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seeded {
    pub scope_maps_created: usize,
    pub scope_maps_updated: usize,
    pub tokens_created: usize,
    pub tokens_updated: usize,
}

impl Seed {
    /// Reads `path`: JSON when it ends in `.json`, TOML otherwise.
    pub fn load(path: &Path) -> Result<Seed, ManageError> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ManageError(format!(
                "cannot read the access config {shown}: {e} (check --access-config)"
            ))
        })?;
        let json = path.extension().is_some_and(|e| e == "json");
        Seed::parse(&text, json).map_err(|e| ManageError(format!("access config {shown}: {e}")))
    }

    /// Parses a seed. A parse error says where and what, with any quoted value blanked: the
    /// file may hold a hash (or, by mistake, a password) in the wrong place.
    pub fn parse(text: &str, json: bool) -> Result<Seed, String> {
        if json {
            return serde_json::from_str(text).map_err(|e| {
                format!(
                    "line {} column {}: {}",
                    e.line(),
                    e.column(),
                    blank_quoted(&e.to_string())
                )
            });
        }
        toml::from_str(text).map_err(|e: toml::de::Error| {
            // Not `e.to_string()`: it quotes the offending line of the file.
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let what = blank_quoted(e.message());
            match line {
                Some(line) => format!("line {line}: {what}"),
                None => what,
            }
        })
    }
}

/// `msg` with every `"..."` replaced by `"…"` (serde quotes the value it could not use).
fn blank_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut parts = msg.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    let mut inside = true;
    for part in parts {
        out.push('"');
        out.push_str(if inside { "…" } else { part });
        inside = !inside;
    }
    out
}

impl Authority {
    /// Applies `seed` (all of it, or nothing on an error) and keeps the result.
    pub fn seed(&self, seed: &Seed) -> Result<Seeded, ManageError> {
        self.change(true, |snapshot| apply(snapshot, seed, crate::now()))
    }
}

/// Applies `seed` to `snapshot` at `now`: scope maps first, then the tokens that may use them.
/// On an error the snapshot may be half changed: callers apply to a copy.
pub fn apply(snapshot: &mut Snapshot, seed: &Seed, now: u64) -> Result<Seeded, ManageError> {
    let mut done = Seeded::default();
    for map in &seed.scope_maps {
        let at = format!("scopeMap {:?}", map.name);
        let rules = rules_of(&at, &map.repositories)?;
        let created = put_scope_map(snapshot, &map.name, map.description.as_deref(), rules)
            .map_err(|e| ManageError(format!("{at}: {e}")))?;
        *if created {
            &mut done.scope_maps_created
        } else {
            &mut done.scope_maps_updated
        } += 1;
    }
    for token in &seed.tokens {
        let at = format!("token {:?}", token.name);
        let created =
            put_token(snapshot, token, now).map_err(|e| ManageError(format!("{at}: {e}")))?;
        *if created {
            &mut done.tokens_created
        } else {
            &mut done.tokens_updated
        } += 1;
    }
    Ok(done)
}

fn rules_of(at: &str, rules: &[SeedRule]) -> Result<Vec<Rule>, ManageError> {
    rules
        .iter()
        .map(|r| {
            let mut words = vec![r.repository.clone()];
            words.extend(r.actions.iter().cloned());
            parse_rule(&words).map_err(|e| ManageError(format!("{at}: {e}")))
        })
        .collect()
}

/// Makes scope map `name` hold exactly `rules`; true when it was made.
fn put_scope_map(
    snapshot: &mut Snapshot,
    name: &str,
    description: Option<&str>,
    rules: Vec<Rule>,
) -> Result<bool, String> {
    if name.starts_with(BUILT_IN_PREFIX) {
        return Err(format!(
            "{name} is a built-in scope map and cannot be changed: name your own"
        ));
    }
    if rules.is_empty() {
        return Err("repositories is empty: give at least one { repository, actions } rule".into());
    }
    match snapshot.scope_maps.get_mut(name) {
        Some(map) => {
            map.rules.clear();
            map.add(rules);
            if let Some(description) = description {
                map.description = description.to_owned();
            }
            Ok(false)
        }
        None => {
            let map = ScopeMap::new(name, description.unwrap_or_default(), rules)?;
            snapshot.scope_maps.insert(name.to_owned(), map);
            Ok(true)
        }
    }
}

/// Makes or updates a token as `seed` says; true when it was made.
fn put_token(snapshot: &mut Snapshot, seed: &SeedToken, now: u64) -> Result<bool, String> {
    let map_name = match (&seed.scope_map, seed.repositories.is_empty()) {
        (Some(_), false) => {
            return Err("give either scopeMap or repositories, not both".into());
        }
        (Some(map), true) => {
            if !snapshot.scope_maps.contains_key(map) {
                return Err(format!(
                    "scope map {map:?} does not exist: define it in a [[scopeMap]] of this file, or make it with scope-map create"
                ));
            }
            Some(map.clone())
        }
        (None, false) => {
            let own = format!("{}-scope-map", seed.name);
            let rules = rules_of("repositories", &seed.repositories).map_err(|e| e.0)?;
            let description = format!("made for token {}", seed.name);
            put_scope_map(snapshot, &own, Some(&description), rules)?;
            Some(own)
        }
        (None, true) => None,
    };
    let passwords = [
        (
            Slot::Password1,
            &seed.password1_hash,
            &seed.password1_expiry,
        ),
        (
            Slot::Password2,
            &seed.password2_hash,
            &seed.password2_expiry,
        ),
    ]
    .into_iter()
    .filter_map(|(slot, hash, expiry)| Some((slot, hash.as_ref()?, expiry.as_deref())))
    .map(|(slot, hash, expiry)| {
        check_hash(slot, hash)?;
        let expiry = expiry
            .map(|e| util::time::parse_rfc3339(e).map_err(|err| format!("{slot}Expiry: {err}")))
            .transpose()?;
        Ok((slot, hash, expiry))
    })
    .collect::<Result<Vec<_>, String>>()?;
    if seed.password1_hash.is_none() && seed.password1_expiry.is_some()
        || seed.password2_hash.is_none() && seed.password2_expiry.is_some()
    {
        return Err("an expiry without its passwordNHash: give the hash too".into());
    }
    let created = !snapshot.tokens.contains_key(&seed.name);
    if created {
        let Some(map) = &map_name else {
            return Err(
                "a new token needs scopeMap = NAME or repositories = [{ repository, actions }]"
                    .into(),
            );
        };
        snapshot
            .tokens
            .insert(seed.name.clone(), Token::new(&seed.name, map)?);
    }
    let Some(token) = snapshot.tokens.get_mut(&seed.name) else {
        return Err("vanished while being seeded".into());
    };
    if let Some(map) = map_name {
        token.scope_map = map;
    }
    if let Some(status) = seed.status {
        token.status = status;
    }
    for (slot, hash, expiry) in passwords {
        match token.passwords.iter_mut().find(|p| p.name == slot) {
            // The same password: keep its age (and so the refresh tokens issued for it).
            Some(kept) if kept.hash == *hash => kept.expiry = expiry,
            _ => token.set_password(Password {
                name: slot,
                hash: hash.clone(),
                created: now,
                expiry,
            }),
        }
    }
    Ok(created)
}

/// Refuses anything but an argon2id PHC string, without saying what was there.
fn check_hash(slot: Slot, hash: &str) -> Result<(), String> {
    use argon2::password_hash::PasswordHash;
    let fine = PasswordHash::new(hash).is_ok_and(|h| h.algorithm.as_str() == "argon2id");
    if fine {
        Ok(())
    } else {
        Err(format!(
            "{slot}Hash is not an argon2id PHC string ($argon2id$v=19$...): make one with `connected-registry token hash-password`; the file never holds a password itself"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manage::ensure_defaults;

    fn seeded(text: &str) -> Result<Snapshot, String> {
        let mut snap = Snapshot::default();
        ensure_defaults(&mut snap, 1);
        let seed = Seed::parse(text, false)?;
        apply(&mut snap, &seed, 100).map_err(|e| e.0)?;
        Ok(snap)
    }

    #[test]
    fn creates_then_updates_what_it_names_and_keeps_the_rest() {
        let hash = crate::password::hash("s3cret-password");
        let text = format!(
            r#"
[[scopeMap]]
name = "team-a"
repositories = [{{ repository = "team-a/*", actions = ["content/read", "content/write"] }}]

[[token]]
name = "ci"
scopeMap = "team-a"
password1Hash = "{hash}"
password1Expiry = "2100-01-01T00:00:00Z"

[[token]]
name = "reader"
repositories = [{{ repository = "shared", actions = ["content/read"] }}]
status = "disabled"
"#
        );
        let mut snap = seeded(&text).unwrap();
        let ci = &snap.tokens["ci"];
        assert_eq!(ci.scope_map, "team-a");
        assert_eq!(
            ci.check_password("s3cret-password", 200),
            Some(Slot::Password1)
        );
        assert_eq!(ci.passwords[0].expiry, Some(4_102_444_800));
        assert_eq!(snap.tokens["reader"].status, Status::Disabled);
        assert_eq!(snap.tokens["reader"].scope_map, "reader-scope-map");
        let generation = ci.passwords[0].generation();
        // Something made by hand in between survives; a second start changes nothing else.
        snap.tokens
            .insert("manual".into(), Token::new("manual", "team-a").unwrap());
        let seed = Seed::parse(&text, false).unwrap();
        let done = apply(&mut snap, &seed, 300).unwrap();
        assert_eq!(
            done,
            Seeded {
                scope_maps_created: 0,
                scope_maps_updated: 1,
                tokens_created: 0,
                tokens_updated: 2
            }
        );
        assert!(snap.tokens.contains_key("manual"));
        assert_eq!(snap.tokens["ci"].passwords[0].generation(), generation);
        assert_eq!(snap.tokens["ci"].passwords[0].created, 100);
    }

    #[test]
    fn refusals_name_the_entry_and_never_a_value() {
        let secret = "plaintext-Pa55word";
        for (text, says) in [
            (
                format!("[[token]]\nname = \"t\"\nscopeMap = \"_repositories_pull\"\npassword1Hash = \"{secret}\""),
                "token \"t\": password1Hash is not an argon2id",
            ),
            (
                format!("[[token]]\nname = \"t\"\nscopeMap = \"_repositories_pull\"\npassword1 = \"{secret}\""),
                "unknown field `password1`",
            ),
            (
                format!("[[token]]\nname = \"t\"\nscopeMap = \"_repositories_pull\"\npassword1Hash = 5\npassword2Hash = \"{secret}\"\n"),
                "line 4",
            ),
            (
                "[[token]]\nname = \"t\"\nscopeMap = \"nope\"".into(),
                "scope map \"nope\" does not exist",
            ),
            (
                "[[scopeMap]]\nname = \"_repositories_pull\"\nrepositories = [{ repository = \"*\", actions = [\"content/read\"] }]".into(),
                "built-in",
            ),
            (
                "[[scopeMap]]\nname = \"m\"\nrepositories = [{ repository = \"a\", actions = [\"pull\"] }]".into(),
                "scopeMap \"m\": ",
            ),
            (
                "[[token]]\nname = \"t\"\nstatus = \"enabled\"".into(),
                "needs scopeMap",
            ),
        ] {
            let err = seeded(&text).unwrap_err();
            assert!(err.contains(says), "{err}");
            assert!(!err.contains(secret), "{err}");
        }
        let err = Seed::parse(
            &format!("{{\"token\": [{{\"name\": 1, \"x\": \"{secret}\"}}]}}"),
            true,
        )
        .unwrap_err();
        assert!(err.contains("line 1") && !err.contains(secret), "{err}");
    }
}
