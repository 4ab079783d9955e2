//! The agent's HTTP(S) reverse proxy for ingress routes.
//!
//! The controller owns one [`HttpProxy`], calls [`HttpProxy::update`]
//! with each section (routes, endpoint pools, certificates and ACME
//! challenges swap in at once) and runs [`HttpProxy::serve`] on the HTTP
//! and HTTPS listeners. Clients speak HTTP/1.1 or HTTP/2 (ALPN on TLS,
//! prior knowledge in clear); endpoints get HTTP/1.1 over a keep-alive
//! pool per endpoint.
//!
//! Layout:
//! - `table`: routing by host and path (pure, unit- and property-tested).
//! - `service`: one request: ACME, redirects, forwarding, retries,
//!   upgrades, counters and the access log (target `skiff::access`).
//! - `headers`: hop-by-hop removal and X-Forwarded-*.
//! - `body`: the size limit on request bodies; answers that hold their
//!   endpoint's in-flight guard and stop when its drain time is over.
//! - `upstream`: the per-endpoint pools of HTTP/1.1 connections, dropped
//!   when an endpoint leaves (its idle connections close with them).
//! - `tls`: certificates by SNI.
//! - `activity`: a client connection's idle time.
//! - `stats`: per-route counters.
//!
//! The proxy knows nothing of the coordinator or of how pools balance;
//! it reads the section it is given and reports counters.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::sign::CertifiedKey;
use skiff_shared::sections::ingress::{IngressSection, Route, RouteStats};
use skiff_shared::tasks::TaskTree;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::ingress::balance::Pools;

mod activity;
mod body;
mod exec;
mod headers;
mod service;
mod stats;
mod table;
mod tls;
mod upstream;

#[cfg(test)]
mod tests;

use activity::{Activity, Tracked};
use service::ConnInfo;
use stats::RouteCounters;
use table::Table;

/// The most client connections one listener serves at once by default;
/// past it, new connections wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 16_384;
/// How long a client has for the PROXY header and the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection being closed (idle, or at shutdown) has to
/// finish what it was doing.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The most concurrent HTTP/2 streams per client connection.
const MAX_STREAMS: u32 = 256;

/// The reverse proxy, shared by its listeners and the controller.
pub struct HttpProxy {
    tree: TaskTree,
    table: RwLock<Arc<Table>>,
    resolver: Arc<tls::Resolver>,
    tls: Option<Arc<rustls::ServerConfig>>,
    upstreams: upstream::Upstreams,
    counters: Mutex<HashMap<(String, String), Arc<RouteCounters>>>,
    /// The connection cap of listeners served from now on.
    max_connections: AtomicUsize,
}

impl std::fmt::Debug for HttpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProxy")
            .field("generation", &self.table().generation)
            .finish_non_exhaustive()
    }
}

impl HttpProxy {
    pub fn new(tree: TaskTree) -> Arc<Self> {
        let resolver = Arc::new(tls::Resolver::default());
        let tls = match tls::server_config(resolver.clone()) {
            Ok(c) => Some(c),
            Err(error) => {
                warn!(error = %error, "The HTTPS port cannot be served: TLS did not start.");
                None
            }
        };
        Arc::new(Self {
            upstreams: upstream::Upstreams::new(tree.clone()),
            tree,
            table: RwLock::default(),
            resolver,
            tls,
            counters: Mutex::default(),
            max_connections: AtomicUsize::new(MAX_CONNECTIONS),
        })
    }

