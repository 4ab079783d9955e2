//! Weave attachment (mesh mode `weave`): on hosts that already run Weave
//! Net, every running Skiff container on a stack network is also attached
//! to Weave's `weave` bridge, with an address of the network's
//! cluster-wide subnet that Weave's IPAM allocates (cluster-wide, so no
//! address is handed out twice across hosts), through Weave's HTTP API
//! (`weave_api` in the agent's config, default [`DEFAULT_API`]).
//!
//! The networks controller drives it within its rounds: it observes this
//! node's containers, their `ethwe<id>` interfaces and the `weave` bridge,
//! [`diff`] decides, and [`Weave::apply`] attaches (a veth pair: the host
//! end on `weave`, the other end `ethwe<id>` in the container with its
//! address, undone if a step fails) and releases the addresses of
//! containers that are gone. The containers it asked addresses for are
//! recorded (`<data_dir>/weave/allocated`, before asking) so that a
//! restarted agent still releases them; an attached container is left as
//! it is. The addresses found are handed to the containers controller,
//! which reports them as the containers' addresses on those networks.
//!
//! - [`diff`]: the pure decisions. `api`: Weave's HTTP API. `link`: the
//!   veth pair and the container's interfaces through `ip` and `nsenter`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use skiff_shared::workload::ContainerAddress;
use tokio::sync::watch;
use tracing::{info, warn};

pub mod api;
pub mod diff;
mod link;

pub use api::ApiUrl;
pub use diff::Action;
pub use link::bridge_mtu;

/// Weave Net's bridge.
pub const BRIDGE: &str = "weave";
/// Where Weave Net's router serves its HTTP API by default.
pub const DEFAULT_API: &str = "http://127.0.0.1:6784";

/// The agent's Weave attachment: where the API is, what was allocated,
/// and the addresses found (shared with the containers controller).
#[derive(Debug)]
pub struct Weave {
    api: ApiUrl,
    /// The record of containers Weave may hold addresses for; none in
    /// tests without a data dir.
    record: Option<PathBuf>,
    addresses: Mutex<BTreeMap<String, Vec<ContainerAddress>>>,
    /// The engine names of the stack networks attached through Weave
    /// here: a container's address there is Weave's or none.
    networks: Mutex<BTreeSet<String>>,
    /// Bumped whenever `addresses` or `networks` change.
    changed: watch::Sender<u64>,
}

impl Default for Weave {
    fn default() -> Self {
        Self::new(
            ApiUrl::parse(DEFAULT_API).unwrap_or_else(|_| unreachable!()),
            None,
        )
    }
}

