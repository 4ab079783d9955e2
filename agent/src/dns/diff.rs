//! The DNS controller's one decision: which records to serve and which
//! addresses to listen on, from the section and what the server does now.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use skiff_shared::sections::dns::{DnsSection, PORT};

/// What the server does now, and what the agent's config adds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The generation answered from; `None` before any section.
    pub generation: Option<u64>,
    /// The addresses listened on.
    pub listening: BTreeSet<SocketAddr>,
    /// The loopback address for the host (agent config), if on.
    pub loopback: Option<SocketAddr>,
    /// The port the section's addresses are listened on ([`PORT`]; tests
    /// use another).
    pub port: u16,
}

impl Observed {
    pub fn new(loopback: Option<SocketAddr>) -> Self {
        Self {
            loopback,
            port: PORT,
            ..Self::default()
        }
    }
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answer from the section's records (a new generation).
    Serve,
    Close(SocketAddr),
    Open(SocketAddr),
}

/// The addresses a section asks for: its listen addresses on the port,
/// and the loopback address.
pub fn wanted(desired: &DnsSection, observed: &Observed) -> BTreeSet<SocketAddr> {
    desired
        .listen
        .iter()
        .filter(|ip| !ip.is_unspecified() && !ip.is_broadcast() && !ip.is_multicast())
        .map(|ip| SocketAddr::new(IpAddr::V4(*ip), observed.port))
        .chain(observed.loopback)
        .collect()
}

/// New records first (so a new listener answers from them), then closes,
/// then opens.
pub fn diff(desired: &DnsSection, observed: &Observed) -> Vec<Action> {
    let mut actions = Vec::new();
    if observed.generation != Some(desired.generation) {
        actions.push(Action::Serve);
    }
    let wanted = wanted(desired, observed);
    actions.extend(
        observed
            .listening
            .difference(&wanted)
            .map(|a| Action::Close(*a)),
    );
    actions.extend(
        wanted
            .difference(&observed.listening)
            .map(|a| Action::Open(*a)),
    );
    actions
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn section(generation: u64, listen: &[&str]) -> DnsSection {
        DnsSection {
            generation,
            listen: listen.iter().map(|a| a.parse().unwrap()).collect(),
            ..DnsSection::default()
        }
    }

    #[test]
    fn a_first_section_serves_its_records_and_opens_every_address() {
        let observed = Observed::new(Some(sa("127.0.0.1:53")));
        assert_eq!(
            diff(&section(3, &["10.1.0.1", "10.2.0.1"]), &observed),
            vec![
                Action::Serve,
                Action::Open(sa("10.1.0.1:53")),
                Action::Open(sa("10.2.0.1:53")),
                Action::Open(sa("127.0.0.1:53")),
            ]
        );
    }

    #[test]
    fn the_same_generation_and_addresses_change_nothing() {
        let mut observed = Observed::new(None);
        observed.generation = Some(3);
        observed.listening = [sa("10.1.0.1:53")].into();
        assert_eq!(diff(&section(3, &["10.1.0.1"]), &observed), vec![]);
    }

    #[test]
    fn addresses_come_and_go_with_the_section() {
        let mut observed = Observed::new(Some(sa("127.0.0.1:5353")));
        observed.generation = Some(3);
        observed.listening = [sa("10.1.0.1:53"), sa("127.0.0.1:5353")].into();
        assert_eq!(
            diff(&section(4, &["10.2.0.1", "0.0.0.0"]), &observed),
            vec![
                Action::Serve,
                Action::Close(sa("10.1.0.1:53")),
                Action::Open(sa("10.2.0.1:53")),
            ]
        );
    }

    proptest! {
        #[test]
        fn applying_the_diff_reaches_the_section(
            listen in proptest::collection::vec(0u8..6, 0..5),
            open in proptest::collection::btree_set(0u8..6, 0..5),
            served in proptest::option::of(0u64..3),
            generation in 0u64..3,
            loopback in any::<bool>(),
        ) {
            let desired = DnsSection {
                generation,
                listen: listen.iter().map(|n| Ipv4Addr::new(10, *n, 0, 1)).collect(),
                ..DnsSection::default()
            };
            let mut observed = Observed::new(loopback.then(|| sa("127.0.0.1:53")));
            observed.generation = served;
            observed.listening = open.iter().map(|n| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, *n, 0, 1)), 53)).collect();
            for action in diff(&desired, &observed) {
                match action {
                    Action::Serve => observed.generation = Some(desired.generation),
                    Action::Close(a) => prop_assert!(observed.listening.remove(&a)),
                    Action::Open(a) => prop_assert!(observed.listening.insert(a)),
                }
            }
            prop_assert_eq!(diff(&desired, &observed), vec![]);
            prop_assert_eq!(&observed.listening, &wanted(&desired, &observed));
        }
    }
}