    fn table(&self) -> Arc<Table> {
        match self.table.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn counters_for(&self, route: &Route) -> Arc<RouteCounters> {
        let mut counters = match self.counters.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        counters
            .entry((route.domain.clone(), route.path.clone()))
            .or_default()
            .clone()
    }

    /// Swaps routes, endpoints, settings, challenges and certificates at
    /// once: when it returns, every new request is routed by `section`.
    /// Idle connections to endpoints no longer listed are closed.
    pub fn update(
        &self,
        section: &IngressSection,
        pools: &Pools,
        certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
    ) {
        let table = Arc::new(Table::build(section, pools, |r| self.counters_for(r)));
        let mut keep = HashSet::new();
        for r in &section.routes {
            for b in section
                .backends
                .iter()
                .filter(|b| b.stack == r.stack && b.service == r.service)
            {
                keep.extend(b.endpoints.iter().map(|e| SocketAddrV4::new(e.ip, r.port)));
            }
        }
        self.resolver.replace(certs);
        match self.table.write() {
            Ok(mut t) => *t = table,
            Err(poisoned) => *poisoned.into_inner() = table,
        }
        self.upstreams.retain(&keep);
    }

    /// Serves one listener until `cancel`; `tls` true: the HTTPS port.
    /// Connections open at `cancel` are closed gracefully.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: bool,
        cancel: CancellationToken,
    ) {
        let cap = self.max_connections.load(Ordering::Relaxed).max(1);
        let limit = Arc::new(Semaphore::new(cap));
        loop {
            let permit = tokio::select! {
                p = limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                () = cancel.cancelled() => return,
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = cancel.cancelled() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of descriptors or the like: let connections end.
                    warn!(error = %error, "Accepting a connection failed.");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        () = cancel.cancelled() => return,
                    }
                }
            };
            let this = self.clone();
            let cancel = cancel.clone();
            self.tree.spawn("http connection", async move {
                this.connection(stream, peer, tls, cancel).await;
                drop(permit);
            });
        }
    }

    async fn connection(
        self: Arc<Self>,
        mut stream: TcpStream,
        peer: SocketAddr,
        tls: bool,
        cancel: CancellationToken,
    ) {
        let settings = self.table().settings.clone();
        let _ = stream.set_nodelay(true);
        let mut client = peer;
        if settings.proxy_protocol {
            let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
            match crate::ingress::proxy_protocol::read_header(&mut stream, deadline).await {
                Ok(Some(addr)) => client = addr,
                Ok(None) => {}
                Err(error) => {
                    debug!(peer = %peer, error = %error, "A connection sent no valid PROXY header.");
                    return;
                }
            }
        }
        let activity = Activity::new();
        let idle = Duration::from_millis(settings.idle_timeout_ms.max(1));
        let info = ConnInfo {
            client_ip: headers::forwarded_for(client.ip()),
            tls,
            activity: activity.clone(),
            cancel: cancel.clone(),
            idle,
        };
        if !tls {
            let io = Tracked::new(stream, activity.clone());
            self.http(io, info, None, idle).await;
            return;
        }
        let Some(config) = self.tls.clone() else {
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(error)) => {
                debug!(peer = %peer, error = %error, "A TLS handshake failed.");
                return;
            }
            Err(_) => {
                debug!(peer = %peer, "A TLS handshake timed out.");
                return;
            }
        };
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = Tracked::new(stream, activity.clone());
        self.http(io, info, Some(h2), idle).await;
    }

    /// Serves HTTP on a connection until the client closes it, it stays
    /// idle past `idle`, or the listener is cancelled. `alpn_h2`: TLS
    /// chose the protocol (`None` in clear: either, by the preface).
    async fn http<I>(
        self: Arc<Self>,
        io: Tracked<I>,
        info: ConnInfo,
        alpn_h2: Option<bool>,
        idle: Duration,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut builder = auto::Builder::new(exec::TreeExecutor(self.tree.clone()));
        builder
            .http1()
            .timer(TokioTimer::new())
            // hyper runs this timer from the moment it waits for a head,
            // so it also ends idle keep-alive connections: it is the idle
            // timeout (a slow head gets no longer than an idle client).
            .header_read_timeout(idle)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_STREAMS);
        let builder = match alpn_h2 {
            Some(true) => builder.http2_only(),
            Some(false) => builder.http1_only(),
            None => builder,
        };
        let activity = info.activity.clone();
        let cancel = info.cancel.clone();
        let this = self.clone();
        let service = service_fn(move |req| {
            let this = this.clone();
            let info = info.clone();
            async move { Ok::<_, Infallible>(this.handle(req, info).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        loop {
            let idle_at = activity.idle_deadline(idle);
            let recheck = idle_at.unwrap_or_else(|| Instant::now() + idle);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(error) = r {
                        debug!(error = %error, "A client connection ended with an error.");
                    }
                    return;
                }
                () = tokio::time::sleep_until(recheck) => {
                    if activity.idle_deadline(idle).is_some_and(|at| at <= Instant::now()) {
                        break;
                    }
                }
                () = cancel.cancelled() => break,
            }
        }
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
    }

    /// Sets the connection cap of listeners served after this call
    /// (default [`MAX_CONNECTIONS`], at least 1).
    pub fn set_max_connections(&self, cap: usize) {
        self.max_connections.store(cap, Ordering::Relaxed);
    }

    /// Every current route's counters since the agent started.
    pub fn route_stats(&self) -> Vec<RouteStats> {
        let table = self.table();
        let mut stats: Vec<RouteStats> = table
            .entries()
            .map(|e| e.stats.snapshot(&e.route.domain, &e.route.path))
            .collect();
        stats.sort_by(|a, b| (&a.domain, &a.path).cmp(&(&b.domain, &b.path)));
        stats
    }

    /// The ACME challenge tokens answered now.
    pub fn challenge_tokens(&self) -> Vec<String> {
        let mut tokens: Vec<String> = self.table().challenges.keys().cloned().collect();
        tokens.sort();
        tokens
    }

    /// The generation routed by now.
    pub fn generation(&self) -> u64 {
        self.table().generation
    }
}
