//! The parent client against a real HTTP server on loopback that misbehaves on purpose:
//! `429` with `Retry-After` and `503` are retried; a slow but moving blob outlives the
//! progress timeout; a stalled one fails with a progress-timeout error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use oci::Digest;
use sync::client::ClientError;
use sync::settings::Limits;
use sync::ParentClient;

#[derive(Clone, Default)]
struct Counters {
    tags: Arc<AtomicU64>,
    busy: Arc<AtomicU64>,
}

const CHUNK: usize = 1000;
const CHUNKS: usize = 8;

fn blob_bytes() -> Vec<u8> {
    (0..CHUNK * CHUNKS).map(|i| (i % 251) as u8).collect()
}

async fn tags(State(c): State<Counters>) -> Response {
    if c.tags.fetch_add(1, Ordering::SeqCst) < 2 {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        )
            .into_response();
    }
    axum::Json(serde_json::json!({"name": "r", "tags": ["a", "b"]})).into_response()
}

async fn busy(State(c): State<Counters>) -> Response {
    if c.busy.fetch_add(1, Ordering::SeqCst) < 1 {
        return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
    }
    axum::Json(serde_json::json!({"name": "busy", "tags": []})).into_response()
}

/// Sends the blob in chunks `gap` apart; `stall` pauses once for that long mid-way.
fn paced(gap: Duration, stall: Duration) -> Response {
    let data = blob_bytes();
    let stream = futures_util::stream::unfold(0usize, move |i| {
        let data = data.clone();
        async move {
            if i >= CHUNKS {
                return None;
            }
            tokio::time::sleep(if i == CHUNKS / 2 { stall } else { gap }).await;
            let chunk = Bytes::copy_from_slice(&data[i * CHUNK..(i + 1) * CHUNK]);
            Some((Ok::<_, std::io::Error>(chunk), i + 1))
        }
    });
    Response::builder()
        .header("content-length", (CHUNK * CHUNKS).to_string())
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn start() -> (String, Counters) {
    let counters = Counters::default();
    let app = Router::new()
        .route("/v2/r/tags/list", get(tags))
        .route("/v2/busy/tags/list", get(busy))
        .route(
            "/v2/slow/blobs/{digest}",
            get(|| async { paced(Duration::from_millis(400), Duration::from_millis(400)) }),
        )
        .route(
            "/v2/stall/blobs/{digest}",
            get(|| async { paced(Duration::from_millis(10), Duration::from_secs(5)) }),
        )
        .with_state(counters.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, counters)
}

fn limits() -> Limits {
    Limits {
        progress_timeout: Duration::from_secs(1),
        backoff_base: Duration::from_millis(50),
        ..Limits::default()
    }
}

#[tokio::test]
async fn honours_429_retry_after_and_retries_503() {
    let (url, counters) = start().await;
    let client = ParentClient::new(&url, None, None, limits()).unwrap();
    let tags = client.tags("r").await.unwrap().unwrap();
    assert_eq!(tags, vec!["a", "b"]);
    assert_eq!(
        counters.tags.load(Ordering::SeqCst),
        3,
        "two 429s, then the answer"
    );
    assert_eq!(
        client.tags("busy").await.unwrap().unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        counters.busy.load(Ordering::SeqCst),
        2,
        "one 503, then the answer"
    );
}

async fn read_all(client: &ParentClient, repo: &str) -> Result<Vec<u8>, ClientError> {
    let digest = Digest::sha256_of(&blob_bytes());
    let mut blob = client.get_blob(repo, &digest, 0).await?;
    let mut out = Vec::new();
    while let Some(chunk) = client.next_chunk(&mut blob).await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[tokio::test]
async fn a_slow_but_moving_blob_outlives_the_progress_timeout() {
    let (url, _) = start().await;
    let client = ParentClient::new(&url, None, None, limits()).unwrap();
    // About 3 s in total with a 1 s progress timeout: it must complete.
    assert_eq!(read_all(&client, "slow").await.unwrap(), blob_bytes());
}

#[tokio::test]
async fn a_stalled_blob_fails_with_a_progress_timeout() {
    let (url, _) = start().await;
    let client = ParentClient::new(&url, None, None, limits()).unwrap();
    match read_all(&client, "stall").await {
        Err(e @ (ClientError::Stalled { .. } | ClientError::Transport { .. })) => {
            assert!(e.is_unreachable());
            assert!(e.to_string().contains("upstream"), "{e}");
        }
        other => panic!("expected a progress timeout, got {other:?}"),
    }
}
