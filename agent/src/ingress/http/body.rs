//! Bodies that stream through the proxy: a request body cut past the
//! size limit, and an answer's body that holds its endpoint's in-flight
//! guard until it ends (and stops when the endpoint's drain time is up).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio_util::sync::WaitForCancellationFutureOwned;

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
/// the client connection's) until it ends; cut when `leaving` fires.
pub(super) struct Guarded<B, G> {
    inner: B,
    guard: Option<G>,
    leaving: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl<B, G> Guarded<B, G> {
    pub fn new(inner: B, guard: G, leaving: Option<WaitForCancellationFutureOwned>) -> Self {
        Self {
            inner,
            guard: Some(guard),
            leaving: leaving.map(Box::pin),
        }
    }
}

impl<B, G> Body for Guarded<B, G>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    G: Unpin,
{
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
        if let Some(l) = this.leaving.as_mut()
            && l.as_mut().poll(cx).is_ready()
        {
            this.guard = None;
            return Poll::Ready(Some(Err(BodyError::Drained.into())));
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
            Poll::Ready(Some(Err(e))) => {
                this.guard = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.guard = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.guard.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
