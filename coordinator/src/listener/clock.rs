//! The deadlines of one HTTP connection: which phase it is in, and when it
//! must be closed.
//!
//! A connection is always in one phase, and every phase but "answering"
//! has a deadline that the client alone can miss:
//!
//! - **head**: from the connection's start, or from the first byte after an
//!   idle spell, until a request head is complete (`header_timeout`);
//! - **idle**: from the end of an answer until the next byte (`idle_timeout`);
//! - **body**: from a request head until its body has arrived (`body_timeout`);
//! - **answering**: from the request head until the last byte of the
//!   answer; bounded only where a total deadline is set (`request_timeout`),
//!   so a long-lived event stream is not cut.
//!
//! Besides, writes the client does not read for `idle_timeout` close the
//! connection in any phase. hyper's own `header_read_timeout` is not used:
//! it starts at the end of the previous answer, so it cannot tell a slow
//! head from an idle keep-alive connection.

use std::io;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The deadlines a connection is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub header: Duration,
    pub body: Duration,
    pub idle: Duration,
    /// The total deadline of one request, from its head to its answer's
    /// last byte; `None` for none.
    pub request: Option<Duration>,
}

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// The request head did not arrive in time.
    Head,
    /// The request body did not arrive in time.
    Body,
    /// No request came in time.
    Idle,
    /// The request and its answer took longer than the total deadline.
    Request,
    /// The client did not read the answer.
    Unread,
}

impl Expired {
    /// A short reason, for logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Head => "the request head did not arrive within header_timeout",
            Self::Body => "the request body did not arrive within body_timeout",
            Self::Idle => "no request came within idle_timeout",
            Self::Request => "the request took longer than request_timeout",
            Self::Unread => "the client read none of the answer for idle_timeout",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head { since: Instant },
    Idle { since: Instant },
    Body { since: Instant },
    Answering,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// When the current request's head arrived.
    request_started: Option<Instant>,
    /// The current request's number; events of an older one are ignored.
    seq: u64,
    /// Since when a write has been waiting for the client to read.
    write_stalled: Option<Instant>,
}

/// The phase and deadlines of one connection, shared by its IO, its
/// service and its bodies.
#[derive(Debug)]
pub struct Clock {
    deadlines: Deadlines,
    state: Mutex<State>,
    /// Woken when a deadline may have moved earlier.
    changed: Notify,
}

