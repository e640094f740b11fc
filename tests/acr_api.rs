//! The `/acr/v1` data-plane API against the real binary: every route and method, the JSON
//! shapes ACR uses, paging in name and time order with `Link`, `changeableAttributes` set with
//! PATCH and enforced through `/v2`, a read-only child refusing `/acr` writes, bad input, a
//! lock set at a parent arriving at its child through the change feed and, set before the
//! child's first sync, through the full comparison; referrers listings and read locks vs blobs.

mod common;

use std::time::Duration;

use common::api::{Api, Resp, OCI_MANIFEST};
use common::{start_registry, wait_until};
use reqwest::Method;
use serde_json::{json, Value};

fn patch(api: &Api, path: &str, body: &str) -> Resp {
    api.send(
        api.req(Method::PATCH, path)
            .header("content-type", "application/json")
            .body(body.to_owned()),
    )
}

/// Follows `Link` from `first`, collecting `field`'s items' `key`; bounded in pages.
fn all_pages(api: &Api, first: &str, field: &str, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut next = Some(first.to_owned());
    for _ in 0..50 {
        let Some(path) = next.take() else { break };
        let r = api.get(&path).expect(200);
        for item in r.json()[field].as_array().expect("a list") {
            out.push(item[key].as_str().unwrap_or_default().to_owned());
        }
        next = r.header("link").map(|l| {
            let start = l.find('<').unwrap() + 1;
            let end = l.find('>').unwrap();
            l[start..end].to_owned()
        });
    }
    assert!(next.is_none(), "more than 50 pages");
    out
}

fn rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 20 && s.ends_with('Z') && s.as_bytes()[10] == b'T')
}

const ALL_ENABLED: &str =
    r#"{"deleteEnabled":true,"writeEnabled":true,"readEnabled":true,"listEnabled":true}"#;

