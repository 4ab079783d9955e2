//! [`Records`]: a [`DnsSection`] indexed for answering, built once per
//! generation and then only read.
//!
//! Every name is kept lower-cased, without its trailing dot: the full
//! names of the zone in one map, the short names a container may use for
//! its own stack's services in one map per stack, and the callers (every
//! address of every listed replica) by source address.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use super::{DEFAULT_TTL_SECS, DnsSection, Policy, PortRecord, Protocol, ReplicaAddress, ZONE};

/// The records of one generation, indexed for [`Records::answer`].
#[derive(Debug, Default)]
pub struct Records {
    pub(super) generation: u64,
    /// This host's node and zone label: the `closest` policy for the host.
    pub(super) node: Box<str>,
    pub(super) zone: Option<Box<str>>,
    pub(super) services: Vec<Service>,
    /// Full names under [`ZONE`].
    pub(super) names: HashMap<Box<str>, Entry>,
    /// Per stack, the short names its containers may use.
    pub(super) short: HashMap<Box<str>, HashMap<Box<str>, Entry>>,
    /// Source address to the replica it belongs to.
    pub(super) callers: HashMap<Ipv4Addr, CallerRef>,
    /// Addresses of the host itself (besides loopback).
    pub(super) host: HashSet<Ipv4Addr>,
}

/// A name and what it stands for.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// The name as records are owned (lower-cased, no trailing dot).
    pub(super) owner: Arc<str>,
    pub(super) target: Target,
}

/// What a name of the zone stands for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Target {
    /// The zone's apex and the names between it and records (`STACK.skiff`,
    /// `nodes.skiff`): they exist, with no records.
    Empty,
    /// `SERVICE.STACK.skiff`: the service's replicas chosen by its policy.
    Service(usize),
    /// `tasks.SERVICE.STACK.skiff`: every published replica.
    Tasks(usize),
    /// `SLOT.SERVICE.STACK.skiff`: the published replicas of one slot.
    Slot(usize, u32),
    /// `_PORT._PROTO.SERVICE.STACK.skiff`: SRV records of one port.
    Port(usize, PortRecord),
    /// `NODE.nodes.skiff`: a host's mesh address.
    Node(Ipv4Addr),
}

#[derive(Debug)]
pub(super) struct Service {
    pub(super) stack: Box<str>,
    pub(super) policy: Policy,
    pub(super) ttl: u32,
    pub(super) ports: Vec<PortRecord>,
    pub(super) replicas: Vec<ServiceReplica>,
    /// Every network any of its replicas is on, sorted.
    pub(super) networks: Vec<u32>,
}

#[derive(Debug)]
pub(super) struct ServiceReplica {
    pub(super) slot: u32,
    pub(super) node: Box<str>,
    pub(super) zone: Option<Box<str>>,
    pub(super) release: u64,
    pub(super) addresses: Vec<ReplicaAddress>,
    pub(super) published: bool,
    /// `SLOT.SERVICE.STACK.skiff`: the target of its SRV records.
    pub(super) name: Arc<str>,
}

/// A source address: which replica, on which network.
#[derive(Debug, Clone, Copy)]
pub(super) struct CallerRef {
    pub(super) service: usize,
    pub(super) replica: usize,
    pub(super) network: u32,
}

/// Lower-cased, without one trailing dot.
pub(super) fn normalize(name: &str) -> std::borrow::Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

fn protocol_label(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "_tcp",
        Protocol::Udp => "_udp",
    }
}

