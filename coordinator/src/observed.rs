//! What each agent last reported about its containers, with when it
//! arrived, and a signal for whoever waits on a change (rollouts).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use skiff_shared::workload::ObservedState;
use tokio::sync::watch;

/// The last observed state of each node.
#[derive(Debug)]
pub struct ObservedBook {
    inner: Mutex<HashMap<String, (u64, Arc<ObservedState>)>>,
    changes: watch::Sender<u64>,
}

impl Default for ObservedBook {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            changes: watch::Sender::new(0),
        }
    }
}

impl ObservedBook {
    pub fn set(&self, node_id: &str, state: ObservedState) {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                node_id.to_owned(),
                (skiff_shared::unix_millis(), Arc::new(state)),
            );
        self.changes.send_modify(|n| *n += 1);
    }

    /// The node's last report and its arrival time (Unix ms).
    pub fn get(&self, node_id: &str) -> Option<(u64, Arc<ObservedState>)> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node_id)
            .cloned()
    }

    /// Changes with every report.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
