//! Bodies that stream through the proxy: a request body cut past the
//! size limit, and an answer's body that holds its endpoint's in-flight
//! guard and its endpoint connection until it ends (and stops when the
//! endpoint's drain time is up).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::upstream::Lease;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type both ways.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A short text answer made by the proxy.
pub(super) fn text(s: &'static str) -> ProxyBody {
    Full::new(Bytes::from_static(s.as_bytes()))
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(super) fn owned_text(s: String) -> ProxyBody {
    Full::new(Bytes::from(s))
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(super) fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Why a body stopped.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    #[error("the request body is larger than the proxy's limit of {0} bytes")]
    TooLarge(u64),
    #[error("the endpoint left and its drain time is over")]
    Drained,
}

/// A request body that fails once more than `max` bytes passed, and says
/// so in `over`.
pub(super) struct Limited<B> {
    inner: B,
    seen: u64,
    max: u64,
    over: Arc<AtomicBool>,
}

impl<B> Limited<B> {
    pub fn new(inner: B, max: u64, over: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            seen: 0,
            max,
            over,
        }
    }
}

impl<B> Body for Limited<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen = this.seen.saturating_add(data.len() as u64);
                    if this.seen > this.max {
                        this.over.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(BodyError::TooLarge(this.max).into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An answer's body holding `guard` (the endpoint's in-flight count and
/// the client connection's) until it ends, and the endpoint connection it
/// came on, which goes back to its pool when the body ended cleanly; cut
/// when `leaving` fires.
pub(super) struct Guarded<G> {
    inner: Incoming,
    guard: Option<G>,
    lease: Option<Lease>,
    leaving: CancellationToken,
    /// Registered with `leaving` only while the body waits for data: most
    /// answers arrive whole and never need it.
    waiting: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl<G> Guarded<G> {
    pub fn new(inner: Incoming, guard: G, lease: Lease, leaving: CancellationToken) -> Self {
        Self {
            inner,
            guard: Some(guard),
            lease: Some(lease),
            leaving,
            waiting: None,
        }
    }

    /// The body ended cleanly: its connection can carry another request.
    fn finish(&mut self) {
        self.guard = None;
        if let Some(l) = self.lease.take() {
            l.release();
        }
    }

    /// The body stopped early: its connection closes.
    fn cut(&mut self) {
        self.guard = None;
        self.lease = None;
        self.waiting = None;
    }
}

impl<G: Unpin> Body for Guarded<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.guard.is_none() {
            return Poll::Ready(None);
        }
        if this.leaving.is_cancelled() {
            this.cut();
            return Poll::Ready(Some(Err(BodyError::Drained.into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.cut();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let leaving = &this.leaving;
                let waiting = this
                    .waiting
                    .get_or_insert_with(|| Box::pin(leaving.clone().cancelled_owned()));
                if waiting.as_mut().poll(cx).is_ready() {
                    this.cut();
                    return Poll::Ready(Some(Err(BodyError::Drained.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.guard.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<G> Drop for Guarded<G> {
    fn drop(&mut self) {
        // An answer with nothing left to read (a HEAD, a 204, a body read
        // to its length) may be dropped unpolled: its connection is clean.
        if self.lease.is_some() && self.inner.is_end_stream() {
            self.finish();
        }
    }
}
