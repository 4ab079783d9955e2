//! Address management of the cluster range, as pure functions: the block
//! of host (mesh) addresses at the start of the range, a subnet for each
//! stack network after it, and in each network's subnet the pieces its
//! hosts lease, never two overlapping, sized for their replicas.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The smallest piece of a network's subnet a host leases (64 addresses).
pub const DEFAULT_LEASE_PREFIX: u8 = 26;
/// A stack network's cluster-wide subnet (1,024 addresses: 16 hosts with
/// a /26 each).
pub const DEFAULT_NETWORK_PREFIX: u8 = 22;

/// A checked cluster range and its block of host addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub net: Ipv4Net,
    /// The first part of the range: one mesh address per host.
    pub hosts: Ipv4Net,
}

/// Why a range cannot be the cluster's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("network range {0:?} is not an IPv4 range in CIDR form (like 10.66.0.0/16)")]
    Syntax(String),
    #[error("network range {0} is not the start of its block; write {1}")]
    NotNetwork(Ipv4Net, Ipv4Net),
    #[error(
        "network range {0} is too small for a cluster: use at most /20 (a /16 such as 10.66.0.0/16 leaves room for 1,000 hosts and 63 networks of 1,024 addresses)"
    )]
    TooSmall(Ipv4Net),
    #[error(
        "network range {0} is not private address space: use one inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16"
    )]
    Public(Ipv4Net),
}

impl Range {
    /// Checks `text` as a cluster range: a private IPv4 block of /20 or
    /// larger, written as its network address.
    pub fn parse(text: &str) -> Result<Self, RangeError> {
        let net: Ipv4Net = text
            .trim()
            .parse()
            .map_err(|_| RangeError::Syntax(text.to_owned()))?;
        if net.network() != net.addr() {
            return Err(RangeError::NotNetwork(net, net.trunc()));
        }
        if net.prefix_len() > 20 {
            return Err(RangeError::TooSmall(net));
        }
        if !net.addr().is_private() {
            return Err(RangeError::Public(net));
        }
        // A sixty-fourth of the range for hosts: 1,022 hosts of a /16.
        let hosts = Ipv4Net::new(net.network(), net.prefix_len() + 6)
            .map_err(|_| RangeError::TooSmall(net))?;
        Ok(Self { net, hosts })
    }

    /// The first networks of `others` the range overlaps, if any.
    pub fn overlap<'a>(&self, others: impl IntoIterator<Item = &'a Ipv4Net>) -> Option<Ipv4Net> {
        others.into_iter().copied().find(|o| overlaps(&self.net, o))
    }

    /// The first free host address, given the ones in use.
    pub fn host_address(&self, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        self.hosts.hosts().find(|a| !taken.contains(a))
    }

    /// The first free subnet of `prefix` after the host block that
    /// overlaps none of `taken`.
    pub fn subnet(&self, prefix: u8, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
        let mut taken = taken.to_vec();
        taken.push(self.hosts);
        first_free(&self.net, prefix, &taken)
    }
}

/// The first piece of `within` of length `prefix` that overlaps none of
/// `taken`.
pub fn first_free(within: &Ipv4Net, prefix: u8, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    if prefix < within.prefix_len() {
        return None;
    }
    within
        .subnets(prefix)
        .ok()?
        .find(|s| !taken.iter().any(|t| overlaps(s, t)))
}

/// The addresses of a lease its host can give containers: all but its
/// first (the gateway) and, to stay clear of the network's own network
/// and broadcast addresses, one more.
pub fn capacity(lease: &Ipv4Net) -> usize {
    capacity_of(lease.prefix_len())
}

fn capacity_of(prefix: u8) -> usize {
    (1usize << (32 - u32::from(prefix.min(32)))).saturating_sub(3)
}

/// A lease's gateway: its first address after the network address.
pub fn gateway(lease: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(lease.network()).saturating_add(1))
}

/// Whether two networks share an address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The addresses a host needs on a network for `containers`: twice over,
/// for start-first updates.
pub fn need(containers: usize) -> usize {
    containers.saturating_mul(2)
}

