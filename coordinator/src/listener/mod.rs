//! Bounded listeners: what keeps a client, authenticated or not, from
//! holding the coordinator's ports.
//!
//! - [`Acceptor`]: accepts while a permit of the listener's connection cap
//!   is free (further clients wait in the kernel's backlog), and backs off
//!   exponentially after failed accepts ([`backoff`]), reporting each
//!   streak once instead of every attempt.
//! - [`serve_http`]: serves HTTP/1.1 on one connection with a [`clock`]
//!   that closes it when the client misses a deadline (head, body, idle,
//!   unread answer, and optionally a total one per request), a head size
//!   limit (431) and a body size limit (413, before a byte of the body is
//!   read when `Content-Length` says it is too large).
//! - [`sources`]: connections counted per source address, with a cap.
//! - [`refusals`]: refusals counted per source in windows, throttling a
//!   source past its allowance and logging one line per source and window.
//!
//! The API uses all but the per-source parts; the agent port
//! (`crate::link`) uses them all.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use skiff_shared::tasks::TaskTree;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

pub mod backoff;
pub mod clock;
pub mod refusals;
pub mod sources;

use clock::{AnswerBody, Clock, Deadlines, RequestBody, Watched};

/// How often reaching a listener's connection cap is logged, at most.
const CAP_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Files the coordinator holds open besides its connections: the store,
/// the listeners, the runtime's own, with room to spare.
pub const FILES_BESIDES_CONNECTIONS: usize = 64;

/// Warns when the process may not open as many files as the connection
/// caps allow (`needed`): past the limit, accepts fail instead of waiting
/// at the caps, and so does everything else that opens a file.
pub fn check_open_file_limit(needed: usize) {
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| open_file_limit(&text));
    if let Some(limit) = limit
        && limit < needed as u64
    {
        warn!(
            limit,
            needed,
            "The open file limit is below what the connection caps allow; raise it (LimitNOFILE in the unit, ulimit -n) or lower max_connections and max_links in [api_limits] and [agent_limits]."
        );
    }
}

/// The soft limit on open files in the text of `/proc/self/limits`;
/// `None` when unlimited or unreadable.
fn open_file_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The limits one HTTP connection is served under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    /// A total deadline per request, head to last byte of the answer.
    pub request_timeout: Option<Duration>,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
}

impl HttpLimits {
    fn deadlines(&self) -> Deadlines {
        Deadlines {
            header: self.header_timeout,
            body: self.body_timeout,
            idle: self.idle_timeout,
            request: self.request_timeout,
        }
    }
}

impl From<&crate::config::ApiLimits> for HttpLimits {
    fn from(l: &crate::config::ApiLimits) -> Self {
        Self {
            header_timeout: l.header_timeout,
            body_timeout: l.body_timeout,
            idle_timeout: l.idle_timeout,
            // Event streams follow for as long as the client wants.
            request_timeout: None,
            max_header_bytes: l.max_header_bytes,
            max_body_bytes: l.max_body_bytes,
        }
    }
}

/// A connection accepted under its listener's cap; the permit goes back
/// when it is dropped.
#[derive(Debug)]
pub struct Accepted {
    pub tcp: TcpStream,
    pub peer: std::net::SocketAddr,
    pub permit: OwnedSemaphorePermit,
}

/// Accepts connections on one listener, at most `max` open at once.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    /// The listener's name in logs: "api", "agent port".
    name: &'static str,
    cap: Arc<Semaphore>,
    max: usize,
    backoff: backoff::AcceptBackoff,
    cap_logged: Option<Instant>,
}

impl Acceptor {
    pub fn new(listener: TcpListener, name: &'static str, max: usize) -> Self {
        Self {
            listener,
            name,
            cap: Arc::new(Semaphore::new(max)),
            max,
            backoff: backoff::AcceptBackoff::default(),
            cap_logged: None,
        }
    }

