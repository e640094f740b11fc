//! The access matrix: for every `/v2` and `/acr` route and method, every set of actions a
//! scope map can grant, every scope shape (the exact repository, a prefix over it, every
//! repository, another repository, no credentials) and each way of presenting a token (its
//! password as Basic, an access token from `/oauth2/token` as Bearer), the answer is allowed
//! exactly when the scope map grants what the route needs, and a refusal is exactly the one the
//! Docker token flow expects. The expected decision comes from this file's own table of what
//! each route needs, not from the registry's (`need.rs`), so the two check each other.
//!
//! Each mode is one registry with every token made up front: ReadWrite, ReadOnly (an allowed
//! write is then refused by the mode, 405, never by access control), ReadWrite with
//! `--anonymous-pull`, and `--auth none`. The test prints how many cells it checked.
//!
//! Routes beyond the change feed and the sync status under `/acr` may have no handler yet: the
//! decision is made before the handler, so an allowed request there may answer 404.

#![forbid(unsafe_code)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use common::access::{rule, seed_cheaply};
use common::api::{error_codes, Api, Resp};
use common::{serve_with, Proc};
use reqwest::Method;

/// The repository every per-repository route names.
const REPO: &str = "team-a/app";
/// The source of the cross-repository mount (under the prefix, outside the exact name).
const SOURCE: &str = "team-a/src";
/// A digest nothing has.
const NO_DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// Every action, by its ACR name and its Docker scope name.
const ACTIONS: [(&str, &str); 8] = [
    ("content/read", "pull"),
    ("content/write", "push"),
    ("content/delete", "delete"),
    ("metadata/read", "metadata_read"),
    ("metadata/write", "metadata_write"),
    ("message/read", "message_read"),
    ("message/write", "message_write"),
    ("config/read", "config_read"),
];

fn action_index(name: &str) -> usize {
    ACTIONS
        .iter()
        .position(|(a, _)| *a == name)
        .unwrap_or_else(|| panic!("no action {name}"))
}

