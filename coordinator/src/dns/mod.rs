//! ElasticDNS, the coordinator's side: the records book. It holds the
//! records every host serves (made by [`records::content`]), gives them a
//! new generation whenever they change, and knows which generation each
//! host serves from its reports.
//!
//! Generations only grow, across restarts too, without being stored: a
//! new generation is at least `epoch << 32` (the epoch grows with every
//! start of the coordinator), and at start the book takes the records of
//! the stored plans, generation and all, so an unchanged cluster keeps
//! its generation. Until a node reports, its replicas keep what those
//! records said about them.
//!
//! The records are made again ([`RecordsBook::refresh`]) under the plan
//! book's lock, before every plan change and when a report moved a
//! replica's state; the `dns` section ([`crate::sections::dns`]) reads
//! them. A deploy marks replicas leaving, makes the records, and waits
//! ([`RecordsBook::wait_served`]) until every connected host serves them
//! before it stops the replicas.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use skiff_shared::sections::SectionKind;
use skiff_shared::sections::dns::{Dns, DnsReport, DnsSection};
use skiff_shared::sections::ingress::{Ingress, IngressReport};
use skiff_shared::workload::ContainerSpec;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::deploy::resolve::{DnsSettings, IngressSettings, ServiceDef};
use crate::network::ClusterNetwork;
use crate::observed::ObservedBook;
use crate::sessions::Sessions;
use crate::store::{DeployStore, StoreError};

pub mod records;

use records::{Content, Inputs, Known, NodeInfo};

/// The records at one generation, with what each host's section needs
/// besides them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    pub generation: u64,
    pub content: Content,
    /// By node id.
    pub nodes: BTreeMap<String, NodeInfo>,
}

#[derive(Debug, Default)]
struct State {
    current: Arc<Records>,
    /// By (stack, service).
    services: BTreeMap<(String, String), DnsSettings>,
    /// The services with ports or routes on the ingress, by (stack,
    /// service).
    ingress: BTreeMap<(String, String), IngressSettings>,
    /// (node id, container key).
    leaving: BTreeSet<(String, String)>,
    /// From the stored plans' records, by (node name, container key).
    known: HashMap<(String, String), Known>,
}

/// What a host last reported about its DNS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub report: DnsReport,
    /// When it arrived (Unix ms).
    pub at_ms: u64,
}

/// What a host last reported about its ingress proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressServed {
    pub report: IngressReport,
    /// When it arrived (Unix ms).
    pub at_ms: u64,
}

impl Records {
    /// Whether a replica is given in these records: `None` when its
    /// service has no records (it is on no stack network).
    pub fn is_published(
        &self,
        stack: &str,
        service: &str,
        slot: u32,
        node: &str,
        release: u64,
    ) -> Option<bool> {
        let svc = self
            .content
            .services
            .iter()
            .find(|s| s.stack == stack && s.service == service)?;
        Some(svc.replicas.iter().any(|r| {
            r.slot == slot && r.node == node && r.release == release && r.published
        }))
    }
}

/// The records book.
#[derive(Debug)]
pub struct RecordsBook {
    epoch: u64,
    state: Mutex<State>,
    served: Mutex<BTreeMap<String, Served>>,
    ingress_served: Mutex<BTreeMap<String, IngressServed>>,
    /// Fired when a service's ports or routes change.
    ingress_changed: watch::Sender<u64>,
    served_changed: watch::Sender<u64>,
}

/// How often a wait for hosts to serve looks again at which hosts are
/// connected (reports wake it at once).
const SERVED_RECHECK: Duration = Duration::from_millis(250);

