//! The networks controller's pure decisions, tested without Docker or the
//! kernel: from the `networks` section and what the host has (this node's
//! networks, the host's routes) to the changes to make ([`diff`]), the
//! problems to report ([`problems`]), the firewall's part ([`rules`]) and
//! the addresses the containers controller may hand out ([`leases`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use skiff_shared::sections::mesh::{VXLAN_DEVICE, WIREGUARD_DEVICE};
use skiff_shared::sections::networks::{
    Attachment, BRIDGE_PREFIX, ClusterNet, NetworkProblem, NetworkSpec, NetworksSection,
};

use crate::firewall::{NetworkRule, NetworkRules};
use crate::leases::NetworkLeases;

/// A network this node's agent made, as found on the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Its name on the engine.
    pub name: String,
    /// The stack and the stack's name for it, from its labels.
    pub stack: String,
    pub network: String,
    /// The settings it was made with (its settings label); none on a
    /// bridge without a cluster network.
    pub settings: Option<String>,
    /// Whether any container is attached to it.
    pub in_use: bool,
    /// Its bridge on the cluster network, and whether proxy ARP is on
    /// there as it should be.
    pub bridge: Option<Bridge>,
}

/// A bridge of the cluster network on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    pub name: String,
    /// `proxy_arp` is 1 and `proxy_delay` 0.
    pub proxy_arp: bool,
}

/// A route of the host: where it goes, and through which device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub net: Ipv4Net,
    pub device: String,
}

/// Everything the diff looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    pub networks: Vec<Observed>,
    /// The host's IPv4 routes, the default route left out.
    pub routes: Vec<Route>,
    /// This node's id (the engine names of its networks carry it).
    pub node_id: String,
    /// What Weave attachment looks at (mesh `weave`).
    pub weave: crate::weave::diff::Observed,
}

/// One change to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create {
        spec: NetworkSpec,
        settings: Settings,
    },
    /// Remove a network no longer wanted; one still in use (its containers
    /// are being removed) is left for a later round.
    Remove { name: String },
    /// Remove a network made with other settings, which no container
    /// uses, and make it again as the spec says.
    Replace {
        name: String,
        spec: NetworkSpec,
        settings: Settings,
    },
    /// Turn proxy ARP on (and its delay off) on a network's bridge.
    ProxyArp {
        stack: String,
        name: String,
        bridge: String,
    },
    /// Attach a container to Weave Net, or release a gone one's addresses.
    Weave(crate::weave::Action),
}

impl Action {
    /// The stack and name of the wanted network it is about, if any.
    pub fn network(&self) -> Option<(&str, &str)> {
        match self {
            Self::Create { spec, .. } | Self::Replace { spec, .. } => {
                Some((spec.stack.as_str(), spec.name.as_str()))
            }
            Self::ProxyArp { stack, name, .. } => Some((stack.as_str(), name.as_str())),
            Self::Weave(crate::weave::Action::Attach { target, .. }) => {
                Some((target.stack.as_str(), target.network.as_str()))
            }
            Self::Remove { .. } | Self::Weave(crate::weave::Action::Release { .. }) => None,
        }
    }
}

/// How the engine should make a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settings {
    /// A bridge whose subnet the engine picks (no cluster network).
    Plain,
    /// A bridge of the cluster network.
    Cluster(ClusterSettings),
}

/// A cluster network's bridge, as the engine makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub subnet: Ipv4Net,
    /// The range the engine hands out: the host's first lease.
    pub ip_range: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    pub mtu: u32,
    pub internal: bool,
}

impl ClusterSettings {
    /// The settings label: what was asked of the engine, so that a change
    /// is seen.
    pub fn fingerprint(&self) -> String {
        format!(
            "subnet={} range={} gateway={} bridge={} mtu={} internal={}",
            self.subnet, self.ip_range, self.gateway, self.bridge, self.mtu, self.internal
        )
    }
}