/// What a route needs, by this test's reading of the ACR model.
#[derive(Clone, Copy, Debug)]
enum Needs {
    /// Nothing at all (the change feed's bounds probe).
    Nothing,
    /// Any known caller (`GET /v2/`).
    Known,
    /// A listing of repositories: any token; filtered afterwards.
    Catalog,
    /// `action` on [`REPO`].
    Repo(&'static str),
    /// A gateway action, granted by any rule naming it.
    Gateway(&'static str),
    /// Push on [`REPO`]; mounted only with pull on [`SOURCE`].
    Mount,
}

struct Route {
    method: Method,
    path: String,
    body: Option<&'static str>,
    needs: Needs,
}

fn routes(mount_digest: &str) -> Vec<Route> {
    let r = |method: Method, path: String, body: Option<&'static str>, needs: Needs| Route {
        method,
        path,
        body,
        needs,
    };
    use Needs::*;
    let v2 = format!("/v2/{REPO}");
    let acr = format!("/acr/v1/{REPO}");
    vec![
        r(Method::GET, "/v2/".into(), None, Known),
        r(Method::GET, "/v2/_catalog".into(), None, Catalog),
        r(
            Method::GET,
            format!("{v2}/tags/list"),
            None,
            Repo("metadata/read"),
        ),
        r(
            Method::GET,
            format!("{v2}/manifests/v1"),
            None,
            Repo("content/read"),
        ),
        r(
            Method::HEAD,
            format!("{v2}/manifests/v1"),
            None,
            Repo("content/read"),
        ),
        // Not a manifest: an allowed PUT is refused by validation, and nothing is written.
        r(
            Method::PUT,
            format!("{v2}/manifests/v1"),
            Some("not a manifest"),
            Repo("content/write"),
        ),
        r(
            Method::DELETE,
            format!("{v2}/manifests/{NO_DIGEST}"),
            None,
            Repo("content/delete"),
        ),
        r(
            Method::GET,
            format!("{v2}/blobs/{NO_DIGEST}"),
            None,
            Repo("content/read"),
        ),
        r(
            Method::HEAD,
            format!("{v2}/blobs/{NO_DIGEST}"),
            None,
            Repo("content/read"),
        ),
        r(
            Method::DELETE,
            format!("{v2}/blobs/{NO_DIGEST}"),
            None,
            Repo("content/delete"),
        ),
        r(
            Method::GET,
            format!("{v2}/referrers/{NO_DIGEST}"),
            None,
            Repo("content/read"),
        ),
        // A malformed digest: an allowed start is refused before a session is made.
        r(
            Method::POST,
            format!("{v2}/blobs/uploads/?digest=bad"),
            None,
            Repo("content/write"),
        ),
        // Mounted (201) with pull on the source; else an ordinary upload, whose malformed
        // digest is then refused (400): the mount was dropped, not answered.
        r(
            Method::POST,
            format!("{v2}/blobs/uploads/?mount={mount_digest}&from={SOURCE}&digest=bad"),
            None,
            Mount,
        ),
        r(
            Method::GET,
            format!("{v2}/blobs/uploads/no-such-session"),
            None,
            Repo("content/write"),
        ),
        r(
            Method::PATCH,
            format!("{v2}/blobs/uploads/no-such-session"),
            Some("x"),
            Repo("content/write"),
        ),
        r(
            Method::PUT,
            format!("{v2}/blobs/uploads/no-such-session?digest={NO_DIGEST}"),
            None,
            Repo("content/write"),
        ),
        r(
            Method::DELETE,
            format!("{v2}/blobs/uploads/no-such-session"),
            None,
            Repo("content/write"),
        ),
        r(Method::GET, "/acr/v1/_changes?n=0".into(), None, Nothing),
        r(
            Method::GET,
            "/acr/v1/_changes?after=0".into(),
            None,
            Gateway("message/read"),
        ),
        r(
            Method::GET,
            "/acr/v1/_sync/status".into(),
            None,
            Gateway("message/read"),
        ),
        r(Method::GET, "/acr/v1/_catalog".into(), None, Catalog),
        r(Method::GET, acr.clone(), None, Repo("metadata/read")),
        // Not JSON: an allowed PATCH changes nothing.
        r(
            Method::PATCH,
            acr.clone(),
            Some("not json"),
            Repo("metadata/write"),
        ),
        r(Method::DELETE, acr.clone(), None, Repo("content/delete")),
        r(
            Method::GET,
            format!("{acr}/_tags"),
            None,
            Repo("metadata/read"),
        ),
        r(
            Method::GET,
            format!("{acr}/_tags/v1"),
            None,
            Repo("metadata/read"),
        ),
        r(
            Method::PATCH,
            format!("{acr}/_tags/v1"),
            Some("not json"),
            Repo("metadata/write"),
        ),
        r(
            Method::DELETE,
            format!("{acr}/_tags/v1"),
            None,
            Repo("content/delete"),
        ),
        r(
            Method::GET,
            format!("{acr}/_manifests"),
            None,
            Repo("metadata/read"),
        ),
        r(
            Method::GET,
            format!("{acr}/_manifests/{NO_DIGEST}"),
            None,
            Repo("metadata/read"),
        ),
        r(
            Method::PATCH,
            format!("{acr}/_manifests/{NO_DIGEST}"),
            Some("not json"),
            Repo("metadata/write"),
        ),
        r(
            Method::DELETE,
            format!("{acr}/_manifests/{NO_DIGEST}"),
            None,
            Repo("content/delete"),
        ),
    ]
}

/// Which repositories a token's one rule covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Exact,
    Prefix,
    All,
    Other,
}

impl Shape {
    const EVERY: [Shape; 4] = [Shape::Exact, Shape::Prefix, Shape::All, Shape::Other];

