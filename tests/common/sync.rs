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