impl Records {
    /// Indexes a section. Names are compared without case; when two
    /// entries of the section claim the same name (the coordinator never
    /// sends such a section), the first one listed keeps it, host names
    /// (`NODE.nodes.skiff`) first of all.
    #[must_use]
    pub fn new(section: &DnsSection) -> Self {
        let mut r = Self {
            generation: section.generation,
            node: section.node.as_str().into(),
            zone: section.zone.as_deref().map(Into::into),
            ..Self::default()
        };
        r.insert_empty(ZONE.to_owned());
        r.insert_empty(format!("nodes.{ZONE}"));
        for n in &section.nodes {
            let name = format!("{}.nodes.{ZONE}", n.name.to_ascii_lowercase());
            r.insert(name, Target::Node(n.address));
            if n.name == section.node {
                r.host.insert(n.address);
            }
        }
        r.host.extend(section.listen.iter().copied());
        for s in &section.services {
            let index = r.services.len();
            let stack = s.stack.to_ascii_lowercase();
            let service = s.service.to_ascii_lowercase();
            let fqdn = format!("{service}.{stack}.{ZONE}");
            let mut networks: Vec<u32> = s
                .replicas
                .iter()
                .flat_map(|rep| rep.addresses.iter().map(|a| a.network))
                .collect();
            networks.sort_unstable();
            networks.dedup();
            let replicas = s
                .replicas
                .iter()
                .map(|rep| ServiceReplica {
                    slot: rep.slot,
                    node: rep.node.as_str().into(),
                    zone: rep.zone.as_deref().map(Into::into),
                    release: rep.release,
                    addresses: rep.addresses.clone(),
                    published: rep.published,
                    name: Arc::from(format!("{}.{fqdn}", rep.slot)),
                })
                .collect::<Vec<_>>();
            for (ri, rep) in replicas.iter().enumerate() {
                for a in &rep.addresses {
                    r.callers.entry(a.ip).or_insert(CallerRef {
                        service: index,
                        replica: ri,
                        network: a.network,
                    });
                }
                r.insert(rep.name.to_string(), Target::Slot(index, rep.slot));
            }
            r.insert_empty(format!("{stack}.{ZONE}"));
            r.insert(fqdn.clone(), Target::Service(index));
            r.insert(format!("tasks.{fqdn}"), Target::Tasks(index));
            r.insert_short(&stack, service.clone(), Target::Service(index));
            r.insert_short(&stack, format!("tasks.{service}"), Target::Tasks(index));
            for p in &s.ports {
                let label = format!("_{}.{}", p.port, protocol_label(p.protocol));
                r.insert_empty(format!("{}.{fqdn}", protocol_label(p.protocol)));
                r.insert(format!("{label}.{fqdn}"), Target::Port(index, *p));
                r.insert_short(
                    &stack,
                    format!("{label}.{service}"),
                    Target::Port(index, *p),
                );
            }
            r.services.push(Service {
                stack: stack.into(),
                policy: s.policy,
                ttl: s.ttl_secs,
                ports: s.ports.clone(),
                replicas,
                networks,
            });
        }
        r
    }

    /// Also counts these addresses as the host's own (its other
    /// interfaces): queries from them are answered as the host's.
    /// Loopback, the listen addresses and this node's mesh address always
    /// are.
    #[must_use]
    pub fn with_host_addresses(mut self, addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        for a in addresses {
            if let IpAddr::V4(v4) = a.to_canonical() {
                self.host.insert(v4);
            }
        }
        self
    }

    /// The generation these records were built from.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether queries from this address get answers: a listed replica's
    /// address, loopback, or one of the host's addresses.
    #[must_use]
    pub fn knows(&self, from: IpAddr) -> bool {
        !matches!(self.caller(from), Caller::Unknown)
    }

    pub(super) fn caller(&self, from: IpAddr) -> Caller {
        match from.to_canonical() {
            IpAddr::V4(v4) => {
                if let Some(c) = self.callers.get(&v4) {
                    Caller::Container(*c)
                } else if v4.is_loopback() || self.host.contains(&v4) {
                    Caller::Host
                } else {
                    Caller::Unknown
                }
            }
            IpAddr::V6(v6) if v6.is_loopback() => Caller::Host,
            IpAddr::V6(_) => Caller::Unknown,
        }
    }

    fn insert(&mut self, name: String, target: Target) {
        let owner: Arc<str> = Arc::from(name.as_str());
        self.names
            .entry(name.into_boxed_str())
            .or_insert(Entry { owner, target });
    }

    fn insert_empty(&mut self, name: String) {
        self.insert(name, Target::Empty);
    }

    fn insert_short(&mut self, stack: &str, name: String, target: Target) {
        let owner: Arc<str> = Arc::from(name.as_str());
        self.short
            .entry(stack.into())
            .or_default()
            .entry(name.into_boxed_str())
            .or_insert(Entry { owner, target });
    }
}

/// Who asks.
#[derive(Debug, Clone, Copy)]
pub(super) enum Caller {
    Container(CallerRef),
    Host,
    Unknown,
}

/// The TTL of names that are not a service's (hosts, empty names).
pub(super) const OTHER_TTL: u32 = DEFAULT_TTL_SECS;
