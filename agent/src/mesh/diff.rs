//! The mesh controller's one pure diff: from the `mesh` section, what the
//! host offers (which WireGuard, the underlay) and what exists (the mesh
//! device, its peers, the agent's routes) to the changes that make the
//! host match. Tested without the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;
use skiff_shared::sections::mesh::{
    MeshMode, MeshPeer, MeshSection, VXLAN_DEVICE, VXLAN_VNI, WIREGUARD_DEVICE,
};

use crate::firewall::MeshRules;

/// Every peer's persistent keepalive, seconds: keeps NAT mappings open and
/// handshakes fresh.
pub const KEEPALIVE_SECS: u16 = 25;
/// The metric of the agent's `unreachable <range>` route: below every real
/// route to the range, above none.
pub const UNREACHABLE_METRIC: u32 = 4242;
/// The `rp_filter` the mesh device gets: loose, since replies from other
/// hosts' containers come in by the mesh device with sources the kernel
/// may not route back the same way.
pub const RP_FILTER_LOOSE: u8 = 2;

/// Which WireGuard this host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wireguard {
    Kernel,
    Userspace,
}

/// The interface the mesh leaves the host by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub dev: String,
    pub address: Ipv4Addr,
    pub mtu: u32,
}

/// What the host offers the mesh (decided or measured, not made by it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    pub wireguard: Wireguard,
    pub underlay: Option<Underlay>,
}

/// What kind of device a link is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    /// A TUN device (userspace WireGuard).
    Tun,
    /// The kernel's WireGuard.
    Wireguard,
    Vxlan {
        vni: u32,
        port: u16,
        local: Option<Ipv4Addr>,
        dev: Option<String>,
    },
    /// Anything else under one of the mesh's names.
    Other(String),
}

/// A mesh device as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub kind: LinkKind,
    pub mtu: u32,
    pub up: bool,
    /// Its MAC address (VXLAN).
    pub mac: Option<String>,
    pub addresses: Vec<Ipv4Net>,
    pub rp_filter: Option<u8>,
}

/// A WireGuard peer, as configured.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WgPeer {
    /// Its public key, base64.
    pub key: String,
    pub endpoint: Option<SocketAddrV4>,
    /// Sorted.
    pub allowed_ips: Vec<Ipv4Net>,
    pub keepalive: Option<u16>,
}

/// The running WireGuard of the mesh device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgState {
    pub port: u16,
    pub peers: Vec<WgPeer>,
}

/// A route of the agent's own (`proto 242`, main table).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Route {
    /// `unreachable <dst> metric <metric>`.
    Unreachable { dst: Ipv4Net, metric: u32 },
    /// `<dst> [via <via> onlink] dev <dev>`.
    Unicast {
        dst: Ipv4Net,
        via: Option<Ipv4Addr>,
        dev: String,
    },
}

impl Route {
    fn dev(&self) -> Option<&str> {
        match self {
            Self::Unreachable { .. } => None,
            Self::Unicast { dev, .. } => Some(dev),
        }
    }
}

/// A VXLAN forwarding entry: frames for `mac` go to `dst`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fdb {
    pub mac: String,
    pub dst: Ipv4Addr,
}

/// A permanent neighbour on the VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neighbour {
    pub address: Ipv4Addr,
    pub mac: String,
}

/// What exists on the host now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub env: Environment,
    /// The mesh devices (`skw0`, `skv0`) that exist.
    pub links: Vec<Link>,
    /// The WireGuard running on `skw0`, if one is.
    pub wireguard: Option<WgState>,
    /// The forwarding entries and neighbours on `skv0`.
    pub fdb: Vec<Fdb>,
    pub neighbours: Vec<Neighbour>,
    pub routes: Vec<Route>,
    /// The firewall part last set.
    pub firewall: Option<MeshRules>,
}

/// The mesh device to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    pub name: String,
    pub kind: LinkKind,
    pub mtu: u32,
    pub mac: Option<String>,
}

