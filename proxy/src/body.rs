//! Body wrappers that stream frames through untouched while counting bytes: the request
//! body also says when it has been sent completely (the upstream timeout starts then), and
//! the response body writes the access-log line when it ends or is dropped. A response of the
//! registry in this process (one module) is streamed the same way, frame by frame, uncopied.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Notify;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Shared progress of one request body.
#[derive(Default)]
pub struct ReqProgress {
    pub bytes: AtomicU64,
    done: AtomicBool,
    notify: Notify,
    /// The client's body failed (disconnect mid-upload).
    pub failed: AtomicBool,
}

impl ReqProgress {
    fn finish(&self) {
        self.done.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Whether the request body was sent completely (or failed).
    pub fn is_sent(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Resolves once the request body was sent completely (or failed).
    pub async fn sent(&self) {
        loop {
            let notified = self.notify.notified();
            if self.done.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// The client's request body on its way upstream, or no body at all (a request the proxy
/// may send again: a GET or HEAD without one, or its own health check).
pub struct ReqBody {
    inner: Option<Incoming>,
    progress: Arc<ReqProgress>,
}

impl ReqBody {
    pub fn new(inner: Incoming, progress: Arc<ReqProgress>) -> Self {
        if inner.is_end_stream() {
            progress.finish();
        }
        ReqBody {
            inner: Some(inner),
            progress,
        }
    }

    /// No body: sent completely from the start.
    pub fn empty(progress: Arc<ReqProgress>) -> Self {
        progress.finish();
        ReqBody {
            inner: None,
            progress,
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.progress
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if inner.is_end_stream() {
                    this.progress.finish();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.progress.failed.store(true, Ordering::Relaxed);
                this.progress.finish();
            }
            Poll::Ready(None) => this.progress.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or(SizeHint::with_exact(0), Incoming::size_hint)
    }
}

/// What the access log and metrics need to know about one exchange, written on drop.
pub struct Exchange {
    pub on_done: Option<Box<dyn FnOnce(u64, Outcome) + Send + Sync>>,
    pub bytes_out: u64,
    pub outcome: Outcome,
}

/// How a response body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Sent completely.
    Complete,
    /// The client went away before the end (error source: client).
    ClientGone,
    /// The upstream's body failed midway (error source: upstream).
    UpstreamFailed,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some(f) = self.on_done.take() {
            f(self.bytes_out, self.outcome);
        }
    }
}

/// An upstream's response body: off a connection, or from the registry in this process.
pub enum UpstreamBody {
    Remote(Incoming),
    InProcess(axum::body::Body),
}

impl UpstreamBody {
    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Remote(b) => b.is_end_stream(),
            UpstreamBody::InProcess(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Remote(b) => b.size_hint(),
            UpstreamBody::InProcess(b) => b.size_hint(),
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            UpstreamBody::Remote(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
            UpstreamBody::InProcess(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
        }
    }
}

enum Inner {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

/// The body of a response to the client: the upstream's, streamed, or a short one of ours.
pub struct RespBody {
    inner: Inner,
    exchange: Exchange,
}

impl RespBody {
    pub fn upstream(inner: UpstreamBody, mut exchange: Exchange) -> Self {
        // A body that is empty from the start (HEAD, 204, 304) may never be polled.
        exchange.outcome = if inner.is_end_stream() {
            Outcome::Complete
        } else {
            Outcome::ClientGone
        };
        RespBody {
            inner: Inner::Upstream(inner),
            exchange,
        }
    }

    pub fn full(data: Bytes, mut exchange: Exchange) -> Self {
        // Our own short bodies are small enough that a client leaving early is not news.
        exchange.outcome = Outcome::Complete;
        RespBody {
            inner: Inner::Full(Some(data)),
            exchange,
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled: Poll<Option<Result<Frame<Bytes>, BoxError>>> = match &mut this.inner {
            Inner::Upstream(body) => match body.poll_frame(cx) {
                Poll::Ready(Some(Err(err))) => {
                    this.exchange.outcome = Outcome::UpstreamFailed;
                    Poll::Ready(Some(Err(err)))
                }
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Inner::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.exchange.bytes_out += d.len() as u64;
                }
                if this.is_end_stream() {
                    this.exchange.outcome = Outcome::Complete;
                }
            }
            Poll::Ready(None) if this.exchange.outcome == Outcome::ClientGone => {
                this.exchange.outcome = Outcome::Complete;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Full(d) => d.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
        }
    }
}
