//! Helpers shared by the sync end-to-end tests: seed a parent with skopeo from an OCI layout,
//! read back what a registry serves, and run the real `connected-registry sync --once`.

use std::path::Path;
use std::process::{Command, Output};

use super::oci::{Image, Layout};
use super::{bin, skopeo};

/// The tag the seed layouts give their image.
pub const LAYOUT_TAG: &str = "latest";

/// A new OCI layout at `dir` with one image (random layers of `layer_sizes` bytes) tagged
/// [`LAYOUT_TAG`], ready for [`push`].
pub fn image(dir: &Path, layer_sizes: &[usize]) -> (Layout, Image) {
    Layout::with_image(dir, LAYOUT_TAG, layer_sizes)
}

/// Pushes the layout's image to `host/repo:tag` (plain HTTP) with skopeo.
pub fn push(layout: &Layout, host: &str, repo: &str, tag: &str) {
    skopeo::copy(
        &layout.reference(LAYOUT_TAG),
        &format!("docker://{host}/{repo}:{tag}"),
        false,
    );
}

/// Pulls `host/repo:tag` into a fresh OCI layout at `dest` with skopeo.
pub fn pull(host: &str, repo: &str, tag: &str, dest: &Path) {
    skopeo::copy(
        &format!("docker://{host}/{repo}:{tag}"),
        &format!("oci:{}:x", dest.display()),
        false,
    );
}

/// The manifest `host` serves for `repo:tag`, exactly as served, or `None` when it serves none
/// (yet).
pub fn try_raw_manifest(host: &str, repo: &str, tag: &str) -> Option<String> {
    skopeo::try_inspect_raw(&format!("docker://{host}/{repo}:{tag}"))
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The manifest `host` serves for `repo:tag`; panics with skopeo's error when there is none.
pub fn raw_manifest(host: &str, repo: &str, tag: &str) -> String {
    String::from_utf8_lossy(&skopeo::inspect_raw(&format!(
        "docker://{host}/{repo}:{tag}"
    )))
    .into_owned()
}

/// `connected-registry sync --once --json --data DATA --parent PARENT EXTRA...` with `envs`
/// set, run to completion.
pub fn sync_once(data: &Path, parent: &str, extra: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut args = vec![
        "sync",
        "--once",
        "--json",
        "--data",
        data.to_str().expect("utf-8 temp path"),
        "--parent",
        parent,
    ];
    args.extend_from_slice(extra);
    Command::new(bin())
        .args(&args)
        .envs(envs.iter().copied())
        .output()
        .expect("run connected-registry sync")
}

/// A schedule whose windows (hourly, one hour long) are always open, so a test sees an open
/// window without a new scheduled start for the next minutes: what happens in it is the
/// window's doing, not a new start's.
pub const ALWAYS_OPEN: [&str; 4] = ["--sync-schedule", "0 * * * *", "--sync-window", "PT1H"];

/// A child of `parent_url` (`--parent`) whose window is always open, with `extra` flags.
/// Pull-through is off unless `extra` sets `--on-demand`: these tests see what sync brought
/// down (a HEAD that answers 200 means the tag is stored), not a fetch on a miss.
pub fn start_child(data: &Path, parent_url: &str, extra: &[&str]) -> super::Proc {
    super::start_registry(data, &child_args(parent_url, extra))
}

/// The `serve` flags of [`start_child`], for a child started another way.
pub fn child_args<'a>(parent_url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = [&ALWAYS_OPEN[..], &["--parent", parent_url], extra].concat();
    if !extra.iter().any(|a| a.starts_with("--on-demand")) {
        args.extend_from_slice(&["--on-demand", "off"]);
    }
    args
}

/// Waits (bounded) until `registry` serves `repo:tag` as `digest`.
#[track_caller]
pub fn wait_for_tag(registry: &super::Proc, repo: &str, tag: &str, digest: &str) {
    let api = super::api::Api::new(&registry.url());
    let arrived = super::wait_until(
        std::time::Duration::from_secs(60),
        std::time::Duration::from_millis(200),
        || {
            let r = api.head(&format!("/v2/{repo}/manifests/{tag}"));
            r.status == 200 && r.header("docker-content-digest").as_deref() == Some(digest)
        },
    );
    assert!(
        arrived,
        "{repo}:{tag} never arrived as {digest}; log:\n{}",
        registry.log_text()
    );
}