/// One change to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Remove a mesh device (its addresses, routes and neighbours go with
    /// it; a userspace WireGuard on it is stopped).
    RemoveLink(String),
    CreateLink(LinkSpec),
    SetMtu {
        dev: String,
        mtu: u32,
    },
    SetMac {
        dev: String,
        mac: String,
    },
    SetRpFilter {
        dev: String,
        value: u8,
    },
    AddAddress {
        dev: String,
        address: Ipv4Net,
    },
    RemoveAddress {
        dev: String,
        address: Ipv4Net,
    },
    SetUp(String),
    /// Start WireGuard on `skw0` with the host's key, listening on `port`,
    /// with no peers.
    StartWireguard {
        port: u16,
    },
    SetListenPort(u16),
    SetPeer(WgPeer),
    RemovePeer(String),
    SetFdb(Fdb),
    RemoveFdb(Fdb),
    SetNeighbour(Neighbour),
    RemoveNeighbour(Ipv4Addr),
    AddRoute(Route),
    RemoveRoute(Route),
    Firewall(Option<MeshRules>),
}

/// What the host should have.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Target {
    pub link: Option<(LinkSpec, Ipv4Net)>,
    pub wireguard: Option<WgState>,
    pub fdb: Vec<Fdb>,
    pub neighbours: Vec<Neighbour>,
    pub routes: Vec<Route>,
    pub firewall: Option<MeshRules>,
    /// Peers left out, and why.
    pub skipped: Vec<(String, String)>,
}

