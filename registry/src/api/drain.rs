//! Lingering close: a request refused before its body was read (an oversized manifest, a chunk
//! out of order, an unknown upload) still has a client sending that body. If the server answers
//! and closes, the client hits a broken pipe or a reset and never reads why it was refused. So,
//! like nginx and Go's net/http, we read and drop the rest of the body, within a budget, before
//! the answer goes out. A client that asked `Expect: 100-continue` and was never told to
//! continue has not sent its body: there is nothing to drain, and it must not be invited to.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

/// How many unread bytes are dropped at most; a larger body is cut off (the connection
/// closes, as it must) rather than read for nothing.
pub const UNREAD_BODY_DRAIN_BYTES: u64 = 64 << 20;

/// How long the unread rest of a body is read at most, so a slow client cannot hold the
/// connection open by trickling a body we already refused.
pub const UNREAD_BODY_DRAIN_TIME: Duration = Duration::from_secs(10);

/// Middleware: hands the handler a body that shares its source with us, and after the handler
/// answers, drains whatever it left unread.
pub async fn drain_unread_body(req: Request, next: Next) -> Response {
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let waits_for_continue = req
        .headers()
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, body) = req.into_parts();
    let shared = Shared(Arc::new(Mutex::new(Slot {
        body: Some(body),
        read: false,
    })));
    let response = next
        .run(Request::from_parts(parts, Body::new(shared.clone())))
        .await;
    let slot = std::mem::take(&mut *shared.0.lock().expect("body lock"));
    // Reading the body is what sends "100 Continue": a body never read was never sent.
    let sent = slot.read || !waits_for_continue;
    if let Some(rest) = slot.body.filter(|b| sent && !b.is_end_stream()) {
        let _ = tokio::time::timeout(UNREAD_BODY_DRAIN_TIME, discard(rest)).await;
    }
    response
}

/// Reads and drops up to [`UNREAD_BODY_DRAIN_BYTES`] of `body`.
async fn discard(mut body: Body) {
    let mut left = UNREAD_BODY_DRAIN_BYTES;
    while let Some(Ok(frame)) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
    {
        let len = frame.data_ref().map_or(0, |d| d.len() as u64);
        match left.checked_sub(len) {
            Some(rest) => left = rest,
            None => return,
        }
    }
}

/// The request body, readable by the handler while the middleware keeps hold of it.
#[derive(Clone)]
struct Shared(Arc<Mutex<Slot>>);

#[derive(Default)]
struct Slot {
    body: Option<Body>,
    /// The handler asked for the body at least once.
    read: bool,
}

impl HttpBody for Shared {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut slot = self.0.lock().expect("body lock");
        slot.read = true;
        match slot.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .lock()
            .expect("body lock")
            .body
            .as_ref()
            .is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .lock()
            .expect("body lock")
            .body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}