/// The prefix of a lease with room for `addresses`, never smaller than
/// `min` holds and never larger than `max` (a network's subnet) allows.
pub fn prefix_for(addresses: usize, min: u8, max: u8) -> u8 {
    let mut prefix = min;
    while prefix > max && capacity_of(prefix) < addresses {
        prefix -= 1;
    }
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_are_checked_and_split() {
        let r = Range::parse("10.66.0.0/16").unwrap();
        assert_eq!(r.hosts, net("10.66.0.0/22"));
        assert_eq!(
            r.host_address(&BTreeSet::new()),
            Some("10.66.0.1".parse().unwrap())
        );
        assert_eq!(r.subnet(22, &[]), Some(net("10.66.4.0/22")));
        assert!(matches!(
            Range::parse("10.66.1.0/16"),
            Err(RangeError::NotNetwork(..))
        ));
        assert!(matches!(
            Range::parse("10.66.0.0/24"),
            Err(RangeError::TooSmall(_))
        ));
        assert!(matches!(
            Range::parse("8.8.0.0/16"),
            Err(RangeError::Public(_))
        ));
        assert!(matches!(Range::parse("banana"), Err(RangeError::Syntax(_))));
        assert_eq!(
            r.overlap(&[net("192.168.1.0/24"), net("10.66.200.0/24")]),
            Some(net("10.66.200.0/24"))
        );
        assert_eq!(r.overlap(&[net("10.0.0.0/8")]), Some(net("10.0.0.0/8")));
    }

    #[test]
    fn leases_grow_with_their_replicas() {
        assert_eq!(prefix_for(need(0), 26, 22), 26);
        assert_eq!(prefix_for(need(30), 26, 22), 26);
        assert_eq!(prefix_for(need(31), 26, 22), 25);
        assert_eq!(prefix_for(need(100), 26, 22), 24);
        assert_eq!(prefix_for(usize::MAX, 26, 22), 22);
        assert_eq!(capacity(&net("10.66.4.64/26")), 61);
        assert_eq!(
            gateway(&net("10.66.4.64/26")),
            "10.66.4.65".parse::<Ipv4Addr>().unwrap()
        );
        let within = net("10.66.4.0/22");
        let taken = [net("10.66.4.0/26"), net("10.66.4.128/25")];
        assert_eq!(first_free(&within, 26, &taken), Some(net("10.66.4.64/26")));
        assert_eq!(first_free(&within, 25, &taken), Some(net("10.66.5.0/25")));
        assert_eq!(
            first_free(&within, 21, &[]),
            None,
            "never larger than the subnet"
        );
    }

    #[test]
    fn an_exhausted_range_has_no_subnet() {
        let r = Range::parse("10.66.0.0/20").unwrap();
        let mut taken = Vec::new();
        while let Some(s) = r.subnet(24, &taken) {
            taken.push(s);
        }
        assert_eq!(
            taken.len(),
            15,
            "the first /26 is the hosts', so the first /24 is not free"
        );
        assert_eq!(r.subnet(26, &taken), Some(net("10.66.0.64/26")));
        taken.extend([net("10.66.0.64/26"), net("10.66.0.128/25")]);
        assert_eq!(r.subnet(26, &taken), None);
    }

    proptest! {
        /// Subnets handed out one after another never overlap each other
        /// or the host block, and stay in the range.
        #[test]
        fn subnets_never_overlap(prefixes in proptest::collection::vec(22u8..=28, 1..60)) {
            let r = Range::parse("10.66.0.0/18").unwrap();
            let mut taken: Vec<Ipv4Net> = Vec::new();
            for p in prefixes {
                if let Some(s) = r.subnet(p, &taken) {
                    prop_assert!(r.net.contains(&s));
                    prop_assert!(!overlaps(&s, &r.hosts));
                    prop_assert!(!taken.iter().any(|t| overlaps(t, &s)));
                    taken.push(s);
                }
            }
        }
    }
}
