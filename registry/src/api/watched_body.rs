//! A body passed through frame by frame, untouched, while something watches it: the access log
//! (bytes sent, and whether the body was sent to its end) and the metrics (bytes in and out).
//! One wrapper for both, so what "sent to the end" means is decided once.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

/// What watches a body.
pub trait Watch: Send + Unpin + 'static {
    /// `n` more bytes of data passed.
    fn data(&mut self, n: u64);
    /// The body was sent to its end (also a body empty from the start, which may never be
    /// polled: a HEAD, a 204). Not called when the body is dropped before its end.
    fn ended(&mut self) {}
}

/// Counts bytes into a closure (the metrics' counters).
pub struct Count<F>(pub F);

impl<F: FnMut(u64) + Send + Unpin + 'static> Watch for Count<F> {
    fn data(&mut self, n: u64) {
        (self.0)(n)
    }
}

/// `body`, reporting to `watch`.
pub fn watched<W: Watch>(body: Body, watch: W) -> Body {
    Body::new(Watched {
        body,
        watch,
        ended: false,
    })
}

struct Watched<W: Watch> {
    body: Body,
    watch: W,
    ended: bool,
}

impl<W: Watch> Watched<W> {
    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            self.watch.ended();
        }
    }
}

impl<W: Watch> HttpBody for Watched<W> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.watch.data(data.len() as u64);
                }
                if this.body.is_end_stream() {
                    this.end();
                }
            }
            Poll::Ready(None) => this.end(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<W: Watch> Drop for Watched<W> {
    fn drop(&mut self) {
        // A body empty from the start may never be polled: it was sent whole all the same.
        if self.body.is_end_stream() {
            self.end();
        }
    }
}