/// The MAC of a host's VXLAN device, from its mesh address: locally
/// administered, unicast, the same on every host that computes it.
pub fn vxlan_mac(address: Ipv4Addr) -> String {
    let [a, b, c, d] = address.octets();
    format!("02:73:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// A section no plan holds: the mesh is left.
pub fn is_leave(desired: &MeshSection) -> bool {
    desired.address.is_empty()
}

/// What the host should have for `desired`.
///
/// # Errors
/// The section's own address or range is unusable.
pub fn target(desired: &MeshSection, env: &Environment) -> Result<Target, String> {
    if is_leave(desired) || desired.mode == MeshMode::Weave {
        return Ok(Target::default());
    }
    let address: Ipv4Net = desired
        .address
        .parse()
        .map_err(|_| format!("the mesh address {:?} is not IPv4/prefix", desired.address))?;
    let range: Ipv4Net = desired
        .range
        .parse()
        .map_err(|_| format!("the cluster range {:?} is not IPv4/prefix", desired.range))?;
    let wireguard = desired.mode == MeshMode::Wireguard;
    let name = if wireguard {
        WIREGUARD_DEVICE
    } else {
        VXLAN_DEVICE
    };
    let kind = match (wireguard, env.wireguard) {
        (true, Wireguard::Kernel) => LinkKind::Wireguard,
        (true, Wireguard::Userspace) => LinkKind::Tun,
        (false, _) => LinkKind::Vxlan {
            vni: VXLAN_VNI,
            port: desired.port,
            local: env.underlay.as_ref().map(|u| u.address),
            dev: env.underlay.as_ref().map(|u| u.dev.clone()),
        },
    };
    let link = LinkSpec {
        name: name.to_owned(),
        kind,
        mtu: desired.mtu,
        mac: (!wireguard).then(|| vxlan_mac(address.addr())),
    };
    let mut t = Target {
        routes: vec![Route::Unreachable {
            dst: range.trunc(),
            metric: UNREACHABLE_METRIC,
        }],
        ..Target::default()
    };
    let mut wg_peers = Vec::new();
    let mut endpoints = BTreeSet::new();
    let mut routed = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    let mut keys = BTreeSet::new();
    let mut peers: Vec<&MeshPeer> = desired.peers.iter().collect();
    peers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    for p in peers {
        let peer = match parse_peer(p, wireguard) {
            Ok(peer) if !addresses.insert(peer.address) => {
                t.skipped.push((
                    p.node_id.clone(),
                    format!("its mesh address {} is another peer's", peer.address),
                ));
                continue;
            }
            Ok(peer) if peer.key.as_ref().is_some_and(|k| !keys.insert(k.clone())) => {
                t.skipped
                    .push((p.node_id.clone(), "its public key is another peer's".into()));
                continue;
            }
            Ok(peer) => peer,
            Err(why) => {
                t.skipped.push((p.node_id.clone(), why));
                continue;
            }
        };
        endpoints.insert(peer.endpoint);
        let subnets: Vec<Ipv4Net> = peer
            .subnets
            .iter()
            .filter(|s| routed.insert(**s))
            .copied()
            .collect();
        for dst in &subnets {
            t.routes.push(Route::Unicast {
                dst: *dst,
                via: (!wireguard).then_some(peer.address),
                dev: name.to_owned(),
            });
        }
        if let Some(key) = peer.key {
            let mut allowed_ips: Vec<Ipv4Net> = subnets;
            allowed_ips.push(Ipv4Net::from(peer.address));
            allowed_ips.sort();
            allowed_ips.dedup();
            wg_peers.push(WgPeer {
                key,
                endpoint: Some(SocketAddrV4::new(peer.endpoint, desired.port)),
                allowed_ips,
                keepalive: Some(KEEPALIVE_SECS),
            });
        } else {
            let mac = vxlan_mac(peer.address);
            t.fdb.push(Fdb {
                mac: mac.clone(),
                dst: peer.endpoint,
            });
            t.neighbours.push(Neighbour {
                address: peer.address,
                mac,
            });
        }
    }
    if wireguard {
        t.wireguard = Some(WgState {
            port: desired.port,
            peers: wg_peers,
        });
    }
    t.routes.sort();
    t.fdb.sort();
    t.neighbours.sort();
    t.firewall = Some(MeshRules {
        device: name.to_owned(),
        port: desired.port,
        peers_only: !wireguard,
        peers: endpoints.into_iter().collect(),
    });
    t.link = Some((link, address));
    Ok(t)
}

struct Peer {
    endpoint: Ipv4Addr,
    address: Ipv4Addr,
    key: Option<String>,
    subnets: Vec<Ipv4Net>,
}

fn parse_peer(p: &MeshPeer, wireguard: bool) -> Result<Peer, String> {
    let endpoint: Ipv4Addr = p
        .endpoint
        .parse()
        .map_err(|_| format!("its endpoint {:?} is not an IPv4 address", p.endpoint))?;
    let address: Ipv4Addr = p
        .address
        .parse()
        .map_err(|_| format!("its mesh address {:?} is not an IPv4 address", p.address))?;
    let key = if wireguard {
        let key = p
            .public_key
            .clone()
            .ok_or("it has not reported a WireGuard public key yet")?;
        skiff_shared::sections::mesh::public_key_bytes(&key)?;
        Some(key)
    } else {
        None
    };
    let subnets = p
        .subnets
        .iter()
        .map(|s| {
            s.parse::<Ipv4Net>()
                .map(|n| n.trunc())
                .map_err(|_| format!("its subnet {s:?} is not IPv4/prefix"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Peer {
        endpoint,
        address,
        key,
        subnets,
    })
}

/// Every change from `observed` to `target`, removals of what is in the
/// way first. Deterministic for a given input.
pub fn diff_target(t: &Target, observed: &Observed) -> Vec<Action> {
    let mut actions = Vec::new();
    let want_link = t.link.as_ref();
    // Devices that go (or are remade): what was on them goes too.
    let mut gone: BTreeSet<&str> = BTreeSet::new();
    let mut current: Option<&Link> = None;
    for link in &observed.links {
        match want_link {
            Some((spec, _)) if spec.name == link.name && spec.kind == link.kind => {
                current = Some(link);
            }
            _ => {
                actions.push(Action::RemoveLink(link.name.clone()));
                gone.insert(&link.name);
            }
        }
    }
    let mut wireguard = observed.wireguard.as_ref();
    if let Some((spec, address)) = want_link {
        let fresh;
        let link = match current {
            Some(link) => link,
            None => {
                actions.push(Action::CreateLink(spec.clone()));
                gone.insert(&spec.name);
                wireguard = None;
                fresh = Link {
                    name: spec.name.clone(),
                    kind: spec.kind.clone(),
                    mtu: 0,
                    up: false,
                    mac: spec.mac.clone(),
                    addresses: Vec::new(),
                    rp_filter: None,
                };
                &fresh
            }
        };
        let dev = &spec.name;
        if link.mtu != spec.mtu {
            actions.push(Action::SetMtu {
                dev: dev.clone(),
                mtu: spec.mtu,
            });
        }
        if let Some(mac) = &spec.mac
            && link.mac.as_ref() != Some(mac)
        {
            actions.push(Action::SetMac {
                dev: dev.clone(),
                mac: mac.clone(),
            });
        }
        if link.rp_filter != Some(RP_FILTER_LOOSE) {
            actions.push(Action::SetRpFilter {
                dev: dev.clone(),
                value: RP_FILTER_LOOSE,
            });
        }
        for a in &link.addresses {
            if a != address {
                actions.push(Action::RemoveAddress {
                    dev: dev.clone(),
                    address: *a,
                });
            }
        }
        if !link.addresses.contains(address) {
            actions.push(Action::AddAddress {
                dev: dev.clone(),
                address: *address,
            });
        }
        if !link.up {
            actions.push(Action::SetUp(dev.clone()));
        }
    }
    if gone.contains(WIREGUARD_DEVICE) {
        wireguard = None;
    }
    if let Some(want) = &t.wireguard {
        let have_peers: &[WgPeer] = match wireguard {
            None => {
                actions.push(Action::StartWireguard { port: want.port });
                &[]
            }
            Some(have) => {
                if have.port != want.port {
                    actions.push(Action::SetListenPort(want.port));
                }
                &have.peers
            }
        };
        let have: BTreeMap<&str, &WgPeer> =
            have_peers.iter().map(|p| (p.key.as_str(), p)).collect();
        let wanted: BTreeSet<&str> = want.peers.iter().map(|p| p.key.as_str()).collect();
        for p in &want.peers {
            if have.get(p.key.as_str()) != Some(&p) {
                actions.push(Action::SetPeer(p.clone()));
            }
        }
        for key in have.keys().filter(|k| !wanted.contains(*k)) {
            actions.push(Action::RemovePeer((*key).to_owned()));
        }
    }
    let vxlan_kept = !gone.contains(VXLAN_DEVICE);
    let have_fdb: &[Fdb] = if vxlan_kept { &observed.fdb } else { &[] };
    for f in &t.fdb {
        if !have_fdb.contains(f) {
            actions.push(Action::SetFdb(f.clone()));
        }
    }
    for f in have_fdb {
        if !t.fdb.contains(f) {
            actions.push(Action::RemoveFdb(f.clone()));
        }
    }
    let have_neigh: &[Neighbour] = if vxlan_kept {
        &observed.neighbours
    } else {
        &[]
    };
    for n in &t.neighbours {
        if !have_neigh.contains(n) {
            actions.push(Action::SetNeighbour(n.clone()));
        }
    }
    for n in have_neigh {
        if !t.neighbours.iter().any(|w| w.address == n.address) {
            actions.push(Action::RemoveNeighbour(n.address));
        }
    }
    let have_routes: Vec<&Route> = observed
        .routes
        .iter()
        .filter(|r| r.dev().is_none_or(|d| !gone.contains(d)))
        .collect();
    for r in &t.routes {
        if !have_routes.contains(&r) {
            actions.push(Action::AddRoute(r.clone()));
        }
    }
    for r in have_routes {
        // `ip route replace` already took the place of a unicast route
        // to the same destination.
        let replaced = matches!(r, Route::Unicast { dst, .. } if t.routes.iter().any(
            |w| matches!(w, Route::Unicast { dst: d, .. } if d == dst)));
        if !t.routes.contains(r) && !replaced {
            actions.push(Action::RemoveRoute(r.clone()));
        }
    }
    if observed.firewall != t.firewall {
        actions.push(Action::Firewall(t.firewall.clone()));
    }
    actions
}

/// The diff of the controller: `desired` as a [`Target`] against what
/// exists. A section whose own address is unusable changes nothing.
pub fn diff(desired: &MeshSection, observed: &Observed) -> Vec<Action> {
    match target(desired, &observed.env) {
        Ok(t) => diff_target(&t, observed),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests;
