//! Logs, the coordinator's side: the cluster's sinks (kept in the store's
//! meta as JSON), each stack's own sinks (from its current release), the
//! file settings of `[logs]`, the hosts' reports for `skiff sink ls`, and
//! the `logs` section every host gets ([`section`], pure). A change of
//! sinks fires [`LogBook::watch`]: the `logs-replan` task then builds every
//! node's plan again.
//!
//! `query` serves `skiff logs`: it asks every host of a stack through the
//! link and merges their answers in time order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use skiff_shared::sections::logs::{FileSettings, LogsReport, LogsSection, SinkError, SinkSpec};
use skiff_shared::workload::ContainerSpec;
use tokio::sync::watch;

use crate::store::{Store, StoreError};

pub mod config;
pub mod query;

/// Where the cluster's sinks are kept in the store's meta.
const SINKS_KEY: &str = "logs.sinks";
/// Most cluster sinks.
pub const MAX_SINKS: usize = 32;
/// Most `skiff logs` streams served at once.
pub const MAX_LOG_STREAMS: usize = 64;

/// Why a change of sinks was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("{0}")]
    Invalid(#[from] SinkError),
    #[error("the cluster has {MAX_SINKS} sinks already: remove one first")]
    TooMany,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The logs settings of the cluster and the hosts' reports.
#[derive(Debug)]
pub struct LogBook {
    store: Arc<dyn Store>,
    files: FileSettings,
    /// The cluster's sinks, by name.
    sinks: RwLock<BTreeMap<String, SinkSpec>>,
    /// Stacks that name their own sinks.
    stacks: RwLock<BTreeMap<String, Vec<SinkSpec>>>,
    /// Node names by id: what every record a host ships carries.
    names: RwLock<HashMap<String, String>>,
    /// The last report of every node.
    reports: RwLock<BTreeMap<String, LogsReport>>,
    /// One change of cluster sinks at a time.
    edit: tokio::sync::Mutex<()>,
    changed: watch::Sender<u64>,
    /// One permit per `skiff logs` stream.
    streams: Arc<tokio::sync::Semaphore>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

impl LogBook {
    /// Loads the cluster's sinks and the node names.
    ///
    /// # Errors
    /// The store failed, or its sinks do not parse.
    pub async fn load(store: Arc<dyn Store>, files: FileSettings) -> Result<Self, StoreError> {
        let sinks: Vec<SinkSpec> = match store.meta(SINKS_KEY).await? {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("{SINKS_KEY}: {e}")))?,
            None => Vec::new(),
        };
        let names = store
            .nodes(true)
            .await?
            .into_iter()
            .map(|n| (n.id, n.name))
            .collect();
        Ok(Self {
            store,
            files,
            sinks: RwLock::new(sinks.into_iter().map(|s| (s.name.clone(), s)).collect()),
            stacks: RwLock::default(),
            names: RwLock::new(names),
            reports: RwLock::default(),
            edit: tokio::sync::Mutex::new(()),
            changed: watch::Sender::new(0),
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_LOG_STREAMS)),
        })
    }

    pub fn files(&self) -> &FileSettings {
        &self.files
    }

    /// The cluster's sinks, by name.
    pub fn sinks(&self) -> Vec<SinkSpec> {
        read(&self.sinks).values().cloned().collect()
    }

    /// Every stack's own sinks.
    pub fn stack_sinks(&self) -> BTreeMap<String, Vec<SinkSpec>> {
        read(&self.stacks).clone()
    }

    /// Adds or replaces a cluster sink, after checking it; returns the sink
    /// it replaced.
    ///
    /// # Errors
    /// The sink is invalid, one too many, or the store failed: nothing
    /// changed.
    pub async fn put(&self, sink: SinkSpec) -> Result<Option<SinkSpec>, LogsError> {
        sink.check()?;
        let _guard = self.edit.lock().await;
        let mut next = read(&self.sinks).clone();
        let old = next.insert(sink.name.clone(), sink);
        if old.is_none() && next.len() > MAX_SINKS {
            return Err(LogsError::TooMany);
        }
        self.save(next).await?;
        Ok(old)
    }

    /// Removes a cluster sink; `None` when there is none of that name.
    ///
    /// # Errors
    /// The store failed: nothing changed.
    pub async fn remove(&self, name: &str) -> Result<Option<SinkSpec>, LogsError> {
        let _guard = self.edit.lock().await;
        let mut next = read(&self.sinks).clone();
        let Some(old) = next.remove(name) else {
            return Ok(None);
        };
        self.save(next).await?;
        Ok(Some(old))
    }

    async fn save(&self, next: BTreeMap<String, SinkSpec>) -> Result<(), LogsError> {
        let list: Vec<&SinkSpec> = next.values().collect();
        let text = serde_json::to_string(&list).map_err(StoreError::Encode)?;
        self.store.set_meta(SINKS_KEY, &text).await?;
        *write(&self.sinks) = next;
        self.poke();
        Ok(())
    }

    /// Sets a stack's own sinks from its release (`None`: the cluster's);
    /// fires the watch when they changed.
    pub fn set_stack(&self, stack: &str, sinks: Option<Vec<SinkSpec>>) {
        let changed = {
            let mut stacks = write(&self.stacks);
            let before = stacks.get(stack).cloned();
            match sinks.clone() {
                Some(s) => stacks.insert(stack.to_owned(), s),
                None => stacks.remove(stack),
            };
            before != sinks
        };
        if changed {
            self.poke();
        }
    }

    /// Learns a node's name (at connect); fires the watch when it is new
    /// or changed, so its section carries it.
    pub fn set_name(&self, node_id: &str, name: &str) {
        let old = write(&self.names).insert(node_id.to_owned(), name.to_owned());
        if old.as_deref() != Some(name) {
            self.poke();
        }
    }

    pub fn name(&self, node_id: &str) -> String {
        read(&self.names)
            .get(node_id)
            .cloned()
            .unwrap_or_else(|| node_id.to_owned())
    }

    /// Keeps a host's report.
    pub fn report(&self, node_id: &str, report: LogsReport) {
        write(&self.reports).insert(node_id.to_owned(), report);
    }

    /// Every host's last report, by node name.
    pub fn reports(&self) -> BTreeMap<String, LogsReport> {
        let names = read(&self.names);
        read(&self.reports)
            .iter()
            .map(|(id, r)| {
                (
                    names.get(id).cloned().unwrap_or_else(|| id.clone()),
                    r.clone(),
                )
            })
            .collect()
    }

    /// Forgets a removed node's report.
    pub fn forget(&self, node_id: &str) {
        write(&self.reports).remove(node_id);
    }

    /// The `logs` section of node `node_id` running `containers`.
    pub fn section(&self, node_id: &str, containers: &[ContainerSpec]) -> LogsSection {
        section(
            &self.name(node_id),
            &self.files,
            &self.sinks(),
            &read(&self.stacks),
            containers,
        )
    }

    /// A permit to serve one more `skiff logs` stream, if there is room.
    pub fn stream_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.streams.clone().try_acquire_owned().ok()
    }

    /// Fires whenever the sections change.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn poke(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// A host's `logs` section: the cluster's sinks, and the own sinks of
/// every stack that has containers on it (pure).
pub fn section(
    host: &str,
    files: &FileSettings,
    sinks: &[SinkSpec],
    stacks: &BTreeMap<String, Vec<SinkSpec>>,
    containers: &[ContainerSpec],
) -> LogsSection {
    let here: BTreeSet<&str> = containers.iter().map(|c| c.stack.as_str()).collect();
    LogsSection {
        host: host.to_owned(),
        files: files.clone(),
        sinks: sinks.to_vec(),
        stack_sinks: stacks
            .iter()
            .filter(|(stack, _)| here.contains(stack.as_str()))
            .map(|(stack, s)| (stack.clone(), s.clone()))
            .collect(),
    }
}

/// The sinks of a release's services: the stack's own, if it names any.
pub fn release_sinks(defs: &[crate::deploy::resolve::ServiceDef]) -> Option<Vec<SinkSpec>> {
    defs.first().and_then(|d| d.log_sinks.clone())
}

#[cfg(test)]
mod tests;
