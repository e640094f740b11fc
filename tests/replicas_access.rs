//! Access control across replicas (issue 17): two `serve --auth tokens` replicas on one
//! PostgreSQL database and one Azurite container, behind our TLS proxy, keep one token set in
//! the shared metadata (`registry/src/storage/kv_access.rs`):
//!
//! - the first start makes `admin` once, whichever replica starts first, and replicas starting
//!   at the same moment on an empty database make one signing key: an access token from one is
//!   accepted by the other;
//! - a token made through one replica (its admin socket, or the CLI on the database with no
//!   registry) logs in on the other at once (a refused login reads the set again); a Bearer token from one replica's `/oauth2/token` is
//!   accepted by the other; `skopeo` logs in, pushes and pulls through the proxy balancing both;
//! - a token deleted, or a scope map narrowed, through one replica stops working on the other
//!   within `--access-refresh` (here the default, 1 s).

#![forbid(unsafe_code)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use common::access::{admin_password, basic};
use common::api::*;
use common::oci::Layout;
use common::replicas::{Replicas, Services};
use common::{cli_ok, skopeo};
use reqwest::Method;
use serde_json::Value;

/// `--access-refresh`'s default: the bound this test holds the replicas to.
const REFRESH: Duration = Duration::from_secs(1);
/// What a check of the bound allows beyond it: the read of the set, the test's own polling.
const MARGIN: Duration = Duration::from_millis(1500);

/// The host clients address the registry by behind the proxy: a token's audience.
const SERVICE: &str = "registry.test";

/// `GET path` on `api` with `Authorization: authorization`, addressed as [`SERVICE`] (as the
/// proxy forwards it).
fn get_as(api: &Api, path: &str, authorization: &str) -> Resp {
    api.send(
        api.req(Method::GET, path)
            .header("authorization", authorization)
            .header("x-forwarded-host", SERVICE),
    )
}