    fn pattern(self) -> &'static str {
        match self {
            Shape::Exact => REPO,
            Shape::Prefix => "team-a/*",
            Shape::All => "*",
            Shape::Other => "team-b/*",
        }
    }

    fn covers(self, repo: &str) -> bool {
        match self {
            Shape::Exact => repo == REPO,
            Shape::Prefix => repo.starts_with("team-a/"),
            Shape::All => true,
            Shape::Other => repo.starts_with("team-b/"),
        }
    }
}

/// Who asks.
#[derive(Clone, Debug)]
enum Caller {
    /// No credentials.
    Nobody,
    /// An anonymous access token (the token service without credentials).
    AnonymousBearer(String),
    /// A token's password (Basic).
    Basic {
        shape: Shape,
        actions: u8,
        header: String,
    },
    /// An access token of a token, asked for every action on both repositories and the catalog.
    Bearer {
        shape: Shape,
        actions: u8,
        jwt: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    ReadWrite,
    ReadOnly,
    AnonymousPull,
    Open,
}

/// What the answer must be.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    /// Past access control; for a mount, whether it mounts.
    Allowed { mounted: bool },
    /// 401 with the challenge and no error (no credentials).
    Challenge,
    /// 401 with `error="insufficient_scope"` (a Bearer token that lacks the grant).
    InsufficientScope,
    /// 403 `DENIED` (a password whose scope map lacks the action).
    Denied,
}

fn expected(mode: Mode, caller: &Caller, needs: Needs) -> Expect {
    let anonymous_pull = mode == Mode::AnonymousPull;
    if mode == Mode::Open {
        return Expect::Allowed {
            mounted: matches!(needs, Needs::Mount),
        };
    }
    let grants = |shape: Shape, actions: u8, repo: &str, action: &str| {
        shape.covers(repo) && actions & (1 << action_index(action)) != 0
    };
    match caller {
        Caller::Nobody | Caller::AnonymousBearer(_) => {
            let anon_reads = |action: &str| {
                anonymous_pull
                    && REPO.starts_with("team-a/")
                    && matches!(action, "content/read" | "metadata/read")
            };
            let allowed = match needs {
                Needs::Nothing => true,
                // `GET /v2/` challenges a caller without credentials whatever the mode.
                Needs::Known => matches!(caller, Caller::AnonymousBearer(_)),
                Needs::Catalog => anonymous_pull,
                Needs::Repo(action) => anon_reads(action),
                Needs::Gateway(_) | Needs::Mount => false,
            };
            match (allowed, caller) {
                (true, _) => Expect::Allowed { mounted: false },
                (false, Caller::Nobody) => Expect::Challenge,
                (false, _) => Expect::InsufficientScope,
            }
        }
        Caller::Basic { shape, actions, .. } | Caller::Bearer { shape, actions, .. } => {
            let (shape, actions) = (*shape, *actions);
            let (allowed, mounted) = match needs {
                Needs::Nothing | Needs::Known | Needs::Catalog => (true, false),
                Needs::Repo(action) => (grants(shape, actions, REPO, action), false),
                Needs::Gateway(action) => (actions & (1 << action_index(action)) != 0, false),
                Needs::Mount => (
                    grants(shape, actions, REPO, "content/write"),
                    grants(shape, actions, SOURCE, "content/read"),
                ),
            };
            match (allowed, caller) {
                (true, _) => Expect::Allowed { mounted },
                (false, Caller::Basic { .. }) => Expect::Denied,
                (false, _) => Expect::InsufficientScope,
            }
        }
    }
}

