//! [`Records::answer`]: what a question gets, decided from the records and
//! who asks (the query's source address). Pure: the agent's server and
//! `skiff dns query` on the coordinator both answer with it.
//!
//! - Who asks: a source address of a listed replica is that container
//!   (its stack, networks, node, release); loopback and the host's own
//!   addresses are the host; anyone else is [`Answer::Refused`], whatever
//!   the name.
//! - Names under `skiff`: `SERVICE.STACK.skiff` (A: the published
//!   replicas chosen by the service's policy; SRV: one record per chosen
//!   replica and port, targeting the replica's `SLOT.SERVICE.STACK.skiff`,
//!   whose address the record carries for the additional section),
//!   `tasks.SERVICE.STACK.skiff` (every published replica, no policy),
//!   `SLOT.SERVICE.STACK.skiff` (the published replicas of that slot: two
//!   while a slot is replaced start-first), `_PORT._tcp|_udp.SERVICE.STACK.skiff`
//!   (SRV of that port, by policy), `NODE.nodes.skiff` (the host's mesh
//!   address). Any other name under `skiff` is [`Answer::NxDomain`].
//! - Short names, for a container only and only for its own stack:
//!   `SERVICE`, `tasks.SERVICE`, `_PORT._tcp|_udp.SERVICE`. A short name
//!   that is not one of these is [`Answer::Forward`], as is any name
//!   outside the zone.
//! - A container sees a service only if it shares a network with it, and
//!   gets each replica's address on such a network (the one it asked from
//!   first); a service it shares none with does not exist for it
//!   (NXDOMAIN for a full name, forwarded for a short one). The host gets
//!   each replica's first address.
//! - Policies: `closest` keeps the replicas on the caller's node, else
//!   those on nodes of its zone label, else all; `version` keeps the
//!   replicas of the caller's release (a container of the same stack),
//!   else all; every list (policy or not) is then rotated by `rotation`,
//!   so successive queries spread over the replicas.
//! - A name with records of another type (AAAA: there is no IPv6) or no
//!   published replica right now is [`Answer::NoData`].

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use super::index::{
    Caller, CallerRef, Entry, OTHER_TTL, Service, ServiceReplica, Target, normalize,
};
use super::{Policy, PortRecord, ZONE};

pub use super::index::Records;

/// The record types the resolver tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueryKind {
    A,
    Aaaa,
    Srv,
    /// Any other type: names of the zone have none.
    Other,
}

/// A question: a name (any case, trailing dot optional) and a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Question<'a> {
    pub name: &'a str,
    pub kind: QueryKind,
}

/// One record of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its owner: the question's name, lower-cased, without trailing dot.
    pub name: Arc<str>,
    pub ttl: u32,
    pub data: RecordData,
}

/// A record's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordData {
    A(Ipv4Addr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        /// The replica's name, `SLOT.SERVICE.STACK.skiff`.
        target: Arc<str>,
        /// The target's address as the caller sees it (the additional
        /// section's A record).
        address: Ipv4Addr,
    },
}

/// What a question gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// These records, in this order.
    Records(Vec<Record>),
    /// The name exists but has no record of this type (or no published
    /// replica right now).
    NoData { ttl: u32 },
    /// A name of the zone that does not exist (for this caller).
    NxDomain,
    /// Not a name of ours: ask the upstream resolvers.
    Forward,
    /// The source is neither a container of the records nor the host.
    Refused,
}

/// The caller's view: which addresses it may be given, where it is.
struct View<'r> {
    /// The caller's replica and the network it asked from; `None`: the
    /// host.
    container: Option<(&'r Service, &'r ServiceReplica, u32)>,
    node: &'r str,
    zone: Option<&'r str>,
}

impl View<'_> {
    /// The address of `rep` this caller is given, if it may reach it.
    fn address(&self, rep: &ServiceReplica) -> Option<Ipv4Addr> {
        let Some((_, caller, network)) = self.container else {
            return rep.addresses.first().map(|a| a.ip);
        };
        rep.addresses
            .iter()
            .find(|a| a.network == network)
            .or_else(|| {
                rep.addresses
                    .iter()
                    .find(|a| caller.addresses.iter().any(|c| c.network == a.network))
            })
            .map(|a| a.ip)
    }

    /// Whether the caller shares a network with the service.
    fn sees(&self, service: &Service) -> bool {
        match self.container {
            None => true,
            Some((_, caller, _)) => caller
                .addresses
                .iter()
                .any(|a| service.networks.binary_search(&a.network).is_ok()),
        }
    }
}

/// Which replicas a name stands for.
#[derive(Clone, Copy)]
enum Choice {
    Policy,
    All,
    Slot(u32),
}

