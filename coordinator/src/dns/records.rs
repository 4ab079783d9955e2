//! The records every host serves, as a pure function of what they are made
//! from: the containers planned on every node, what the agents last
//! reported about them, the nodes' names, zones and mesh addresses, the
//! cluster-wide ids of stack networks, the replicas being unpublished, and
//! each service's DNS settings.
//!
//! A replica is listed once it has a cluster address, and published (given
//! in answers) iff it runs, is healthy when it has a health check, and is
//! not leaving.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use skiff_shared::sections::dns::{NodeRecord, Replica, ReplicaAddress, ServiceRecords};
use skiff_shared::workload::{ContainerSpec, ContainerState, Health, ObservedState};

use crate::deploy::resolve::DnsSettings;

/// The node label the `closest` policy reads.
pub const ZONE_LABEL: &str = "zone";

/// A node as the records name it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    pub name: String,
    pub zone: Option<String>,
    /// Whether it serves the ingress (every host not labelled
    /// `edge=false`).
    pub edge: bool,
}

/// What a replica was last known as in the records a host was sent, for
/// a node that has not reported since this coordinator started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub published: bool,
    pub addresses: Vec<ReplicaAddress>,
}

/// Everything the records are made from.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// By node id: the containers planned there.
    pub containers: BTreeMap<&'a str, &'a [ContainerSpec]>,
    /// By node id.
    pub nodes: &'a BTreeMap<String, NodeInfo>,
    /// By node id: its address on the mesh.
    pub mesh: &'a BTreeMap<String, Ipv4Addr>,
    /// By (stack, network name): the network's cluster-wide id.
    pub network_ids: &'a BTreeMap<(String, String), u32>,
    /// By node id: its last report.
    pub observed: &'a BTreeMap<String, Arc<ObservedState>>,
    /// By (node name, container key): from the records last sent.
    pub known: &'a HashMap<(String, String), Known>,
    /// (node id, container key) of replicas being unpublished.
    pub leaving: &'a BTreeSet<(String, String)>,
    /// By (stack, service).
    pub services: &'a BTreeMap<(String, String), DnsSettings>,
}

/// The records without their generation: what is compared to tell
/// whether a new generation is needed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Content {
    pub services: Vec<ServiceRecords>,
    pub nodes: Vec<NodeRecord>,
}

/// Whether a spec has a health check the engine or the agent runs.
fn has_check(spec: &ContainerSpec) -> bool {
    spec.probe.is_some()
        || spec
            .healthcheck
            .as_ref()
            .is_some_and(|h| h.test.first().is_none_or(|t| t != "NONE"))
}