#[test]
fn acr_routes_answer_acr_shapes_and_page_in_every_order() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = start_registry(&tmp.path().join("data"), &[]);
    let api = Api::new(&reg.url());
    let mut digests = Vec::new();
    for tag in ["1", "2", "3"] {
        digests.push(api.push_image("apps/a", tag, 1, 64).1.digest);
    }
    api.push_image("apps/b", "1", 1, 64);
    let enabled: Value = serde_json::from_str(ALL_ENABLED).unwrap();

    // Catalog, paged.
    let cat = api.get("/acr/v1/_catalog").expect(200).json();
    assert_eq!(cat, json!({"repositories": ["apps/a", "apps/b"]}));
    let first = api.get("/acr/v1/_catalog?n=1").expect(200);
    assert_eq!(
        first.header("link").as_deref(),
        Some("</acr/v1/_catalog?last=apps/a&n=1>; rel=\"next\"")
    );
    let names = all_pages(&api, "/acr/v1/_catalog?n=1", "repositories", "");
    assert_eq!(names.len(), 2);

    // Repository properties.
    let repo = api.get("/acr/v1/apps/a").expect(200).json();
    assert_eq!(repo["imageName"], "apps/a");
    assert!(repo["registry"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(
        rfc3339(&repo["createdTime"]) && rfc3339(&repo["lastUpdateTime"]),
        "{repo}"
    );
    assert_eq!(repo["manifestCount"], 3);
    assert_eq!(repo["tagCount"], 3);
    assert_eq!(repo["changeableAttributes"], enabled);

    // Tags: shape, name paging with Link, both time orders, the digest filter, one tag.
    let r = api.get("/acr/v1/apps/a/_tags?n=2").expect(200);
    assert_eq!(
        r.header("link").as_deref(),
        Some("</acr/v1/apps/a/_tags?last=2&n=2>; rel=\"next\"")
    );
    let list = r.json();
    assert_eq!(list["imageName"], "apps/a");
    assert!(list["registry"].is_string());
    let t1 = &list["tags"][0];
    assert_eq!(t1["name"], "1");
    assert_eq!(t1["digest"], digests[0].as_str());
    assert_eq!(t1["signed"], false);
    assert!(rfc3339(&t1["createdTime"]) && rfc3339(&t1["lastUpdateTime"]));
    assert_eq!(t1["changeableAttributes"], enabled);
    assert_eq!(
        all_pages(&api, "/acr/v1/apps/a/_tags?n=2", "tags", "name"),
        ["1", "2", "3"]
    );
    let asc = all_pages(
        &api,
        "/acr/v1/apps/a/_tags?n=1&orderby=timeasc",
        "tags",
        "name",
    );
    let mut desc = all_pages(
        &api,
        "/acr/v1/apps/a/_tags?n=1&orderby=timedesc",
        "tags",
        "name",
    );
    assert_eq!(asc.len(), 3);
    desc.reverse();
    assert_eq!(asc, desc, "timedesc is timeasc reversed");
    let link = api
        .get("/acr/v1/apps/a/_tags?n=1&orderby=timedesc")
        .header("link")
        .unwrap();
    assert!(link.contains("orderby=timedesc"), "{link}");
    let filtered = api
        .get(&format!("/acr/v1/apps/a/_tags?digest={}", digests[1]))
        .expect(200)
        .json();
    assert_eq!(filtered["tags"].as_array().unwrap().len(), 1);
    assert_eq!(filtered["tags"][0]["name"], "2");
    let one = api.get("/acr/v1/apps/a/_tags/2").expect(200).json();
    assert_eq!(one["imageName"], "apps/a");
    assert_eq!(one["tag"]["digest"], digests[1].as_str());

    // Manifests: shape with platform, paging both orders, one manifest.
    let list = api.get("/acr/v1/apps/a/_manifests").expect(200).json();
    let manifests = list["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 3);
    let m = manifests
        .iter()
        .find(|m| m["digest"] == digests[0].as_str())
        .unwrap();
    assert_eq!(m["mediaType"], OCI_MANIFEST);
    assert_eq!(m["architecture"], "amd64");
    assert_eq!(m["os"], "linux");
    assert_eq!(m["tags"], json!(["1"]));
    assert!(m["imageSize"].as_u64().unwrap() > 0);
    assert!(rfc3339(&m["createdTime"]) && rfc3339(&m["lastUpdateTime"]));
    assert_eq!(m["changeableAttributes"], enabled);
    let by_name = all_pages(&api, "/acr/v1/apps/a/_manifests?n=1", "manifests", "digest");
    let mut sorted = digests.clone();
    sorted.sort();
    assert_eq!(by_name, sorted);
    let asc = all_pages(
        &api,
        "/acr/v1/apps/a/_manifests?n=2&orderby=timeasc",
        "manifests",
        "digest",
    );
    let mut desc = all_pages(
        &api,
        "/acr/v1/apps/a/_manifests?n=2&orderby=timedesc",
        "manifests",
        "digest",
    );
    desc.reverse();
    assert_eq!(asc, desc);
    let one = api
        .get(&format!("/acr/v1/apps/a/_manifests/{}", digests[2]))
        .expect(200)
        .json();
    assert_eq!(one["manifest"]["tags"], json!(["3"]));

    // Deletes through /acr.
    api.delete("/acr/v1/apps/a/_tags/3").expect(202);
    assert_eq!(api.tags("apps/a"), ["1", "2"]);
    api.delete(&format!("/acr/v1/apps/a/_manifests/{}", digests[1]))
        .expect(202);
    assert_eq!(api.tags("apps/a"), ["1"]);
    let gone = api.delete("/acr/v1/apps/b").expect(202).json();
    assert_eq!(gone["tagsDeleted"], json!(["1"]));
    assert_eq!(gone["manifestsDeleted"].as_array().unwrap().len(), 1);
    api.get("/acr/v1/apps/b").expect_error(404, "NAME_UNKNOWN");
    api.get("/v2/apps/b/tags/list")
        .expect_error(404, "NAME_UNKNOWN");
    assert_eq!(
        api.get("/acr/v1/_catalog").json(),
        json!({"repositories": ["apps/a"]})
    );
}

#[test]
fn acr_attributes_are_enforced_on_v2() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = start_registry(&tmp.path().join("data"), &[]);
    let api = Api::new(&reg.url());
    let d1 = api.push_image("rel/app", "1.0", 1, 64).1.digest;
    let d2 = api.push_image("rel/app", "2.0", 1, 64).1.digest;
    let d3 = api.push_image("rel/app", "3.0", 1, 64).1.digest;
    api.push_image("rel/other", "1", 1, 64);

    // A locked release tag survives a careless push, and cannot be deleted.
    let locked = patch(
        &api,
        "/acr/v1/rel/app/_tags/1.0",
        r#"{"writeEnabled": false}"#,
    )
    .expect(200)
    .json();
    assert_eq!(locked["tag"]["changeableAttributes"]["writeEnabled"], false);
    assert_eq!(locked["tag"]["changeableAttributes"]["deleteEnabled"], true);
    let (manifest, _, _) = {
        let other = Api::new(&reg.url());
        other.push_image("rel/scratch", "x", 1, 64)
    };
    api.push_blob("rel/app", &common::api::config_bytes("amd64"));
    let text = {
        // The scratch image's blobs, mounted so only the tag lock can refuse it.
        let m: Value = serde_json::from_slice(&manifest).unwrap();
        for d in std::iter::once(&m["config"]).chain(m["layers"].as_array().unwrap()) {
            let digest = d["digest"].as_str().unwrap();
            api.send(api.req(
                Method::POST,
                &format!("/v2/rel/app/blobs/uploads/?mount={digest}&from=rel/scratch"),
            ))
            .expect(201);
        }
        let r = api.put_manifest("rel/app", "1.0", OCI_MANIFEST, &manifest);
        let text = r.text();
        r.expect_error(405, "DENIED");
        text
    };
    assert!(text.contains("writeEnabled"), "{text}");
    assert!(
        text.contains(r#"PATCH /acr/v1/rel/app/_tags/1.0 {\"writeEnabled\": true}"#),
        "{text}"
    );
    let still = api.get_manifest("rel/app", "1.0").expect(200);
    assert_eq!(
        still.header("docker-content-digest").as_deref(),
        Some(d1.as_str())
    );
    api.delete("/v2/rel/app/manifests/1.0")
        .expect_error(405, "DENIED");
    api.delete("/acr/v1/rel/app/_tags/1.0")
        .expect_error(405, "DENIED");
    // The same push under a tag nobody locked goes through.
    api.put_manifest("rel/app", "scratch", OCI_MANIFEST, &manifest)
        .expect(201);

    // deleteEnabled false: no delete, by tag or by the digest the tag names; overwrite allowed.
    patch(
        &api,
        "/acr/v1/rel/app/_tags/2.0",
        r#"{"deleteEnabled": false}"#,
    )
    .expect(200);
    let r = api.delete("/v2/rel/app/manifests/2.0");
    let text = r.text();
    r.expect_error(405, "DENIED");
    assert!(text.contains("deleteEnabled"), "{text}");
    api.delete(&format!("/v2/rel/app/manifests/{d2}"))
        .expect_error(405, "DENIED");
    assert!(api.tags("rel/app").contains(&"2.0".to_owned()));

    // readEnabled false: the tag cannot be pulled; the manifest by digest still can, until it
    // is locked itself.
    patch(
        &api,
        "/acr/v1/rel/app/_tags/3.0",
        r#"{"readEnabled": false}"#,
    )
    .expect(200);
    let r = api.get_manifest("rel/app", "3.0");
    let text = r.text();
    r.expect_error(405, "DENIED");
    assert!(text.contains("readEnabled"), "{text}");
    assert_eq!(api.head("/v2/rel/app/manifests/3.0").status, 405);
    api.get_manifest("rel/app", &d3).expect(200);
    patch(
        &api,
        &format!("/acr/v1/rel/app/_manifests/{d3}"),
        r#"{"readEnabled": false}"#,
    )
    .expect(200);
    api.get_manifest("rel/app", &d3).expect_error(405, "DENIED");

    // listEnabled false: left out of both tag lists, still there by name.
    patch(
        &api,
        "/acr/v1/rel/app/_tags/3.0",
        r#"{"listEnabled": false}"#,
    )
    .expect(200);
    assert!(!api.tags("rel/app").contains(&"3.0".to_owned()));
    let names = all_pages(&api, "/acr/v1/rel/app/_tags", "tags", "name");
    assert!(!names.contains(&"3.0".to_owned()), "{names:?}");
    let three = api.get("/acr/v1/rel/app/_tags/3.0").expect(200).json();
    assert_eq!(three["tag"]["changeableAttributes"]["listEnabled"], false);
    assert_eq!(three["tag"]["changeableAttributes"]["readEnabled"], false);

    // Repository level: a write-locked repository takes no push; a list-disabled one leaves
    // both catalogs; its lock holds a repository delete back.
    patch(
        &api,
        "/acr/v1/rel/other",
        r#"{"writeEnabled": false, "listEnabled": false}"#,
    )
    .expect(200);
    api.send(api.req(Method::POST, "/v2/rel/other/blobs/uploads/"))
        .expect_error(405, "DENIED");
    let catalog = api.get("/v2/_catalog").json();
    assert!(!catalog.to_string().contains("rel/other"), "{catalog}");
    let catalog = api.get("/acr/v1/_catalog?n=1").json();
    assert!(!catalog.to_string().contains("rel/other"), "{catalog}");
    api.delete("/acr/v1/rel/other").expect_error(405, "DENIED");
    let repo = api.get("/acr/v1/rel/other").expect(200).json();
    assert_eq!(repo["changeableAttributes"]["writeEnabled"], false);
    patch(&api, "/acr/v1/rel/other", r#"{"writeEnabled": true}"#).expect(200);
    api.delete("/acr/v1/rel/other").expect(202);

    // Unlocked again, the release tag moves.
    patch(
        &api,
        "/acr/v1/rel/app/_tags/1.0",
        r#"{"writeEnabled": true}"#,
    )
    .expect(200);
    api.put_manifest("rel/app", "1.0", OCI_MANIFEST, &manifest)
        .expect(201);
    // A repository delete is held back by a locked tag inside it.
    api.delete("/acr/v1/rel/app").expect_error(405, "DENIED");
}

#[test]
fn acr_bad_input_gets_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = start_registry(&tmp.path().join("data"), &[]);
    let api = Api::new(&reg.url());
    api.push_image("x/app", "1", 1, 64);
    api.get("/acr/v1/x/app/_manifests/sha256:zz")
        .expect_error(400, "DIGEST_INVALID");
    api.get("/acr/v1/no/such").expect_error(404, "NAME_UNKNOWN");
    api.get("/acr/v1/no/such/_tags")
        .expect_error(404, "NAME_UNKNOWN");
    api.get("/acr/v1/x/app/_tags/nope")
        .expect_error(404, "MANIFEST_UNKNOWN");
    patch(
        &api,
        "/acr/v1/x/app/_tags/nope",
        r#"{"writeEnabled": false}"#,
    )
    .expect_error(404, "MANIFEST_UNKNOWN");
    let zeros = format!("sha256:{}", "0".repeat(64));
    api.get(&format!("/acr/v1/x/app/_manifests/{zeros}"))
        .expect_error(404, "MANIFEST_UNKNOWN");
    let r = patch(&api, "/acr/v1/x/app/_tags/1", "{not json");
    let text = r.text();
    r.expect_error(400, "UNSUPPORTED");
    assert!(text.contains("writeEnabled"), "{text}");
    let r = patch(&api, "/acr/v1/x/app/_tags/1", r#"{"writeEnable": false}"#);
    let text = r.text();
    r.expect_error(400, "UNSUPPORTED");
    assert!(text.contains("writeEnable"), "{text}");
    let r = patch(&api, "/acr/v1/x/app", r#"{"writeEnabled": "no"}"#);
    r.expect_error(400, "UNSUPPORTED");
    // A body over the limit (4096 bytes) is refused naming the limit, not read on.
    let huge = format!(
        r#"{{"writeEnabled": false, "pad": "{}"}}"#,
        "x".repeat(5000)
    );
    let r = patch(&api, "/acr/v1/x/app", &huge);
    let text = r.text();
    r.expect_error(400, "UNSUPPORTED");
    assert!(text.contains("over 4096 bytes"), "{text}");
    api.get("/acr/v1/x/app/_tags?orderby=size")
        .expect_error(400, "UNSUPPORTED");
    api.get("/acr/v1/x/app/_tags?n=many")
        .expect_error(400, "UNSUPPORTED");
    api.send(api.req(Method::POST, "/acr/v1/x/app"))
        .expect_error(405, "UNSUPPORTED");
    api.send(api.req(Method::PATCH, "/acr/v1/x/app/_tags"))
        .expect_error(405, "UNSUPPORTED");
    api.get("/acr/v1/x/app/_bogus")
        .expect_error(404, "NAME_INVALID");
    // The feed's long poll: a wait that is not a number is refused; one with nothing new
    // answers an empty page at its deadline (1 s here).
    let r = api.get("/acr/v1/_changes?after=0&wait=soon");
    let text = r.text();
    r.expect_error(400, "UNSUPPORTED");
    assert!(text.contains("0 to 25"), "{text}");
    let head = api.get("/acr/v1/_changes?n=0").expect(200).json()["head"]
        .as_u64()
        .unwrap();
    let page = api
        .get(&format!("/acr/v1/_changes?after={head}&wait=1"))
        .expect(200)
        .json();
    assert_eq!(page["changes"], serde_json::json!([]), "{page}");
    assert_eq!(page["reset"], false, "{page}");
    // Nothing changed.
    let tag = api.get("/acr/v1/x/app/_tags/1").expect(200).json();
    let enabled: Value = serde_json::from_str(ALL_ENABLED).unwrap();
    assert_eq!(tag["tag"]["changeableAttributes"], enabled);
}

/// A read-only child refuses every `/acr` write as it refuses `/v2` writes, and keeps nothing
/// of them; its reads answer.
#[test]
fn acr_writes_are_refused_on_a_read_only_child() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_registry(&tmp.path().join("parent"), &[]);
    let up = Api::new(&parent.url());
    let digest = up.push_image("demo/app", "v1", 1, 64).1.digest;
    let child = start_registry(
        &tmp.path().join("child"),
        &[
            "--parent",
            &parent.url(),
            "--repo",
            "demo/*",
            "--sync-schedule",
            "0 * * * *",
            "--sync-window",
            "PT1H",
            "--sync-poll-interval",
            "PT1S",
        ],
    );
    let api = Api::new(&child.url());
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            api.tags("demo/app") == ["v1"]
        }),
        "the tag did not come down"
    );
    let refused = [
        patch(
            &api,
            "/acr/v1/demo/app/_tags/v1",
            r#"{"writeEnabled": false}"#,
        ),
        patch(&api, "/acr/v1/demo/app", r#"{"deleteEnabled": false}"#),
        patch(
            &api,
            &format!("/acr/v1/demo/app/_manifests/{digest}"),
            r#"{"readEnabled": false}"#,
        ),
        api.delete("/acr/v1/demo/app/_tags/v1"),
        api.delete(&format!("/acr/v1/demo/app/_manifests/{digest}")),
        api.delete("/acr/v1/demo/app"),
    ];
    for r in refused {
        let text = r.text();
        r.expect_error(405, "UNSUPPORTED");
        assert!(
            text.contains("This operation is not allowed on this registry"),
            "{text}"
        );
    }
    let tag = api.get("/acr/v1/demo/app/_tags/v1").expect(200).json();
    let enabled: Value = serde_json::from_str(ALL_ENABLED).unwrap();
    assert_eq!(tag["tag"]["changeableAttributes"], enabled);
    assert_eq!(
        api.get("/acr/v1/demo/app").json()["changeableAttributes"],
        enabled
    );
    assert_eq!(api.tags("demo/app"), ["v1"]);
}

/// A lock set at a parent comes down with the change feed: the child's store holds it after its
/// next pass, and the child's own `/v2` then refuses to overwrite the tag.
#[test]
fn acr_lock_set_at_the_parent_arrives_at_the_child() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_registry(&tmp.path().join("parent"), &[]);
    let up = Api::new(&parent.url());
    up.push_image("apps/a", "1", 1, 64);
    let child = tmp.path().join("child");
    let pass = |data: &std::path::Path| {
        let out = common::sync::sync_once(data, &parent.url(), &["--repo", "apps/*"], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "sync failed:\n{stderr}");
        let summary: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON summary ({e}):\n{stderr}"));
        assert_eq!(summary["outcome"], "Completed", "{summary}\n{stderr}");
        summary
    };
    pass(&child);
    patch(&up, "/acr/v1/apps/a/_tags/1", r#"{"writeEnabled": false}"#).expect(200);
    patch(&up, "/acr/v1/apps/a", r#"{"deleteEnabled": false}"#).expect(200);
    let second = pass(&child);
    assert_eq!(second["pull"], "feed", "{second}");

    let store = registry::Store::open(&child, Default::default()).expect("open child store");
    let repo: registry::RepoName = "apps/a".parse().unwrap();
    let tag = store
        .attributes(&repo, &registry::storage::Target::Tag("1".into()))
        .unwrap()
        .expect("the tag came down");
    assert!(!tag.write_enabled && tag.delete_enabled, "{tag:?}");
    let whole = store
        .attributes(&repo, &registry::storage::Target::Repository)
        .unwrap()
        .unwrap();
    assert!(!whole.delete_enabled && whole.write_enabled, "{whole:?}");
    drop(store);

    // Served, the child holds the lock against its own clients.
    let served = start_registry(&child, &[]);
    let api = Api::new(&served.url());
    let acr = api.get("/acr/v1/apps/a/_tags/1").expect(200).json();
    assert_eq!(acr["tag"]["changeableAttributes"]["writeEnabled"], false);
    api.delete("/v2/apps/a/manifests/1")
        .expect_error(405, "DENIED");
}

/// Referrers listings leave out manifests with `listEnabled: false`, like the tag and manifest
/// listings (the referrer still answers by digest). And a decision pinned: `readEnabled: false`
/// on a tag or a manifest locks the manifest, not the blobs it references (blobs are
/// content-addressed and shared between manifests); the repository's switch locks blobs too.
#[test]
fn acr_referrers_leave_out_unlisted_and_item_read_locks_leave_blobs_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = start_registry(&tmp.path().join("data"), &[]);
    let api = Api::new(&reg.url());
    let (_, subject, blobs) = api.push_image("sig/app", "v1", 1, 64);
    let empty = b"{}".to_vec();
    api.push_blob("sig/app", &empty);
    let empty_desc = common::api::Desc::of("application/vnd.oci.empty.v1+json", &empty);
    let mut signatures = Vec::new();
    for i in 0..2 {
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sig",
            "config": empty_desc.json(),
            "layers": [empty_desc.json()],
            "subject": subject.json(),
            "annotations": {"n": i.to_string()},
        }))
        .unwrap();
        let digest = common::api::sha256(&m);
        api.put_manifest("sig/app", &digest, OCI_MANIFEST, &m)
            .expect(201);
        signatures.push(digest);
    }
    let listed = |api: &Api| -> Vec<String> {
        let index = api
            .get(&format!("/v2/sig/app/referrers/{}", subject.digest))
            .expect(200)
            .json();
        let mut out: Vec<String> = index["manifests"]
            .as_array()
            .expect("an index")
            .iter()
            .map(|d| d["digest"].as_str().unwrap().to_owned())
            .collect();
        out.sort();
        out
    };
    let mut all = signatures.clone();
    all.sort();
    assert_eq!(listed(&api), all);
    patch(
        &api,
        &format!("/acr/v1/sig/app/_manifests/{}", signatures[0]),
        r#"{"listEnabled": false}"#,
    )
    .expect(200);
    assert_eq!(listed(&api), [signatures[1].clone()]);
    api.get_manifest("sig/app", &signatures[0]).expect(200);
    patch(&api, "/acr/v1/sig/app", r#"{"listEnabled": false}"#).expect(200);
    assert!(
        listed(&api).is_empty(),
        "a hidden repository lists no referrer"
    );
    patch(&api, "/acr/v1/sig/app", r#"{"listEnabled": true}"#).expect(200);

    // Read locks on the tag and on the manifest: the manifest is refused, its blobs are not.
    patch(
        &api,
        "/acr/v1/sig/app/_tags/v1",
        r#"{"readEnabled": false}"#,
    )
    .expect(200);
    patch(
        &api,
        &format!("/acr/v1/sig/app/_manifests/{}", subject.digest),
        r#"{"readEnabled": false}"#,
    )
    .expect(200);
    api.get_manifest("sig/app", "v1")
        .expect_error(405, "DENIED");
    api.get_manifest("sig/app", &subject.digest)
        .expect_error(405, "DENIED");
    for blob in &blobs {
        api.get(&format!("/v2/sig/app/blobs/{}", blob.digest))
            .expect(200);
    }
    // The repository's own switch covers its blobs too.
    patch(&api, "/acr/v1/sig/app", r#"{"readEnabled": false}"#).expect(200);
    for blob in &blobs {
        assert_eq!(
            api.get(&format!("/v2/sig/app/blobs/{}", blob.digest))
                .status,
            405,
            "a read-locked repository serves no blob"
        );
    }
}

/// Two `serve` processes, parent and child: locks set at the parent BEFORE the child's first
/// sync arrive with that first (full) comparison, without the feed: a write lock, a tag hidden
/// from the parent's `/v2` listing (mirrored, and hidden at the child too), a read-locked tag
/// the child does not try to pull (the pass completes, saying so once, not as an error), a
/// repository lock, a manifest lock, and a repository hidden from the parent's catalog (still
/// found by the child's wildcard rule, mirrored, and hidden at the child too).
#[test]
fn acr_locks_set_before_the_first_sync_arrive_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_registry(&tmp.path().join("parent"), &[]);
    let up = Api::new(&parent.url());
    let mut digests = std::collections::HashMap::new();
    for tag in ["locked", "hidden", "secret", "plain"] {
        let (_, manifest, _) = up.push_image("early/app", tag, 1, 64);
        digests.insert(tag, manifest.digest);
    }
    up.push_image("early/frozen", "v1", 1, 64);
    up.push_image("early/ghost", "v1", 1, 64);
    patch(&up, "/acr/v1/early/frozen", r#"{"writeEnabled": false}"#).expect(200);
    patch(&up, "/acr/v1/early/ghost", r#"{"listEnabled": false}"#).expect(200);
    let pinned = format!("/acr/v1/early/app/_manifests/{}", digests["plain"]);
    patch(&up, &pinned, r#"{"deleteEnabled": false}"#).expect(200);
    let catalog = up.get("/v2/_catalog").expect(200).json();
    assert_eq!(
        catalog["repositories"],
        json!(["early/app", "early/frozen"])
    );
    patch(
        &up,
        "/acr/v1/early/app/_tags/locked",
        r#"{"writeEnabled": false}"#,
    )
    .expect(200);
    patch(
        &up,
        "/acr/v1/early/app/_tags/hidden",
        r#"{"listEnabled": false}"#,
    )
    .expect(200);
    patch(
        &up,
        "/acr/v1/early/app/_tags/secret",
        r#"{"readEnabled": false}"#,
    )
    .expect(200);
    assert!(!up.tags("early/app").contains(&"hidden".to_owned()));

    let child = start_registry(
        &tmp.path().join("child"),
        &[
            "--parent",
            &parent.url(),
            "--repo",
            "early/*",
            "--sync-schedule",
            "0 * * * *",
            "--sync-window",
            "PT1H",
            "--sync-poll-interval",
            "PT1S",
        ],
    );
    let api = Api::new(&child.url());
    let done = common::poll(Duration::from_secs(60), Duration::from_millis(200), || {
        let r = api.get("/acr/v1/_sync/status");
        (r.status == 200)
            .then(|| r.json())
            .filter(|s| s["lastResult"]["outcome"] == "Completed")
    })
    .unwrap_or_else(|| panic!("no completed pass; child log:\n{}", child.log_text()));
    let summary = &done["lastResult"];
    assert_eq!(
        summary["readLocked"],
        json!(["early/app:secret"]),
        "{summary}"
    );
    assert_eq!(summary["errors"], json!([]), "{summary}");

    let attributes = |tag: &str| {
        api.get(&format!("/acr/v1/early/app/_tags/{tag}"))
            .expect(200)
            .json()["tag"]["changeableAttributes"]
            .clone()
    };
    assert_eq!(attributes("locked")["writeEnabled"], false);
    assert_eq!(attributes("hidden")["listEnabled"], false);
    assert_eq!(
        attributes("plain"),
        serde_json::from_str::<Value>(ALL_ENABLED).unwrap()
    );
    api.get("/acr/v1/early/app/_tags/secret")
        .expect_error(404, "MANIFEST_UNKNOWN");
    // Hidden at the child too, and still there by name.
    assert_eq!(api.tags("early/app"), ["locked", "plain"]);
    api.get_manifest("early/app", "hidden").expect(200);

    // The repository lock and the manifest lock came down with the same comparison.
    let frozen = api.get("/acr/v1/early/frozen").expect(200).json();
    assert_eq!(
        frozen["changeableAttributes"]["writeEnabled"], false,
        "{frozen}"
    );
    let manifest = api.get(&pinned).expect(200).json();
    let attributes = &manifest["manifest"]["changeableAttributes"];
    assert_eq!(attributes["deleteEnabled"], false, "{manifest}");
    assert_eq!(attributes["writeEnabled"], true, "{manifest}");
    // The hidden repository: mirrored, hidden from the child's catalog, there by name.
    api.get_manifest("early/ghost", "v1").expect(200);
    let ghost = api.get("/acr/v1/early/ghost").expect(200).json();
    assert_eq!(
        ghost["changeableAttributes"]["listEnabled"], false,
        "{ghost}"
    );
    let catalog = api.get("/v2/_catalog").expect(200).json();
    assert_eq!(
        catalog["repositories"],
        json!(["early/app", "early/frozen"])
    );
}
