//! The cluster networks' leases on this host, shared by the networks
//! controller (which fills it from its section every round) and the
//! containers controller (which asks it for an address).
//!
//! The engine hands out addresses from a network's first lease only (its
//! `ip_range`). When the host holds more than one lease and the first is
//! full, a new container is given an explicit address from the later ones:
//! the lowest that no container on that network here has ([`pick`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Mutex, PoisonError};

use ipnet::Ipv4Net;

/// One network's leases on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkLeases {
    /// In the plan's order: the first is the engine's `ip_range`.
    pub leases: Vec<Ipv4Net>,
    /// The bridge's address (in the first lease).
    pub gateway: Ipv4Addr,
}

/// The leases of every cluster network here, by engine name.
#[derive(Debug, Default)]
pub struct Leases {
    by_network: Mutex<BTreeMap<String, NetworkLeases>>,
    /// Held from picking an address to the container's create.
    picking: tokio::sync::Mutex<()>,
}

impl Leases {
    /// Replaces what is known.
    pub fn set(&self, by_network: BTreeMap<String, NetworkLeases>) {
        *self
            .by_network
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = by_network;
    }

    /// Held while a container's explicit addresses are picked and it is
    /// created, so that two creates never pick the same one.
    pub async fn picking(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.picking.lock().await
    }

    /// The leases of the network named `network` on the engine, if it is a
    /// cluster network with more than one lease here (else the engine
    /// picks addresses on its own).
    pub fn extra(&self, network: &str) -> Option<NetworkLeases> {
        self.by_network
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(network)
            .filter(|l| l.leases.len() > 1)
            .cloned()
    }
}

/// The usable addresses of a lease: its first and last left out, as the
/// coordinator counts them.
fn usable(lease: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    lease.hosts()
}

/// The address to give a new container on a network with these leases,
/// given the addresses its containers here have: none while the first
/// lease has room (the engine picks one), else the lowest free address of
/// the later leases; none too when every lease is full (the engine then
/// says so).
pub fn pick(leases: &NetworkLeases, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let (first, later) = leases.leases.split_first()?;
    let free = |a: &Ipv4Addr| *a != leases.gateway && !used.contains(a);
    if usable(*first).any(|a| free(&a)) {
        return None;
    }
    later.iter().flat_map(|l| usable(*l)).find(|a| free(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn leases() -> NetworkLeases {
        NetworkLeases {
            leases: vec![
                net("10.66.8.0/30"),
                net("10.66.8.8/30"),
                net("10.66.8.4/30"),
            ],
            gateway: ip("10.66.8.1"),
        }
    }

    #[test]
    fn the_engine_picks_while_the_first_lease_has_room() {
        assert_eq!(pick(&leases(), &BTreeSet::new()), None);
    }

    #[test]
    fn a_full_first_lease_moves_on_to_the_later_ones_in_order() {
        // 10.66.8.0/30: .1 is the gateway, .2 the only other usable one.
        let mut used = BTreeSet::from([ip("10.66.8.2")]);
        assert_eq!(pick(&leases(), &used), Some(ip("10.66.8.9")));
        used.insert(ip("10.66.8.9"));
        assert_eq!(pick(&leases(), &used), Some(ip("10.66.8.10")));
        used.insert(ip("10.66.8.10"));
        assert_eq!(pick(&leases(), &used), Some(ip("10.66.8.5")));
        used.insert(ip("10.66.8.5"));
        used.insert(ip("10.66.8.6"));
        assert_eq!(pick(&leases(), &used), None, "all full");
        // A freed address is handed out again, the lowest first.
        used.remove(&ip("10.66.8.10"));
        assert_eq!(pick(&leases(), &used), Some(ip("10.66.8.10")));
    }

    #[test]
    fn only_networks_with_several_leases_are_handed_out() {
        let handle = Leases::default();
        let one = NetworkLeases {
            leases: vec![net("10.66.8.0/26")],
            gateway: ip("10.66.8.1"),
        };
        handle.set(BTreeMap::from([
            ("a".to_owned(), one),
            ("b".to_owned(), leases()),
        ]));
        assert_eq!(handle.extra("a"), None);
        assert_eq!(handle.extra("b"), Some(leases()));
        assert_eq!(handle.extra("c"), None);
    }
}