impl RecordsBook {
    /// An empty book for the coordinator run of `epoch`.
    pub fn new(epoch: u64) -> Self {
        Self {
            epoch,
            state: Mutex::default(),
            served: Mutex::default(),
            ingress_served: Mutex::default(),
            ingress_changed: watch::Sender::new(0),
            served_changed: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the records of the stored plans' `dns` sections: the newest
    /// becomes the current records (their generation kept), and what they
    /// say of each replica holds until its node reports.
    pub fn seed<'a>(
        &self,
        sections: impl IntoIterator<Item = &'a DnsSection>,
        nodes: BTreeMap<String, NodeInfo>,
    ) {
        let Some(newest) = sections.into_iter().max_by_key(|s| s.generation) else {
            return;
        };
        let mut s = self.lock();
        s.known = newest
            .services
            .iter()
            .flat_map(|svc| {
                svc.replicas.iter().map(move |r| {
                    let key = format!("{}.{}.{}@{}", svc.stack, svc.service, r.slot, r.release);
                    (
                        (r.node.clone(), key),
                        Known {
                            published: r.published,
                            addresses: r.addresses.clone(),
                        },
                    )
                })
            })
            .collect();
        s.current = Arc::new(Records {
            generation: newest.generation,
            content: Content {
                services: newest.services.clone(),
                nodes: newest.nodes.clone(),
            },
            nodes,
        });
    }

    /// The current records.
    pub fn current(&self) -> Arc<Records> {
        self.lock().current.clone()
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.lock().current.generation
    }

    /// Takes a stack's services' DNS settings (a deploy, a rollback, a
    /// scale, or the current releases at start).
    pub fn set_services(&self, stack: &str, defs: &[ServiceDef]) {
        let mut s = self.lock();
        let before = s.ingress.clone();
        s.services.retain(|(st, _), _| st != stack);
        s.ingress.retain(|(st, _), _| st != stack);
        for d in defs {
            s.services
                .insert((stack.to_owned(), d.name.clone()), d.dns.clone());
            if !d.ingress.is_empty() {
                s.ingress
                    .insert((stack.to_owned(), d.name.clone()), d.ingress.clone());
            }
        }
        if s.ingress != before {
            self.ingress_changed.send_modify(|n| *n += 1);
        }
    }

    /// Forgets a removed stack's settings.
    pub fn remove_stack(&self, stack: &str) {
        let mut s = self.lock();
        s.services.retain(|(st, _), _| st != stack);
        let before = s.ingress.len();
        s.ingress.retain(|(st, _), _| st != stack);
        if s.ingress.len() != before {
            self.ingress_changed.send_modify(|n| *n += 1);
        }
    }

    /// Fires when a service's ports or routes change.
    pub fn watch_ingress(&self) -> watch::Receiver<u64> {
        self.ingress_changed.subscribe()
    }

    /// Every service's ingress (ports and routes), by (stack, service).
    pub fn ingress(&self) -> BTreeMap<(String, String), IngressSettings> {
        self.lock().ingress.clone()
    }

    /// A service's settings (the defaults for one the book does not know).
    pub fn settings(&self, stack: &str, service: &str) -> DnsSettings {
        self.lock()
            .services
            .get(&(stack.to_owned(), service.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    /// Marks a replica as leaving: it is unpublished at the next
    /// [`Self::refresh`].
    pub fn leave(&self, node_id: &str, key: &str) {
        self.lock()
            .leaving
            .insert((node_id.to_owned(), key.to_owned()));
    }

    /// Forgets a leaving replica (removed from its node's plan, or kept
    /// after all).
    pub fn forget(&self, node_id: &str, key: &str) {
        self.lock()
            .leaving
            .remove(&(node_id.to_owned(), key.to_owned()));
    }

    /// Makes the records for every node's `containers` from `g`; a new
    /// generation when they differ. Whether they changed.
    fn make(&self, containers: &BTreeMap<String, Vec<ContainerSpec>>, g: Gathered) -> bool {
        let mut s = self.lock();
        let content = records::content(&Inputs {
            containers: containers
                .iter()
                .map(|(id, c)| (id.as_str(), c.as_slice()))
                .collect(),
            nodes: &g.nodes,
            mesh: &g.mesh,
            network_ids: &g.network_ids,
            observed: &g.observed,
            known: &s.known,
            leaving: &s.leaving,
            services: &s.services,
        });
        // Nodes that reported no longer need what the stored records said.
        let reported: BTreeSet<&String> = g
            .nodes
            .iter()
            .filter(|(id, _)| g.observed.contains_key(*id))
            .map(|(_, n)| &n.name)
            .collect();
        s.known.retain(|(node, _), _| !reported.contains(node));
        if content == s.current.content {
            if g.nodes != s.current.nodes {
                let mut r = (*s.current).clone();
                r.nodes = g.nodes;
                s.current = Arc::new(r);
            }
            return false;
        }
        let generation = (s.current.generation + 1).max(self.epoch << 32);
        s.current = Arc::new(Records {
            generation,
            content,
            nodes: g.nodes,
        });
        true
    }

    /// Takes a host's report of its DNS server.
    pub fn report(&self, node_id: &str, report: DnsReport) {
        self.served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                node_id.to_owned(),
                Served {
                    report,
                    at_ms: skiff_shared::unix_millis(),
                },
            );
        self.served_changed.send_modify(|n| *n += 1);
    }

    /// What each host last reported, by node id.
    pub fn served(&self) -> BTreeMap<String, Served> {
        self.served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Takes a host's report of its ingress proxy.
    pub fn report_ingress(&self, node_id: &str, report: IngressReport) {
        self.ingress_served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                node_id.to_owned(),
                IngressServed {
                    report,
                    at_ms: skiff_shared::unix_millis(),
                },
            );
        self.served_changed.send_modify(|n| *n += 1);
    }

    /// What each host's proxy last reported, by node id.
    pub fn ingress_served(&self) -> BTreeMap<String, IngressServed> {
        self.ingress_served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The connected hosts running DNS or the ingress that serve an older
    /// generation than `generation`.
    pub fn behind(&self, generation: u64, sessions: &Sessions) -> Vec<String> {
        let mut out: Vec<String> = {
            let served = self.served.lock().unwrap_or_else(PoisonError::into_inner);
            sessions
                .with_capability(Dns::CAPABILITY)
                .into_iter()
                .filter(|id| {
                    served
                        .get(id)
                        .is_none_or(|s| s.report.generation < generation)
                })
                .collect()
        };
        {
            let served = self
                .ingress_served
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            out.extend(
                sessions
                    .with_capability(Ingress::CAPABILITY)
                    .into_iter()
                    .filter(|id| {
                        served
                            .get(id)
                            .is_none_or(|s| s.report.generation < generation)
                    }),
            );
        }
        out.sort();
        out.dedup();
        out
    }

    /// Waits until every connected host running DNS or the ingress serves `generation`
    /// or a later one. Hosts that are not connected are not waited for:
    /// they get the newest plan when they connect again. On timeout, the
    /// hosts still behind.
    ///
    /// # Errors
    /// The node ids of the hosts still behind at `deadline`.
    pub async fn wait_served(
        &self,
        generation: u64,
        sessions: &Sessions,
        deadline: Instant,
    ) -> Result<(), Vec<String>> {
        let mut changes = self.served_changed.subscribe();
        loop {
            let behind = self.behind(generation, sessions);
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(behind);
            }
            let wake = deadline.min(Instant::now() + SERVED_RECHECK);
            tokio::select! {
                _ = changes.changed() => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

/// The handles the records are made from.
#[derive(Debug, Clone)]
pub struct RecordsSources {
    pub store: Arc<dyn DeployStore>,
    pub network: Arc<ClusterNetwork>,
    pub observed: Arc<ObservedBook>,
}

/// Makes the records again for every node's `containers` (by node id);
/// call it holding the plan book's lock. Whether they changed.
///
/// # Errors
/// The store failed reading the nodes.
pub async fn refresh(
    book: &RecordsBook,
    src: &RecordsSources,
    containers: &BTreeMap<String, Vec<ContainerSpec>>,
) -> Result<bool, StoreError> {
    let rows = src.store.nodes(false).await?;
    let observed = rows
        .iter()
        .filter_map(|n| Some((n.id.clone(), src.observed.get(&n.id)?.1)))
        .collect();
    let nodes = node_infos(rows);
    let g = Gathered {
        nodes,
        mesh: src.network.mesh_addresses(),
        network_ids: src.network.network_ids(),
        observed,
    };
    Ok(book.make(containers, g))
}

/// The nodes as the records name them, by id.
pub fn node_infos(rows: Vec<crate::store::NodeRow>) -> BTreeMap<String, NodeInfo> {
    rows.into_iter()
        .map(|n| {
            let zone = n.labels.get(records::ZONE_LABEL).cloned();
            let edge =
                n.labels.get(crate::ingress::EDGE_LABEL).map(String::as_str) != Some("false");
            (
                n.id,
                NodeInfo {
                    name: n.name,
                    zone,
                    edge,
                },
            )
        })
        .collect()
}

/// What the records are made from besides the containers and the book's
/// own state.
#[derive(Debug, Default)]
struct Gathered {
    nodes: BTreeMap<String, NodeInfo>,
    mesh: BTreeMap<String, Ipv4Addr>,
    network_ids: BTreeMap<(String, String), u32>,
    observed: BTreeMap<String, Arc<skiff_shared::workload::ObservedState>>,
}

/// A host's `dns` section: the current records, its name and zone, and
/// the gateways it listens on.
pub fn section(records: &Records, node_id: &str, listen: Vec<Ipv4Addr>) -> DnsSection {
    let node = records.nodes.get(node_id).cloned().unwrap_or_default();
    DnsSection {
        generation: records.generation,
        node: node.name,
        zone: node.zone,
        listen,
        services: records.content.services.clone(),
        nodes: records.content.nodes.clone(),
    }
}

#[cfg(test)]
mod tests;
