//! The Docker bearer-token flow against a parent that demands it: a token gate (in the test, on
//! loopback) in front of a real CNCF distribution answers 401 with a `Bearer` challenge, issues
//! tokens for Basic credentials at its realm, and forwards authorized requests. Sync with the
//! right credentials fetches one token per scope and reuses it; with wrong ones it fails with
//! a clear error that never shows the password.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use common::distribution::start_distribution;
use common::sync::{image, push, sync_once};

/// base64("sync-user:s3cret-pw")
const GOOD_BASIC: &str = "Basic c3luYy11c2VyOnMzY3JldC1wdw==";
/// Tokens are `tok-<generation>`; a revocation bumps the generation.
fn token_for(generation: u64) -> String {
    format!("tok-{generation}")
}

#[derive(Clone)]
struct Gate {
    upstream: String,
    realm: String,
    tokens_issued: Arc<AtomicU64>,
    http: reqwest::Client,
    /// Basic auth on every request instead of the token flow.
    basic: bool,
    /// Revoke every token once this many requests were authorized (0: never).
    revoke_after: u64,
    authorized: Arc<AtomicU64>,
    generation: Arc<AtomicU64>,
}

async fn token(State(g): State<Gate>, headers: HeaderMap) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(GOOD_BASIC) {
        return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
    }
    g.tokens_issued.fetch_add(1, Ordering::SeqCst);
    let token = token_for(g.generation.load(Ordering::SeqCst));
    axum::Json(serde_json::json!({"token": token, "expires_in": 300})).into_response()
}

async fn forward(State(g): State<Gate>, req: Request) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let want = if g.basic {
        GOOD_BASIC.to_owned()
    } else {
        format!("Bearer {}", token_for(g.generation.load(Ordering::SeqCst)))
    };
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(want.as_str());
    if authorized && !g.basic && g.authorized.fetch_add(1, Ordering::SeqCst) + 1 == g.revoke_after {
        // The token service revokes the token (rotation): the next request gets a 401.
        g.generation.fetch_add(1, Ordering::SeqCst);
    }
    if !authorized && g.basic {
        let mut resp = (StatusCode::UNAUTHORIZED, "{}").into_response();
        resp.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_static("Basic realm=\"gate\""),
        );
        return resp;
    }
    if !authorized {
        let repo = path
            .strip_prefix("/v2/")
            .and_then(|p| p.split("/manifests/").next())
            .and_then(|p| p.split("/tags/").next())
            .and_then(|p| p.split("/blobs/").next())
            .unwrap_or("");
        let mut resp = (StatusCode::UNAUTHORIZED, "{}").into_response();
        let challenge = format!(
            "Bearer realm=\"{}\",service=\"gate\",scope=\"repository:{repo}:pull\"",
            g.realm
        );
        resp.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_str(&challenge).unwrap(),
        );
        return resp;
    }
    let mut rb = g
        .http
        .request(req.method().clone(), format!("{}{path}", g.upstream));
    for name in ["accept", "range"] {
        if let Some(v) = req.headers().get(name) {
            rb = rb.header(name, v.clone());
        }
    }
    let up = rb.send().await.unwrap();
    let mut resp = Response::builder().status(up.status().as_u16());
    for (k, v) in up.headers() {
        resp = resp.header(k.as_str(), v.as_bytes());
    }
    resp.body(Body::from(up.bytes().await.unwrap())).unwrap()
}

/// Runs the parent, the gate and both syncs (wrong credentials, then right ones).
async fn check_gate(basic: bool, revoke_after: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let parent = start_distribution(&tmp.path().join("parent"), "");
    let (layout, _) = image(&tmp.path().join("img"), &[5000]);
    let host = parent.addr.to_string();
    tokio::task::spawn_blocking(move || push(&layout, &host, "secure/app", "v1"))
        .await
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gate_url = format!("http://{}", listener.local_addr().unwrap());
    let gate = Gate {
        upstream: parent.url(),
        realm: format!("{gate_url}/token"),
        tokens_issued: Arc::default(),
        http: reqwest::Client::new(),
        basic,
        revoke_after,
        authorized: Arc::default(),
        generation: Arc::default(),
    };
    let issued = gate.tokens_issued.clone();
    let app = Router::new()
        .route("/token", get(token))
        .fallback(forward)
        .with_state(gate);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let run = |creds: &'static str, data: std::path::PathBuf, url: String| {
        tokio::task::spawn_blocking(move || {
            sync_once(
                &data,
                &url,
                &["--repo", "secure/app", "--sync-retries", "2"],
                &[("CONNECTED_REGISTRY_SYNC_CREDS", creds)],
            )
        })
    };

    let out = run(
        "sync-user:WRONG-pw-9",
        tmp.path().join("bad"),
        gate_url.clone(),
    )
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("authentication failed"), "{text}");
    assert!(!text.contains("WRONG-pw-9"), "password printed: {text}");
    assert_eq!(issued.load(Ordering::SeqCst), 0);

    let out = run(
        "sync-user:s3cret-pw",
        tmp.path().join("good"),
        gate_url.clone(),
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{text}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["tagsUpdated"], 1, "{s}");
    assert!(!text.contains("s3cret-pw"), "password printed: {text}");
    // One scope (pull on secure/app): one token, reused for every request of the pass.
    let want = match (basic, revoke_after) {
        (true, _) => 0,
        (false, 0) => 1,
        // Revoked mid-pass: the 401s (several requests may be in flight) are answered with
        // one new token.
        (false, _) => 2,
    };
    assert_eq!(issued.load(Ordering::SeqCst), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_follows_the_bearer_token_flow() {
    check_gate(false, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_fetches_a_new_token_when_the_parent_revokes_it() {
    check_gate(false, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_sends_basic_credentials_when_the_parent_asks() {
    check_gate(true, 0).await;
}
