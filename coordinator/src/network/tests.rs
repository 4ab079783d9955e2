//! The cluster network over an in-memory store.

use std::collections::BTreeMap;
use std::sync::Arc;

use skiff_shared::protocol::HostFacts;
use skiff_shared::sections::mesh::{MeshMode, MeshReport};
use skiff_shared::sections::networks::NetworksSection;
use skiff_shared::workload::{
    ContainerAddress, ContainerSpec, ContainerState, ContainerStatus, NetworkAttach, ObservedState,
};

use super::*;
use crate::store::memory::MemoryStore;
use crate::store::{NetworkStore, NodeRow, NodeStore};

fn node(id: &str, addr: &str) -> NodeRow {
    NodeRow {
        id: id.into(),
        name: format!("host-{id}"),
        labels: BTreeMap::new(),
        facts: HostFacts::default(),
        agent_version: String::new(),
        remote_addr: Some(addr.into()),
        joined_at: 0,
        last_seen_at: None,
        cert_serial: String::new(),
        cert_not_after: 0,
        plan_generation: None,
        plan_error: None,
        removed_at: None,
    }
}

fn on(stack: &str, service: &str, slot: u32, nets: &[&str]) -> ContainerSpec {
    let mut c = ContainerSpec::new(stack, service, slot, "img");
    c.networks = nets
        .iter()
        .map(|n| NetworkAttach {
            name: (*n).into(),
            external: false,
            internal: false,
            aliases: vec![service.into()],
        })
        .collect();
    c
}

async fn net(range: &str, nodes: &[(&str, &str)]) -> (ClusterNetwork, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::default());
    for (id, addr) in nodes {
        store.add_node(node(id, addr));
    }
    let settings = NetworkSettings::new(Range::parse(range).unwrap(), MeshMode::Wireguard);
    (
        ClusterNetwork::load(settings, store.clone(), Arc::new(ObservedBook::default()))
            .await
            .unwrap(),
        store,
    )
}

