//! Pulling down through the parent's change feed (`/acr/v1/_changes`, offered by a connected
//! registry of ours): a pass reads the changes after the last sequence this child reflected,
//! and compares only the repositories and tags they name, through the normal copy engine
//! (HEAD compare, bottom-up copy, verification), plus the referrers (signatures, SBOMs) pushed
//! by digest for content held here. With nothing new a pass costs one request.
//!
//! The position is kept in the state file per parent and per repository scope. The full
//! comparison (every repository, tag list and tag) runs instead when the parent has no feed
//! (any other registry; asked again after `REPROBE_NO_FEED`), when the parent's feed is of a
//! newer version than this build reads (one log line, then remembered like "no feed": asked
//! again after `REPROBE_NO_FEED`, so an upgraded child finds it again), on the first pass, when the
//! repository rules changed, when the feed failed, and once when the parent says the position
//! cannot continue (`reset`: its log was pruned past `messageTtl`, or it was set up again). The
//! full comparison starts from the parent's head read *before* it, so a change made while it
//! runs is read from the feed next time (read twice at worst, never missed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;

use oci::feed::FEED_VERSION;
use oci::{Change, ChangeKind};

use crate::client::FeedAnswer;
use crate::engine::Engine;
use crate::pass::Pass;
use crate::settings::RepoRule;
use crate::state::{ParentFeed, Pull};
use oci::Platform;

/// Changes asked for per feed request (the parent caps pages at its own limit, 1000 for ours).
pub const FEED_PAGE: usize = 1000;

/// More pending changes than this and a full comparison is cheaper than reading them all.
pub const MAX_FEED_CHANGES: usize = 100_000;

/// A parent that answered it has no feed is asked again after this long (it may have been
/// replaced by a connected registry of ours). Until then, passes compare in full without asking.
pub const REPROBE_NO_FEED: Duration = Duration::from_secs(24 * 3600);

/// Where a pass starts.
enum Start {
    /// The parent has no feed (known recently): compare in full, do not ask.
    NoFeed,
    /// Continue the feed after this sequence.
    From(u64),
    /// Unknown: ask for the feed's head, then compare in full.
    Probe,
}

/// What reading the feed gave.
enum Read {
    /// The changes after the position, and the last sequence among them.
    Changes(Vec<Change>, u64),
    /// The position cannot continue; the parent's head to continue from after a full comparison.
    Reset(u64),
    /// The parent has no feed.
    NoFeed,
    /// The parent's feed is of a newer version than this build reads.
    Newer(u32),
    /// The feed failed (unreachable, bad answer): compare in full this time.
    Failed(String),
}

/// A fingerprint of the repository rules and the platform filter: a feed position only covers
/// what was in scope (a widened filter needs the full comparison to fill indexes in).
pub fn scope_fingerprint(rules: &[RepoRule], platforms: &[Platform]) -> String {
    let mut text = String::new();
    for r in rules {
        text.push_str(&format!(
            "{}\u{0}{}\u{0}{}\u{0}{:?}\u{1}",
            r.pattern,
            r.include.as_ref().map(|x| x.as_str()).unwrap_or(""),
            r.exclude.as_ref().map(|x| x.as_str()).unwrap_or(""),
            r.newest
        ));
    }
    // Appended only when set, so positions stored before the filter existed stay valid.
    for p in platforms {
        text.push_str(&format!("platform\u{0}{p}\u{1}"));
    }
    oci::Digest::sha256_of(text.as_bytes()).hex()[..16].to_owned()
}

