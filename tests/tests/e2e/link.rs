//! Joining, the link's life: inventory, partitions, coordinator restarts,
//! certificate renewal, removal.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use skiff_api_types::NodeStatus;
use skiff_cli::client::Method;
use skiff_tests::cluster::{Agent, Coordinator, CoordinatorOptions};
use skiff_tests::{launch_cluster, wait_for, wait_until};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn join_link_and_inventory() {
    let cluster = launch_cluster(2, CoordinatorOptions::default())
        .await
        .unwrap();
    let coord = &cluster.coordinator;
    for agent in &cluster.agents {
        let id = agent.node_id();
        let node = wait_for(
            "the plan to be accepted",
            Duration::from_secs(20),
            || async {
                coord
                    .node(&id)
                    .await
                    .ok()
                    .filter(|n| n.plan_generation == Some(1))
            },
        )
        .await
        .unwrap();
        assert_eq!(node.status, NodeStatus::Connected);
        assert_eq!(node.name, agent.name);
        assert_eq!(node.agent_version, skiff_shared::VERSION);
        assert_eq!(
            node.labels.get("test").map(String::as_str),
            Some(coord.api.port().to_string().as_str())
        );
        assert!(node.host.cpus > 0 && node.host.memory_bytes > 0, "{node:?}");
        assert!(
            !node.host.os.is_empty() && !node.host.kernel.is_empty(),
            "{node:?}"
        );
        assert!(!node.host.disks.is_empty(), "{node:?}");
        assert!(
            node.docker_version.is_some(),
            "the engine's version is reported: {node:?}"
        );
        assert!(node.plan_error.is_none());
        assert!(node.connected_since.is_some());

        // The agent's key never left its data dir, and only root reads it.
        assert_eq!(mode(&agent.data_dir()), 0o700);
        assert_eq!(mode(&agent.data_dir().join("node.key")), 0o600);
        assert!(
            agent.data_dir().join("plan.json").exists(),
            "the signed plan is stored"
        );
        // The agent reconciled to the plan and reported what runs (nothing yet).
        let report = wait_for(
            "the agent's first report",
            Duration::from_secs(20),
            || async {
                let r: Option<skiff_api_types::NodeContainersView> = coord
                    .client()
                    .call(Method::GET, &format!("/nodes/{id}/containers"), None::<&()>)
                    .await
                    .ok();
                r.filter(|r| r.plan_generation == Some(1))
            },
        )
        .await
        .unwrap();
        assert!(
            report.containers.is_empty() && report.error.is_none(),
            "{report:?}"
        );
    }
    let data = coord.data_dir();
    assert_eq!(mode(&data), 0o700);
    for secret in [
        "ca.key",
        "server.key",
        "plan-signing.key",
        "initial-admin-token",
    ] {
        assert_eq!(mode(&data.join(secret)), 0o600, "{secret}");
    }
    // The admin token is stored hashed: its secret is nowhere in the database.
    let token = coord.admin_token();
    let secret = token.rsplit('_').next().unwrap();
    let db = std::fs::read(data.join("skiff.db")).unwrap();
    let wal = std::fs::read(data.join("skiff.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn partition_then_heal_reconnects_and_agent_keeps_running() {
    let mut cluster = launch_cluster(2, CoordinatorOptions::default())
        .await
        .unwrap();
    let coord = &cluster.coordinator;
    let (cut, kept) = (cluster.agents[0].node_id(), cluster.agents[1].node_id());
    let kept_since = coord.node(&kept).await.unwrap().connected_since;

    cluster.agents[0].proxy.cut();
    let node = coord
        .wait_node(&cut, NodeStatus::Disconnected, Duration::from_secs(15))
        .await
        .unwrap();
    assert!(node.last_seen_at.is_some());
    assert!(
        cluster.agents[0].is_running(),
        "the agent keeps running while the coordinator is away"
    );

    cluster.agents[0].proxy.heal();
    coord
        .wait_node(&cut, NodeStatus::Connected, Duration::from_secs(15))
        .await
        .unwrap();
    let other = coord.node(&kept).await.unwrap();
    assert_eq!(
        other.connected_since, kept_since,
        "the other agent's link was not disturbed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_reconnect_after_coordinator_restart_without_rejoining() {
    let mut cluster = launch_cluster(3, CoordinatorOptions::default())
        .await
        .unwrap();
    let ids: Vec<String> = cluster.agents.iter().map(Agent::node_id).collect();
    let tokens_before = token_uses(&cluster.coordinator).await;

    for hard in [false, true] {
        if hard {
            cluster.coordinator.kill().await;
        } else {
            assert!(
                cluster
                    .coordinator
                    .stop()
                    .await
                    .is_some_and(|s| s.success()),
                "clean stop exits 0"
            );
        }
        // Every agent notices and keeps retrying while the coordinator is gone.
        for agent in &cluster.agents {
            wait_until("the agent to notice", Duration::from_secs(15), || async {
                agent.log().contains("Cannot reach the coordinator")
            })
            .await
            .unwrap();
        }
        cluster.coordinator.start().await.unwrap();
        for id in &ids {
            cluster
                .coordinator
                .wait_node(id, NodeStatus::Connected, Duration::from_secs(10))
                .await
                .unwrap();
        }
        for agent in &cluster.agents {
            std::fs::write(agent.log_path(), "").unwrap();
        }
    }
    let nodes = cluster.coordinator.nodes().await.unwrap();
    let mut now: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let mut want = ids.clone();
    now.sort();
    want.sort();
    assert_eq!(now, want, "same nodes, none rejoined");
    assert_eq!(
        token_uses(&cluster.coordinator).await,
        tokens_before,
        "no join token was used again"
    );
}

async fn token_uses(coord: &Coordinator) -> i64 {
    let tokens: Vec<skiff_api_types::JoinTokenView> = coord
        .client()
        .call(Method::GET, "/tokens/join", None::<&()>)
        .await
        .unwrap();
    tokens.iter().map(|t| t.uses).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_is_renewed_over_the_link_without_reconnecting() {
    let opts = CoordinatorOptions {
        cert_ttl: Duration::from_secs(12),
        ..Default::default()
    };
    let cluster = launch_cluster(1, opts).await.unwrap();
    let coord = &cluster.coordinator;
    let id = cluster.agents[0].node_id();
    let first = coord.node(&id).await.unwrap();

    let renewed = wait_for(
        "the certificate to be renewed",
        Duration::from_secs(30),
        || async {
            coord
                .node(&id)
                .await
                .ok()
                .filter(|n| n.certificate_expires_at != first.certificate_expires_at)
        },
    )
    .await
    .unwrap();
    assert_eq!(renewed.status, NodeStatus::Connected);
    assert_eq!(
        renewed.connected_since, first.connected_since,
        "renewal happened on the open link"
    );
    // The coordinator records the new certificate when it sends it; the
    // agent stores it and says so a moment later.
    wait_until(
        "the agent to store the renewed certificate",
        Duration::from_secs(30),
        || async {
            cluster.agents[0]
                .log()
                .contains("Node certificate renewed.")
        },
    )
    .await
    .unwrap();

    // Once the first certificate has expired, the agent still gets back in: it uses the renewed one.
    let first_expiry = humantime::parse_rfc3339(&first.certificate_expires_at).unwrap();
    wait_until(
        "the first certificate to expire",
        Duration::from_secs(30),
        || async { SystemTime::now() > first_expiry + Duration::from_secs(1) },
    )
    .await
    .unwrap();
    cluster.agents[0].proxy.cut();
    coord
        .wait_node(&id, NodeStatus::Disconnected, Duration::from_secs(15))
        .await
        .unwrap();
    cluster.agents[0].proxy.heal();
    coord
        .wait_node(&id, NodeStatus::Connected, Duration::from_secs(15))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn removed_node_is_disconnected_within_5s_and_refused_after() {
    let mut cluster = launch_cluster(2, CoordinatorOptions::default())
        .await
        .unwrap();
    let victim = cluster.agents[0].node_id();
    let survivor = cluster.agents[1].node_id();
    let survivor_since = cluster
        .coordinator
        .node(&survivor)
        .await
        .unwrap()
        .connected_since;

    let removed: skiff_api_types::NodeView = cluster
        .coordinator
        .client()
        .call(Method::DELETE, &format!("/nodes/{victim}"), None::<&()>)
        .await
        .unwrap();
    assert_eq!(removed.id, victim);
    let status = cluster.agents[0].wait_exit(Duration::from_secs(5)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(4),
        "the agent is told it was removed and stops"
    );
    assert!(cluster.agents[0].log().contains("removed from the cluster"));

    // Its certificate is refused from now on, at TLS.
    cluster.agents[0].start().unwrap();
    let status = cluster.agents[0].wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(4));
    let nodes = cluster.coordinator.nodes().await.unwrap();
    assert!(
        nodes.iter().all(|n| n.id != victim),
        "a removed node is not listed"
    );
    assert!(
        cluster
            .coordinator
            .log()
            .contains("Agent link TLS handshake refused.")
    );

    // And after a coordinator restart too.
    cluster.coordinator.kill().await;
    cluster.coordinator.start().await.unwrap();
    cluster.agents[0].start().unwrap();
    let status = cluster.agents[0].wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(4));

    let survivor_now = cluster
        .coordinator
        .wait_node(&survivor, NodeStatus::Connected, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(survivor_since.is_some() && survivor_now.status == NodeStatus::Connected);
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_with_a_bad_signature_is_rejected() {
    let mut cluster = launch_cluster(1, CoordinatorOptions::default())
        .await
        .unwrap();
    let id = cluster.agents[0].node_id();
    wait_until("the first plan", Duration::from_secs(15), || async {
        cluster
            .coordinator
            .node(&id)
            .await
            .is_ok_and(|n| n.plan_generation == Some(1))
    })
    .await
    .unwrap();

    // The coordinator comes back signing with a key the agent never pinned.
    let other = Coordinator::launch(CoordinatorOptions::default())
        .await
        .unwrap();
    cluster.coordinator.kill().await;
    std::fs::copy(
        other.data_dir().join("plan-signing.key"),
        cluster.coordinator.data_dir().join("plan-signing.key"),
    )
    .unwrap();
    cluster.coordinator.start().await.unwrap();

    let node = wait_for(
        "the agent to refuse the plan",
        Duration::from_secs(20),
        || async {
            cluster
                .coordinator
                .node(&id)
                .await
                .ok()
                .filter(|n| n.plan_error.is_some())
        },
    )
    .await
    .unwrap();
    let error = node.plan_error.unwrap();
    assert!(error.contains("signature is invalid"), "{error}");
    assert!(cluster.agents[0].log().contains("Plan refused."));
    assert!(cluster.agents[0].is_running());
    // The stored plan is still the last good one.
    let stored = std::fs::read_to_string(cluster.agents[0].data_dir().join("plan.json")).unwrap();
    let key = skiff_shared::signing::decode_public_key(
        &std::fs::read_to_string(cluster.agents[0].data_dir().join("plan-signing.pub")).unwrap(),
    )
    .unwrap();
    let signed: skiff_shared::signing::SignedPlan = serde_json::from_str(&stored).unwrap();
    assert!(skiff_shared::signing::verify(&key, &signed).is_ok());
}
