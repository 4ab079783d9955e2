//! A check against the real engine, ignored by default (it needs root's
//! Docker Engine): a container created once a cluster network's first
//! lease is full gets an address from the next lease. Run it with
//! `cargo test -p skiff-agent --lib live -- --ignored`.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use skiff_shared::workload::{ContainerSpec, NetworkAttach};

use super::*;
use crate::leases::{Leases, NetworkLeases};

fn docker_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

#[tokio::test]
#[ignore = "needs a Docker Engine; makes a network and containers"]
async fn live_a_full_first_lease_moves_on_to_the_next() {
    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let node = format!("livec{}", std::process::id());
    let network = format!("skiff.live.default.{node}");
    // The first lease, 10.231.12.0/30, holds the gateway (.1) and one
    // container (.2).
    assert!(
        docker_cli(&[
            "network",
            "create",
            "--subnet",
            "10.231.12.0/22",
            "--ip-range",
            "10.231.12.0/30",
            "--gateway",
            "10.231.12.1",
            &network,
        ])
        .0
    );
    let (ok, first) = docker_cli(&[
        "run",
        "-d",
        "--network",
        &network,
        "--ip",
        "10.231.12.2",
        "skiff-test/busybox:1",
        "sleep",
        "600",
    ]);
    assert!(ok);
    let leases = Arc::new(Leases::default());
    leases.set(BTreeMap::from([(
        network.clone(),
        NetworkLeases {
            leases: vec![
                "10.231.12.0/30".parse().unwrap(),
                "10.231.12.8/30".parse().unwrap(),
            ],
            gateway: "10.231.12.1".parse().unwrap(),
        },
    )]));
    let engine = Engine::new(docker, node.clone()).with_leases(leases);
    let mut spec = ContainerSpec::new("live", "web", 1, "skiff-test/busybox:1");
    spec.command = Some(vec!["sleep".into(), "600".into()]);
    spec.networks = vec![NetworkAttach {
        name: "default".into(),
        external: false,
        internal: false,
        aliases: vec!["web".into()],
    }];
    let section = ContainersSection {
        containers: vec![spec.clone()],
    };
    let result = reconcile_once(&engine, &section).await;
    let name = engine.container_name(&spec);
    let (_, address) = docker_cli(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &name,
    ]);
    docker_cli(&["rm", "-f", &first, &name]);
    docker_cli(&["network", "rm", &network]);
    result.unwrap();
    assert_eq!(address, "10.231.12.9");
}