    /// The next connection, once a permit is free; `None` once `tree` is
    /// cancelled.
    pub async fn next(&mut self, tree: &TaskTree) -> Option<Accepted> {
        let permit = match self.cap.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => return None,
            Err(TryAcquireError::NoPermits) => {
                let now = Instant::now();
                if self
                    .cap_logged
                    .is_none_or(|at| now - at >= CAP_LOG_INTERVAL)
                {
                    self.cap_logged = Some(now);
                    warn!(
                        listener = self.name,
                        limit = self.max,
                        "Connection limit reached; new connections wait in the backlog until one closes."
                    );
                }
                tokio::select! {
                    () = tree.cancelled() => return None,
                    p = self.cap.clone().acquire_owned() => p.ok()?,
                }
            }
        };
        loop {
            let accepted = tokio::select! {
                () = tree.cancelled() => return None,
                r = self.listener.accept() => r,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    if let Some(backoff::Report::Ended { failures, lasted }) =
                        self.backoff.succeeded()
                    {
                        info!(
                            listener = self.name,
                            failures,
                            seconds = lasted.as_secs(),
                            "Accepting connections works again after {failures} failures."
                        );
                    }
                    return Some(Accepted { tcp, peer, permit });
                }
                Err(error) => {
                    let (wait, report) = self.backoff.failed();
                    match report {
                        Some(backoff::Report::Started) => warn!(
                            listener = self.name,
                            error = %error,
                            "Accepting a connection failed; retrying with backoff (up to 1 s) until it works."
                        ),
                        Some(backoff::Report::Ongoing { failures, lasted }) => warn!(
                            listener = self.name,
                            error = %error,
                            failures,
                            seconds = lasted.as_secs(),
                            "Accepting connections still fails: {failures} failures so far."
                        ),
                        _ => {}
                    }
                    tokio::select! {
                        () = tree.cancelled() => return None,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

/// Serves the HTTP API on `listener` until `tree` is cancelled; each
/// connection runs in the tree, under `limits`.
pub async fn serve_api(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    max: usize,
    tree: TaskTree,
) {
    let mut acceptor = Acceptor::new(listener, "api", max);
    while let Some(Accepted { tcp, peer, permit }) = acceptor.next(&tree).await {
        let _ = tcp.set_nodelay(true);
        let (app, conn) = (app.clone(), tree.clone());
        tree.spawn(
            "api-connection",
            async move {
                serve_http(tcp, app, &limits, &conn).await;
                drop(permit);
            }
            .instrument(info_span!("api_conn", %peer)),
        );
    }
}

/// Serves HTTP/1.1 on one connection under `limits` until it ends, misses
/// a deadline (it is closed then), or `tree` is cancelled (it is shut down
/// gracefully: the answer in progress ends, then the connection).
pub async fn serve_http<I>(io: I, app: Router, limits: &HttpLimits, tree: &TaskTree)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let clock = Arc::new(Clock::new(limits.deadlines()));
    let service = Guarded {
        inner: TowerToHyperService::new(app),
        clock: clock.clone(),
        max_body_bytes: limits.max_body_bytes,
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        // The clock enforces the head deadline: hyper's starts at the end
        // of the previous answer and would cut idle time short.
        .header_read_timeout(None)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(64 * 1024))
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(Watched::new(io, clock.clone())), service);
    tokio::pin!(conn);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(error) = r {
                    debug!(error = %error, "Connection ended with an error.");
                }
                return;
            }
            why = clock.expired() => {
                // Dropping the connection closes it.
                debug!(reason = why.reason(), "Connection closed at a deadline.");
                return;
            }
            () = tree.cancelled(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The body of a 413 answer, in the `{code, message}` shape both ports use.
fn too_large(limit: usize) -> Response<axum::body::Body> {
    let body = serde_json::json!({
        "code": "too_large",
        "message": format!("the request body is larger than the limit of {limit} bytes"),
    });
    let mut resp = Response::new(axum::body::Body::from(body.to_string()));
    *resp.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // The body was not read: the connection cannot carry another request.
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn is_json(resp: &Response<axum::body::Body>) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The router behind one connection's clock and body limit.
#[derive(Clone)]
struct Guarded {
    inner: TowerToHyperService<Router>,
    clock: Arc<Clock>,
    max_body_bytes: usize,
}

type Answer = Response<AnswerBody<axum::body::Body>>;

impl hyper::service::Service<Request<Incoming>> for Guarded {
    type Response = Answer;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let clock = self.clock.clone();
        let seq = clock.request(!req.body().is_end_stream());
        let limit = self.max_body_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            clock.body_done(seq);
            let resp = too_large(limit).map(|b| AnswerBody::new(b, clock, seq));
            return Box::pin(std::future::ready(Ok(resp)));
        }
        let (parts, body) = req.into_parts();
        let body = axum::body::Body::new(RequestBody::new(body, clock.clone(), seq));
        let answer = hyper::service::Service::call(&self.inner, Request::from_parts(parts, body));
        Box::pin(async move {
            let resp = match answer.await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
            // Whatever of the body the handler did not read, it will not.
            clock.body_done(seq);
            // A body over the limit, noticed while reading it, gets the
            // same answer as one declared too large.
            let resp = if resp.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json(&resp) {
                too_large(limit)
            } else {
                resp
            };
            Ok(resp.map(|b| AnswerBody::new(b, clock, seq)))
        })
    }
}

/// Logs the summaries of `refusals` as their windows end, and every open
/// window's at shutdown, until `tree` is cancelled.
pub async fn log_refusals(refusals: Vec<Arc<refusals::Refusals>>, tree: TaskTree) {
    let shortest = refusals
        .iter()
        .map(|r| r.window())
        .min()
        .unwrap_or(Duration::from_secs(60));
    let period = (shortest / 4).clamp(Duration::from_millis(250), Duration::from_secs(15));
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            () = tree.cancelled() => break,
            _ = tick.tick() => {
                for r in &refusals {
                    r.log_summaries(false);
                }
            }
        }
    }
    for r in &refusals {
        r.log_summaries(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_read_from_proc() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             127431               127431               processes \n\
                    Max open files            512                  4096                 files     \n";
        assert_eq!(open_file_limit(text), Some(512));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(open_file_limit(unlimited), None);
        assert_eq!(open_file_limit(""), None);
    }
}
