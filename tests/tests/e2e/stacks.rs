//! Stacks on real Docker: deploy a Compose file across three agents, scale,
//! change, remove; bad stacks are refused and change nothing.

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use bollard::query_parameters::ListContainersOptions;
use skiff_api_types::TaskView;
use skiff_cli::client::Method;
use skiff_tests::cluster::{Cluster, CoordinatorOptions};
use skiff_tests::image::{docker, ensure_test_image};
use skiff_tests::{launch_cluster, target_bin, wait_for};

pub(crate) async fn skiff(cluster: &Cluster, dir: &std::path::Path, args: &[&str]) -> Output {
    cluster.skiff(dir, args, None).await
}

/// A cluster of `agents` for stack tests, the label its nodes carry
/// (`node.labels.test == LABEL` keeps stacks on them) and a working directory.
pub(crate) async fn stack_cluster(agents: usize) -> (Cluster, String, tempfile::TempDir) {
    ensure_test_image(&docker().await.unwrap()).await.unwrap();
    let cluster = launch_cluster(agents, CoordinatorOptions::default())
        .await
        .unwrap();
    let label = cluster.coordinator.api.port().to_string();
    (cluster, label, tempfile::tempdir().unwrap())
}

/// Fails the test with the command's output and the coordinator's
/// warnings unless it succeeded.
pub(crate) fn assert_ok(cluster: &Cluster, out: &Output) {
    if !out.status.success() {
        let log = cluster.coordinator.log();
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        panic!(
            "{}{}\ncoordinator warnings:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            warnings.join("\n")
        );
    }
}

fn compose(replicas: u32, version: &str, label: &str) -> String {
    format!(
        "services:\n  web:\n    image: skiff-test/busybox:1\n    command: [\"sh\", \"-c\", \"echo {version} > /www/index.html && httpd -f -p 8080 -h /www\"]\n    environment:\n      VERSION: \"{version}\"\n    healthcheck:\n      test: [\"CMD\", \"wget\", \"-q\", \"-O-\", \"http://127.0.0.1:8080/\"]\n      interval: 1s\n      timeout: 1s\n      retries: 3\n    deploy:\n      replicas: {replicas}\n      placement:\n        constraints: [\"node.labels.test == {label}\"]\n"
    )
}

pub(crate) async fn tasks(cluster: &Cluster, stack: &str) -> Vec<TaskView> {
    cluster.tasks(stack).await
}

/// Waits until `n` replicas run the current spec and are healthy.
pub(crate) async fn wait_ready(cluster: &Cluster, stack: &str, n: usize) -> Vec<TaskView> {
    wait_for(
        &format!("{n} healthy replicas of {stack}"),
        Duration::from_secs(90),
        || async {
            let t = tasks(cluster, stack).await;
            (t.len() == n
                && t.iter().all(|t| {
                    t.up_to_date && t.state == "running" && t.health.as_deref() == Some("healthy")
                }))
            .then_some(t)
        },
    )
    .await
    .unwrap()
}

pub(crate) async fn get(ip: &str) -> Option<String> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((ip, 8080)),
    )
    .await
    .ok()?
    .ok()?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.split("\r\n\r\n").nth(1).map(|b| b.trim().to_owned())
}

/// How many containers (any state) of a stack the engine holds.
pub(crate) async fn engine_containers(stack: &str) -> usize {
    engine_containers_labelled(vec![format!("skiff.stack={stack}")]).await
}