/// How `spec` should be made; an error names what is wrong with it.
///
/// # Errors
/// A cluster network's spec without a valid subnet, lease or gateway.
pub fn settings(spec: &NetworkSpec, cluster: Option<&ClusterNet>) -> Result<Settings, String> {
    let (Some(cluster), Some(subnet)) = (cluster, spec.subnet.as_deref()) else {
        return Ok(Settings::Plain);
    };
    if cluster.attach == Attachment::Weave {
        // The cluster address is Weave's (see `crate::weave`): the engine's
        // bridge only carries the host's own traffic and the way out.
        return Ok(Settings::Plain);
    }
    let subnet: Ipv4Net = subnet
        .parse()
        .map_err(|_| format!("the plan's subnet {subnet:?} is not an IPv4 network"))?;
    let first = spec
        .leases
        .first()
        .ok_or_else(|| format!("the plan leases no part of {subnet} to this host"))?;
    let ip_range: Ipv4Net = first
        .parse()
        .map_err(|_| format!("the plan's lease {first:?} is not an IPv4 network"))?;
    let gateway: Ipv4Addr = spec
        .gateway
        .as_deref()
        .ok_or_else(|| format!("the plan gives no gateway for {subnet}"))?
        .parse()
        .map_err(|_| "the plan's gateway is not an IPv4 address".to_owned())?;
    let bridge = spec
        .bridge_name()
        .ok_or_else(|| format!("the plan gives {subnet} no network id"))?;
    if !subnet.contains(&ip_range) || !ip_range.contains(&gateway) {
        return Err(format!(
            "the plan's lease {ip_range} and gateway {gateway} are not in {subnet}"
        ));
    }
    Ok(Settings::Cluster(ClusterSettings {
        subnet: subnet.trunc(),
        ip_range: ip_range.trunc(),
        gateway,
        bridge,
        mtu: cluster.mtu,
        internal: spec.internal,
    }))
}

/// The settings label a network should carry: none for a plain bridge.
fn fingerprint(settings: &Settings) -> Option<String> {
    match settings {
        Settings::Plain => None,
        Settings::Cluster(c) => Some(c.fingerprint()),
    }
}

/// What becomes of one wanted network this round.
#[derive(Debug)]
enum Verdict<'a> {
    /// As wanted (its bridge may still need proxy ARP).
    Fine,
    Create(Settings),
    Replace(&'a Observed, Settings),
    /// Left as it is, for the reason given.
    Problem(String),
}

/// A route the agent did not make that overlaps `subnet`, if any: the
/// mesh device's and the cluster bridges' routes are the agent's own.
pub fn conflict(subnet: Ipv4Net, routes: &[Route]) -> Option<&Route> {
    routes.iter().find(|r| {
        let own = r.device.starts_with(BRIDGE_PREFIX)
            || r.device == WIREGUARD_DEVICE
            || r.device == VXLAN_DEVICE;
        !own && (r.net.contains(&subnet) || subnet.contains(&r.net))
    })
}

fn verdict<'a>(
    spec: &NetworkSpec,
    cluster: Option<&ClusterNet>,
    have: Option<&'a Observed>,
    routes: &[Route],
) -> Verdict<'a> {
    let settings = match settings(spec, cluster) {
        Ok(s) => s,
        Err(e) => return Verdict::Problem(format!("not made: {e}")),
    };
    let want = fingerprint(&settings);
    if let Some(o) = have
        && o.settings == want
    {
        return Verdict::Fine;
    }
    if let Settings::Cluster(c) = &settings
        && let Some(r) = conflict(c.subnet, routes)
    {
        return Verdict::Problem(format!(
            "subnet {} overlaps the host's route to {} via {}; not made (remove that route or network, or pick another cluster range)",
            c.subnet, r.net, r.device
        ));
    }
    match have {
        None => Verdict::Create(settings),
        Some(o) if !o.in_use => Verdict::Replace(o, settings),
        Some(o) => Verdict::Problem(format!(
            "made with other settings ({}), wanted {}; it is remade once no container uses it",
            o.settings.as_deref().unwrap_or("a plain bridge"),
            want.as_deref().unwrap_or("a plain bridge"),
        )),
    }
}

/// The wanted networks, one per (stack, name), in a stable order.
fn wanted(desired: &NetworksSection) -> BTreeMap<(&str, &str), &NetworkSpec> {
    desired
        .networks
        .iter()
        .map(|n| ((n.stack.as_str(), n.name.as_str()), n))
        .collect()
}

fn observed_by_key(host: &Host) -> BTreeMap<(&str, &str), &Observed> {
    host.networks
        .iter()
        .map(|o| ((o.stack.as_str(), o.network.as_str()), o))
        .collect()
}