/// The downward half of a pass: through the feed where possible, else in full.
pub(crate) async fn pull_down(engine: &Engine, pass: &Pass) {
    let parent = engine.settings.parent.clone();
    let scope = scope_fingerprint(&engine.settings.repos, &engine.settings.platforms);
    let known = engine
        .state
        .read(|s| s.parent_feed.clone())
        .filter(|f| f.parent == parent);
    let mut start = match &known {
        // Turned off by the settings: compared as a parent that is not ours would be.
        _ if !engine.settings.feed => Start::NoFeed,
        Some(f) if f.seq.is_none() => {
            let age = (chrono::Utc::now() - f.checked)
                .to_std()
                .unwrap_or_default();
            if age < REPROBE_NO_FEED {
                Start::NoFeed
            } else {
                Start::Probe
            }
        }
        Some(f) if f.scope == scope => Start::From(f.seq.unwrap_or(0)),
        _ => Start::Probe,
    };
    // What changed here behind sync's back is compared again; some drift needs everything.
    let drift = match crate::reconcile::local_drift(engine).await {
        Ok(d) => d,
        Err(e) => {
            pass.record("local change log", e);
            crate::reconcile::Drift {
                everything: Some("the local change log could not be read".into()),
                ..Default::default()
            }
        }
    };
    let now = chrono::Utc::now();
    let reconcile_due = engine.state.read(|s| s.compared_all).is_none_or(|t| {
        (now - t).to_std().unwrap_or_default() >= engine.settings.reconcile_interval
    });
    if let Start::From(_) = start {
        if let Some(why) = &drift.everything {
            tracing::info!("{why}: comparing everything with the parent");
            start = Start::Probe;
        } else if reconcile_due {
            tracing::info!(
                interval = %crate::settings::format_iso_duration(engine.settings.reconcile_interval),
                "reconcile interval reached: comparing everything with the parent"
            );
            start = Start::Probe;
        }
    }
    // A parent without a feed is not ours: it has no `/acr` tag listing either, and asking
    // would cost a token fetch at a parent that demands tokens.
    let not_ours = || pass.no_acr.store(true, Ordering::Relaxed);
    let head = match start {
        Start::NoFeed => {
            not_ours();
            None
        }
        Start::From(after) => match read(engine, after).await {
            Read::Changes(changes, last) => {
                set_pull(pass, Pull::Feed);
                let position = Position {
                    after,
                    last,
                    parent: &parent,
                    scope: &scope,
                };
                apply(engine, pass, changes, drift, position).await;
                return;
            }
            Read::Reset(head) => {
                tracing::info!(
                    after,
                    head,
                    "the parent's change feed cannot continue from here (pruned past messageTtl, \
                     or the parent was set up again): comparing everything once"
                );
                set_pull(pass, Pull::Reset);
                Some(head)
            }
            Read::NoFeed => {
                not_ours();
                remember(engine, pass, &parent, &scope, None);
                None
            }
            Read::Newer(version) => {
                newer_feed(engine, pass, &parent, &scope, version);
                None
            }
            Read::Failed(e) => {
                tracing::warn!("{e}; comparing everything instead");
                None
            }
        },
        Start::Probe => match engine.client.feed_head().await {
            Ok(FeedAnswer::Page(page)) => Some(page.head),
            Ok(FeedAnswer::Newer { version }) => {
                newer_feed(engine, pass, &parent, &scope, version);
                None
            }
            Ok(FeedAnswer::Absent) => {
                tracing::info!("the parent offers no change feed: comparing tag by tag");
                not_ours();
                remember(engine, pass, &parent, &scope, None);
                None
            }
            Err(e) => {
                tracing::warn!("change feed: {e}; comparing everything instead");
                None
            }
        },
    };
    let errors = pass.error_count();
    let recheck = engine.settings.referrers_recheck;
    let due = engine
        .state
        .read(|s| s.referrers_checked)
        .is_none_or(|t| (now - t).to_std().unwrap_or_default() >= recheck);
    pass.recheck_referrers.store(due, Ordering::Relaxed);
    engine.compare_all(pass).await;
    let clean = !pass.is_paused() && pass.error_count() == errors;
    if clean {
        let warnings = pass.warnings.lock().map(|w| w.clone()).unwrap_or_default();
        let r = engine.state.update(|s| {
            s.compared_all = Some(now);
            s.scope_warnings = warnings;
            if due {
                s.referrers_checked = Some(now);
            }
        });
        if let Err(e) = r {
            pass.record("sync state", e.into());
        }
        if let Err(e) = crate::reconcile::reconciled(engine, drift.head) {
            pass.record("sync state", e);
        }
    }
    if let Some(head) = head {
        if clean {
            remember(engine, pass, &parent, &scope, Some(head));
        }
    }
}

fn set_pull(pass: &Pass, pull: Pull) {
    if let Ok(mut p) = pass.pull.lock() {
        *p = pull;
    }
}

/// Persists the feed position (`Some(seq)`) or that the parent has none (`None`).
fn remember(engine: &Engine, pass: &Pass, parent: &str, scope: &str, seq: Option<u64>) {
    let feed = ParentFeed {
        parent: parent.to_owned(),
        scope: scope.to_owned(),
        seq,
        checked: chrono::Utc::now(),
    };
    if let Err(e) = engine.state.update(move |s| s.parent_feed = Some(feed)) {
        pass.record("change feed position", e.into());
    }
}

