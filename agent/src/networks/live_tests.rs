//! A check against the real engine and kernel, ignored by default: it
//! needs root, a Docker Engine, `nft` and `iptables`, and it replaces the
//! host's `inet skiff` table while it runs. Run it alone with
//! `cargo test -p skiff-agent --lib live -- --ignored`.

use std::process::Command;

use skiff_shared::sections::networks::{Attachment, ClusterNet};

use super::*;
use crate::controller::{Reports, round};

fn cmd(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn section(mtu: u32) -> NetworksSection {
    NetworksSection {
        networks: vec![NetworkSpec {
            id: 4093,
            subnet: Some("10.231.8.0/22".into()),
            leases: vec!["10.231.8.0/30".into(), "10.231.8.4/30".into()],
            gateway: Some("10.231.8.1".into()),
            ..NetworkSpec::local("live", "default", false)
        }],
        cluster: Some(ClusterNet {
            range: "10.231.0.0/16".into(),
            hosts: "10.231.0.0/22".into(),
            mtu,
            attach: Attachment::Bridge,
        }),
    }
}

#[tokio::test]
#[ignore = "needs root, Docker, nft and iptables; changes the host's inet skiff table"]
async fn live_cluster_network_bridge_firewall_and_drift() {
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let node = format!("live{}", std::process::id());
    let r = Reconciler {
        docker: docker.clone(),
        node_id: node.clone(),
        firewall: Arc::default(),
        leases: Arc::default(),
        weave: Arc::default(),
        reporter: Reporter::new(Arc::new(Reports::default())),
        last: Mutex::default(),
        failed: Mutex::default(),
        firewall_said: Mutex::default(),
        section: Mutex::default(),
    };
    let name = format!("skiff.live.default.{node}");
    let versioned = |s: NetworksSection| Versioned {
        generation: 1,
        value: Arc::new(s),
    };

    // Made with the plan's settings, then proxy ARP, then nothing.
    let s = section(1400);
    assert_eq!(round(&r, &s).await.unwrap(), 1);
    assert_eq!(round(&r, &s).await.unwrap(), 1, "proxy ARP");
    assert_eq!(round(&r, &s).await.unwrap(), 0);
    r.after_round(&versioned(s.clone()), None).await;
    let (_, inspect) = cmd("docker", &["network", "inspect", &name]);
    for want in [
        "\"Subnet\": \"10.231.8.0/22\"",
        "\"IPRange\": \"10.231.8.0/30\"",
        "\"Gateway\": \"10.231.8.1\"",
        "\"com.docker.network.bridge.name\": \"sk-4093\"",
        "\"com.docker.network.driver.mtu\": \"1400\"",
        "\"com.docker.network.bridge.enable_ip_masquerade\": \"false\"",
    ] {
        assert!(inspect.contains(want), "{want} in {inspect}");
    }
    assert!(host::proxy_arp_on("sk-4093"));
    let (ok, table) = cmd("nft", &["list", "table", "inet", "skiff"]);
    assert!(
        ok && table.contains("ip saddr 10.231.8.0/22 ip daddr 10.231.8.0/22"),
        "{table}"
    );
    let mut check = vec!["-C", "DOCKER-USER"];
    let rule = crate::firewall::docker_user_rule();
    check.extend(rule.iter().map(String::as_str));
    assert!(cmd("iptables", &check).0, "the DOCKER-USER rule");
    assert_eq!(r.leases.extra(&name).map(|l| l.leases.len()), Some(2));

    // A restarted agent keeps the table until both parts are known.
    let restarted = crate::firewall::Firewall::default();
    let mut rules = diff::rules(&s).unwrap();
    if let Some(r) = rules.as_mut() {
        r.networks.clear();
    }
    restarted.set_networks(rules).await.unwrap();
    let (_, table) = cmd("nft", &["list", "table", "inet", "skiff"]);
    assert!(table.contains("10.231.8.0/22"), "kept: {table}");
    restarted.set_mesh(None).await.unwrap();
    let (_, table) = cmd("nft", &["list", "table", "inet", "skiff"]);
    assert!(!table.contains("10.231.8.0/22"), "replaced: {table}");
    r.firewall.set_networks(None).await.unwrap();
    r.after_round(&versioned(s.clone()), None).await;

    // A table someone removed is loaded again next round.
    assert!(cmd("nft", &["delete", "table", "inet", "skiff"]).0);
    r.after_round(&versioned(s.clone()), None).await;
    assert!(cmd("nft", &["list", "table", "inet", "skiff"]).0);

    // Out of the range through the table's masquerade (Docker's is off):
    // the host's resolver answers a container on the network.
    let resolver = std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("nameserver ").map(|a| a.trim().to_owned()))
        .filter(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| !a.is_loopback())
        });
    match resolver {
        Some(ns) => {
            let (_, out) = cmd(
                "docker",
                &[
                    "run",
                    "--rm",
                    "--network",
                    &name,
                    "skiff-test/busybox:1",
                    "nslookup",
                    "-timeout=3",
                    "example.com",
                    &ns,
                ],
            );
            assert!(
                out.contains(&format!("Address:\t{ns}")) && !out.contains("timed out"),
                "{out}"
            );
        }
        None => eprintln!("no IPv4 resolver in /etc/resolv.conf: masquerade not checked"),
    }

    // In use: drift is reported, the network kept; unused: remade.
    let (ok, id) = cmd(
        "docker",
        &[
            "run",
            "-d",
            "--network",
            &name,
            "skiff-test/busybox:1",
            "sleep",
            "600",
        ],
    );
    assert!(ok);
    let s = section(1380);
    assert_eq!(round(&r, &s).await.unwrap(), 0);
    let last = r.last.lock().unwrap().clone().unwrap();
    let problems = diff::problems(&s, &last, "");
    assert!(problems[0].error.contains("mtu=1400"), "{problems:?}");
    cmd("docker", &["rm", "-f", id.trim()]);
    assert_eq!(round(&r, &s).await.unwrap(), 1, "remade");
    let (_, inspect) = cmd("docker", &["network", "inspect", &name]);
    assert!(inspect.contains("\"com.docker.network.driver.mtu\": \"1380\""));

    // Gone with the section; the table with the networks' part.
    let empty = NetworksSection::default();
    round(&r, &empty).await.unwrap();
    r.after_round(&versioned(empty), None).await;
    assert!(!cmd("docker", &["network", "inspect", &name]).0);
    assert!(!cmd("nft", &["list", "table", "inet", "skiff"]).0);
    cmd(
        "iptables",
        &[&["-D", "DOCKER-USER"][..], &check[2..]].concat(),
    );
}
