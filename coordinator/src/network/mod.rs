//! The cluster network: the cluster range, fixed when the cluster is
//! created; for every stack network with containers somewhere, a
//! cluster-wide id and a subnet of the range, and on every host where it
//! has containers the pieces of that subnet the host leases; every host's
//! address and key on the mesh. It builds each host's `networks` and
//! `mesh` sections ([`crate::sections`]).
//!
//! [`ClusterNetwork::sync`] brings the records in line with the containers
//! every host will run (called by deploys and by the replanner, under the
//! plan book's lock). What hosts report (mesh keys, underlay MTUs, peers'
//! state, networks they could not make) comes in through
//! [`ClusterNetwork::report_mesh`] and [`ClusterNetwork::report_networks`];
//! [`ClusterNetwork::watch`] changes when every host needs a new plan.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ipnet::Ipv4Net;
use skiff_shared::sections::mesh::{
    DEFAULT_UNDERLAY_MTU, MeshMode, MeshPeer, MeshReport, MeshSection,
};
use skiff_shared::sections::networks::{
    Attachment, ClusterNet, NetworkSpec, NetworksReport, NetworksSection,
};
use skiff_shared::workload::ContainerSpec;
use tokio::sync::watch;

use crate::observed::ObservedBook;
use crate::store::{DeployStore, StoreError};

pub mod ipam;
mod sync;

use ipam::Range;

/// How the cluster network is set up (`[network]` in the config; the
/// range only counts when the cluster is created).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    pub range: Range,
    pub mesh: MeshMode,
    pub port: u16,
    /// The prefix of each stack network's cluster-wide subnet.
    pub network_prefix: u8,
    /// The smallest piece of a network's subnet a host leases.
    pub lease_prefix: u8,
    /// The underlay MTU to plan for; none: the smallest the hosts report.
    pub underlay_mtu: Option<u32>,
}

impl NetworkSettings {
    /// The defaults for `range` and `mesh`.
    pub fn new(range: Range, mesh: MeshMode) -> Self {
        Self {
            range,
            mesh,
            port: mesh.default_port(),
            network_prefix: ipam::DEFAULT_NETWORK_PREFIX,
            lease_prefix: ipam::DEFAULT_LEASE_PREFIX,
            underlay_mtu: None,
        }
    }
}

/// Why the records could not follow the containers.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "the cluster range {range} has no free /{prefix} left for network {network}: remove stacks that are no longer needed (`skiff stack rm`), or give stacks fewer networks"
    )]
    RangeFull {
        range: Ipv4Net,
        prefix: u8,
        network: String,
    },
    #[error(
        "network {network} ({subnet}) has no room for another /{prefix} on {node}: it spans too many hosts or replicas; spread fewer replicas of the stack, or set [network] network_prefix lower (a larger subnet) and remove and deploy the stack again"
    )]
    NetworkFull {
        network: String,
        subnet: Ipv4Net,
        prefix: u8,
        node: String,
    },
    #[error(
        "the cluster range {range} has no free host address left for {node}: remove nodes that left for good (`skiff node rm`)"
    )]
    NoHostAddress { range: Ipv4Net, node: String },
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// A stack network's cluster-wide record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    id: i64,
    subnet: Ipv4Net,
}

/// A host's place on the mesh, as known now.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Host {
    name: String,
    address: Ipv4Addr,
    public_key: Option<String>,
    /// The MTU of the interface its mesh leaves by, as last reported.
    underlay_mtu: Option<u32>,
    /// Whether its row in the store is up to date.
    stored: bool,
    /// Its underlay address, where its mesh port is reached.
    endpoint: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    /// By (stack, name).
    nets: BTreeMap<(String, String), Net>,
    /// Leases by (network id, node id), in the order they were made.
    leases: BTreeMap<(i64, String), Vec<Ipv4Net>>,
    hosts: BTreeMap<String, Host>,
    /// The last mesh report of each host.
    reports: BTreeMap<String, MeshReport>,
    /// The last networks report of each host.
    problems: BTreeMap<String, NetworksReport>,
    /// Hosts whose own addresses fall in the cluster range: why.
    conflicts: BTreeMap<String, String>,
    /// The underlay MTU the last plans were built for.
    planned_mtu: Option<u32>,
}

