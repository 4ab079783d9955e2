//! The pure decisions of Weave attachment, tested without Weave, Docker or
//! the kernel: from the `networks` section and what the host has (this
//! node's containers, the Weave interfaces in their network namespaces,
//! the containers whose addresses Weave holds for them, the `weave`
//! bridge, whether Weave's API answers) to the attachments to make and the
//! addresses to release ([`diff`]), the problems to report ([`problems`])
//! and the addresses each container has ([`addresses`]).

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use skiff_shared::sections::networks::{Attachment, NetworkProblem, NetworkSpec, NetworksSection};
use skiff_shared::workload::ContainerAddress;

use super::BRIDGE;

/// One of this node's containers, as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// Its main process, while it runs (its network namespace is that
    /// process's); none when it is not running.
    pub pid: Option<u32>,
    /// The engine names of the networks it is on.
    pub networks: Vec<String>,
}

/// A Weave interface (`ethwe<id>`) in a running container's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// Its IPv4 address with its prefix, if it has one.
    pub address: Option<Ipv4Net>,
}

/// Everything the diff looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub containers: Vec<Container>,
    /// The Weave interfaces of each running container, by container id.
    pub interfaces: BTreeMap<String, Vec<Interface>>,
    /// The containers Weave's IPAM may hold addresses for (the agent's
    /// record, written before it asks for one).
    pub allocated: BTreeSet<String>,
    /// The `weave` bridge's MTU; none when the host has no such bridge.
    pub bridge_mtu: Option<u32>,
    /// Why Weave's API did not answer its status, if it did not.
    pub api_error: Option<String>,
}

/// A container's place on one stack network's Weave subnet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub container: String,
    pub pid: u32,
    pub stack: String,
    /// The stack's name for the network.
    pub network: String,
    /// The interface in the container: `ethwe<id>`.
    pub interface: String,
    pub subnet: Ipv4Net,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Allocate an address of the subnet for the container through
    /// Weave's API and attach the container to the `weave` bridge with it
    /// (a leftover interface of the same name is removed first).
    Attach { target: Target, mtu: u32 },
    /// The container is gone: release what Weave holds for it.
    Release { container: String },
}

/// The interface a container has on the network with cluster id `id`.
pub fn interface_name(id: u32) -> String {
    format!("ethwe{id}")
}

/// Whether the section asks for Weave attachment.
pub fn is_weave(desired: &NetworksSection) -> bool {
    desired
        .cluster
        .as_ref()
        .is_some_and(|c| c.attach == Attachment::Weave)
}

/// The stack networks attached through Weave, with their subnets, by
/// engine name.
fn weave_networks<'a>(
    desired: &'a NetworksSection,
    node_id: &str,
) -> BTreeMap<String, (&'a NetworkSpec, Ipv4Net)> {
    if !is_weave(desired) {
        return BTreeMap::new();
    }
    desired
        .networks
        .iter()
        .filter(|n| n.id != 0)
        .filter_map(|n| {
            let subnet = n.subnet.as_deref()?.parse::<Ipv4Net>().ok()?.trunc();
            Some((n.engine_name(node_id), (n, subnet)))
        })
        .collect()
}

/// The engine names of the stack networks attached through Weave on node
/// `node_id` (none unless the section asks for Weave).
pub fn engine_names(desired: &NetworksSection, node_id: &str) -> BTreeSet<String> {
    weave_networks(desired, node_id).into_keys().collect()
}

/// Every (running container, Weave network) pair that should be attached,
/// and whether it already is (an interface with an address in the subnet).
fn targets(
    desired: &NetworksSection,
    node_id: &str,
    observed: &Observed,
) -> Vec<(Target, Option<Ipv4Net>)> {
    let nets = weave_networks(desired, node_id);
    let mut out = Vec::new();
    for c in &observed.containers {
        let Some(pid) = c.pid else { continue };
        for engine_name in &c.networks {
            let Some((spec, subnet)) = nets.get(engine_name) else {
                continue;
            };
            let interface = interface_name(spec.id);
            let have = observed
                .interfaces
                .get(&c.id)
                .and_then(|list| list.iter().find(|i| i.name == interface))
                .and_then(|i| i.address)
                .filter(|a| subnet.contains(&a.addr()) && a.prefix_len() == subnet.prefix_len());
            out.push((
                Target {
                    container: c.id.clone(),
                    pid,
                    stack: spec.stack.clone(),
                    network: spec.name.clone(),
                    interface,
                    subnet: *subnet,
                },
                have,
            ));
        }
    }
    out.sort();
    out
}

/// Attaches every running container on a Weave network that is not
/// attached yet (or whose interface has no address of the subnet), and
/// releases the addresses of containers that are gone. Nothing is tried
/// while Weave's API does not answer, and no attachment without the
/// `weave` bridge. Deterministic for a given input.
pub fn diff(desired: &NetworksSection, node_id: &str, observed: &Observed) -> Vec<Action> {
    if observed.api_error.is_some() {
        return Vec::new();
    }
    let present: BTreeSet<&str> = observed.containers.iter().map(|c| c.id.as_str()).collect();
    let releases = observed
        .allocated
        .iter()
        .filter(|id| !present.contains(id.as_str()))
        .map(|id| Action::Release {
            container: id.clone(),
        });
    let attaches = observed.bridge_mtu.into_iter().flat_map(|mtu| {
        targets(desired, node_id, observed)
            .into_iter()
            .filter(|(_, have)| have.is_none())
            .map(move |(target, _)| Action::Attach { target, mtu })
    });
    releases.chain(attaches).collect()
}

/// Each container's address on the Weave networks it is attached to, by
/// container id: what it reports as its addresses there.
pub fn addresses(
    desired: &NetworksSection,
    node_id: &str,
    observed: &Observed,
) -> BTreeMap<String, Vec<ContainerAddress>> {
    let mut out: BTreeMap<String, Vec<ContainerAddress>> = BTreeMap::new();
    for (target, have) in targets(desired, node_id, observed) {
        if let Some(a) = have {
            out.entry(target.container)
                .or_default()
                .push(ContainerAddress {
                    network: target.network,
                    address: a.addr().to_string(),
                });
        }
    }
    out
}

/// Why the Weave networks cannot be attached here, if they cannot: one
/// problem per network, naming what is missing and the fix.
pub fn problems(
    desired: &NetworksSection,
    observed: &Observed,
    api_url: &str,
) -> Vec<NetworkProblem> {
    let error = match (&observed.api_error, observed.bridge_mtu) {
        (Some(e), _) => format!(
            "Weave Net's API at {api_url} does not answer ({e}): is Weave Net running on this host? Start it (weave launch), or set weave_api in the agent's config; containers are attached once it answers"
        ),
        (None, None) => format!(
            "Weave Net's bridge {BRIDGE:?} is not on this host: is Weave Net running on this host? Start it (weave launch); containers are attached once the bridge is there"
        ),
        (None, Some(_)) => return Vec::new(),
    };
    weave_networks(desired, "")
        .into_values()
        .map(|(spec, _)| NetworkProblem {
            stack: spec.stack.clone(),
            name: spec.name.clone(),
            error: error.clone(),
        })
        .collect()
}

#[cfg(test)]
#[path = "diff_tests.rs"]
mod tests;
