//! The records book: generations, the stored records taken at start, and
//! waiting for hosts to serve a generation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use skiff_shared::sections::dns::{DnsReport, DnsSection, Replica, ReplicaAddress, ServiceRecords};
use skiff_shared::workload::{
    ContainerAddress, ContainerSpec, ContainerState, ContainerStatus, ObservedState,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::sessions::SessionInfo;

fn infos() -> BTreeMap<String, NodeInfo> {
    BTreeMap::from([(
        "n1".to_owned(),
        NodeInfo {
            name: "host-n1".into(),
            zone: None,
            edge: true,
        },
    )])
}

fn gathered(observed: Option<ObservedState>) -> Gathered {
    Gathered {
        nodes: infos(),
        mesh: BTreeMap::new(),
        network_ids: BTreeMap::from([(("shop".to_owned(), "default".to_owned()), 3)]),
        observed: observed
            .map(|o| BTreeMap::from([("n1".to_owned(), Arc::new(o))]))
            .unwrap_or_default(),
    }
}

fn web(slot: u32) -> ContainerSpec {
    let mut c = ContainerSpec::new("shop", "web", slot, "img");
    c.revision = 1;
    c
}

fn running(specs: &[ContainerSpec]) -> ObservedState {
    ObservedState {
        containers: specs
            .iter()
            .map(|c| ContainerStatus {
                name: c.name(),
                key: c.key(),
                id: c.key(),
                state: ContainerState::Running,
                health: None,
                restart_count: 0,
                addresses: vec![ContainerAddress {
                    network: "default".into(),
                    address: format!("10.66.0.{}", c.slot + 1),
                }],
                started_at: None,
                exit_code: None,
                ips: Vec::new(),
                image_id: String::new(),
                spec: String::new(),
            })
            .collect(),
        ..ObservedState::default()
    }
}

fn plans(specs: &[ContainerSpec]) -> BTreeMap<String, Vec<ContainerSpec>> {
    BTreeMap::from([("n1".to_owned(), specs.to_vec())])
}

#[test]
fn the_generation_grows_only_when_the_records_change_and_starts_above_the_epoch() {
    let book = RecordsBook::new(7);
    let specs = [web(1)];
    assert!(book.make(&plans(&specs), gathered(Some(running(&specs)))));
    let g1 = book.generation();
    assert_eq!(g1, 7 << 32);
    assert!(!book.make(&plans(&specs), gathered(Some(running(&specs)))));
    assert_eq!(book.generation(), g1, "same records, same generation");

    book.leave("n1", &specs[0].key());
    assert!(book.make(&plans(&specs), gathered(Some(running(&specs)))));
    assert_eq!(book.generation(), g1 + 1);
    assert!(!book.current().content.services[0].replicas[0].published);
    book.forget("n1", &specs[0].key());
    assert!(book.make(&plans(&[]), gathered(Some(running(&[])))));
    assert_eq!(book.generation(), g1 + 2);
    assert!(book.current().content.services.is_empty());

    // The next start of the coordinator: a later epoch, so a later
    // generation than any the last run made.
    let next = RecordsBook::new(8);
    assert!(next.make(&plans(&specs), gathered(Some(running(&specs)))));
    assert!(next.generation() > g1 + 2);
}

#[test]
fn the_stored_records_keep_their_generation_and_hold_until_a_node_reports() {
    let stored = DnsSection {
        generation: 42,
        node: "host-n1".into(),
        zone: None,
        listen: Vec::new(),
        services: vec![ServiceRecords {
            stack: "shop".into(),
            service: "web".into(),
            policy: Default::default(),
            ttl_secs: 5,
            ports: Vec::new(),
            replicas: vec![Replica {
                slot: 1,
                node: "host-n1".into(),
                zone: None,
                release: 1,
                addresses: vec![ReplicaAddress {
                    network: 3,
                    ip: "10.66.0.2".parse().unwrap(),
                }],
                published: true,
            }],
        }],
        nodes: Vec::new(),
    };
    let book = RecordsBook::new(9);
    book.seed([&stored], infos());
    let specs = [web(1)];
    // No report yet: the replica is as the stored records said.
    assert!(!book.make(&plans(&specs), gathered(None)));
    assert_eq!(book.generation(), 42);
    assert_eq!(book.current().nodes["n1"].name, "host-n1");
    // The node reports it gone: a new generation, above the epoch.
    assert!(book.make(&plans(&specs), gathered(Some(ObservedState::default()))));
    assert_eq!(book.generation(), 9 << 32);
    assert!(book.current().content.services.is_empty());
}

fn connect(sessions: &Sessions, node: &str, caps: &[&str]) {
    sessions.insert(
        node,
        SessionInfo {
            conn_id: 1,
            connected_at_ms: 0,
            remote_addr: String::new(),
            close: CancellationToken::new(),
            capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
            queries: None,
        },
    );
}

fn served(generation: u64) -> DnsReport {
    DnsReport {
        generation,
        ..DnsReport::default()
    }
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_generation_waits_for_connected_dns_hosts_only() {
    let book = Arc::new(RecordsBook::new(1));
    let sessions = Arc::new(Sessions::default());
    connect(&sessions, "n1", &["dns.v1"]);
    connect(&sessions, "n2", &["containers.v1"]);
    book.report("n1", served(4));
    let far = Instant::now() + Duration::from_secs(3600);
    assert_eq!(book.wait_served(4, &sessions, far).await, Ok(()));

    // n3 runs DNS and is behind: the wait ends when it reports.
    connect(&sessions, "n3", &["dns.v1"]);
    assert_eq!(book.behind(5, &sessions), ["n1", "n3"]);
    let (b, s) = (book.clone(), sessions.clone());
    let wait = tokio::spawn(async move { b.wait_served(5, &s, far).await });
    book.report("n1", served(5));
    book.report("n3", served(6));
    assert_eq!(wait.await.unwrap(), Ok(()));

    // A host that disconnects is not waited for; one that never reports
    // is named at the deadline.
    connect(&sessions, "n4", &["dns.v1"]);
    let soon = Instant::now() + Duration::from_secs(1);
    assert_eq!(
        book.wait_served(6, &sessions, soon).await,
        Err(vec!["n1".to_owned(), "n4".to_owned()])
    );
    sessions.remove("n4", 1);
    sessions.remove("n1", 1);
    assert_eq!(book.wait_served(6, &sessions, soon).await, Ok(()));
}
