//! Connections to endpoints: one hyper client (a keep-alive pool) per
//! endpoint address, so an endpoint that leaves the table takes its idle
//! connections with it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddrV4;
use std::sync::Mutex;
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioTimer;
use skiff_shared::tasks::TaskTree;

use super::body::ProxyBody;
use super::exec::TreeExecutor;

/// How long connecting to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle pooled connection is kept: less than common servers'
/// own keep-alive timeouts (Node.js closes after 5 s), so that the proxy
/// closes first and rarely sends a request on a connection the endpoint
/// is closing.
const POOL_IDLE: Duration = Duration::from_secs(4);
/// The most idle pooled connections per endpoint.
const POOL_MAX_IDLE: usize = 256;

pub(super) type UpstreamClient = Client<HttpConnector, ProxyBody>;

/// The clients by endpoint.
#[derive(Debug)]
pub(super) struct Upstreams {
    tree: TaskTree,
    clients: Mutex<HashMap<SocketAddrV4, UpstreamClient>>,
}

impl Upstreams {
    pub fn new(tree: TaskTree) -> Self {
        Self {
            tree,
            clients: Mutex::default(),
        }
    }

    /// The client of `addr`, made on first use.
    pub fn client(&self, addr: SocketAddrV4) -> UpstreamClient {
        let mut clients = match self.clients.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        clients
            .entry(addr)
            .or_insert_with(|| {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
                connector.set_nodelay(true);
                Client::builder(TreeExecutor(self.tree.clone()))
                    .pool_idle_timeout(POOL_IDLE)
                    .pool_max_idle_per_host(POOL_MAX_IDLE)
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .build(connector)
            })
            .clone()
    }

    /// Drops the clients of endpoints not in `keep`: their idle pooled
    /// connections close; requests in flight on them finish.
    pub fn retain(&self, keep: &HashSet<SocketAddrV4>) {
        let mut clients = match self.clients.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        clients.retain(|a, _| keep.contains(a));
    }
}
