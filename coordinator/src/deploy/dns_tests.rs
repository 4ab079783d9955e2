//! Rollouts with ElasticDNS, over an in-memory store with simulated agents
//! that run what their plans ask, report it with addresses, and serve the
//! `dns` section they were sent: an old replica leaves every host's
//! records before any plan stops it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_shared::sections::dns::{DnsReport, DnsSection};
use skiff_shared::sections::mesh::MeshMode;
use skiff_shared::tasks::TaskTree;
use skiff_shared::workload::{
    ContainerAddress, ContainerSpec, ContainerState, ContainerStatus, Health, ObservedState,
};
use tokio_util::sync::CancellationToken;

use super::rollout::RolloutState;
use super::*;
use crate::dns::RecordsBook;
use crate::network::{NetworkSettings, ipam::Range};
use crate::sections::Sections;
use crate::sections::dns::DnsFeature;
use crate::sessions::SessionInfo;
use crate::store::memory::MemoryStore;

/// What a node was sent: its containers' keys and its dns section.
type Sent = (String, Vec<String>, Option<DnsSection>);

struct Sim {
    d: Deployer,
    tree: TaskTree,
    seen: Arc<Mutex<Vec<Sent>>>,
}

fn defs(image: &str, order: &str) -> Vec<resolve::ServiceDef> {
    scaled(image, order, 2)
}

fn scaled(image: &str, order: &str, replicas: u32) -> Vec<resolve::ServiceDef> {
    let compose = format!(
        "services:\n  web:\n    image: {image}\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: 1s\n    x-skiff:\n      drain: 3s\n    deploy:\n      replicas: {replicas}\n      update_config: {{parallelism: 1, order: {order}}}\n"
    );
    let env = BTreeMap::new();
    let input = skiff_compose::stack::Input::new(
        &compose,
        "compose.yml",
        std::path::Path::new("/srv"),
        &env,
    );
    let stack = skiff_compose::stack::parse(&input).unwrap().stack;
    resolve::resolve("shop", &stack, &BTreeMap::new())
        .unwrap()
        .0
}

fn report(plan: &NodePlan, node: usize) -> ObservedState {
    ObservedState {
        plan_generation: plan.generation,
        containers: plan
            .containers
            .iter()
            .map(|c| ContainerStatus {
                name: c.name(),
                key: c.key(),
                id: c.key(),
                state: ContainerState::Running,
                health: Some(Health::Healthy),
                restart_count: 0,
                addresses: vec![ContainerAddress {
                    network: "default".into(),
                    address: format!(
                        "10.66.{node}.{}",
                        c.slot * 10 + u32::try_from(c.revision).unwrap()
                    ),
                }],
                started_at: None,
                exit_code: None,
                ips: vec![],
                image_id: String::new(),
                spec: c.fingerprint(),
            })
            .collect(),
        error: None,
        images: vec![],
        failures: vec![],
    }
}

