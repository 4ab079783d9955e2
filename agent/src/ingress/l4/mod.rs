//! Layer-4 forwarding of published ports: every edge host listens on the
//! port and forwards to a published replica of the service.
//!
//! - [`tcp`]: a connection per client connection, spliced both ways.
//! - [`udp`]: a session per client address.
//!
//! The forwarders read the [`Table`] in force when a connection (or a
//! session) starts, so a new one never goes to an endpoint the section no
//! longer lists; one that started keeps its endpoint until the endpoint's
//! drain ends ([`super::balance::Pick::leaving`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use skiff_shared::sections::ingress::{
    IngressSection, PortRule, PortStats, Protocol, ProxySettings,
};
use skiff_shared::tasks::TaskTree;

use super::balance::Pools;

pub mod tcp;
pub mod udp;

/// The forwarders' bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// TCP connections at once per port; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// UDP sessions per port; past it the least recently used one ends.
    pub max_sessions: usize,
    /// The longest a connect to an endpoint may take.
    pub connect_timeout: Duration,
    /// The longest a client may take to send its PROXY protocol header.
    pub header_timeout: Duration,
    /// A UDP session with no datagram either way for this long ends.
    pub udp_idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_sessions: 4096,
            connect_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(5),
            udp_idle: Duration::from_secs(60),
        }
    }
}

/// The routing in force.
#[derive(Debug, Default)]
pub struct Table {
    pub generation: u64,
    pub node: String,
    pub settings: ProxySettings,
    pub rules: BTreeMap<(u16, Protocol), PortRule>,
    pub pools: Arc<Pools>,
}

impl Table {
    pub fn new(section: &IngressSection, pools: Arc<Pools>) -> Self {
        Self {
            generation: section.generation,
            node: section.node.clone(),
            settings: section.settings.clone(),
            rules: section
                .ports
                .iter()
                .map(|r| ((r.port, r.protocol), r.clone()))
                .collect(),
            pools,
        }
    }
}

/// A port's counters.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub failed: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// What every forwarder shares: the table in force and the counters.
#[derive(Debug)]
pub struct Shared {
    table: RwLock<Arc<Table>>,
    counters: Mutex<BTreeMap<(u16, Protocol), Arc<Counters>>>,
    pub limits: Limits,
    /// Where connections run.
    pub tree: TaskTree,
}

impl Shared {
    pub fn new(tree: TaskTree, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            table: RwLock::default(),
            counters: Mutex::default(),
            limits,
            tree,
        })
    }

    /// The table in force.
    pub fn table(&self) -> Arc<Table> {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `table` in force: from now on, new connections route by it.
    pub fn set_table(&self, table: Table) {
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
    }

    /// A port's counters (made on first use).
    pub fn counters(&self, port: u16, protocol: Protocol) -> Arc<Counters> {
        self.counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((port, protocol))
            .or_default()
            .clone()
    }

    /// The counters of the ports the table publishes.
    pub fn port_stats(&self) -> Vec<PortStats> {
        let table = self.table();
        let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        table
            .rules
            .keys()
            .map(|&(port, protocol)| {
                let c = counters.get(&(port, protocol));
                let get =
                    |f: fn(&Counters) -> &AtomicU64| c.map_or(0, |c| f(c).load(Ordering::Relaxed));
                PortStats {
                    port,
                    protocol,
                    connections: get(|c| &c.connections),
                    failed: get(|c| &c.failed),
                    bytes_in: get(|c| &c.bytes_in),
                    bytes_out: get(|c| &c.bytes_out),
                }
            })
            .collect()
    }
}

/// Resolves once `ticks` has not moved for `idle`.
pub(crate) async fn idle(ticks: &AtomicU64, idle: Duration) {
    let idle = idle.max(Duration::from_millis(100));
    let mut last = ticks.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(idle).await;
        let now = ticks.load(Ordering::Relaxed);
        if now == last {
            return;
        }
        last = now;
    }
}

#[cfg(test)]
mod tests;