/// An access token from `api`'s token service for `authorization`, for `scope`.
fn access_token(api: &Api, authorization: &str, scope: &str) -> String {
    let r = get_as(api, &format!("/oauth2/token?scope={scope}"), authorization).expect(200);
    r.json()["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

/// The `kid` of a JWT's header: which signing key signed it.
fn kid(jwt: &str) -> String {
    let header = jwt.split('.').next().expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .expect("base64url header");
    let header: Value = serde_json::from_slice(&bytes).expect("JSON header");
    header["kid"].as_str().expect("a kid").to_owned()
}

/// `connected-registry ARGS... --data DATA --output json`, its JSON answer.
fn cli_json(data: &Path, args: &[&str]) -> Value {
    let data = data.to_str().expect("utf-8 path");
    let mut all = args.to_vec();
    all.extend(["--data", data, "--output", "json"]);
    serde_json::from_str(&cli_ok(&all)).expect("the CLI prints JSON")
}

/// Password 1 of a `token create` answer.
fn password1(made: &Value) -> String {
    made["credentials"]["passwords"][0]["value"]
        .as_str()
        .unwrap_or_else(|| panic!("no password in {made}"))
        .to_owned()
}

/// Waits up to the bound (plus the margin) for `api` to answer `path` with `status` to
/// `authorization`; how long it took.
#[track_caller]
fn answers_within_bound(api: &Api, path: &str, authorization: &str, status: u16) -> Duration {
    let start = Instant::now();
    loop {
        let got = get_as(api, path, authorization).status;
        if got == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < REFRESH + MARGIN,
            "{path} on {} still answers {got}, not {status}, {:?} after the change (bound {REFRESH:?})",
            api.base,
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn replicas_share_tokens_keys_and_changes_through_the_proxy_and_directly() {
    let set = Replicas::start(2, &["--auth", "tokens"]);
    let (a, b) = (set.replicas[0].api(), set.replicas[1].api());
    let (data_a, data_b) = (&set.replicas[0].data, &set.replicas[1].data);

    // The first start made `admin`; the second found it made (no second password file).
    assert!(data_a.join("admin-password").is_file());
    assert!(
        !data_b.join("admin-password").exists(),
        "the second replica made no admin of its own"
    );
    let admin = basic("admin", &admin_password(data_a));
    get_as(&b, "/v2/", &admin).expect(200);

    // A token made through A's admin socket logs in on B (within the bound).
    let made = cli_json(
        data_a,
        &[
            "token",
            "create",
            "ci",
            "--scope-map",
            "_repositories_push_metadata_write",
        ],
    );
    let ci = basic("ci", &password1(&made));
    // At once: a refused login reads the shared set again before it refuses.
    get_as(&b, "/v2/", &ci).expect(200);

    // One signing key: an access token from A's token service is B's too.
    let scope = "repository:team/app:pull,push,metadata_read";
    let from_a = access_token(&a, &ci, scope);
    let from_b = access_token(&b, &ci, scope);
    assert_eq!(
        kid(&from_a),
        kid(&from_b),
        "both replicas sign with one key"
    );
    get_as(&b, "/v2/team/app/tags/list", &format!("Bearer {from_a}"))
        .expect_error(404, "NAME_UNKNOWN");
    get_as(&a, "/v2/team/app/tags/list", &format!("Bearer {from_b}"))
        .expect_error(404, "NAME_UNKNOWN");

    // skopeo through the proxy, verifying its certificate: logs in (the token service, through
    // the proxy, on whichever replica), pushes and pulls, its requests spread over both.
    let t = set.dir.path();
    let (src, _image) = Layout::with_image(&t.join("src"), "v1", &[1 << 20, 200_000]);
    let creds = format!("ci:{}", password1(&made));
    let back = Layout::create(&t.join("back"));
    set.skopeo_push_and_pull(
        &src.reference("v1"),
        "team/app:v1",
        &back.reference("v1"),
        Some(&creds),
    );
    assert_eq!(
        skopeo::inspect_raw(&back.reference("v1")),
        skopeo::inspect_raw(&src.reference("v1")),
        "the manifest pulled through the proxy is the one pushed"
    );
    for r in &set.replicas {
        assert!(
            r.served("/v2/team/app/") > 0,
            "replica {} took none of skopeo's requests",
            r.url()
        );
    }
    // Without credentials, through the proxy: refused.
    set.proxy_api()
        .get("/v2/team/app/tags/list")
        .expect_error(401, "UNAUTHORIZED");

    // The CLI on the database itself (no registry asked): seen by both.
    let elsewhere = t.join("cli-data");
    let direct = cli_json(
        &elsewhere,
        &[
            "token",
            "create",
            "reader",
            "--repository",
            "team/*",
            "content/read",
            "metadata/read",
            "--metadata",
            &set.services.metadata_url,
        ],
    );
    let reader = basic("reader", &password1(&direct));
    for api in [&a, &b] {
        get_as(api, "/v2/team/app/tags/list", &reader).expect(200);
    }

    // A scope map narrowed through B: A refuses what it no longer allows, within the bound.
    cli_json(
        data_b,
        &[
            "scope-map",
            "update",
            "reader-scope-map",
            "--remove-repository",
            "team/*",
            "metadata/read",
        ],
    );
    let narrowed = answers_within_bound(&a, "/v2/team/app/tags/list", &reader, 403);
    println!("a scope map narrowed through B is narrowed on A after {narrowed:?}");

    // A token deleted through B: A refuses its password and the access token A issued for it
    // before, within the bound.
    let issued_by_a = format!("Bearer {}", access_token(&a, &ci, scope));
    get_as(&a, "/v2/team/app/tags/list", &issued_by_a).expect(200);
    cli_json(data_b, &["token", "delete", "ci"]);
    get_as(&b, "/v2/", &ci).expect(401);
    let refused = answers_within_bound(&a, "/v2/", &ci, 401);
    answers_within_bound(&a, "/v2/team/app/tags/list", &issued_by_a, 401);
    println!("a token deleted through B is refused by A after {refused:?}");
}

#[test]
fn replicas_started_together_on_an_empty_database_agree_on_one_signing_key() {
    let dir = tempfile::tempdir().unwrap();
    let services = Services::start();
    let datas = [dir.path().join("a"), dir.path().join("b")];
    let replicas: Vec<common::Proc> = std::thread::scope(|s| {
        let started: Vec<_> = datas
            .iter()
            .map(|data| {
                s.spawn(|| services.serve(data, &["--auth", "tokens", "--gc-interval", "0s"]))
            })
            .collect();
        started.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let made: Vec<&std::path::PathBuf> = datas
        .iter()
        .filter(|d| d.join("admin-password").is_file())
        .collect();
    assert_eq!(made.len(), 1, "one replica made admin: {made:?}");
    let admin = basic("admin", &admin_password(made[0]));
    let apis: Vec<Api> = replicas.iter().map(|p| Api::new(&p.url())).collect();
    let tokens: Vec<String> = apis
        .iter()
        .map(|api| access_token(api, &admin, "repository:any/app:pull,metadata_read"))
        .collect();
    assert_eq!(kid(&tokens[0]), kid(&tokens[1]), "one signing key");
    for (api, token) in apis.iter().zip(tokens.iter().rev()) {
        get_as(api, "/v2/any/app/tags/list", &format!("Bearer {token}"))
            .expect_error(404, "NAME_UNKNOWN");
    }
}