/// How many containers (any state) carry all of `labels` (`key=value`).
pub(crate) async fn engine_containers_labelled(labels: Vec<String>) -> usize {
    let docker = docker().await.unwrap();
    let filters = std::collections::HashMap::from([("label".to_owned(), labels)]);
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map(|l| l.len())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_spreads_scales_updates_and_removes_a_stack() {
    ensure_test_image(&docker().await.unwrap()).await.unwrap();
    let cluster = launch_cluster(3, CoordinatorOptions::default())
        .await
        .unwrap();
    let label = cluster.coordinator.api.port().to_string();
    let stack = format!("shop{label}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("compose.yml");

    // Dry run: the plan, and nothing changes.
    std::fs::write(&file, compose(3, "v1", &label)).unwrap();
    let out = skiff(
        &cluster,
        dir.path(),
        &["deploy", "-f", "compose.yml", &stack, "--dry-run"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        plan.lines().filter(|l| l.starts_with("start")).count(),
        3,
        "{plan}"
    );
    assert_eq!(engine_containers(&stack).await, 0);

    // Deploy: three replicas, one per node, each serving its version.
    let out = skiff(
        &cluster,
        dir.path(),
        &["deploy", "-f", "compose.yml", &stack],
    )
    .await;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Deployed."));
    let t = wait_ready(&cluster, &stack, 3).await;
    let nodes: std::collections::BTreeSet<&str> = t.iter().map(|t| t.node.as_str()).collect();
    assert_eq!(nodes.len(), 3, "spread across the three nodes: {t:?}");
    for task in &t {
        assert_eq!(get(&task.ips[0]).await.as_deref(), Some("v1"));
    }

    // Scale up and down.
    std::fs::write(&file, compose(5, "v1", &label)).unwrap();
    let out = skiff(
        &cluster,
        dir.path(),
        &["deploy", "-f", "compose.yml", &stack],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t5 = wait_ready(&cluster, &stack, 5).await;
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for task in &t5 {
        *per_node.entry(task.node.as_str()).or_default() += 1;
    }
    assert!(
        per_node.values().all(|n| (1..=2).contains(n)),
        "{per_node:?}"
    );
    let kept: Vec<(String, Vec<String>)> =
        t.iter().map(|t| (t.name.clone(), t.ips.clone())).collect();
    for (name, ips) in &kept {
        assert!(
            t5.iter().any(|n| &n.name == name && &n.ips == ips),
            "scaling up left {name} alone"
        );
    }
    std::fs::write(&file, compose(2, "v1", &label)).unwrap();
    assert!(
        skiff(
            &cluster,
            dir.path(),
            &["deploy", "-f", "compose.yml", &stack]
        )
        .await
        .status
        .success()
    );
    wait_ready(&cluster, &stack, 2).await;
    wait_for(
        "the engine to hold 2 containers",
        Duration::from_secs(30),
        || async { (engine_containers(&stack).await == 2).then_some(()) },
    )
    .await
    .unwrap();

    // A changed spec replaces the containers.
    std::fs::write(&file, compose(2, "v2", &label)).unwrap();
    assert!(
        skiff(
            &cluster,
            dir.path(),
            &["deploy", "-f", "compose.yml", &stack]
        )
        .await
        .status
        .success()
    );
    let t2 = wait_ready(&cluster, &stack, 2).await;
    for task in &t2 {
        assert_eq!(get(&task.ips[0]).await.as_deref(), Some("v2"));
    }
    let out = skiff(&cluster, dir.path(), &["release", "ls", &stack, "--json"]).await;
    let releases: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(releases.len(), 4);
    assert_eq!(releases[0]["current"], true);
    let out = skiff(&cluster, dir.path(), &["stack", "ps", &stack]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("healthy"));

    // Remove.
    let out = skiff(&cluster, dir.path(), &["stack", "rm", &stack]).await;
    assert!(out.status.success());
    wait_for(
        "the stack's containers to be gone",
        Duration::from_secs(60),
        || async { (engine_containers(&stack).await == 0).then_some(()) },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_stacks_are_refused_and_change_nothing() {
    let cluster = launch_cluster(1, CoordinatorOptions::default())
        .await
        .unwrap();
    let label = cluster.coordinator.api.port().to_string();
    let stack = format!("bad{label}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("compose.yml");

    // Malformed YAML: file, line and column.
    std::fs::write(&file, "services:\n  web:\n    image: [unclosed\n").unwrap();
    let out = skiff(
        &cluster,
        dir.path(),
        &["deploy", "-f", "compose.yml", &stack],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("compose.yml:"), "{err}");

    // A constraint no node matches: refused by the scheduler, with the reason.
    std::fs::write(&file, compose(2, "v1", "no-such-label")).unwrap();
    let out = skiff(
        &cluster,
        dir.path(),
        &["deploy", "-f", "compose.yml", &stack],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("service web") && err.contains("node.labels.test == no-such-label"),
        "{err}"
    );

    // An invalid constraint.
    std::fs::write(
        &file,
        compose(1, "v1", &label).replace("node.labels.test", "node.label.test"),
    )
    .unwrap();
    let out = skiff(
        &cluster,
        dir.path(),
        &["deploy", "-f", "compose.yml", &stack],
    )
    .await;
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("node.label.test"));

    // More memory than any host has.
    let greedy = compose(1, "v1", &label).replace(
        "      replicas: 1\n",
        "      replicas: 1\n      resources:\n        reservations:\n          memory: 100000G\n",
    );
    std::fs::write(&file, greedy).unwrap();
    let out = skiff(
        &cluster,
        dir.path(),
        &["deploy", "-f", "compose.yml", &stack],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An image no host has and none can pull: the deploy fails, saying so.
    std::fs::write(
        &file,
        compose(1, "v1", &label).replace("skiff-test/busybox:1", "skiff-test/no-such-image:1"),
    )
    .unwrap();
    let out = skiff(
        &cluster,
        dir.path(),
        &["deploy", "-f", "compose.yml", &stack],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("skiff-test/no-such-image:1") && err.contains("could not be pulled"),
        "{err}"
    );
    let out = skiff(&cluster, dir.path(), &["stack", "rm", &stack]).await;
    assert!(out.status.success());

    // Two services publishing one port.
    std::fs::write(
        &file,
        "services:\n  a:\n    image: x\n    ports: [\"8081:80\"]\n  b:\n    image: y\n    ports: [\"8081:80\"]\n",
    )
    .unwrap();
    let out = skiff(
        &cluster,
        dir.path(),
        &["deploy", "-f", "compose.yml", &stack],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("8081"));

    // A required variable: missing is an error naming it; a `.env` beside
    // the file provides it (checked with a dry run, which changes nothing).
    std::fs::write(
        &file,
        compose(1, "v1", &label).replace(
            "skiff-test/busybox:1",
            "${IMAGE:?set IMAGE to the image to run}",
        ),
    )
    .unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", "--dry-run", &stack]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("set IMAGE to the image to run"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.path().join(".env"), "IMAGE=skiff-test/busybox:1\n").unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", "--dry-run", &stack]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("start"));

    // Nothing was recorded or started.
    let stacks: Vec<serde_json::Value> = cluster
        .coordinator
        .client()
        .call(Method::GET, "/stacks", None::<&()>)
        .await
        .unwrap();
    assert!(stacks.is_empty(), "{stacks:?}");
    assert_eq!(engine_containers(&stack).await, 0);
}

async fn inspect(id: &str) -> (String, String, i64) {
    let docker = docker().await.unwrap();
    let c = docker
        .inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap();
    (
        c.id.unwrap_or_default(),
        c.state.and_then(|s| s.started_at).unwrap_or_default(),
        c.restart_count.unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_restarts_readopt_and_a_coordinator_outage_changes_nothing() {
    ensure_test_image(&docker().await.unwrap()).await.unwrap();
    // A short grace period, which the coordinator's outage below outlasts.
    let grace = Duration::from_secs(8);
    let opts = CoordinatorOptions {
        host_lost_grace: grace,
        ..Default::default()
    };
    let mut cluster = launch_cluster(2, opts).await.unwrap();
    let label = cluster.coordinator.api.port().to_string();
    let stack = format!("keep{label}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yml"), compose(2, "v1", &label)).unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let before = wait_ready(&cluster, &stack, 2).await;
    let docker = docker().await.unwrap();
    let ids =
        |tasks: &[TaskView]| -> Vec<String> { tasks.iter().map(|t| t.name.clone()).collect() };
    let mut state = Vec::new();
    for t in &before {
        let filters = std::collections::HashMap::from([(
            "label".to_owned(),
            vec![format!("skiff.name={}", t.name)],
        )]);
        let list = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .unwrap();
        state.push(inspect(list[0].id.as_deref().unwrap()).await);
    }

    // Killing and restarting an agent: its containers are adopted, not recreated.
    let victim = cluster.agents[0].node_id();
    cluster.agents[0].kill().await;
    cluster.agents[0].start().unwrap();
    cluster
        .coordinator
        .wait_node(
            &victim,
            skiff_api_types::NodeStatus::Connected,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let after = wait_ready(&cluster, &stack, 2).await;
    assert_eq!(ids(&after), ids(&before));
    for s in &state {
        assert_eq!(
            &inspect(&s.0).await,
            s,
            "same container, same start time, same restart count"
        );
    }

    // With the coordinator gone, agents keep enforcing their last plan: a
    // container removed behind their back comes back.
    cluster.coordinator.kill().await;
    let killed = std::time::Instant::now();
    let gone = &state[0].0;
    docker
        .remove_container(
            gone,
            Some(bollard::query_parameters::RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    let name = before[0].name.clone();
    wait_for(
        "the agent to recreate the container",
        Duration::from_secs(60),
        || async {
            let filters = std::collections::HashMap::from([(
                "label".to_owned(),
                vec![format!("skiff.name={name}")],
            )]);
            let list = docker
                .list_containers(Some(ListContainersOptions {
                    all: false,
                    filters: Some(filters),
                    ..Default::default()
                }))
                .await
                .ok()?;
            (list.len() == 1 && list[0].id.as_deref() != Some(gone.as_str())).then_some(())
        },
    )
    .await
    .unwrap();
    assert_eq!(
        inspect(&state[1].0).await,
        state[1],
        "the other replica was left alone"
    );

    // The coordinator returns after longer than the grace period: no host
    // counts as lost for it (agents need a moment to reconnect), so nothing
    // moves or stops; a change made then converges.
    wait_for(
        "the outage to outlast the grace period",
        Duration::from_secs(60),
        || async { (killed.elapsed() > grace + Duration::from_secs(1)).then_some(()) },
    )
    .await
    .unwrap();
    cluster.coordinator.start().await.unwrap();
    std::fs::write(dir.path().join("compose.yml"), compose(3, "v1", &label)).unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_ready(&cluster, &stack, 3).await;
    assert_eq!(inspect(&state[1].0).await, state[1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_of_a_lost_host_move_and_duplicates_go_when_it_returns() {
    ensure_test_image(&docker().await.unwrap()).await.unwrap();
    let opts = CoordinatorOptions {
        host_lost_grace: Duration::from_secs(3),
        ..Default::default()
    };
    let cluster = launch_cluster(2, opts).await.unwrap();
    let label = cluster.coordinator.api.port().to_string();
    let stack = format!("move{label}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yml"), compose(2, "v1", &label)).unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let before = wait_ready(&cluster, &stack, 2).await;
    let lost = cluster.agents[0].name.clone();
    assert!(before.iter().any(|t| t.node == lost));

    cluster.agents[0].proxy.cut();
    let moved = wait_for(
        "the lost host's replica to run elsewhere",
        Duration::from_secs(60),
        || async {
            let t = tasks(&cluster, &stack).await;
            (t.len() == 2
                && t.iter().all(|t| {
                    t.node != lost && t.state == "running" && t.health.as_deref() == Some("healthy")
                }))
            .then_some(t)
        },
    )
    .await
    .unwrap();
    let names: std::collections::BTreeSet<&str> = moved.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names.len(),
        2,
        "the same two replicas, now on one host: {moved:?}"
    );
    // Cut off, the lost host still runs its copy: an outage is never destructive.
    assert_eq!(engine_containers(&stack).await, 3);

    cluster.agents[0].proxy.heal();
    wait_for(
        "the returned host to drop its duplicate",
        Duration::from_secs(60),
        || async { (engine_containers(&stack).await == 2).then_some(()) },
    )
    .await
    .unwrap();
    assert_eq!(wait_ready(&cluster, &stack, 2).await.len(), 2);
}

fn compose_rolling(version: &str, label: &str, order: &str, health: &str) -> String {
    format!(
        "services:\n  web:\n    image: skiff-test/busybox:1\n    command: [\"sh\", \"-c\", \"echo {version} > /www/index.html && httpd -f -p 8080 -h /www\"]\n    healthcheck:\n      test: {health}\n      interval: 1s\n      timeout: 1s\n      retries: 2\n    deploy:\n      replicas: 3\n      update_config:\n        parallelism: 1\n        order: {order}\n        monitor: 1s\n      placement:\n        constraints: [\"node.labels.test == {label}\"]\n"
    )
}

const HEALTHY: &str = "[\"CMD\", \"wget\", \"-q\", \"-O-\", \"http://127.0.0.1:8080/\"]";

/// Polls every running container of the stack over HTTP, as a client
/// would, until told to stop; returns the fewest that answered in one round
/// and every answer seen.
fn poll_stack(
    stack: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(usize, std::collections::BTreeSet<String>)> {
    tokio::spawn(async move {
        let docker = docker().await.unwrap();
        let mut fewest = usize::MAX;
        let mut seen = std::collections::BTreeSet::new();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let filters = std::collections::HashMap::from([
                ("label".to_owned(), vec![format!("skiff.stack={stack}")]),
                ("status".to_owned(), vec!["running".to_owned()]),
            ]);
            let list = docker
                .list_containers(Some(ListContainersOptions {
                    filters: Some(filters),
                    ..Default::default()
                }))
                .await
                .unwrap_or_default();
            let mut answered = 0;
            for c in list {
                let ip = c.network_settings.and_then(|n| n.networks).and_then(|n| {
                    n.into_values()
                        .find_map(|e| e.ip_address.filter(|i| !i.is_empty()))
                });
                if let Some(ip) = ip
                    && let Some(body) = get(&ip).await
                {
                    answered += 1;
                    seen.insert(body);
                }
            }
            fewest = fewest.min(answered);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (fewest, seen)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_updates_keep_serving_and_a_failing_update_rolls_back_by_itself() {
    ensure_test_image(&docker().await.unwrap()).await.unwrap();
    let cluster = launch_cluster(3, CoordinatorOptions::default())
        .await
        .unwrap();
    let label = cluster.coordinator.api.port().to_string();
    let stack = format!("roll{label}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("compose.yml");
    std::fs::write(&file, compose_rolling("v1", &label, "stop-first", HEALTHY)).unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_ready(&cluster, &stack, 3).await;

    // Follow the events as a user would, while the next update rolls out.
    let coord = &cluster.coordinator;
    let mut follower = tokio::process::Command::new(target_bin("skiff"))
        .args(["events", "--follow", "--json", "--stack", &stack])
        .env("SKIFF_URL", coord.api_url())
        .env("SKIFF_TOKEN", coord.admin_token())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        follower.stdout.take().unwrap(),
    ));

    for (version, order) in [("v2", "start-first"), ("v3", "stop-first")] {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let poller = poll_stack(stack.clone(), stop.clone());
        std::fs::write(&file, compose_rolling(version, &label, order, HEALTHY)).unwrap();
        let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (fewest, seen) = poller.await.unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            fewest >= 2,
            "{order}: at least replicas - parallelism answered throughout, fewest was {fewest}"
        );
        assert!(seen.contains(version), "{order}: {seen:?}");
        let tasks = wait_ready(&cluster, &stack, 3).await;
        for t in &tasks {
            assert_eq!(get(&t.ips[0]).await.as_deref(), Some(version));
        }
    }
    // The follower saw both rollouts complete, replica by replica.
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("release 3 completed"))
    {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(line);
    }
    let events: Vec<serde_json::Value> = seen
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.iter().any(|e| e["kind"] == "deploy"), "{seen:?}");
    assert!(
        events
            .iter()
            .filter(|e| e["kind"] == "rollout"
                && e["message"].as_str().unwrap_or("").ends_with("updated"))
            .count()
            >= 6,
        "{seen:?}"
    );
    drop(follower);

    // An update whose health check fails rolls back by itself; v3 keeps serving.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = poll_stack(stack.clone(), stop.clone());
    std::fs::write(
        &file,
        compose_rolling("v4", &label, "start-first", "[\"CMD\", \"false\"]"),
    )
    .unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (fewest, _) = poller.await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rolled back"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        fewest >= 3,
        "start-first: the old replicas served throughout, fewest was {fewest}"
    );
    let tasks = wait_ready(&cluster, &stack, 3).await;
    for t in &tasks {
        assert_eq!(get(&t.ips[0]).await.as_deref(), Some("v3"));
    }
    wait_for(
        "the engine to hold only the three v3 containers",
        Duration::from_secs(60),
        || async { (engine_containers(&stack).await == 3).then_some(()) },
    )
    .await
    .unwrap();
    let out = skiff(&cluster, dir.path(), &["release", "ls", &stack, "--json"]).await;
    let releases: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(releases[0]["status"], "rolled_back");
    assert_eq!(releases[0]["current"], false);
    assert_eq!(
        releases[1]["current"], true,
        "the stack is back on the release before"
    );

    // And an explicit rollback to release 1 restores v1 exactly.
    let out = skiff(&cluster, dir.path(), &["rollback", &stack, "--to", "1"]).await;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for t in &wait_ready(&cluster, &stack, 3).await {
        assert_eq!(get(&t.ips[0]).await.as_deref(), Some("v1"));
    }
    // Scaling is a release too.
    let out = skiff(
        &cluster,
        dir.path(),
        &["service", "scale", &format!("{stack}.web=1")],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_ready(&cluster, &stack, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_are_sealed_at_rest_and_reach_only_the_hosts_that_mount_them() {
    ensure_test_image(&docker().await.unwrap()).await.unwrap();
    let cluster = launch_cluster(2, CoordinatorOptions::default())
        .await
        .unwrap();
    let label = cluster.coordinator.api.port().to_string();
    let stack = format!("sec{label}");
    let dir = tempfile::tempdir().unwrap();
    let only = cluster.agents[0].name.clone();
    let compose = format!(
        "services:\n  web:\n    image: skiff-test/busybox:1\n    command: [\"sh\", \"-c\", \"cp /run/secrets/db_password /www/index.html && httpd -f -p 8080 -h /www\"]\n    secrets: [db_password]\n    healthcheck:\n      test: [\"CMD\", \"wget\", \"-q\", \"-O-\", \"http://127.0.0.1:8080/\"]\n      interval: 1s\n    deploy:\n      placement:\n        constraints: [\"node.hostname == {only}\", \"node.labels.test == {label}\"]\nsecrets:\n  db_password:\n    external: true\n"
    );
    std::fs::write(dir.path().join("compose.yml"), &compose).unwrap();

    // Not set yet: refused, naming the fix.
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("skiff secret set {stack} db_password"))
    );

    let secret = "correct horse battery staple";
    let coord = &cluster.coordinator;
    let mut set = tokio::process::Command::new(target_bin("skiff"))
        .args(["secret", "set", &stack, "db_password"])
        .env("SKIFF_URL", coord.api_url())
        .env("SKIFF_TOKEN", coord.admin_token())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(set.stdin.as_mut().unwrap(), secret.as_bytes())
        .await
        .unwrap();
    drop(set.stdin.take());
    assert!(set.wait_with_output().await.unwrap().status.success());

    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let t = wait_ready(&cluster, &stack, 1).await;
    assert_eq!(t[0].node, only);
    assert_eq!(get(&t[0].ips[0]).await.as_deref(), Some(secret));

    // Never shown by the API, never stored in the clear, only on the host that mounts it.
    let out = skiff(&cluster, dir.path(), &["secret", "ls", &stack, "--json"]).await;
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listed.contains("db_password") && !listed.contains(secret),
        "{listed}"
    );
    for f in ["skiff.db", "skiff.db-wal"] {
        let bytes = std::fs::read(coord.data_dir().join(f)).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{f} holds the secret in the clear"
        );
    }
    assert!(!coord.log().contains(secret));
    let holds = |a: &skiff_tests::cluster::Agent| {
        std::fs::read_dir(a.data_dir().join("secrets"))
            .map(|d| {
                d.flatten()
                    .any(|e| std::fs::read(e.path()).is_ok_and(|b| b == secret.as_bytes()))
            })
            .unwrap_or(false)
    };
    assert!(holds(&cluster.agents[0]));
    assert!(
        !holds(&cluster.agents[1]),
        "a host that runs no container using it never gets it"
    );

    // A new value rolls out with the next deploy.
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf rotated | {} secret set {stack} db_password",
            target_bin("skiff").display()
        ))
        .env("SKIFF_URL", coord.api_url())
        .env("SKIFF_TOKEN", coord.admin_token())
        .output()
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("version 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let t = wait_ready(&cluster, &stack, 1).await;
    assert_eq!(get(&t[0].ips[0]).await.as_deref(), Some("rotated"));
    wait_for(
        "the old value to leave the host",
        Duration::from_secs(60),
        || async { (!holds(&cluster.agents[0])).then_some(()) },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn global_services_run_once_on_every_eligible_node() {
    ensure_test_image(&docker().await.unwrap()).await.unwrap();
    let cluster = launch_cluster(3, CoordinatorOptions::default())
        .await
        .unwrap();
    let label = cluster.coordinator.api.port().to_string();
    let stack = format!("glob{label}");
    let dir = tempfile::tempdir().unwrap();
    let global = compose(1, "v1", &label).replace("      replicas: 1\n", "      mode: global\n");
    // One node is excluded by a constraint on its name.
    let excluded = cluster.agents[2].name.clone();
    let global = global.replace(
        &format!("constraints: [\"node.labels.test == {label}\"]"),
        &format!("constraints: [\"node.labels.test == {label}\", \"node.hostname != {excluded}\"]"),
    );
    std::fs::write(dir.path().join("compose.yml"), global).unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = wait_ready(&cluster, &stack, 2).await;
    let nodes: std::collections::BTreeSet<&str> = t.iter().map(|t| t.node.as_str()).collect();
    assert_eq!(nodes.len(), 2);
    assert!(!nodes.contains(excluded.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_port_another_stack_publishes_on_every_host_is_refused() {
    let (cluster, label, dir) = stack_cluster(1).await;
    // A free port on this machine, for the published port of both stacks.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = compose(1, "v1", &label).replace(
        "    environment:\n",
        &format!("    ports: [\"{port}:8080\"]\n    environment:\n"),
    );
    std::fs::write(dir.path().join("compose.yml"), &file).unwrap();
    let first = format!("porta{label}");
    let out = skiff(&cluster, dir.path(), &["deploy", &first]).await;
    assert_ok(&cluster, &out);
    let before = wait_ready(&cluster, &first, 1).await;

    let second = format!("portb{label}");
    let out = skiff(&cluster, dir.path(), &["deploy", &second]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("port {port}/tcp is published on"))
            && stderr.contains(&format!("{first}.web.1")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("node.id"),
        "the message lists the user's constraints only: {stderr}"
    );
    let out = skiff(&cluster, dir.path(), &["stack", "ls", "--json"]).await;
    let stacks: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(stacks.iter().all(|s| s["name"] != second.as_str()));
    let after = tasks(&cluster, &first).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].restart_count, before[0].restart_count);
    assert_eq!(engine_containers(&second).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_cut_short_by_a_coordinator_restart_carries_on() {
    let (mut cluster, label, dir) = stack_cluster(3).await;
    let stack = format!("resume{label}");
    let slow = |version: &str| {
        compose(3, version, &label).replace(
            "      replicas: 3\n",
            "      replicas: 3\n      update_config: {parallelism: 1, delay: 2s}\n",
        )
    };
    std::fs::write(dir.path().join("compose.yml"), slow("v1")).unwrap();
    assert_ok(
        &cluster,
        &skiff(&cluster, dir.path(), &["deploy", &stack]).await,
    );
    wait_ready(&cluster, &stack, 3).await;

    std::fs::write(dir.path().join("compose.yml"), slow("v2")).unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", "--detach", &stack]).await;
    assert_ok(&cluster, &out);
    // Stop the coordinator once one replica is replaced and two are not.
    wait_for(
        "the rollout to be under way",
        Duration::from_secs(90),
        || async {
            let view: skiff_api_types::StackView = cluster
                .coordinator
                .client()
                .call(Method::GET, &format!("/stacks/{stack}"), None::<&()>)
                .await
                .ok()?;
            view.rollout
                .filter(|r| r.state == "in_progress" && r.replaced >= 1 && r.replaced < 3)
                .map(|_| ())
        },
    )
    .await
    .unwrap();
    cluster.coordinator.kill().await;
    cluster.coordinator.start().await.unwrap();

    // The restarted coordinator finishes the rollout by itself.
    let t = wait_ready(&cluster, &stack, 3).await;
    for t in &t {
        assert_eq!(get(&t.ips[0]).await.as_deref(), Some("v2"));
    }
    wait_for(
        "release 2 to be deployed",
        Duration::from_secs(30),
        || async {
            let out = skiff(&cluster, dir.path(), &["release", "ls", &stack, "--json"]).await;
            let releases: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
            (releases[0]["number"] == 2 && releases[0]["status"] == "deployed").then_some(())
        },
    )
    .await
    .unwrap();
}