impl Clock {
    /// A connection that starts now, waiting for its first request head.
    pub fn new(deadlines: Deadlines) -> Self {
        Self {
            deadlines,
            state: Mutex::new(State {
                phase: Phase::Head {
                    since: Instant::now(),
                },
                request_started: None,
                seq: 0,
                write_stalled: None,
            }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes arrived: after an idle spell, a new request head begins.
    pub fn bytes_read(&self) {
        let mut s = self.state();
        if let Phase::Idle { .. } = s.phase {
            s.phase = Phase::Head {
                since: Instant::now(),
            };
            drop(s);
            self.changed.notify_one();
        }
    }

    /// A write could not go out: the client is not reading.
    pub fn write_pending(&self) {
        let mut s = self.state();
        if s.write_stalled.is_none() {
            s.write_stalled = Some(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    /// A write went out.
    pub fn write_ready(&self) {
        self.state().write_stalled = None;
    }

    /// A request head arrived; returns the request's number.
    pub fn request(&self, has_body: bool) -> u64 {
        let now = Instant::now();
        let mut s = self.state();
        s.seq += 1;
        s.request_started = Some(now);
        s.phase = if has_body {
            Phase::Body { since: now }
        } else {
            Phase::Answering
        };
        let seq = s.seq;
        drop(s);
        self.changed.notify_one();
        seq
    }

    /// Request `seq`'s body has arrived, or its answer is ready (the
    /// handler will not read more of it).
    pub fn body_done(&self, seq: u64) {
        let mut s = self.state();
        if s.seq == seq && matches!(s.phase, Phase::Body { .. }) {
            s.phase = Phase::Answering;
        }
    }

    /// Request `seq` has been answered to its last byte.
    pub fn finished(&self, seq: u64) {
        let mut s = self.state();
        if s.seq == seq && !matches!(s.phase, Phase::Idle { .. } | Phase::Head { .. }) {
            s.phase = Phase::Idle {
                since: Instant::now(),
            };
            s.request_started = None;
            drop(s);
            self.changed.notify_one();
        }
    }

    /// The earliest deadline now in force, and what missing it means.
    pub fn next_deadline(&self) -> Option<(Instant, Expired)> {
        let d = self.deadlines;
        let s = self.state();
        let total = match (s.request_started, d.request) {
            (Some(started), Some(limit)) => Some((started + limit, Expired::Request)),
            _ => None,
        };
        let phase = match s.phase {
            Phase::Head { since } => Some((since + d.header, Expired::Head)),
            Phase::Idle { since } => Some((since + d.idle, Expired::Idle)),
            Phase::Body { since } => Some((since + d.body, Expired::Body)),
            Phase::Answering => None,
        };
        let unread = s
            .write_stalled
            .map(|since| (since + d.idle, Expired::Unread));
        [phase, total, unread]
            .into_iter()
            .flatten()
            .min_by_key(|(at, _)| *at)
    }

    /// Resolves when the connection has missed a deadline, with which one.
    pub async fn expired(&self) -> Expired {
        loop {
            let changed = self.changed.notified();
            match self.next_deadline() {
                Some((at, why)) => {
                    if at <= Instant::now() {
                        return why;
                    }
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// A connection's IO, reporting reads and stalled writes to its [`Clock`].
#[derive(Debug)]
pub struct Watched<I> {
    inner: I,
    clock: std::sync::Arc<Clock>,
}

impl<I> Watched<I> {
    pub fn new(inner: I, clock: std::sync::Arc<Clock>) -> Self {
        Self { inner, clock }
    }

    fn after_write<T>(&self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_pending() {
            self.clock.write_pending();
        } else {
            self.clock.write_ready();
        }
        r
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.bytes_read();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.after_write(r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A request body that tells its [`Clock`] when it has all arrived.
#[derive(Debug)]
pub struct RequestBody<B> {
    inner: B,
    clock: std::sync::Arc<Clock>,
    seq: u64,
}

impl<B> RequestBody<B> {
    pub fn new(inner: B, clock: std::sync::Arc<Clock>, seq: u64) -> Self {
        Self { inner, clock, seq }
    }
}

impl<B: Body + Unpin> Body for RequestBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        let done = match &r {
            Poll::Ready(None | Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if done {
            this.clock.body_done(this.seq);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An answer's body that tells its [`Clock`] when it has all gone out (or
/// was dropped).
#[derive(Debug)]
pub struct AnswerBody<B> {
    inner: B,
    clock: std::sync::Arc<Clock>,
    seq: u64,
}

impl<B> AnswerBody<B> {
    pub fn new(inner: B, clock: std::sync::Arc<Clock>, seq: u64) -> Self {
        Self { inner, clock, seq }
    }
}

impl<B: Body + Unpin> Body for AnswerBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) {
            this.clock.finished(this.seq);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for AnswerBody<B> {
    fn drop(&mut self) {
        self.clock.finished(self.seq);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn deadlines(request: Option<Duration>) -> Deadlines {
        Deadlines {
            header: 2 * S,
            body: 3 * S,
            idle: 5 * S,
            request,
        }
    }

    /// How long after now the clock's connection is closed, and why.
    async fn closes_after(clock: &Clock) -> (Duration, Expired) {
        let start = Instant::now();
        let why = clock.expired().await;
        (Instant::now() - start, why)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_is_closed_at_the_header_deadline() {
        let clock = Clock::new(deadlines(None));
        assert_eq!(closes_after(&clock).await, (2 * S, Expired::Head));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_is_closed_at_the_header_deadline_counted_from_the_start() {
        let clock = Arc::new(Clock::new(deadlines(None)));
        let c = clock.clone();
        let trickle = tokio::spawn(async move {
            loop {
                tokio::time::sleep(S / 2).await;
                c.bytes_read();
            }
        });
        assert_eq!(closes_after(&clock).await, (2 * S, Expired::Head));
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_body_is_closed_at_the_body_deadline() {
        let clock = Clock::new(deadlines(None));
        tokio::time::advance(S).await;
        clock.request(true);
        clock.bytes_read();
        assert_eq!(closes_after(&clock).await, (3 * S, Expired::Body));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_then_a_head_then_the_header_deadline() {
        let clock = Clock::new(deadlines(None));
        let seq = clock.request(false);
        clock.finished(seq);
        // Idle: the idle deadline, not the header one.
        assert_eq!(clock.next_deadline().map(|d| d.1), Some(Expired::Idle));
        tokio::time::advance(4 * S).await;
        // A byte arrives: the head now has header_timeout from here.
        clock.bytes_read();
        assert_eq!(closes_after(&clock).await, (2 * S, Expired::Head));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_at_the_idle_deadline() {
        let clock = Clock::new(deadlines(None));
        let seq = clock.request(true);
        clock.body_done(seq);
        clock.finished(seq);
        assert_eq!(closes_after(&clock).await, (5 * S, Expired::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_in_progress_has_no_deadline_without_a_total_one() {
        let clock = Arc::new(Clock::new(deadlines(None)));
        let seq = clock.request(false);
        assert_eq!(clock.next_deadline(), None);
        let c = clock.clone();
        let closed = tokio::spawn(async move { c.expired().await });
        // Hours of streaming: nothing expires.
        tokio::time::advance(Duration::from_secs(7200)).await;
        assert!(!closed.is_finished());
        // When the answer ends, the idle deadline starts.
        clock.finished(seq);
        assert_eq!(closed.await.unwrap(), Expired::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn the_total_deadline_bounds_body_and_answer_together() {
        let clock = Clock::new(deadlines(Some(4 * S)));
        let seq = clock.request(true);
        tokio::time::advance(2 * S).await;
        clock.body_done(seq);
        assert_eq!(closes_after(&clock).await, (2 * S, Expired::Request));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unread_answer_is_closed_at_the_idle_deadline_and_reads_reset_it() {
        let clock = Clock::new(deadlines(None));
        clock.request(false);
        clock.write_pending();
        tokio::time::advance(4 * S).await;
        clock.write_ready();
        assert_eq!(clock.next_deadline(), None);
        clock.write_pending();
        assert_eq!(closes_after(&clock).await, (5 * S, Expired::Unread));
    }

    #[tokio::test(start_paused = true)]
    async fn events_of_an_earlier_request_are_ignored() {
        let clock = Clock::new(deadlines(None));
        let first = clock.request(false);
        clock.finished(first);
        let second = clock.request(true);
        clock.finished(first);
        clock.body_done(first);
        assert_eq!(clock.next_deadline().map(|d| d.1), Some(Expired::Body));
        clock.body_done(second);
        assert_eq!(clock.next_deadline(), None);
    }
}