/// The cluster network's records, in memory and in the store.
#[derive(Debug)]
pub struct ClusterNetwork {
    settings: NetworkSettings,
    store: Arc<dyn DeployStore>,
    observed: Arc<ObservedBook>,
    state: Mutex<State>,
    /// Bumped when every host needs a new plan.
    changed: watch::Sender<u64>,
}

/// A network as `skiff network ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRecord {
    pub id: i64,
    pub stack: String,
    pub name: String,
    pub subnet: Ipv4Net,
    /// (node id, its leases).
    pub leases: Vec<(String, Vec<Ipv4Net>)>,
    /// (node id, why the host could not make it).
    pub problems: Vec<(String, String)>,
}

/// A host as `skiff network show` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    pub node_id: String,
    pub name: String,
    pub address: Ipv4Addr,
    pub endpoint: Option<String>,
    pub public_key: Option<String>,
    pub report: Option<MeshReport>,
    pub conflict: Option<String>,
    pub firewall_error: Option<String>,
}

impl ClusterNetwork {
    /// Loads the records.
    ///
    /// # Errors
    /// The store failed, or holds a subnet or address that does not parse.
    pub async fn load(
        settings: NetworkSettings,
        store: Arc<dyn DeployStore>,
        observed: Arc<ObservedBook>,
    ) -> Result<Self, StoreError> {
        let mut state = State::default();
        let corrupt = |what: &str, v: &str| StoreError::Corrupt(format!("{what} {v:?}"));
        for n in store.cluster_networks().await? {
            let subnet = n
                .subnet
                .parse()
                .map_err(|_| corrupt("network subnet", &n.subnet))?;
            state
                .nets
                .insert((n.stack, n.name), Net { id: n.id, subnet });
        }
        for l in store.leases().await? {
            let subnet = l
                .subnet
                .parse()
                .map_err(|_| corrupt("leased subnet", &l.subnet))?;
            state
                .leases
                .entry((l.network_id, l.node_id))
                .or_default()
                .push(subnet);
        }
        for h in store.mesh_hosts().await? {
            let address = h
                .address
                .parse()
                .map_err(|_| corrupt("mesh address", &h.address))?;
            state.hosts.insert(
                h.node_id,
                Host {
                    name: String::new(),
                    address,
                    public_key: h.public_key,
                    underlay_mtu: h.underlay_mtu,
                    stored: true,
                    endpoint: None,
                },
            );
        }
        // Names and endpoints as the nodes last connected: plans restored
        // at start-up come out as they were sent, peers and all.
        for n in store.nodes(false).await? {
            if let Some(h) = state.hosts.get_mut(&n.id) {
                h.endpoint = endpoint_of(&n);
                h.name = n.name;
            }
        }
        Ok(Self {
            settings,
            store,
            observed,
            state: Mutex::new(state),
            changed: watch::Sender::new(0),
        })
    }

