//! The live agent sessions, one per node, and the nodes refused at TLS
//! because they were removed from the cluster.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use tokio_util::sync::CancellationToken;

/// One live agent connection.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub conn_id: u64,
    pub connected_at_ms: u64,
    pub remote_addr: String,
    /// Cancelled to close the connection.
    pub close: CancellationToken,
    /// What the agent announced it runs.
    pub capabilities: Vec<String>,
}

/// The live sessions, one per node at most: a new connection for a node
/// replaces (and closes) the old one.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, SessionInfo>>,
    /// Removed nodes: refused at TLS.
    revoked: RwLock<HashSet<String>>,
}

impl Sessions {
    /// No sessions yet; `revoked` are refused from the start.
    pub fn new(revoked: HashSet<String>) -> Self {
        Self {
            inner: Mutex::default(),
            revoked: RwLock::new(revoked),
        }
    }

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

    /// Refuses the node at TLS from now on, then closes its session: a
    /// reconnect racing the removal is refused.
    pub fn revoke(&self, node_id: &str) {
        self.revoked
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node_id.to_owned());
        if let Some(s) = self.lock().remove(node_id) {
            s.close.cancel();
        }
    }

    pub fn is_revoked(&self, node_id: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(node_id)
    }

    pub fn get(&self, node_id: &str) -> Option<SessionInfo> {
        self.lock().get(node_id).cloned()
    }

    /// The connected nodes whose agent announced `capability`.
    pub fn with_capability(&self, capability: &str) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, s)| s.capabilities.iter().any(|c| c == capability))
            .map(|(id, _)| id.clone())
            .collect()
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

    fn lock(&self) -> MutexGuard<'_, HashMap<String, SessionInfo>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every operation is a single insert or remove), so recover from poisoning.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
