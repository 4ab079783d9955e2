//! The live agent sessions, one per node, and the nodes refused at TLS
//! because they were removed from the cluster.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Chunks of one query's answer waiting for their reader; a reader that
/// falls further behind has its query cut (the agent is told to stop).
pub const QUERY_ANSWER_QUEUE: usize = 16;

/// A question for a section's controller on one host, handed to its
/// session: the session sends it with a fresh id and routes the answers.
#[derive(Debug)]
pub struct QueryRequest {
    pub section: String,
    pub body: serde_json::Value,
    /// Every part of the answer in order; `Err` when the link ended the
    /// query. Closed without the section's end: the query was cut (the
    /// reader was too slow, or the link went away).
    pub answers: mpsc::Sender<Result<serde_json::Value, String>>,
}

/// Why a query could not be asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("host {0} is not connected")]
    NotConnected(String),
    #[error("host {0} runs an agent without {1}: upgrade its agent")]
    Unsupported(String, String),
    #[error("host {0} has too many queries waiting to be sent; retry")]
    Busy(String),
}

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
    /// Where queries for this agent go (none in tests without a link).
    pub queries: Option<mpsc::Sender<QueryRequest>>,
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

    /// Asks `section` on node `node_id` (`node_name` for messages) a
    /// question: the answers come on the receiver until the section's end
    /// or until the link cuts the query. Only agents that announced
    /// `capability` are asked.
    ///
    /// # Errors
    /// The node is not connected, its agent lacks the capability, or its
    /// session has too many queries waiting.
    pub fn query(
        &self,
        node_id: &str,
        node_name: &str,
        capability: &str,
        section: &str,
        body: serde_json::Value,
    ) -> Result<mpsc::Receiver<Result<serde_json::Value, String>>, QueryError> {
        let Some(info) = self.get(node_id) else {
            return Err(QueryError::NotConnected(node_name.to_owned()));
        };
        let queries = match &info.queries {
            Some(q) if info.capabilities.iter().any(|c| c == capability) => q,
            _ => {
                return Err(QueryError::Unsupported(
                    node_name.to_owned(),
                    capability.to_owned(),
                ));
            }
        };
        let (tx, rx) = mpsc::channel(QUERY_ANSWER_QUEUE);
        queries
            .try_send(QueryRequest {
                section: section.to_owned(),
                body,
                answers: tx,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => QueryError::Busy(node_name.to_owned()),
                mpsc::error::TrySendError::Closed(_) => {
                    QueryError::NotConnected(node_name.to_owned())
                }
            })?;
        Ok(rx)
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
