//! Scope maps: which repositories a token reaches and what it may do there. A rule names
//! repositories by an exact name (`team-a/app`), a prefix (`team-a/*`: everything under
//! `team-a/`) or `*` (every repository), as `az acr scope-map` does.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::action::Action;
use crate::names::check_name;

/// The repositories a rule covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RepoPattern {
    /// Every repository.
    All,
    /// Repositories whose name starts with this (which ends with `/`).
    Prefix(String),
    /// One repository.
    Exact(String),
}

impl RepoPattern {
    pub fn matches(&self, repo: &str) -> bool {
        match self {
            RepoPattern::All => true,
            RepoPattern::Prefix(prefix) => repo.starts_with(prefix.as_str()),
            RepoPattern::Exact(name) => name == repo,
        }
    }
}

impl FromStr for RepoPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<RepoPattern, String> {
        let how =
            "use a repository name (team-a/app), a prefix (team-a/*) or * for every repository";
        if s == "*" {
            return Ok(RepoPattern::All);
        }
        let (name, prefix) = match s.strip_suffix("/*") {
            Some(name) => (name, true),
            None => (s, false),
        };
        name.parse::<oci::RepoName>()
            .map_err(|e| format!("repository pattern {s:?}: {e}; {how}"))?;
        Ok(if prefix {
            RepoPattern::Prefix(format!("{name}/"))
        } else {
            RepoPattern::Exact(name.to_owned())
        })
    }
}

impl fmt::Display for RepoPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoPattern::All => f.write_str("*"),
            RepoPattern::Prefix(p) => write!(f, "{p}*"),
            RepoPattern::Exact(n) => f.write_str(n),
        }
    }
}

impl TryFrom<String> for RepoPattern {
    type Error = String;
    fn try_from(s: String) -> Result<RepoPattern, String> {
        s.parse()
    }
}

impl From<RepoPattern> for String {
    fn from(p: RepoPattern) -> String {
        p.to_string()
    }
}

/// Actions on the repositories a pattern covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub repository: RepoPattern,
    pub actions: Vec<Action>,
}

/// What a scope map's rules are checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// A repository, by name.
    Repository(&'a str),
    /// The registry itself: the gateway actions (a child's feed, status, settings), which a
    /// rule grants whatever repositories it names.
    Registry,
    /// One child registry's own routes (its settings): the gateway actions, held by that
    /// child's sync token only (`Authority` checks whose token it is).
    Gateway(&'a str),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopeMap {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub rules: Vec<Rule>,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// Came down from this registry's parent with a token made there for this registry
    /// (`--for-child`): replaced at every sync.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_parent: bool,
}

impl ScopeMap {
    /// A scope map, its name checked; rules for the same pattern are merged.
    pub fn new(name: &str, description: &str, rules: Vec<Rule>) -> Result<ScopeMap, String> {
        check_name("scope map", name)?;
        let mut map = ScopeMap {
            name: name.to_owned(),
            description: description.to_owned(),
            rules: Vec::new(),
            created: crate::now(),
            from_parent: false,
        };
        map.add(rules);
        Ok(map)
    }

    /// Adds actions to the rules, merging rules for the same pattern.
    pub fn add(&mut self, rules: Vec<Rule>) {
        for rule in rules {
            match self
                .rules
                .iter_mut()
                .find(|r| r.repository == rule.repository)
            {
                Some(existing) => existing.actions.extend(rule.actions),
                None => self.rules.push(rule),
            }
        }
        for rule in &mut self.rules {
            rule.actions.sort();
            rule.actions.dedup();
        }
    }

    /// Takes actions away; a rule left with none goes.
    pub fn remove(&mut self, rules: &[Rule]) {
        for rule in rules {
            if let Some(existing) = self
                .rules
                .iter_mut()
                .find(|r| r.repository == rule.repository)
            {
                existing.actions.retain(|a| !rule.actions.contains(a));
            }
        }
        self.rules.retain(|r| !r.actions.is_empty());
    }

    pub fn allows(&self, target: Target<'_>, action: Action) -> bool {
        self.rules.iter().any(|rule| {
            rule.actions.contains(&action)
                && match target {
                    Target::Repository(repo) => rule.repository.matches(repo),
                    Target::Registry | Target::Gateway(_) => action.is_gateway(),
                }
        })
    }
}

/// Parses `REPO ACTION [ACTION...]`, the words of one `--repository` flag.
pub fn parse_rule(words: &[String]) -> Result<Rule, String> {
    let (repo, actions) = words.split_first().ok_or("--repository needs a repository and at least one action, for example: --repository team-a/* content/read")?;
    if actions.is_empty() {
        return Err(format!(
            "--repository {repo} names no action: add one or more of content/read, content/write, content/delete, metadata/read, metadata/write"
        ));
    }
    Ok(Rule {
        repository: repo.parse()?,
        actions: actions
            .iter()
            .map(|a| a.parse())
            .collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str, actions: &[Action]) -> Rule {
        Rule {
            repository: pattern.parse().unwrap(),
            actions: actions.to_vec(),
        }
    }

    #[test]
    fn patterns_match_what_they_name() {
        let prefix: RepoPattern = "team-a/*".parse().unwrap();
        assert!(prefix.matches("team-a/app"));
        assert!(prefix.matches("team-a/x/y"));
        assert!(!prefix.matches("team-a"));
        assert!(!prefix.matches("team-ab/app"));
        let exact: RepoPattern = "team-a/app".parse().unwrap();
        assert!(exact.matches("team-a/app") && !exact.matches("team-a/app2"));
        assert!("*".parse::<RepoPattern>().unwrap().matches("anything"));
        for bad in ["", "Team/*", "a//b", "/*", "a/*/b", "a*"] {
            assert!(bad.parse::<RepoPattern>().is_err(), "{bad}");
        }
        assert_eq!(prefix.to_string(), "team-a/*");
    }

    #[test]
    fn a_scope_map_allows_only_its_rules() {
        let map = ScopeMap::new(
            "team-a",
            "",
            vec![
                rule("team-a/*", &[Action::ContentRead]),
                rule("team-a/*", &[Action::ContentWrite]),
                rule("shared", &[Action::MetadataRead, Action::MessageRead]),
            ],
        )
        .unwrap();
        assert_eq!(map.rules.len(), 2);
        assert!(map.allows(Target::Repository("team-a/app"), Action::ContentWrite));
        assert!(!map.allows(Target::Repository("team-a/app"), Action::ContentDelete));
        assert!(!map.allows(Target::Repository("team-b/app"), Action::ContentRead));
        assert!(map.allows(Target::Registry, Action::MessageRead));
        assert!(!map.allows(Target::Registry, Action::ContentRead));
        let mut map = map;
        map.remove(&[rule("shared", &[Action::MetadataRead, Action::MessageRead])]);
        assert_eq!(map.rules.len(), 1);
    }

    #[test]
    fn rules_parse_from_flag_words() {
        let words = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let r = parse_rule(&words("team-a/* content/read content/write")).unwrap();
        assert_eq!(r.actions, vec![Action::ContentRead, Action::ContentWrite]);
        assert!(parse_rule(&words("team-a/*"))
            .unwrap_err()
            .contains("no action"));
        assert!(parse_rule(&words("team-a/* pull"))
            .unwrap_err()
            .contains("content/read"));
    }
}