/// Creates the wanted networks that are missing, remakes those made with
/// other settings once unused, removes the ones no longer wanted, and
/// turns proxy ARP on where it is off; then Weave's attachments and
/// releases ([`crate::weave::diff`]). Deterministic for a given input.
pub fn diff(desired: &NetworksSection, host: &Host) -> Vec<Action> {
    let cluster = desired.cluster.as_ref();
    let have = observed_by_key(host);
    let want = wanted(desired);
    let mut creates = Vec::new();
    let mut arp = Vec::new();
    for (key, spec) in &want {
        let current = have.get(key).copied();
        let verdict = verdict(spec, cluster, current, &host.routes);
        // A bridge that stays, as wanted or not, keeps serving.
        if matches!(verdict, Verdict::Fine | Verdict::Problem(_))
            && let Some(b) = current.and_then(|o| o.bridge.as_ref())
            && !b.proxy_arp
        {
            arp.push(Action::ProxyArp {
                stack: spec.stack.clone(),
                name: spec.name.clone(),
                bridge: b.name.clone(),
            });
        }
        match verdict {
            Verdict::Fine | Verdict::Problem(_) => {}
            Verdict::Create(settings) => creates.push(Action::Create {
                spec: (*spec).clone(),
                settings,
            }),
            Verdict::Replace(o, settings) => creates.push(Action::Replace {
                name: o.name.clone(),
                spec: (*spec).clone(),
                settings,
            }),
        }
    }
    let mut removes: Vec<&Observed> = host
        .networks
        .iter()
        .filter(|o| !want.contains_key(&(o.stack.as_str(), o.network.as_str())))
        .collect();
    removes.sort_by(|a, b| a.name.cmp(&b.name));
    // Unwanted networks go first: one may hold a subnet a new one takes.
    removes
        .into_iter()
        .map(|o| Action::Remove {
            name: o.name.clone(),
        })
        .chain(creates)
        .chain(arp)
        .chain(
            crate::weave::diff::diff(desired, &host.node_id, &host.weave)
                .into_iter()
                .map(Action::Weave),
        )
        .collect()
}

/// The wanted networks left as they are, and why (with Weave's address
/// `weave_api`, named when it does not answer).
pub fn problems(desired: &NetworksSection, host: &Host, weave_api: &str) -> Vec<NetworkProblem> {
    let have = observed_by_key(host);
    let weave = crate::weave::diff::problems(desired, &host.weave, weave_api);
    wanted(desired)
        .into_iter()
        .filter_map(|(key, spec)| {
            match verdict(
                spec,
                desired.cluster.as_ref(),
                have.get(&key).copied(),
                &host.routes,
            ) {
                Verdict::Problem(error) => Some(NetworkProblem {
                    stack: spec.stack.clone(),
                    name: spec.name.clone(),
                    error,
                }),
                _ => None,
            }
        })
        .chain(weave)
        .collect()
}

/// The firewall's networks part: none without a cluster network.
///
/// # Errors
/// The cluster range or hosts' block is not an IPv4 network.
pub fn rules(desired: &NetworksSection) -> Result<Option<NetworkRules>, String> {
    let Some(cluster) = &desired.cluster else {
        return Ok(None);
    };
    let range: Ipv4Net = cluster.range.parse().map_err(|_| {
        format!(
            "the plan's cluster range {:?} is not an IPv4 network",
            cluster.range
        )
    })?;
    let hosts: Ipv4Net = cluster.hosts.parse().map_err(|_| {
        format!(
            "the plan's hosts block {:?} is not an IPv4 network",
            cluster.hosts
        )
    })?;
    let weave = cluster.attach == Attachment::Weave;
    let networks: BTreeSet<NetworkRule> = desired
        .networks
        .iter()
        .filter_map(|spec| match settings(spec, Some(cluster)) {
            Ok(Settings::Plain) if weave => Some(NetworkRule {
                subnet: spec.subnet.as_deref()?.parse::<Ipv4Net>().ok()?.trunc(),
                internal: spec.internal,
                bridge: crate::weave::BRIDGE.to_owned(),
            }),
            Ok(Settings::Cluster(c)) => Some(NetworkRule {
                subnet: c.subnet,
                internal: c.internal,
                bridge: c.bridge,
            }),
            _ => None,
        })
        .collect();
    Ok(Some(NetworkRules {
        range: range.trunc(),
        hosts: hosts.trunc(),
        networks: networks.into_iter().collect(),
        weave,
    }))
}

/// Each cluster network's leases here, by engine name.
pub fn leases(desired: &NetworksSection, node_id: &str) -> BTreeMap<String, NetworkLeases> {
    desired
        .networks
        .iter()
        .filter_map(|spec| {
            let Ok(Settings::Cluster(c)) = settings(spec, desired.cluster.as_ref()) else {
                return None;
            };
            let leases = spec
                .leases
                .iter()
                .filter_map(|l| l.parse::<Ipv4Net>().ok())
                .map(|l| l.trunc())
                .filter(|l| c.subnet.contains(l))
                .collect();
            Some((
                spec.engine_name(node_id),
                NetworkLeases {
                    leases,
                    gateway: c.gateway,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
#[path = "diff_tests.rs"]
mod tests;
