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
    /// Every node's desired containers, pushed to its session when they change.
    pub plans: PlanBook,
    /// What each node last reported about its containers.
    pub observed: ObservedBook,
    /// Held by a deploy or stack removal while it reads and rewrites node plans.
    pub deploy_lock: tokio::sync::Mutex<()>,
    /// Each stack's latest rolling update.
    pub rollouts: crate::deploy::rollout::RolloutBook,
    pub events: crate::events::EventLog,
    pub secret_key: crate::secrets::SecretKey,
    /// Bumped whenever registry credentials are set or removed: sessions
    /// then send their agent the credentials its plan needs again.
    pub registry_changes: tokio::sync::watch::Sender<u64>,
    /// When this coordinator process started (Unix ms). A host's grace
    /// period never ends before this plus the grace: agents need a moment
    /// to reconnect, and a coordinator outage must not make every host
    /// look lost.
    pub started_at_ms: i64,
}

/// The last observed state each agent reported, with when it arrived.
#[derive(Debug, Default)]
pub struct ObservedBook {
    inner: Mutex<HashMap<String, (u64, Arc<skiff_shared::workload::ObservedState>)>>,
}

impl ObservedBook {
    pub fn set(&self, node_id: &str, state: skiff_shared::workload::ObservedState) {
        let mut map = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.insert(
            node_id.to_owned(),
            (skiff_shared::unix_millis(), Arc::new(state)),
        );
    }

    /// The node's last report and its arrival time (Unix ms).
    pub fn get(&self, node_id: &str) -> Option<(u64, Arc<skiff_shared::workload::ObservedState>)> {
        let map = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(node_id).cloned()
    }
}

/// A node's desired containers at a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    pub generation: u64,
    pub containers: Vec<skiff_shared::workload::ContainerSpec>,
}

impl Default for NodePlan {
    /// What a node gets before anything was decided for it.
    fn default() -> Self {
        Self {
            generation: 1,
            containers: Vec::new(),
        }
    }
}

/// The latest plan of each node, one watch channel per node: a session
/// subscribes to its node's and sends each new plan as it is published;
/// intermediate plans a slow agent missed are skipped, the latest wins.
#[derive(Debug, Default)]
pub struct PlanBook {
    inner: Mutex<HashMap<String, tokio::sync::watch::Sender<Arc<NodePlan>>>>,
}

impl PlanBook {
    fn sender(&self, node_id: &str) -> tokio::sync::watch::Sender<Arc<NodePlan>> {
        let mut map = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(node_id.to_owned())
            .or_insert_with(|| tokio::sync::watch::Sender::new(Arc::new(NodePlan::default())))
            .clone()
    }

    /// The node's current plan, and a receiver that sees every later one.
    pub fn subscribe(&self, node_id: &str) -> tokio::sync::watch::Receiver<Arc<NodePlan>> {
        self.sender(node_id).subscribe()
    }

    /// The node's current plan.
    pub fn get(&self, node_id: &str) -> Arc<NodePlan> {
        self.sender(node_id).borrow().clone()
    }

    /// Nodes whose plan runs at least one container.
    pub fn nodes_with_containers(&self) -> Vec<String> {
        let map = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter()
            .filter(|(_, tx)| !tx.borrow().containers.is_empty())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Publishes a node's new plan (already stored).
    pub fn publish(&self, node_id: &str, plan: NodePlan) {
        self.sender(node_id).send_replace(Arc::new(plan));
    }
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
