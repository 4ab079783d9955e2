//! Connections to endpoints: a keep-alive pool of HTTP/1.1 connections per
//! endpoint address, so an endpoint that leaves the table takes its idle
//! connections with it.
//!
//! A request takes the most recently used idle connection (or opens one)
//! and holds it until its answer's body ends, then puts it back: no task
//! and no lock beyond the endpoint's own short one per request.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use skiff_shared::tasks::TaskTree;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::body::ProxyBody;

/// How long connecting to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle pooled connection is kept: less than common servers'
/// own keep-alive timeouts (Node.js closes after 5 s), so that the proxy
/// closes first and rarely sends a request on a connection the endpoint
/// is closing.
const POOL_IDLE: Duration = Duration::from_secs(4);
/// How often idle connections past [`POOL_IDLE`] are closed.
const REAP_EVERY: Duration = Duration::from_secs(1);
/// The most idle pooled connections per endpoint.
const POOL_MAX_IDLE: usize = 256;

/// Why a request found no answer from an endpoint.
#[derive(Debug, thiserror::Error)]
pub(super) enum UpstreamError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddrV4,
        source: std::io::Error,
    },
    #[error("connecting to {0}: no answer within {CONNECT_TIMEOUT:?}")]
    ConnectTimeout(SocketAddrV4),
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

impl UpstreamError {
    /// Whether the request cannot have reached the endpoint's application:
    /// connecting failed, or a pooled connection closed before any byte
    /// of the answer.
    pub fn before_any_answer(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::ConnectTimeout(_) => true,
            Self::Http(h) => h.is_incomplete_message() || h.is_canceled(),
        }
    }
}

/// The pools by endpoint.
#[derive(Debug)]
pub(super) struct Upstreams {
    tree: TaskTree,
    endpoints: Mutex<HashMap<SocketAddrV4, Arc<Endpoint>>>,
}

impl Upstreams {
    pub fn new(tree: TaskTree) -> Self {
        Self {
            tree,
            endpoints: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddrV4, Arc<Endpoint>>> {
        self.endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The pool of `addr`, made on first use.
    pub fn endpoint(&self, addr: SocketAddrV4) -> Arc<Endpoint> {
        let mut endpoints = self.lock();
        if let Some(e) = endpoints.get(&addr) {
            return e.clone();
        }
        let e = Arc::new(Endpoint {
            addr,
            tree: self.tree.clone(),
            idle: Mutex::default(),
            gone: AtomicBool::new(false),
        });
        endpoints.insert(addr, e.clone());
        self.tree.spawn(
            "http upstream reaper",
            reap(Arc::downgrade(&e), self.tree.clone()),
        );
        e
    }

    /// Drops the pools of endpoints not in `keep`: their idle connections
    /// close; requests in flight on them finish, and their connections
    /// close then.
    pub fn retain(&self, keep: &HashSet<SocketAddrV4>) {
        let gone: Vec<Arc<Endpoint>> = {
            let mut endpoints = self.lock();
            let gone = endpoints
                .iter()
                .filter(|(a, _)| !keep.contains(a))
                .map(|(_, e)| e.clone())
                .collect();
            endpoints.retain(|a, _| keep.contains(a));
            gone
        };
        for e in gone {
            e.gone.store(true, Ordering::Release);
            e.idle().clear();
        }
    }
}

/// Closes an endpoint's connections idle past [`POOL_IDLE`] until the
/// endpoint leaves.
async fn reap(endpoint: Weak<Endpoint>, tree: TaskTree) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(REAP_EVERY) => {}
            () = tree.cancelled() => return,
        }
        let Some(e) = endpoint.upgrade() else { return };
        if e.gone.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        e.idle()
            .retain(|i| !i.sender.is_closed() && now.duration_since(i.since) < POOL_IDLE);
    }
}

/// An idle connection.
struct Idle {
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

/// One endpoint's idle connections.
pub(super) struct Endpoint {
    addr: SocketAddrV4,
    tree: TaskTree,
    /// Most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// The endpoint left: connections coming back are closed.
    gone: AtomicBool,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    fn idle(&self) -> MutexGuard<'_, Vec<Idle>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently used idle connection still open and young enough.
    fn take_idle(&self) -> Option<SendRequest<ProxyBody>> {
        let now = Instant::now();
        let mut idle = self.idle();
        while let Some(i) = idle.pop() {
            if !i.sender.is_closed() && now.duration_since(i.since) < POOL_IDLE {
                return Some(i.sender);
            }
        }
        None
    }

    /// Sends `req` (origin-form URI) on an idle connection, or on a new
    /// one. The answer comes with its connection, to give back with
    /// [`Lease::release`] once the answer's body has ended.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        while let Some(mut sender) = self.take_idle() {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lease(sender))),
                Err(mut e) => match e.take_message() {
                    // Closed before the request went out: another one.
                    Some(r) => req = r,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        // Boxed: connecting is rare, and its future (the connect, its
        // timeout and the handshake) would otherwise make every request's
        // future larger, and every move of it longer.
        let mut sender = Box::pin(self.connect()).await?;
        let resp = sender.send_request(req).await?;
        Ok((resp, self.lease(sender)))
    }

    fn lease(self: &Arc<Self>, sender: SendRequest<ProxyBody>) -> Lease {
        Lease {
            sender,
            endpoint: self.clone(),
        }
    }

    async fn connect(&self) -> Result<SendRequest<ProxyBody>, UpstreamError> {
        let addr = self.addr;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(addr))?
            .map_err(|source| UpstreamError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        let tree = self.tree.clone();
        self.tree.spawn("http upstream connection", async move {
            tokio::select! {
                r = conn.with_upgrades() => {
                    if let Err(error) = r {
                        debug!(endpoint = %addr, error = %error, "A connection to an endpoint ended with an error.");
                    }
                }
                () = tree.cancelled() => {}
            }
        });
        Ok(sender)
    }
}

/// A connection lent to one request. Dropped, it closes; released, it
/// goes back to its endpoint's pool.
pub(super) struct Lease {
    sender: SendRequest<ProxyBody>,
    endpoint: Arc<Endpoint>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("endpoint", &self.endpoint.addr)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Gives the connection back: call once the answer's body has ended.
    pub fn release(self) {
        let Self { sender, endpoint } = self;
        if sender.is_closed() {
            return;
        }
        // Under the lock: `retain` marks the endpoint gone, then empties it.
        let mut idle = endpoint.idle();
        if !endpoint.gone.load(Ordering::Acquire) && idle.len() < POOL_MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}
