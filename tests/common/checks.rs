//! Checks shared by the crash tests (`registry_crash.rs`, `torture.rs`): what must hold of a
//! store after a `kill -9` and a restart. Written once so both prove the same thing.

use serde_json::Value;

use super::api::{sha256, Api};

/// Checks that `repo:tag` serves exactly `body`, and that every blob it references is whole.
#[track_caller]
pub fn assert_push_intact(api: &Api, repo: &str, tag: &str, body: &[u8]) {
    let r = api.get_manifest(repo, tag);
    assert_eq!(
        r.status,
        200,
        "acknowledged push {repo}:{tag} lost after the crash: {}",
        r.text()
    );
    assert_eq!(
        r.body, body,
        "{repo}:{tag} serves other bytes after the crash"
    );
    assert_eq!(r.header("docker-content-digest"), Some(sha256(body)));
    assert_references_whole(api, repo, &r.json());
}

/// The path and query of an upload `Location` (absolute or not), valid after a restart on
/// another port.
pub fn path_of(location: &str) -> String {
    match location.strip_prefix("http://") {
        Some(rest) => rest
            .find('/')
            .map(|i| rest[i..].to_string())
            .unwrap_or_default(),
        None => location.to_string(),
    }
}

/// Every blob a manifest references can be fetched and hashes to its digest (an index's children
/// too, recursively); panics naming the first one that cannot.
#[track_caller]
pub fn assert_references_whole(api: &Api, repo: &str, manifest: &Value) {
    if let Some(problem) = broken_references(api, repo, manifest).first() {
        panic!("{problem}");
    }
}

/// What [`assert_references_whole`] checks, as a list of what is wrong (empty when the content
/// is whole), for a caller that counts failures instead of stopping at the first.
pub fn broken_references(api: &Api, repo: &str, manifest: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut digests: Vec<&str> = vec![];
    if let Some(c) = manifest["config"]["digest"].as_str() {
        digests.push(c);
    }
    for l in manifest["layers"].as_array().into_iter().flatten() {
        digests.extend(l["digest"].as_str());
    }
    for child in manifest["manifests"].as_array().into_iter().flatten() {
        let Some(d) = child["digest"].as_str() else {
            continue;
        };
        let r = api.get_manifest(repo, d);
        if r.status != 200 {
            problems.push(format!(
                "{repo}: index refers to child {d}, missing after the crash ({})",
                r.status
            ));
        } else if sha256(&r.body) != d {
            problems.push(format!("{repo}: child manifest {d} is torn"));
        } else {
            problems.extend(broken_references(api, repo, &r.json()));
        }
    }
    for d in digests {
        let b = api.get(&format!("/v2/{repo}/blobs/{d}"));
        if b.status != 200 {
            problems.push(format!(
                "{repo}: referenced blob {d} missing after the crash ({})",
                b.status
            ));
        } else if sha256(&b.body) != d {
            problems.push(format!("{repo}: blob {d} is torn after the crash"));
        }
    }
    problems
}
