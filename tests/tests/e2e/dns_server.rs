//! The agent's DNS server asked by real containers: busybox `nslookup`
//! in containers on a Docker bridge network whose gateway the server
//! listens on, through Docker's embedded resolver (127.0.0.11), which
//! forwards what it does not know from the container's own address. The
//! server tells the containers apart by that address.
//!
//! The multi-host tests (tier-2 hosts, rolling updates) need the
//! coordinator's side of the `dns` section; this one runs the agent's
//! server alone, in the test.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use skiff_agent::dns::forward::Forwarder;
use skiff_agent::dns::{Limits, Server};
use skiff_shared::sections::dns::{
    DnsSection, NodeRecord, Policy, Records, Replica, ReplicaAddress, ServiceRecords,
};
use skiff_shared::tasks::TaskTree;
use skiff_tests::image::{docker, ensure_test_image};

const SUBNET: &str = "10.249.77.0/24";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 249, 77, 1);
/// A container of `web` release 1, one of `web` release 2, a stranger.
const WEB1: &str = "10.249.77.10";
const WEB2: &str = "10.249.77.11";
const STRANGER: &str = "10.249.77.20";

fn replica(slot: u32, node: &str, release: u64, ip: &str) -> Replica {
    Replica {
        slot,
        node: node.into(),
        zone: None,
        release,
        addresses: vec![ReplicaAddress {
            network: 1,
            ip: ip.parse().unwrap(),
        }],
        published: true,
    }
}

fn section() -> DnsSection {
    DnsSection {
        generation: 1,
        node: "n1".into(),
        zone: None,
        listen: vec![GATEWAY],
        services: vec![
            ServiceRecords {
                stack: "shop".into(),
                service: "web".into(),
                policy: Policy::RoundRobin,
                ttl_secs: 5,
                ports: vec![],
                replicas: vec![
                    replica(1, "n1", 1, WEB1),
                    replica(2, "n1", 2, WEB2),
                    // On another host.
                    replica(3, "n2", 1, "10.249.78.3"),
                ],
            },
            ServiceRecords {
                stack: "shop".into(),
                service: "api".into(),
                policy: Policy::Version,
                ttl_secs: 5,
                ports: vec![],
                replicas: vec![
                    replica(1, "n2", 1, "10.249.78.21"),
                    replica(2, "n2", 2, "10.249.78.22"),
                ],
            },
        ],
        nodes: vec![NodeRecord {
            name: "n2".into(),
            address: Ipv4Addr::new(100, 64, 0, 2),
        }],
    }
}

/// Removes the network (and its containers) however the test ends.
struct Network(String);

impl Drop for Network {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.0])
            .output();
    }
}

/// `nslookup -type=a NAME` in a container at `ip`: (success, output).
async fn nslookup(network: &str, ip: &str, name: &str) -> (bool, String) {
    let out = tokio::process::Command::new("docker")
        .args(["run", "--rm", "--network", network, "--ip", ip, "--dns"])
        .arg(GATEWAY.to_string())
        .args([skiff_tests::image::TEST_IMAGE, "nslookup", "-type=a", name])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), out)
        .await
        .expect("nslookup ended")
        .expect("docker run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn addresses(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("Address: "))
        .map(|a| a.trim().to_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_resolve_cluster_names_through_dockers_resolver() {
    let engine = docker().await.unwrap();
    ensure_test_image(&engine).await.unwrap();
    let name = format!("skiff-dns-e2e-{}", std::process::id());
    let created = tokio::process::Command::new("docker")
        .args(["network", "create", "--subnet", SUBNET, "--gateway"])
        .arg(GATEWAY.to_string())
        .arg(&name)
        .output()
        .await
        .unwrap();
    assert!(
        created.status.success(),
        "docker network create: {}",
        String::from_utf8_lossy(&created.stderr)
    );
    let _network = Network(name.clone());

    let tree = TaskTree::root();
    let server = Arc::new(Server::new(
        tree.child(),
        Limits::default(),
        Forwarder::new(vec![]),
    ));
    server.set_records(Records::new(&section()));
    server
        .open(SocketAddr::new(IpAddr::V4(GATEWAY), 53))
        .expect("port 53 on the test network's gateway is free");

    // Every published replica, the one on another host too.
    let all = vec!["10.249.77.10", "10.249.77.11", "10.249.78.3"];
    for query in ["web.shop.skiff", "web", "tasks.web", "tasks.web.shop.skiff"] {
        let (ok, text) = nslookup(&name, WEB1, query).await;
        assert!(ok, "{query}: {text}");
        assert_eq!(addresses(&text), all, "{query}: {text}");
    }
    assert_eq!(
        addresses(&nslookup(&name, WEB1, "3.web.shop.skiff").await.1),
        ["10.249.78.3"]
    );
    assert_eq!(
        addresses(&nslookup(&name, WEB1, "n2.nodes.skiff").await.1),
        ["100.64.0.2"]
    );
    // version: each caller its own release's replica.
    assert_eq!(
        addresses(&nslookup(&name, WEB1, "api").await.1),
        ["10.249.78.21"]
    );
    assert_eq!(
        addresses(&nslookup(&name, WEB2, "api").await.1),
        ["10.249.78.22"]
    );
    // Unknown in the zone.
    let (ok, text) = nslookup(&name, WEB1, "nope.shop.skiff").await;
    assert!(!ok && text.contains("NXDOMAIN"), "{text}");
    // A container the records do not list is refused.
    let (ok, text) = nslookup(&name, STRANGER, "web.shop.skiff").await;
    assert!(!ok && text.contains("REFUSED"), "{text}");
    assert!(server.stats().refused >= 1);

    tree.cancel();
    tree.wait().await;
}