impl Records {
    /// Answers `q` asked from `from`; `rotation` turns the order of
    /// replicas (the server passes a counter). See the module's doc.
    #[must_use]
    pub fn answer(&self, q: &Question<'_>, from: IpAddr, rotation: u64) -> Answer {
        let view = match self.caller(from) {
            Caller::Unknown => return Answer::Refused,
            Caller::Host => View {
                container: None,
                node: &self.node,
                zone: self.zone.as_deref(),
            },
            Caller::Container(CallerRef {
                service,
                replica,
                network,
            }) => {
                let Some(s) = self.services.get(service) else {
                    return Answer::Refused;
                };
                let Some(r) = s.replicas.get(replica) else {
                    return Answer::Refused;
                };
                View {
                    container: Some((s, r, network)),
                    node: &r.node,
                    zone: r.zone.as_deref(),
                }
            }
        };
        let name = normalize(q.name);
        let name: &str = &name;
        let in_zone = name == ZONE
            || name
                .strip_suffix(ZONE)
                .is_some_and(|rest| rest.ends_with('.'));
        if in_zone {
            match self.names.get(name) {
                Some(entry) => self
                    .resolve(entry, q.kind, &view, rotation)
                    .unwrap_or(Answer::NxDomain),
                None => Answer::NxDomain,
            }
        } else if let Some((service, _, _)) = view.container {
            self.short
                .get(&service.stack)
                .and_then(|names| names.get(name))
                .and_then(|entry| self.resolve(entry, q.kind, &view, rotation))
                .unwrap_or(Answer::Forward)
        } else {
            Answer::Forward
        }
    }

    /// The answer for a name that exists, or `None` when it does not exist
    /// for this caller (a service it shares no network with).
    fn resolve(
        &self,
        entry: &Entry,
        kind: QueryKind,
        view: &View<'_>,
        rotation: u64,
    ) -> Option<Answer> {
        let (index, choice, port) = match entry.target {
            Target::Empty => return Some(Answer::NoData { ttl: OTHER_TTL }),
            Target::Node(ip) => {
                return Some(match kind {
                    QueryKind::A => Answer::Records(vec![Record {
                        name: entry.owner.clone(),
                        ttl: OTHER_TTL,
                        data: RecordData::A(ip),
                    }]),
                    _ => Answer::NoData { ttl: OTHER_TTL },
                });
            }
            Target::Service(i) => (i, Choice::Policy, None),
            Target::Tasks(i) => (i, Choice::All, None),
            Target::Slot(i, slot) => (i, Choice::Slot(slot), None),
            Target::Port(i, p) => (i, Choice::Policy, Some(p)),
        };
        let service = self.services.get(index)?;
        if !view.sees(service) {
            return None;
        }
        let ttl = service.ttl;
        let wanted = match (kind, port) {
            (QueryKind::A, None) => kind,
            (QueryKind::Srv, _) => kind,
            _ => return Some(Answer::NoData { ttl }),
        };
        let chosen = choose(service, choice, view, rotation);
        if chosen.is_empty() {
            return Some(Answer::NoData { ttl });
        }
        let records = match wanted {
            QueryKind::A => chosen
                .into_iter()
                .map(|(_, ip)| Record {
                    name: entry.owner.clone(),
                    ttl,
                    data: RecordData::A(ip),
                })
                .collect(),
            _ => {
                let ports: &[PortRecord] = match &port {
                    Some(p) => std::slice::from_ref(p),
                    None => &service.ports,
                };
                if ports.is_empty() {
                    return Some(Answer::NoData { ttl });
                }
                let mut records = Vec::with_capacity(chosen.len() * ports.len());
                for p in ports {
                    for (rep, ip) in &chosen {
                        records.push(Record {
                            name: entry.owner.clone(),
                            ttl,
                            data: RecordData::Srv {
                                priority: 0,
                                weight: 1,
                                port: p.port,
                                target: rep.name.clone(),
                                address: *ip,
                            },
                        });
                    }
                }
                records
            }
        };
        Some(Answer::Records(records))
    }
}

/// The replicas a name gives this caller, with the address it gets for
/// each, in answer order.
fn choose<'s>(
    service: &'s Service,
    choice: Choice,
    view: &View<'_>,
    rotation: u64,
) -> Vec<(&'s ServiceReplica, Ipv4Addr)> {
    let mut all: Vec<(&ServiceReplica, Ipv4Addr)> = service
        .replicas
        .iter()
        .filter(|r| r.published)
        .filter(|r| match choice {
            Choice::Slot(slot) => r.slot == slot,
            _ => true,
        })
        .filter_map(|r| view.address(r).map(|ip| (r, ip)))
        .collect();
    if matches!(choice, Choice::Policy) {
        match service.policy {
            Policy::RoundRobin => {}
            Policy::Closest => {
                if all.iter().any(|(r, _)| *r.node == *view.node) {
                    all.retain(|(r, _)| *r.node == *view.node);
                } else if let Some(zone) = view.zone
                    && all.iter().any(|(r, _)| r.zone.as_deref() == Some(zone))
                {
                    all.retain(|(r, _)| r.zone.as_deref() == Some(zone));
                }
            }
            Policy::Version => {
                if let Some((caller_service, caller, _)) = view.container
                    && caller_service.stack == service.stack
                    && all.iter().any(|(r, _)| r.release == caller.release)
                {
                    all.retain(|(r, _)| r.release == caller.release);
                }
            }
        }
    }
    if all.len() > 1 {
        let len = all.len() as u64;
        #[allow(clippy::cast_possible_truncation)] // below len, a usize
        all.rotate_left((rotation % len) as usize);
    }
    all
}