    pub fn settings(&self) -> &NetworkSettings {
        &self.settings
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes when every host needs a new plan.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Asks for every host's plan to be built again (a host joined, left
    /// or came back from another address).
    pub fn poke(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// The underlay MTU plans are built for: the configured one, or the
    /// smallest any live host reported.
    fn underlay_mtu(&self, s: &State) -> u32 {
        self.settings.underlay_mtu.unwrap_or_else(|| {
            s.hosts
                .values()
                .filter_map(|h| h.underlay_mtu)
                .min()
                .unwrap_or(DEFAULT_UNDERLAY_MTU)
        })
    }

    /// The MTU of bridges and mesh devices.
    fn mtu(&self, s: &State) -> u32 {
        self.underlay_mtu(s)
            .saturating_sub(self.settings.mesh.overhead())
    }

    /// A host's `networks` section for `containers`.
    pub fn networks_section(&self, node_id: &str, containers: &[ContainerSpec]) -> NetworksSection {
        let s = self.lock();
        let mut networks: Vec<NetworkSpec> = containers
            .iter()
            .flat_map(|c| {
                c.networks
                    .iter()
                    .filter(|n| !n.external)
                    .map(move |n| (c, n))
            })
            .map(|(c, n)| {
                let mut spec = NetworkSpec::local(&c.stack, &n.name, n.internal);
                if let Some(net) = s.nets.get(&(c.stack.clone(), n.name.clone())) {
                    spec.id = u32::try_from(net.id).unwrap_or(0);
                    spec.subnet = Some(net.subnet.to_string());
                    let leases = s
                        .leases
                        .get(&(net.id, node_id.to_owned()))
                        .cloned()
                        .unwrap_or_default();
                    spec.gateway = leases.first().map(|l| ipam::gateway(l).to_string());
                    spec.leases = leases.iter().map(ToString::to_string).collect();
                }
                spec
            })
            .collect();
        networks.sort();
        networks.dedup();
        NetworksSection {
            networks,
            cluster: Some(ClusterNet {
                range: self.settings.range.net.to_string(),
                hosts: self.settings.range.hosts.to_string(),
                mtu: self.mtu(&s),
                attach: if self.settings.mesh == MeshMode::Weave {
                    Attachment::Weave
                } else {
                    Attachment::Bridge
                },
            }),
        }
    }

    /// A host's `mesh` section; none before it has a mesh address.
    pub fn mesh_section(&self, node_id: &str) -> Option<MeshSection> {
        let s = self.lock();
        let me = s.hosts.get(node_id)?;
        let mut peers: Vec<MeshPeer> = s
            .hosts
            .iter()
            .filter(|(id, _)| id.as_str() != node_id)
            .filter_map(|(id, h)| {
                let endpoint = h.endpoint.clone()?;
                if self.settings.mesh == MeshMode::Wireguard && h.public_key.is_none() {
                    return None;
                }
                let mut subnets: Vec<String> = s
                    .leases
                    .iter()
                    .filter(|((_, node), _)| node == id)
                    .flat_map(|(_, leases)| leases.iter().map(ToString::to_string))
                    .collect();
                subnets.sort();
                Some(MeshPeer {
                    node_id: id.clone(),
                    name: h.name.clone(),
                    endpoint,
                    address: h.address.to_string(),
                    public_key: h.public_key.clone(),
                    subnets,
                })
            })
            .collect();
        peers.sort();
        Some(MeshSection {
            mode: self.settings.mesh,
            range: self.settings.range.net.to_string(),
            address: format!("{}/{}", me.address, self.settings.range.hosts.prefix_len()),
            port: self.settings.port,
            mtu: self.mtu(&s),
            peers,
        })
    }

    /// Takes a host's mesh report. Every host needs a new plan when its
    /// public key is new or the cluster's smallest underlay MTU changed
    /// (both are stored at the next [`Self::sync`]).
    pub fn report_mesh(&self, node_id: &str, report: MeshReport) {
        let mut s = self.lock();
        let new_key = report.public_key.is_some()
            && s.hosts.get(node_id).map(|h| &h.public_key) != Some(&report.public_key);
        // An MTU no Ethernet has is not taken.
        let mtu = report.underlay_mtu.filter(|m| (1280..=65535).contains(m));
        if let Some(h) = s.hosts.get_mut(node_id)
            && mtu.is_some()
            && h.underlay_mtu != mtu
        {
            h.underlay_mtu = mtu;
            h.stored = false;
        }
        s.reports.insert(node_id.to_owned(), report);
        let mtu_moved = s.planned_mtu.is_some_and(|m| m != self.underlay_mtu(&s));
        drop(s);
        if new_key || mtu_moved {
            self.poke();
        }
    }

    /// Takes what a host's networks controller reports.
    pub fn report_networks(&self, node_id: &str, report: NetworksReport) {
        self.lock().problems.insert(node_id.to_owned(), report);
    }

    /// Every network with its subnet and leases, for `skiff network ls`.
    pub fn networks(&self) -> Vec<NetworkRecord> {
        let s = self.lock();
        s.nets
            .iter()
            .map(|((stack, name), net)| NetworkRecord {
                id: net.id,
                stack: stack.clone(),
                name: name.clone(),
                subnet: net.subnet,
                leases: s
                    .leases
                    .iter()
                    .filter(|((id, _), _)| *id == net.id)
                    .map(|((_, node), l)| (node.clone(), l.clone()))
                    .collect(),
                problems: s
                    .problems
                    .iter()
                    .flat_map(|(node, r)| {
                        r.problems
                            .iter()
                            .filter(|p| p.stack == *stack && p.name == *name)
                            .map(move |p| (node.clone(), p.error.clone()))
                    })
                    .collect(),
            })
            .collect()
    }

    /// Every host of the mesh, for `skiff network show`.
    pub fn hosts(&self) -> Vec<HostRecord> {
        let s = self.lock();
        s.hosts
            .iter()
            .map(|(id, h)| HostRecord {
                node_id: id.clone(),
                name: h.name.clone(),
                address: h.address,
                endpoint: h.endpoint.clone(),
                public_key: h.public_key.clone(),
                report: s.reports.get(id).cloned(),
                conflict: s.conflicts.get(id).cloned(),
                firewall_error: s.problems.get(id).and_then(|r| r.firewall_error.clone()),
            })
            .collect()
    }

    /// Every host's address on the mesh, by node id.
    pub fn mesh_addresses(&self) -> BTreeMap<String, Ipv4Addr> {
        self.lock()
            .hosts
            .iter()
            .map(|(id, h)| (id.clone(), h.address))
            .collect()
    }

    /// Every stack network's cluster-wide id, by (stack, name).
    pub fn network_ids(&self) -> BTreeMap<(String, String), u32> {
        self.lock()
            .nets
            .iter()
            .filter_map(|(k, n)| Some((k.clone(), u32::try_from(n.id).ok()?)))
            .collect()
    }

    /// The gateway of each stack network on a host (its first lease's
    /// first address), by (stack, name).
    pub fn gateways(&self, node_id: &str) -> BTreeMap<(String, String), Ipv4Addr> {
        let s = self.lock();
        s.nets
            .iter()
            .filter_map(|(k, n)| {
                let first = s.leases.get(&(n.id, node_id.to_owned()))?.first()?;
                Some((k.clone(), ipam::gateway(first)))
            })
            .collect()
    }

    /// The planned MTU of bridges and mesh devices.
    pub fn planned_mtu(&self) -> u32 {
        let s = self.lock();
        self.mtu(&s)
    }
}

/// Where the other hosts reach a node's mesh port: the address it set,
/// else the one its link comes from.
fn endpoint_of(n: &crate::store::NodeRow) -> Option<String> {
    n.facts
        .mesh_endpoint
        .clone()
        .filter(|e| e.parse::<std::net::IpAddr>().is_ok())
        .or_else(|| n.remote_addr.clone())
}

/// The containers' stack networks (not external) and how many containers
/// join each.
fn networks_of(containers: &[ContainerSpec]) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for c in containers {
        for n in c.networks.iter().filter(|n| !n.external) {
            *out.entry((c.stack.clone(), n.name.clone())).or_insert(0) += 1;
        }
    }
    out
}

/// The stack networks the node's containers still use, as it last
/// reported them: a network keeps its lease there until they are gone.
fn in_use(observed: &ObservedBook, node_id: &str) -> BTreeSet<(String, String)> {
    let Some((_, state)) = observed.get(node_id) else {
        return BTreeSet::new();
    };
    state
        .containers
        .iter()
        .flat_map(|c| {
            let stack = c.name.split('.').next().unwrap_or_default().to_owned();
            c.addresses
                .iter()
                .map(move |a| (stack.clone(), a.network.clone()))
        })
        .collect()
}

/// The IPv4 networks this host routes to, with their devices, from
/// `/proc/net/route` (the default route left out); none where it cannot
/// be read.
pub fn host_routes() -> Vec<(Ipv4Net, String)> {
    std::fs::read_to_string("/proc/net/route")
        .map(|t| parse_routes(&t))
        .unwrap_or_default()
}

/// Parses `/proc/net/route`: destination and mask in hex, host order.
fn parse_routes(text: &str) -> Vec<(Ipv4Net, String)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dev, dest, mask) = (f.first()?, f.get(1)?, f.get(7)?);
            let dest = Ipv4Addr::from(u32::from_be(u32::from_str_radix(dest, 16).ok()?));
            let mask = Ipv4Addr::from(u32::from_be(u32::from_str_radix(mask, 16).ok()?));
            let net = Ipv4Net::with_netmask(dest, mask).ok()?;
            (net.prefix_len() > 0).then(|| (net.trunc(), (*dev).to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests;
