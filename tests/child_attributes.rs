//! Attributes flow down (issue 14, "changeableAttributes set at the parent come down with the
//! tag"), end to end with the real binary: a tag locked at the parent before the child's first
//! sync arrives locked, and one locked after it the child holds is locked at the child's next
//! pass (the change feed's `attributes_set`); at a ReadWrite child a client's overwrite or
//! delete of a locked tag is refused, while other tags there take pushes.

mod common;

use std::path::Path;
use std::time::Duration;

use common::api::Api;
use common::{bin, free_port, serve_with, start_registry_on, wait_until};
use serde_json::Value;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn create_child(data: &Path, port: u16) -> String {
    let out = std::process::Command::new(bin())
        .args(["child", "create", "edge", "--mode", "ReadWrite"])
        .args(["--repository", "apps/*", "--protocol", "http"])
        .args(["--parent-endpoint", &format!("127.0.0.1:{port}")])
        .args(["--output", "json", "--data"])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    answer["connectionString"].as_str().unwrap().to_owned()
}

/// The tag's `changeableAttributes` at `api` (`None`: no such tag there).
fn attributes(api: &Api, repo: &str, tag: &str) -> Option<Value> {
    let r = api.get(&format!("/acr/v1/{repo}/_tags/{tag}"));
    (r.status == 200).then(|| r.json()["tag"]["changeableAttributes"].clone())
}

#[test]
fn a_lock_set_at_the_parent_reaches_the_child_with_the_tag_and_holds_there() {
    let dir = tempfile::tempdir().unwrap();
    let parent_data = dir.path().join("parent");
    let port = free_port();
    {
        let open = start_registry_on(&parent_data, port, &[]);
        let api = Api::new(&open.url());
        api.push_image("apps/a", "v1", 1, 512);
        api.push_image("apps/a", "v2", 1, 512);
        api.send(
            api.req(reqwest::Method::PATCH, "/acr/v1/apps/a/_tags/v1")
                .header("content-type", "application/json")
                .body(r#"{"writeEnabled": false, "deleteEnabled": false}"#),
        )
        .expect(200);
    }
    let cs = create_child(&parent_data, port);
    let locker = common::access::create_token(
        &parent_data,
        "locker",
        vec![common::access::rule(
            "apps/*",
            &["metadata/read", "metadata/write"],
        )],
        None,
    );
    let parent = start_registry_on(&parent_data, port, &["--auth", "tokens"]);

    // The child is open to its clients (--auth none) so the test pushes without a login.
    let child_data = dir.path().join("child");
    let child = serve_with(
        &child_data,
        free_port(),
        &["--sync-poll-interval", "PT1S"],
        &[("ACR_REGISTRY_CONNECTION_STRING", &cs)],
        child_data.with_extension("log"),
    );
    let at_child = Api::new(&child.url());
    let arrived = wait_until(Duration::from_secs(60), Duration::from_millis(300), || {
        attributes(&at_child, "apps/a", "v1").is_some_and(|a| a["writeEnabled"] == false)
            && attributes(&at_child, "apps/a", "v2").is_some()
    });
    assert!(
        arrived,
        "the lock never came down with the tag:\n{}",
        child.log_text()
    );
    assert_eq!(
        attributes(&at_child, "apps/a", "v1").unwrap()["deleteEnabled"],
        false
    );

    // Refused at the ReadWrite child: overwriting and deleting the locked tag.
    let other = at_child
        .get_manifest("apps/a", "v2")
        .expect(200)
        .body
        .to_vec();
    let put = at_child.put_manifest("apps/a", "v1", OCI_MANIFEST, &other);
    assert_eq!(put.status, 405, "overwrite of a locked tag: {}", put.text());
    assert!(put.text().contains("DENIED"), "{}", put.text());
    let delete = at_child.delete("/v2/apps/a/manifests/v1");
    assert_eq!(
        delete.status,
        405,
        "delete of a locked tag: {}",
        delete.text()
    );
    // Another tag takes a push (ReadWrite).
    at_child.push_image("apps/a", "local", 1, 256);

    // A lock set at the parent after the child holds the tag: there at its next pass.
    let creds = format!("locker:{}", locker.password1);
    let (status, body, _) = common::curl(&[
        "-u",
        &creds,
        "-X",
        "PATCH",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"deleteEnabled": false}"#,
        &format!("{}/acr/v1/apps/a/_tags/v2", parent.url()),
    ]);
    assert_eq!(status, 200, "{body}");
    let locked = wait_until(Duration::from_secs(60), Duration::from_millis(300), || {
        attributes(&at_child, "apps/a", "v2").is_some_and(|a| a["deleteEnabled"] == false)
    });
    assert!(
        locked,
        "a lock set later never came down:\n{}",
        child.log_text()
    );
    assert_eq!(at_child.delete("/v2/apps/a/manifests/v2").status, 405);
}
