//! What the coordinator's tasks share: config, identity, store, and the
//! registry of live agent sessions.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::identity::Identity;
use crate::store::Store;

/// The agent binary the coordinator serves to new servers.
#[derive(Debug, Clone)]
pub struct AgentBinary {
    pub path: PathBuf,
    pub sha256_hex: String,
}

/// Shared coordinator state.
pub struct AppState {
    pub config: Config,
    pub identity: Identity,
    pub store: Arc<dyn Store>,
    pub sessions: Sessions,
    /// Node ids that were removed: refused at TLS.
    pub revoked: Arc<RwLock<HashSet<String>>>,
    pub agent_binary: Option<AgentBinary>,
    /// Cancelled when the coordinator shuts down.
    pub shutdown: CancellationToken,
    pub metrics: LinkMetrics,
    /// Every node's plan, pushed to its session when it changes.
    pub plans: crate::plans::PlanBook,
    /// What each node last reported about its containers.
    pub observed: Arc<crate::observed::ObservedBook>,
    /// Held by a deploy or stack removal while it reads and rewrites node plans.
    pub deploy_lock: tokio::sync::Mutex<()>,
    /// Each stack's latest rolling update.
    pub rollouts: crate::deploy::rollout::RolloutBook,
    pub events: crate::events::EventLog,
    pub secret_key: Arc<crate::secrets::SecretKey>,
    /// When this coordinator process started (Unix ms). A host's grace
    /// period never ends before this plus the grace: agents need a moment
    /// to reconnect, and a coordinator outage must not make every host
    /// look lost.
    pub started_at_ms: i64,
}

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(std::sync::atomic::AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Counts of links closed or refused for cause.
#[derive(Debug, Default)]
pub struct LinkMetrics {
    /// Messages that were not valid envelopes.
    pub malformed: Counter,
    /// Frames or messages over the size limits.
    pub oversized: Counter,
    /// TLS handshakes on the link refused (no, foreign or revoked certificate).
    pub tls_refused: Counter,
    /// Join requests refused.
    pub joins_refused: Counter,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// One live agent connection.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub conn_id: u64,
    pub connected_at_ms: u64,
    pub remote_addr: String,
    pub close: CancellationToken,
}

/// The live sessions, one per node at most: a new connection for a node
/// replaces (and closes) the old one.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, SessionInfo>>,
}

impl Sessions {
    /// Registers a session, closing any older one of the same node.
    pub fn insert(&self, node_id: &str, info: SessionInfo) {
        let old = self.lock().insert(node_id.to_owned(), info);
        if let Some(old) = old {
            old.close.cancel();
        }
    }

    /// Removes the session if it is still `conn_id`'s.
    pub fn remove(&self, node_id: &str, conn_id: u64) {
        let mut map = self.lock();
        if map.get(node_id).is_some_and(|s| s.conn_id == conn_id) {
            map.remove(node_id);
        }
    }

    /// Closes a node's session, if any.
    pub fn close(&self, node_id: &str) -> bool {
        match self.lock().remove(node_id) {
            Some(s) => {
                s.close.cancel();
                true
            }
            None => false,
        }
    }

    pub fn get(&self, node_id: &str) -> Option<SessionInfo> {
        self.lock().get(node_id).cloned()
    }

    pub fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionInfo>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every operation is a single insert or remove), so recover from poisoning.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Now, in Unix milliseconds, as stored.
pub fn now_ms() -> i64 {
    i64::try_from(skiff_shared::unix_millis()).unwrap_or(i64::MAX)
}