/// The parent's feed is newer than this build reads: says so once and remembers it like "no
/// feed", so passes compare tag by tag without asking until `REPROBE_NO_FEED` has passed.
fn newer_feed(engine: &Engine, pass: &Pass, parent: &str, scope: &str, version: u32) {
    tracing::warn!(
        version,
        reads = FEED_VERSION,
        "the parent's change feed is version {version}, newer than this child reads (up to \
         {FEED_VERSION}): comparing tag by tag instead; upgrade this child to use the feed"
    );
    remember(engine, pass, parent, scope, None);
}

/// Reads every change after `after`, page by page.
async fn read(engine: &Engine, after: u64) -> Read {
    let mut changes = Vec::new();
    let mut last = after;
    loop {
        let page = match engine.client.changes(last, FEED_PAGE).await {
            Ok(FeedAnswer::Page(p)) => p,
            Ok(FeedAnswer::Newer { version }) => return Read::Newer(version),
            Ok(FeedAnswer::Absent) if last == after => return Read::NoFeed,
            Ok(FeedAnswer::Absent) => {
                return Read::Failed("change feed: the parent stopped answering it".into())
            }
            Err(e) => return Read::Failed(format!("change feed: {e}")),
        };
        if page.reset {
            return Read::Reset(page.head);
        }
        let Some(newest) = page.changes.last().map(|c| c.seq) else {
            break;
        };
        last = newest;
        changes.extend(page.changes);
        if changes.len() > MAX_FEED_CHANGES {
            // Reading further costs more than comparing: start over from the head.
            return Read::Reset(page.head.max(last));
        }
        if last >= page.head {
            break;
        }
    }
    Read::Changes(changes, last)
}

/// What the changes name in one repository in scope.
#[derive(Default)]
struct Touched {
    tags: BTreeSet<String>,
    /// Those of `tags` whose newest change here is a deletion: gone at the parent for sure.
    deleted: BTreeSet<String>,
    /// Compare the whole repository (a `newest N` rule, where one new tag can push another out,
    /// or a change this version does not know).
    whole: bool,
}

/// Where a feed pass reads: after `after` up to `last`, for `parent` and the scope fingerprint.
struct Position<'a> {
    after: u64,
    last: u64,
    parent: &'a str,
    scope: &'a str,
}

/// An `attributes_set` change read from the feed: repository, tag, digest, the new set.
type Lock = (
    String,
    Option<String>,
    Option<oci::Digest>,
    oci::ChangeableAttributes,
);

/// Sets the attributes the parent logged, in the feed's order (the last set of an item wins),
/// after the content they name came down. An item not here (left out by the platform filter,
/// or deleted since) is skipped: its attributes come with it only if it is changed again.
async fn apply_locks(engine: &Engine, pass: &Pass, locks: Vec<Lock>) {
    if locks.is_empty() {
        return;
    }
    let count = locks.len();
    let applied = crate::engine::blocking(&engine.store, move |s| {
        let mut applied = 0usize;
        for (repo, tag, digest, attributes) in locks {
            if s.set_attributes(&repo, tag.as_deref(), digest.as_ref(), attributes)? {
                applied += 1;
            }
        }
        Ok(applied)
    })
    .await;
    match applied {
        Ok(applied) => tracing::info!(
            changes = count,
            applied,
            "changeableAttributes set at the parent applied here"
        ),
        Err(e) => pass.record("changeableAttributes from the parent", e),
    }
}