impl Sim {
    async fn new(nodes: &[&str]) -> Self {
        let store = Arc::new(MemoryStore::default());
        for n in nodes {
            let mut row = super::tests::node(n);
            row.remote_addr = Some(format!("192.0.2.{}", row.id.len()));
            store.add_node(row);
        }
        let tree = TaskTree::root();
        let observed = Arc::new(ObservedBook::default());
        let network = Arc::new(
            ClusterNetwork::load(
                NetworkSettings::new(Range::parse("10.66.0.0/16").unwrap(), MeshMode::Vxlan),
                store.clone(),
                observed.clone(),
            )
            .await
            .unwrap(),
        );
        let book = Arc::new(RecordsBook::new(1));
        let mut sections = Sections::empty();
        sections.add(DnsFeature {
            book: book.clone(),
            network: network.clone(),
        });
        let plans = Arc::new(PlanBook::new(Arc::new(sections)));
        let sessions = Arc::new(Sessions::default());
        for n in nodes {
            sessions.insert(
                n,
                SessionInfo {
                    conn_id: 1,
                    connected_at_ms: 0,
                    remote_addr: String::new(),
                    close: CancellationToken::new(),
                    capabilities: vec!["dns.v1".into()],
                    queries: None,
                },
            );
        }
        let d = Deployer::new(
            store,
            plans.clone(),
            observed.clone(),
            sessions,
            Arc::new(EventLog::default()),
            &tree,
            Duration::from_secs(60),
        )
        .with_network(Some(network))
        .with_dns(Some(book.clone()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        for (i, n) in nodes.iter().enumerate() {
            let (mut rx, observed, seen, t, book) = (
                plans.subscribe(n),
                observed.clone(),
                seen.clone(),
                tree.clone(),
                book.clone(),
            );
            let n = (*n).to_owned();
            tree.spawn("simulated-agent", async move {
                loop {
                    let plan = rx.borrow_and_update().clone();
                    let dns: Option<DnsSection> = plan
                        .sections
                        .get("dns")
                        .map(|s| serde_json::from_value(s.body.clone()).unwrap());
                    seen.lock().unwrap().push((
                        n.clone(),
                        plan.containers.iter().map(ContainerSpec::key).collect(),
                        dns.clone(),
                    ));
                    if let Some(dns) = dns {
                        book.report(
                            &n,
                            DnsReport {
                                generation: dns.generation,
                                ..DnsReport::default()
                            },
                        );
                    }
                    observed.set(&n, report(&plan, i));
                    tokio::select! {
                        () = t.cancelled() => return,
                        r = rx.changed() => if r.is_err() { return },
                    }
                }
            });
        }
        // The records follow the reports, as the coordinator's task does.
        let (dd, t) = (d.clone(), tree.clone());
        tree.spawn("dns-records", async move {
            let mut reports = dd.observed.watch();
            reports.mark_changed();
            loop {
                tokio::select! {
                    () = t.cancelled() => return,
                    r = reports.changed() => if r.is_err() { return },
                }
                refresh_records(&dd).await.unwrap();
            }
        });
        Self { d, tree, seen }
    }

    async fn wait_published(&self, n: usize) {
        for _ in 0..10_000 {
            let records = self.d.dns.as_ref().unwrap().current();
            let published = records
                .content
                .services
                .iter()
                .flat_map(|s| &s.replicas)
                .filter(|r| r.published)
                .count();
            if published == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("never {n} published replicas");
    }

    async fn rollout_end(&self) -> RolloutState {
        for _ in 0..10_000 {
            if let Some(r) = self.d.rollouts.get("shop")
                && r.state.is_terminal()
            {
                return r.state;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the rollout never ended");
    }

    /// Checks the order of what the hosts were sent: whenever a plan
    /// drops a container, every host's last records before it already gave
    /// that replica unpublished or not at all; and a replica is only ever
    /// published once its node's plan runs it.
    fn check_order(&self, from: usize) -> usize {
        let seen = self.seen.lock().unwrap();
        let mut last: BTreeMap<String, Sent> = BTreeMap::new();
        let mut dropped = 0;
        for (i, entry) in seen.iter().enumerate() {
            let (node, keys, _) = entry;
            if i >= from
                && let Some((_, before, _)) = last.get(node)
            {
                for key in before.iter().filter(|k| !keys.contains(k)) {
                    dropped += 1;
                    for (host, (_, _, dns)) in &last {
                        let dns = dns.as_ref().unwrap();
                        let published = dns.services.iter().any(|s| {
                            s.replicas.iter().any(|r| {
                                r.published
                                    && r.node == format!("host-{node}")
                                    && format!("{}.{}.{}@{}", s.stack, s.service, r.slot, r.release)
                                        == *key
                            })
                        });
                        assert!(
                            !published,
                            "{key} dropped from {node}'s plan while {host} still answered with it"
                        );
                    }
                }
            }
            last.insert(node.clone(), entry.clone());
        }
        dropped
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.tree.cancel();
    }
}

async fn rolling_update_unpublishes_before_stopping(order: &str) {
    let sim = Sim::new(&["a", "b"]).await;
    deploy_defs(&sim.d, "shop", defs("app:1", order), "", vec![], false)
        .await
        .unwrap();
    assert_eq!(sim.rollout_end().await, RolloutState::Completed);
    // Both replicas are published everywhere once they run healthy.
    sim.wait_published(2).await;
    let from = sim.seen.lock().unwrap().len();

    deploy_defs(&sim.d, "shop", defs("app:2", order), "", vec![], false)
        .await
        .unwrap();
    assert_eq!(sim.rollout_end().await, RolloutState::Completed);
    assert_eq!(sim.check_order(from), 2, "both old replicas were stopped");
    // Every plan gave its containers the agent's server at the gateway.
    for n in ["a", "b"] {
        let plan = sim.d.plans.get(n);
        assert!(plan.containers.iter().all(|c| c.dns.len() == 1), "{n}");
        assert!(
            plan.containers
                .iter()
                .all(|c| c.networks.iter().all(|n| !n.aliases.contains(&c.service))),
            "no Docker alias for the service name"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_start_first_update_unpublishes_old_replicas_everywhere_before_stopping_them() {
    rolling_update_unpublishes_before_stopping("start-first").await;
}

#[tokio::test(start_paused = true)]
async fn a_stop_first_update_unpublishes_old_replicas_everywhere_before_stopping_them() {
    rolling_update_unpublishes_before_stopping("stop-first").await;
}

#[tokio::test(start_paused = true)]
async fn a_scale_down_unpublishes_the_replica_everywhere_before_stopping_it() {
    let sim = Sim::new(&["a", "b"]).await;
    deploy_defs(
        &sim.d,
        "shop",
        defs("app:1", "stop-first"),
        "",
        vec![],
        false,
    )
    .await
    .unwrap();
    assert_eq!(sim.rollout_end().await, RolloutState::Completed);
    sim.wait_published(2).await;
    let from = sim.seen.lock().unwrap().len();

    deploy_defs(
        &sim.d,
        "shop",
        scaled("app:1", "stop-first", 1),
        "",
        vec![],
        false,
    )
    .await
    .unwrap();
    // The hosts follow their plans on their own: wait until one was told
    // to stop the replica (the order is checked on the way).
    let mut dropped = 0;
    for _ in 0..10_000 {
        dropped = sim.check_order(from);
        if dropped > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dropped, 1, "one replica was stopped");
    sim.wait_published(1).await;
    let book = sim.d.dns.as_ref().unwrap();
    assert!(
        book.current().content.services[0].replicas.len() == 1,
        "the removed replica left the records, and its mark was forgotten"
    );
}