impl Weave {
    pub fn new(api: ApiUrl, data_dir: Option<&std::path::Path>) -> Self {
        Self {
            api,
            record: data_dir.map(|d| d.join("weave").join("allocated")),
            addresses: Mutex::default(),
            networks: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }

    pub fn api(&self) -> &ApiUrl {
        &self.api
    }

    /// The addresses found for a container on Weave networks.
    pub fn addresses_of(&self, container: &str) -> Vec<ContainerAddress> {
        self.addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(container)
            .cloned()
            .unwrap_or_default()
    }

    /// Wakes whoever reports addresses when they change.
    pub fn changes(&self) -> futures_util::stream::BoxStream<'static, ()> {
        let rx = self.changed.subscribe();
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        }))
    }

    /// Whether the engine network `engine_name` is attached through
    /// Weave: its engine address is no cluster address.
    pub fn attaches(&self, engine_name: &str) -> bool {
        self.networks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(engine_name)
    }

    /// Replaces the networks attached through Weave (see [`diff::engine_names`]).
    pub fn set_networks(&self, engine_names: BTreeSet<String>) {
        let mut n = self.networks.lock().unwrap_or_else(PoisonError::into_inner);
        if *n != engine_names {
            *n = engine_names;
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Replaces the addresses found (from a round's observation).
    pub fn set_addresses(&self, by_container: BTreeMap<String, Vec<ContainerAddress>>) {
        let mut a = self
            .addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *a != by_container {
            *a = by_container;
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Adds addresses found to those known.
    pub fn add_addresses(&self, by_container: BTreeMap<String, Vec<ContainerAddress>>) {
        for (container, list) in by_container {
            for a in list {
                self.add_address(&container, a);
            }
        }
    }

    fn add_address(&self, container: &str, address: ContainerAddress) {
        let mut a = self
            .addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let list = a.entry(container.to_owned()).or_default();
        list.retain(|x| x.network != address.network);
        list.push(address);
        list.sort();
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The containers Weave may hold addresses for.
    pub fn allocated(&self) -> BTreeSet<String> {
        let Some(path) = &self.record else {
            return BTreeSet::new();
        };
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write_record(&self, ids: &BTreeSet<String>) -> Result<(), String> {
        let Some(path) = &self.record else {
            return Ok(());
        };
        let fail = |e: std::io::Error| format!("writing {}: {e}", path.display());
        if let Some(dir) = path.parent() {
            skiff_shared::files::create_private_dir(dir).map_err(fail)?;
        }
        let bytes = serde_json::to_vec(ids).map_err(|e| e.to_string())?;
        skiff_shared::files::write_atomic(path, &bytes, 0o600).map_err(fail)
    }

    /// The Weave part of what the host has now, given the `weave`
    /// bridge's MTU (see [`bridge_mtu`]) and this node's containers (with
    /// their pids only when the bridge is there). Without the bridge no
    /// container is looked into, and the API is asked only when there are
    /// addresses to release.
    pub async fn observe(
        &self,
        bridge_mtu: Option<u32>,
        containers: Vec<diff::Container>,
    ) -> diff::Observed {
        let allocated = self.allocated();
        let mut interfaces = BTreeMap::new();
        if bridge_mtu.is_some() {
            for c in &containers {
                if let Some(pid) = c.pid
                    && let Ok(list) = link::interfaces(pid).await
                {
                    interfaces.insert(c.id.clone(), list);
                }
            }
        }
        let api_error = if bridge_mtu.is_some() || !allocated.is_empty() {
            api::status(&self.api).await.err()
        } else {
            None
        };
        diff::Observed {
            containers,
            interfaces,
            allocated,
            bridge_mtu,
            api_error,
        }
    }

    /// Makes one change.
    ///
    /// # Errors
    /// What failed, naming the container and the fix where there is one.
    pub async fn apply(&self, action: &Action) -> Result<(), String> {
        match action {
            Action::Attach { target, mtu } => {
                let short = target.container.get(..12).unwrap_or(&target.container);
                link::remove(target).await;
                let mut ids = self.allocated();
                if ids.insert(target.container.clone()) {
                    self.write_record(&ids)?;
                }
                let address = api::allocate(&self.api, &target.container, target.subnet)
                    .await
                    .map_err(|e| {
                        format!(
                            "Weave Net's API at {} gave container {short} no address of {}: {e}",
                            self.api, target.subnet
                        )
                    })?;
                link::attach(target, address, *mtu).await.map_err(|e| {
                    format!("attaching container {short} to Weave's bridge {BRIDGE:?} with {address}: {e}")
                })?;
                info!(container = %short, interface = %target.interface, address = %address, "Attached to Weave Net.");
                self.add_address(
                    &target.container,
                    ContainerAddress {
                        network: target.network.clone(),
                        address: address.addr().to_string(),
                    },
                );
                Ok(())
            }
            Action::Release { container } => {
                let short = container.get(..12).unwrap_or(container);
                api::release(&self.api, container).await.map_err(|e| {
                    format!(
                        "Weave Net's API at {} did not release container {short}'s addresses: {e}",
                        self.api
                    )
                })?;
                let mut ids = self.allocated();
                ids.remove(container);
                self.write_record(&ids)?;
                info!(container = %short, "Released its Weave addresses.");
                Ok(())
            }
        }
    }

    /// Applies every action; the errors of those that failed, with the
    /// stack network each was for (none for releases).
    pub async fn apply_all(&self, actions: &[Action]) -> Vec<(Option<(String, String)>, String)> {
        let mut failed = Vec::new();
        for a in actions {
            if let Err(e) = self.apply(a).await {
                warn!(error = %e, "A Weave change failed.");
                let network = match a {
                    Action::Attach { target, .. } => {
                        Some((target.stack.clone(), target.network.clone()))
                    }
                    Action::Release { .. } => None,
                };
                failed.push((network, e));
            }
        }
        failed
    }
}