/// Compares what `changes` name and what drifted here, then moves the position to `last` when
/// everything succeeded.
async fn apply(
    engine: &Engine,
    pass: &Pass,
    changes: Vec<Change>,
    drift: crate::reconcile::Drift,
    at: Position<'_>,
) {
    let Position {
        after,
        last,
        parent,
        scope,
    } = at;
    let mut touched: BTreeMap<String, (RepoRule, Touched)> = BTreeMap::new();
    let mut stored: Vec<(String, oci::Digest)> = Vec::new();
    let mut locks: Vec<Lock> = Vec::new();
    for change in changes {
        let Some(rule) = engine.rule_for(&change.repo) else {
            continue;
        };
        if let ChangeKind::AttributesSet {
            tag,
            digest,
            attributes,
        } = change.kind
        {
            locks.push((change.repo, tag, digest, attributes));
            continue;
        }
        if let ChangeKind::ManifestPut { digest, .. } = &change.kind {
            stored.push((change.repo.clone(), digest.clone()));
        }
        let entry = touched
            .entry(change.repo)
            .or_insert_with(|| (rule.clone(), Touched::default()));
        match change.kind {
            ChangeKind::TagSet { tag, .. } if rule.newest.is_none() => {
                entry.1.deleted.remove(&tag);
                entry.1.tags.insert(tag);
            }
            ChangeKind::TagDeleted { tag } if rule.newest.is_none() => {
                entry.1.deleted.insert(tag.clone());
                entry.1.tags.insert(tag);
            }
            // A `newest N` rule, where one new tag can push another out, or a kind this build
            // does not know: the whole repository is compared.
            ChangeKind::TagSet { .. } | ChangeKind::TagDeleted { .. } | ChangeKind::Unknown => {
                entry.1.whole = true
            }
            // Tags pointing at a deleted manifest come as their own changes; a stored manifest
            // is looked at below, after the tags (it may be a referrer of what they bring).
            ChangeKind::ManifestPut { .. } | ChangeKind::ManifestDeleted { .. } => {}
            ChangeKind::AttributesSet { .. } => {}
        }
    }
    let drifted = drift.tags.values().map(BTreeSet::len).sum::<usize>() + drift.repos.len();
    if drifted > 0 {
        tracing::info!(
            tags = drifted,
            "tags sync manages were changed here by a client or while stopped: comparing them with the parent"
        );
    }
    let whole_repos = drift.repos.into_iter().map(|r| (r, None));
    let drift_tags = drift
        .tags
        .into_iter()
        .flat_map(|(r, tags)| tags.into_iter().map(move |t| (r.clone(), Some(t))));
    for (repo, tag) in whole_repos.chain(drift_tags) {
        let Some(rule) = engine.rule_for(&repo) else {
            continue;
        };
        let entry = touched
            .entry(repo)
            .or_insert_with(|| (rule.clone(), Touched::default()));
        match tag {
            Some(tag) if rule.newest.is_none() => {
                entry.1.tags.insert(tag);
            }
            _ => entry.1.whole = true,
        }
    }
    touched.retain(|_, (_, t)| t.whole || !t.tags.is_empty());
    if !touched.is_empty() {
        tracing::info!(
            repos = touched.len(),
            after,
            last,
            "the parent's change feed names changes in scope"
        );
    }
    let errors = pass.error_count();
    let conc = engine.settings.limits.concurrency;
    futures_util::stream::iter(touched)
        .map(|(repo, (rule, t))| async move {
            if t.whole {
                engine.sync_repo(pass, repo, rule).await
            } else {
                engine
                    .sync_named_tags(pass, repo, rule, t.tags, t.deleted)
                    .await
            }
        })
        .buffer_unordered(conc)
        .collect::<Vec<()>>()
        .await;
    // Manifests stored by digest: referrers (signatures, SBOMs) of content held here come down.
    stored.sort();
    stored.dedup();
    futures_util::stream::iter(stored)
        .map(|(repo, digest)| async move {
            if let Err(e) = engine.sync_referrer(pass, &repo, &digest).await {
                pass.record(&format!("{repo}@{digest}: referrer"), e);
            }
        })
        .buffer_unordered(conc)
        .collect::<Vec<()>>()
        .await;
    apply_locks(engine, pass, locks).await;
    // Only a pass that reflected everything moves on; otherwise the same changes are read
    // again next time (comparing a tag twice is harmless, missing one is not).
    if pass.is_paused() || pass.error_count() != errors {
        return;
    }
    if last > after {
        remember(engine, pass, parent, scope, Some(last));
    }
    if let Err(e) = crate::reconcile::reconciled(engine, drift.head) {
        pass.record("sync state", e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{image_manifest, Rig, IMAGE};
    use crate::Outcome;
    use oci::FeedPage;

    fn rule(pattern: &str, newest: Option<usize>) -> RepoRule {
        RepoRule {
            pattern: pattern.into(),
            include: None,
            exclude: None,
            newest,
        }
    }

    #[test]
    fn fingerprint_changes_with_the_rules() {
        let a = scope_fingerprint(&[rule("apps/*", None)], &[]);
        assert_eq!(a, scope_fingerprint(&[rule("apps/*", None)], &[]));
        assert_ne!(a, scope_fingerprint(&[rule("apps/*", Some(3))], &[]));
        assert_ne!(a, scope_fingerprint(&[rule("apps/x", None)], &[]));
        assert_ne!(
            scope_fingerprint(&[rule("a", None), rule("b", None)], &[]),
            scope_fingerprint(&[rule("ab", None)], &[])
        );
        let arm = ["linux/arm64".parse().unwrap()];
        assert_ne!(a, scope_fingerprint(&[rule("apps/*", None)], &arm));
    }

    /// A parent one feed version ahead: the child does not fail, compares tag by tag (the tag
    /// arrives), and remembers the parent like one without a feed, so the next pass does not
    /// ask again.
    #[tokio::test]
    async fn a_parent_with_a_newer_feed_version_is_synced_tag_by_tag() {
        let rig = Rig::new("ReadOnly");
        rig.parent.put_blob(b"{}");
        let m = image_manifest(b"{}", &[]);
        let digest = rig.parent.put_manifest("app", Some("v1"), IMAGE, &m);
        rig.parent.answer_feed_with(FeedAnswer::Newer {
            version: FEED_VERSION + 1,
        });

        let summary = rig.engine.run_pass(None).await;
        assert_eq!(summary.outcome, Outcome::Completed, "{:?}", summary.errors);
        assert_eq!(rig.store.tag("app", "v1"), Some(digest));
        assert_eq!(rig.parent.feed_requests(), 1);
        let feed = rig.engine.state.read(|s| s.parent_feed.clone()).unwrap();
        assert_eq!(feed.seq, None, "remembered like a parent without a feed");

        rig.engine.run_pass(None).await;
        assert_eq!(rig.parent.feed_requests(), 1, "not asked again this soon");
    }

    /// The same parent with a feed this child reads: the probe's head becomes the position.
    #[tokio::test]
    async fn a_parent_with_a_feed_this_child_reads_gives_a_position() {
        let rig = Rig::new("ReadOnly");
        rig.parent.answer_feed_with(FeedAnswer::Page(FeedPage {
            version: FEED_VERSION,
            head: 7,
            oldest: 1,
            reset: false,
            changes: Vec::new(),
        }));
        let summary = rig.engine.run_pass(None).await;
        assert_eq!(summary.outcome, Outcome::Completed, "{:?}", summary.errors);
        let feed = rig.engine.state.read(|s| s.parent_feed.clone()).unwrap();
        assert_eq!(feed.seq, Some(7));
    }

    /// A tag the feed names that the parent still lists but no longer serves was evicted
    /// there (its quota): no deletion, so the copy here stays.
    #[tokio::test]
    async fn a_tag_the_parent_lists_but_evicted_stays_here() {
        let rig = Rig::new("ReadOnly");
        rig.parent.put_blob(b"{}");
        let m = image_manifest(b"{}", &[]);
        let digest = rig.parent.put_manifest("app", Some("v1"), IMAGE, &m);
        let page = |head: u64, changes: Vec<oci::Change>| {
            FeedAnswer::Page(FeedPage {
                version: FEED_VERSION,
                head,
                oldest: 1,
                reset: false,
                changes,
            })
        };
        rig.parent.answer_feed_with(page(1, Vec::new()));
        let summary = rig.engine.run_pass(None).await;
        assert_eq!(summary.outcome, Outcome::Completed, "{:?}", summary.errors);
        assert_eq!(rig.store.tag("app", "v1"), Some(digest.clone()));

        rig.parent.evict("app", "v1");
        let named = oci::Change {
            seq: 2,
            time: 0,
            repo: "app".into(),
            origin: oci::Origin::Client,
            kind: oci::ChangeKind::TagSet {
                tag: "v1".into(),
                digest: digest.clone(),
            },
        };
        rig.parent.answer_feed_with(page(2, vec![named]));
        let summary = rig.engine.run_pass(None).await;
        assert_eq!(summary.outcome, Outcome::Completed, "{:?}", summary.errors);
        assert_eq!(summary.tags_deleted, 0);
        assert_eq!(rig.store.tag("app", "v1"), Some(digest));
    }
}