fn leases(section: &NetworksSection, name: &str) -> Vec<Ipv4Net> {
    section
        .networks
        .iter()
        .find(|s| s.name == name)
        .unwrap()
        .leases
        .iter()
        .map(|l| l.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn a_network_has_one_subnet_and_leases_a_piece_of_it_on_each_host_it_runs_on() {
    let (n, store) = net("10.66.0.0/16", &[("a", "192.0.2.1"), ("b", "192.0.2.2")]).await;
    let mut plans = BTreeMap::from([
        (
            "a".to_owned(),
            vec![
                on("shop", "web", 1, &["front"]),
                on("shop", "db", 1, &["back"]),
            ],
        ),
        ("b".to_owned(), vec![on("shop", "web", 2, &["front"])]),
    ]);
    assert!(n.sync(&plans).await.unwrap());
    assert!(!n.sync(&plans).await.unwrap(), "nothing more to do");

    let a = n.networks_section("a", &plans["a"]);
    let b = n.networks_section("b", &plans["b"]);
    let front_a = a.networks.iter().find(|s| s.name == "front").unwrap();
    let front_b = &b.networks[0];
    assert_eq!(front_a.id, front_b.id, "one identity across the cluster");
    assert_eq!(
        front_a.subnet, front_b.subnet,
        "one subnet across the cluster"
    );
    let subnet: Ipv4Net = front_a.subnet.clone().unwrap().parse().unwrap();
    assert_eq!(subnet.prefix_len(), 22);
    let (la, lb) = (leases(&a, "front"), leases(&b, "front"));
    assert_eq!((la.len(), lb.len()), (1, 1));
    assert!(subnet.contains(&la[0]) && subnet.contains(&lb[0]));
    assert!(!ipam::overlaps(&la[0], &lb[0]), "never handed out twice");
    assert_eq!(
        front_a.gateway.as_deref(),
        Some(ipam::gateway(&la[0]).to_string().as_str())
    );
    let back_a = a.networks.iter().find(|s| s.name == "back").unwrap();
    assert_ne!(back_a.subnet, front_a.subnet);
    let cluster = a.cluster.as_ref().unwrap();
    assert_eq!(cluster.range, "10.66.0.0/16");
    assert_eq!(cluster.hosts, "10.66.0.0/22");
    assert_eq!(cluster.mtu, 1440, "1500 less WireGuard's 60");
    assert_eq!(store.leases().await.unwrap().len(), 3);

    // The network leaves host b: its lease there is reclaimed.
    plans.insert("b".into(), vec![]);
    assert!(n.sync(&plans).await.unwrap());
    assert_eq!(store.leases().await.unwrap().len(), 2);

    // Host a is removed: everything of it goes.
    store.remove_node("a", 1).await.unwrap();
    assert!(n.sync(&plans).await.unwrap());
    assert!(store.leases().await.unwrap().is_empty());
    assert!(store.cluster_networks().await.unwrap().is_empty());
    assert_eq!(store.mesh_hosts().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_lease_stays_while_the_host_still_runs_the_networks_containers() {
    let store = Arc::new(MemoryStore::default());
    store.add_node(node("a", "192.0.2.1"));
    let observed = Arc::new(ObservedBook::default());
    let settings = NetworkSettings::new(Range::parse("10.66.0.0/16").unwrap(), MeshMode::Vxlan);
    let n = ClusterNetwork::load(settings, store.clone(), observed.clone())
        .await
        .unwrap();
    let plans = BTreeMap::from([("a".to_owned(), vec![on("shop", "web", 1, &["front"])])]);
    n.sync(&plans).await.unwrap();
    observed.set(
        "a",
        ObservedState {
            containers: vec![ContainerStatus {
                name: "shop.web.1".into(),
                key: String::new(),
                id: "x".into(),
                state: ContainerState::Running,
                health: None,
                restart_count: 0,
                addresses: vec![ContainerAddress {
                    network: "front".into(),
                    address: "10.66.4.2".into(),
                }],
                started_at: None,
                exit_code: None,
                ips: vec![],
                image_id: String::new(),
                spec: String::new(),
            }],
            ..ObservedState::default()
        },
    );
    let empty = BTreeMap::from([("a".to_owned(), vec![])]);
    n.sync(&empty).await.unwrap();
    assert_eq!(
        store.leases().await.unwrap().len(),
        1,
        "its container still runs"
    );
    observed.set("a", ObservedState::default());
    assert!(n.sync(&empty).await.unwrap());
    assert!(
        store.leases().await.unwrap().is_empty(),
        "gone with its last container"
    );
    assert!(store.cluster_networks().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_busy_host_leases_more_and_a_full_range_says_what_to_do() {
    let (n, _) = net("10.66.0.0/20", &[("a", "192.0.2.1")]).await;
    let few: Vec<ContainerSpec> = (1..=10).map(|i| on("shop", "web", i, &["front"])).collect();
    let plans = BTreeMap::from([("a".to_owned(), few)]);
    n.sync(&plans).await.unwrap();
    let first = leases(&n.networks_section("a", &plans["a"]), "front");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].prefix_len(), 26);

    // Scaled up past what the lease holds: one more lease, the first kept
    // (its containers keep their addresses).
    let many: Vec<ContainerSpec> = (1..=60).map(|i| on("shop", "web", i, &["front"])).collect();
    let plans = BTreeMap::from([("a".to_owned(), many)]);
    assert!(n.sync(&plans).await.unwrap());
    let grown = leases(&n.networks_section("a", &plans["a"]), "front");
    assert_eq!(grown[0], first[0]);
    assert_eq!(grown.len(), 2);
    assert!(grown.iter().map(ipam::capacity).sum::<usize>() >= 120);

    // More replicas than a network's subnet holds.
    let huge: Vec<ContainerSpec> = (1..=600)
        .map(|i| on("shop", "web", i, &["front"]))
        .collect();
    let err = n
        .sync(&BTreeMap::from([("a".to_owned(), huge)]))
        .await
        .unwrap_err();
    assert!(matches!(err, NetworkError::NetworkFull { .. }), "{err}");

    // More networks than the range holds (a /20 has room for 3 /22s).
    let nets: Vec<String> = (0..4).map(|i| format!("n{i}")).collect();
    let names: Vec<&str> = nets.iter().map(String::as_str).collect();
    let plans = BTreeMap::from([("a".to_owned(), vec![on("big", "web", 1, &names)])]);
    let err = n.sync(&plans).await.unwrap_err();
    assert!(matches!(err, NetworkError::RangeFull { .. }), "{err}");
    assert!(err.to_string().contains("skiff stack rm"), "{err}");
}

#[tokio::test]
async fn the_mesh_lists_every_other_host_with_its_key_and_leases() {
    let (n, store) = net(
        "10.66.0.0/16",
        &[("a", "192.0.2.1"), ("b", "192.0.2.2"), ("c", "192.0.2.3")],
    )
    .await;
    let plans = BTreeMap::from([
        ("a".to_owned(), vec![on("shop", "web", 1, &["front"])]),
        (
            "b".to_owned(),
            vec![on("shop", "web", 2, &["front", "back"])],
        ),
    ]);
    n.sync(&plans).await.unwrap();
    let a = n.mesh_section("a").unwrap();
    assert!(a.peers.is_empty(), "no peer has reported a key yet");
    assert_eq!(a.address, "10.66.0.1/22");
    assert_eq!((a.port, a.mtu), (51820, 1440));

    let mut changes = n.watch();
    for (id, key) in [("a", [1u8; 32]), ("b", [2; 32]), ("c", [3; 32])] {
        n.report_mesh(
            id,
            MeshReport {
                public_key: Some(b64(&key)),
                ..MeshReport::default()
            },
        );
    }
    assert!(changes.has_changed().unwrap(), "new keys need new plans");
    changes.borrow_and_update();
    assert!(n.sync(&plans).await.unwrap());
    let a = n.mesh_section("a").unwrap();
    let names: Vec<&str> = a.peers.iter().map(|p| p.node_id.as_str()).collect();
    assert_eq!(names, ["b", "c"]);
    assert_eq!(
        a.peers[0].public_key.as_deref(),
        Some(b64(&[2; 32]).as_str())
    );
    assert_eq!(a.peers[0].endpoint, "192.0.2.2");
    assert_eq!(a.peers[0].subnets.len(), 2, "both of b's leases route to b");
    assert!(a.peers[1].subnets.is_empty());
    let stored = store.mesh_hosts().await.unwrap();
    assert!(
        stored.iter().all(|h| h.public_key.is_some()),
        "keys are stored"
    );

    // The same key again changes nothing.
    n.report_mesh(
        "b",
        MeshReport {
            public_key: Some(b64(&[2; 32])),
            ..MeshReport::default()
        },
    );
    assert!(!changes.has_changed().unwrap());

    // A smaller underlay somewhere: every plan is built again, with a
    // smaller MTU.
    n.report_mesh(
        "c",
        MeshReport {
            public_key: Some(b64(&[3; 32])),
            underlay_mtu: Some(1400),
            ..MeshReport::default()
        },
    );
    assert!(changes.has_changed().unwrap());
    assert!(n.sync(&plans).await.unwrap());
    assert_eq!(n.mesh_section("a").unwrap().mtu, 1340);
    assert_eq!(
        n.networks_section("a", &plans["a"]).cluster.unwrap().mtu,
        1340
    );
}

#[tokio::test]
async fn a_restarted_coordinator_builds_the_same_mesh_before_any_host_reports() {
    let (n, store) = net("10.66.0.0/16", &[("a", "192.0.2.1"), ("b", "192.0.2.2")]).await;
    let plans = BTreeMap::from([
        ("a".to_owned(), vec![on("shop", "web", 1, &["front"])]),
        ("b".to_owned(), vec![on("shop", "web", 2, &["front"])]),
    ]);
    n.sync(&plans).await.unwrap();
    for (id, key) in [("a", [1u8; 32]), ("b", [2; 32])] {
        n.report_mesh(
            id,
            MeshReport {
                public_key: Some(b64(&key)),
                underlay_mtu: Some(1450),
                ..MeshReport::default()
            },
        );
    }
    n.sync(&plans).await.unwrap();
    let before = (n.mesh_section("a"), n.networks_section("a", &plans["a"]));
    assert_eq!(before.0.as_ref().unwrap().mtu, 1390);

    let settings = NetworkSettings::new(Range::parse("10.66.0.0/16").unwrap(), MeshMode::Wireguard);
    let again = ClusterNetwork::load(settings, store, Arc::new(ObservedBook::default()))
        .await
        .unwrap();
    let after = (
        again.mesh_section("a"),
        again.networks_section("a", &plans["a"]),
    );
    assert_eq!(
        before, after,
        "no host loses a peer or its MTU across a restart"
    );
    assert!(!again.sync(&plans).await.unwrap() || again.mesh_section("a") == before.0);
}

fn b64(key: &[u8; 32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key)
}

#[tokio::test]
async fn a_host_whose_own_address_is_in_the_range_is_reported() {
    let store = Arc::new(MemoryStore::default());
    let mut a = node("a", "192.0.2.1");
    a.facts.addresses = vec!["10.66.200.7".into(), "192.0.2.1".into()];
    store.add_node(a);
    let settings = NetworkSettings::new(Range::parse("10.66.0.0/16").unwrap(), MeshMode::Vxlan);
    let n = ClusterNetwork::load(settings, store, Arc::new(ObservedBook::default()))
        .await
        .unwrap();
    n.sync(&BTreeMap::new()).await.unwrap();
    let hosts = n.hosts();
    assert!(
        hosts[0]
            .conflict
            .as_deref()
            .unwrap()
            .contains("10.66.200.7")
    );
}

#[test]
fn host_routes_are_read_from_proc() {
    let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                eth0\t00000000\t010011AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                eth0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
                docker0\t0000420A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
    let routes = parse_routes(text);
    assert_eq!(
        routes,
        vec![
            ("172.17.0.0/16".parse().unwrap(), "eth0".to_owned()),
            ("10.66.0.0/24".parse().unwrap(), "docker0".to_owned()),
        ]
    );
}

#[tokio::test]
async fn a_weave_cluster_asks_hosts_to_attach_to_weave_with_the_networks_subnets() {
    let store = Arc::new(MemoryStore::default());
    store.add_node(node("a", "192.0.2.1"));
    let observed = Arc::new(ObservedBook::default());
    let settings = NetworkSettings::new(Range::parse("10.66.0.0/16").unwrap(), MeshMode::Weave);
    let n = ClusterNetwork::load(settings, store, observed)
        .await
        .unwrap();
    let containers = vec![on("shop", "web", 1, &["front"])];
    n.sync(&BTreeMap::from([("a".to_owned(), containers.clone())]))
        .await
        .unwrap();
    let section = n.networks_section("a", &containers);
    let cluster = section.cluster.unwrap();
    assert_eq!(cluster.attach, Attachment::Weave);
    assert_eq!(section.networks.len(), 1);
    assert!(section.networks[0].id != 0);
    assert!(section.networks[0].subnet.is_some());
}