/// Checks one answer; `None` when it is as expected, else what is wrong.
fn judge(mode: Mode, route: &Route, expect: &Expect, r: &Resp) -> Option<String> {
    let codes = error_codes(&r.text());
    let challenge = r.header("www-authenticate").unwrap_or_default();
    let writes = !matches!(route.method, Method::GET | Method::HEAD);
    let ok = match expect {
        Expect::Allowed { mounted } => {
            let past_access = !matches!(r.status, 401 | 403);
            let read_only = mode == Mode::ReadOnly && writes;
            if read_only && route.path.starts_with("/v2/") {
                // The mode refuses it, after access control allowed it.
                r.status == 405 && codes.iter().any(|c| c == "UNSUPPORTED")
            } else if read_only {
                past_access && (r.status != 405 || codes.iter().any(|c| c == "UNSUPPORTED"))
            } else if matches!(route.needs, Needs::Mount) {
                r.status == if *mounted { 201 } else { 400 }
            } else {
                past_access && r.status != 405
            }
        }
        Expect::Challenge => {
            r.status == 401
                && challenge.starts_with("Bearer realm=\"http://")
                && !challenge.contains("error=")
                && (route.method == Method::HEAD || codes.iter().any(|c| c == "UNAUTHORIZED"))
        }
        Expect::InsufficientScope => {
            r.status == 401
                && challenge.contains("error=\"insufficient_scope\"")
                && (route.method == Method::HEAD || codes.iter().any(|c| c == "UNAUTHORIZED"))
        }
        Expect::Denied => {
            r.status == 403 && (route.method == Method::HEAD || codes.iter().any(|c| c == "DENIED"))
        }
    };
    (!ok).then(|| {
        format!(
            "{mode:?} {} {}: expected {expect:?}, got {} {:?} challenge {challenge:?}",
            route.method, route.path, r.status, codes
        )
    })
}

fn send(api: &Api, route: &Route, authorization: Option<&str>) -> Resp {
    let mut rb = api.req(route.method.clone(), &route.path);
    if let Some(value) = authorization {
        rb = rb.header("authorization", value);
    }
    if let Some(body) = route.body {
        rb = rb
            .header("content-type", "application/octet-stream")
            .body(body);
    }
    api.send(rb)
}

/// An access token from the registry's token service for `authorization` (none: anonymous),
/// asking every action on both repositories and the catalog.
fn access_token(api: &Api, authorization: Option<&str>) -> String {
    let every: Vec<&str> = ACTIONS.iter().map(|(_, scope)| *scope).collect();
    let every = every.join(",");
    let path = format!(
        "/oauth2/token?scope=repository:{REPO}:{every}&scope=repository:{SOURCE}:{every}&scope=registry:catalog:{every}"
    );
    let mut rb = api.req(Method::GET, &path);
    if let Some(value) = authorization {
        rb = rb.header("authorization", value);
    }
    let r = api.send(rb).expect(200);
    r.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// One registry of `mode` over `data`, which already holds the tokens.
fn start(data: &Path, mode: Mode) -> Proc {
    let mut args = vec!["--gc-interval", "0s", "--access-log", "false"];
    match mode {
        Mode::ReadWrite => args.extend(["--auth", "tokens"]),
        Mode::ReadOnly => args.extend(["--auth", "tokens", "--mode", "ReadOnly"]),
        Mode::AnonymousPull => args.extend(["--auth", "tokens", "--anonymous-pull", "team-a/*"]),
        Mode::Open => args.extend(["--auth", "none"]),
    }
    serve_with(
        data,
        common::free_port(),
        &args,
        &[("RUST_LOG", "warn")],
        data.with_extension(format!("{mode:?}.log")),
    )
}

/// Every cell of `mode` for `callers`; returns the number checked, panics with the wrong ones.
fn check_mode(api: &Api, mode: Mode, callers: &[Caller], routes: &[Route]) -> usize {
    let checked = AtomicUsize::new(0);
    let wrong = Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(caller) = callers.get(i) else { break };
                let authorization = match caller {
                    Caller::Nobody => None,
                    Caller::AnonymousBearer(jwt) | Caller::Bearer { jwt, .. } => {
                        Some(format!("Bearer {jwt}"))
                    }
                    Caller::Basic { header, .. } => Some(header.clone()),
                };
                for route in routes {
                    let expect = expected(mode, caller, route.needs);
                    let r = send(api, route, authorization.as_deref());
                    checked.fetch_add(1, Ordering::Relaxed);
                    if let Some(why) = judge(mode, route, &expect, &r) {
                        let who = match caller {
                            Caller::Basic { shape, actions, .. } => {
                                format!("Basic {shape:?} {actions:#010b}")
                            }
                            Caller::Bearer { shape, actions, .. } => {
                                format!("Bearer {shape:?} {actions:#010b}")
                            }
                            other => format!("{:?}", std::mem::discriminant(other)),
                        };
                        wrong.lock().unwrap().push(format!("{who}: {why}"));
                    }
                }
            });
        }
    });
    let wrong = wrong.into_inner().unwrap();
    assert!(
        wrong.is_empty(),
        "{} of the {mode:?} cells are wrong; the first:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(30)].join("\n")
    );
    checked.into_inner()
}