/// Builds the records.
pub fn content(i: &Inputs<'_>) -> Content {
    let default_settings = DnsSettings::default();
    let mut services: BTreeMap<(String, String), ServiceRecords> = BTreeMap::new();
    for (node_id, containers) in &i.containers {
        let Some(node) = i.nodes.get(*node_id) else {
            continue;
        };
        let report = i.observed.get(*node_id);
        for spec in containers.iter() {
            let key = spec.key();
            let (published, addresses) = match report {
                Some(report) => {
                    let Some(status) = report.containers.iter().find(|c| c.key == key) else {
                        continue;
                    };
                    let addresses: Vec<ReplicaAddress> = status
                        .addresses
                        .iter()
                        .filter_map(|a| {
                            let network = *i
                                .network_ids
                                .get(&(spec.stack.clone(), a.network.clone()))?;
                            let ip = a.address.parse().ok()?;
                            Some(ReplicaAddress { network, ip })
                        })
                        .collect();
                    let healthy = match status.health {
                        Some(h) => h == Health::Healthy,
                        None => !has_check(spec),
                    };
                    (
                        status.state == ContainerState::Running && healthy,
                        addresses,
                    )
                }
                None => match i.known.get(&(node.name.clone(), key.clone())) {
                    Some(k) => (k.published, k.addresses.clone()),
                    None => continue,
                },
            };
            if addresses.is_empty() {
                continue;
            }
            let leaving = i.leaving.contains(&((*node_id).to_owned(), key));
            let id = (spec.stack.clone(), spec.service.clone());
            let settings = i.services.get(&id).unwrap_or(&default_settings);
            services
                .entry(id)
                .or_insert_with(|| ServiceRecords {
                    stack: spec.stack.clone(),
                    service: spec.service.clone(),
                    policy: settings.policy,
                    ttl_secs: settings.ttl_secs,
                    ports: settings.ports.clone(),
                    replicas: Vec::new(),
                })
                .replicas
                .push(Replica {
                    slot: spec.slot,
                    node: node.name.clone(),
                    zone: node.zone.clone(),
                    release: spec.revision,
                    addresses,
                    published: published && !leaving,
                });
        }
    }
    let services = services
        .into_values()
        .map(|mut s| {
            s.replicas
                .sort_by(|a, b| (a.slot, &a.node, a.release).cmp(&(b.slot, &b.node, b.release)));
            s
        })
        .collect();
    let mut nodes: Vec<NodeRecord> = i
        .mesh
        .iter()
        .filter_map(|(id, address)| {
            let node = i.nodes.get(id)?;
            Some(NodeRecord {
                name: node.name.clone(),
                address: *address,
            })
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Content { services, nodes }
}

#[cfg(test)]
mod tests {
    use skiff_shared::sections::dns::Policy;
    use skiff_shared::workload::{ContainerAddress, ContainerStatus};

    use super::*;

    fn spec(service: &str, slot: u32, revision: u64, check: bool) -> ContainerSpec {
        let mut s: ContainerSpec = serde_json::from_value(serde_json::json!({
            "stack": "shop", "service": service, "slot": slot, "revision": revision,
            "image": "x", "networks": [{"name": "default", "aliases": []}]
        }))
        .unwrap();
        if check {
            s.healthcheck = Some(skiff_shared::workload::HealthSpec {
                test: vec!["CMD".into(), "true".into()],
                interval_ms: 1000,
                timeout_ms: 1000,
                retries: 1,
                start_period_ms: 0,
            });
        }
        s
    }

    fn status(
        spec: &ContainerSpec,
        state: &str,
        health: Option<Health>,
        ip: &str,
    ) -> ContainerStatus {
        ContainerStatus {
            name: spec.name(),
            key: spec.key(),
            id: "c".into(),
            state: ContainerState::from_engine(state),
            health,
            restart_count: 0,
            addresses: vec![ContainerAddress {
                network: "default".into(),
                address: ip.into(),
            }],
            started_at: None,
            exit_code: None,
            ips: Vec::new(),
            image_id: String::new(),
            spec: String::new(),
        }
    }

    struct World {
        containers: BTreeMap<String, Vec<ContainerSpec>>,
        observed: BTreeMap<String, ObservedState>,
        known: HashMap<(String, String), Known>,
        leaving: BTreeSet<(String, String)>,
        services: BTreeMap<(String, String), DnsSettings>,
    }

    impl World {
        fn new() -> Self {
            Self {
                containers: BTreeMap::new(),
                observed: BTreeMap::new(),
                known: HashMap::new(),
                leaving: BTreeSet::new(),
                services: BTreeMap::new(),
            }
        }

        fn run(&mut self, node: &str, spec: ContainerSpec, st: &str, h: Option<Health>, ip: &str) {
            let status = status(&spec, st, h, ip);
            self.containers.entry(node.into()).or_default().push(spec);
            self.observed
                .entry(node.into())
                .or_default()
                .containers
                .push(status);
        }

        fn content(&self) -> Content {
            let nodes: BTreeMap<String, NodeInfo> = ["n1", "n2"]
                .iter()
                .map(|id| {
                    let info = NodeInfo {
                        name: format!("host-{id}"),
                        zone: (*id == "n1").then(|| "eu".to_owned()),
                        edge: true,
                    };
                    ((*id).to_owned(), info)
                })
                .collect();
            let mesh = BTreeMap::from([("n1".to_owned(), Ipv4Addr::new(10, 99, 0, 1))]);
            let network_ids = BTreeMap::from([(("shop".to_owned(), "default".to_owned()), 7)]);
            let observed = self
                .observed
                .iter()
                .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
                .collect();
            content(&Inputs {
                containers: self
                    .containers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_slice()))
                    .collect(),
                nodes: &nodes,
                mesh: &mesh,
                network_ids: &network_ids,
                observed: &observed,
                known: &self.known,
                leaving: &self.leaving,
                services: &self.services,
            })
        }
    }

    fn published(c: &Content) -> Vec<(String, u32, u64, bool)> {
        c.services
            .iter()
            .flat_map(|s| {
                s.replicas
                    .iter()
                    .map(move |r| (s.service.clone(), r.slot, r.release, r.published))
            })
            .collect()
    }

    #[test]
    fn a_replica_is_published_when_running_healthy_and_not_leaving() {
        let mut w = World::new();
        w.run("n1", spec("web", 1, 1, false), "running", None, "10.1.0.2");
        w.run(
            "n1",
            spec("web", 2, 1, true),
            "running",
            Some(Health::Starting),
            "10.1.0.3",
        );
        w.run(
            "n2",
            spec("web", 3, 1, true),
            "running",
            Some(Health::Healthy),
            "10.1.1.2",
        );
        w.run("n2", spec("web", 4, 1, false), "exited", None, "10.1.1.3");
        w.run(
            "n2",
            spec("web", 5, 1, true),
            "running",
            Some(Health::Unhealthy),
            "10.1.1.4",
        );
        // A check the engine has not reported on yet counts as not healthy.
        w.run("n2", spec("web", 6, 1, true), "running", None, "10.1.1.5");
        let c = w.content();
        assert_eq!(
            published(&c),
            [
                ("web".into(), 1, 1, true),
                ("web".into(), 2, 1, false),
                ("web".into(), 3, 1, true),
                ("web".into(), 4, 1, false),
                ("web".into(), 5, 1, false),
                ("web".into(), 6, 1, false),
            ]
        );
        let r = &c.services[0].replicas[0];
        assert_eq!(
            (r.node.as_str(), r.zone.as_deref()),
            ("host-n1", Some("eu"))
        );
        assert_eq!(
            r.addresses,
            [ReplicaAddress {
                network: 7,
                ip: Ipv4Addr::new(10, 1, 0, 2)
            }]
        );
        assert_eq!(c.services[0].policy, Policy::RoundRobin);
        assert_eq!(
            c.nodes,
            [NodeRecord {
                name: "host-n1".into(),
                address: Ipv4Addr::new(10, 99, 0, 1)
            }]
        );

        w.leaving
            .insert(("n2".into(), spec("web", 3, 1, true).key()));
        assert!(!w.content().services[0].replicas[2].published, "leaving");
    }

    #[test]
    fn a_replica_without_an_address_or_report_is_not_listed() {
        let mut w = World::new();
        w.containers
            .insert("n1".into(), vec![spec("web", 1, 1, false)]);
        assert!(w.content().services.is_empty(), "no report yet");
        // What the records last said about it holds until its node reports.
        w.known.insert(
            ("host-n1".into(), spec("web", 1, 1, false).key()),
            Known {
                published: true,
                addresses: vec![ReplicaAddress {
                    network: 7,
                    ip: Ipv4Addr::new(10, 1, 0, 9),
                }],
            },
        );
        assert_eq!(published(&w.content()), [("web".into(), 1, 1, true)]);
        w.observed.insert("n1".into(), ObservedState::default());
        assert!(w.content().services.is_empty(), "reported without it");
    }

    #[test]
    fn each_service_carries_its_settings_and_releases_side_by_side() {
        let mut w = World::new();
        w.services.insert(
            ("shop".into(), "api".into()),
            DnsSettings {
                policy: Policy::Version,
                ttl_secs: 9,
                ..DnsSettings::default()
            },
        );
        w.run("n1", spec("api", 1, 2, false), "running", None, "10.1.0.4");
        w.run("n1", spec("api", 1, 1, false), "running", None, "10.1.0.2");
        let c = w.content();
        assert_eq!(
            (c.services[0].policy, c.services[0].ttl_secs),
            (Policy::Version, 9)
        );
        assert_eq!(
            published(&c),
            [("api".into(), 1, 1, true), ("api".into(), 1, 2, true)]
        );
    }
}