#[test]
fn every_route_action_set_scope_shape_and_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Every non-empty set of actions (bit i: ACTIONS[i]) on each shape, plus a token that
    // seeds the mount's source blob.
    let mut tokens = Vec::new();
    for shape in Shape::EVERY {
        for actions in 1..=u8::MAX {
            let names: Vec<&str> = (0..8)
                .filter(|i| actions & (1 << i) != 0)
                .map(|i| ACTIONS[i].0)
                .collect();
            tokens.push((
                format!("m-{shape:?}-{actions}").to_lowercase(),
                vec![rule(shape.pattern(), &names)],
                shape,
                actions,
            ));
        }
    }
    let mut seeds: Vec<(String, Vec<access::Rule>)> = tokens
        .iter()
        .map(|(name, rules, _, _)| (name.clone(), rules.clone()))
        .collect();
    seeds.push((
        "seeder".into(),
        vec![rule("*", &["content/read", "content/write"])],
    ));
    let passwords = seed_cheaply(&data, &seeds);
    let seeder = common::access::basic("seeder", &passwords[passwords.len() - 1]);

    // The mount's source blob, pushed by the seeder on an open-access start of the same data.
    let mount_digest = {
        let registry = start(&data, Mode::ReadWrite);
        let api = Api::new(&registry.url());
        let blob = b"the mount's source blob".to_vec();
        let digest = common::api::sha256(&blob);
        let r = api.send(
            api.req(
                Method::POST,
                &format!("/v2/{SOURCE}/blobs/uploads/?digest={digest}"),
            )
            .header("authorization", &seeder)
            .header("content-type", "application/octet-stream")
            .body(blob),
        );
        r.expect(201);
        digest
    };
    let routes = routes(&mount_digest);

    let mut total = 0;
    for mode in [
        Mode::ReadWrite,
        Mode::ReadOnly,
        Mode::AnonymousPull,
        Mode::Open,
    ] {
        let registry = start(&data, mode);
        let api = Api::new(&registry.url());
        let mut callers = vec![Caller::Nobody];
        match mode {
            Mode::AnonymousPull => {
                callers.push(Caller::AnonymousBearer(access_token(&api, None)));
            }
            Mode::Open => {}
            Mode::ReadWrite | Mode::ReadOnly => {
                for ((name, _, shape, actions), password) in tokens.iter().zip(&passwords) {
                    let header = common::access::basic(name, password);
                    callers.push(Caller::Basic {
                        shape: *shape,
                        actions: *actions,
                        header: header.clone(),
                    });
                    // ReadOnly changes what an allowed write answers, not who is allowed:
                    // Basic alone covers it (half the cells, half the time).
                    if mode == Mode::ReadWrite {
                        callers.push(Caller::Bearer {
                            shape: *shape,
                            actions: *actions,
                            jwt: access_token(&api, Some(&header)),
                        });
                    }
                }
            }
        }
        let started = std::time::Instant::now();
        let checked = check_mode(&api, mode, &callers, &routes);
        println!(
            "{mode:?}: {checked} cells ({} callers x {} routes) in {:?}",
            callers.len(),
            routes.len(),
            started.elapsed()
        );
        total += checked;
        drop(registry);
    }
    println!("access matrix: {total} cells checked");
}
