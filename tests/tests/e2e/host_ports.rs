//! Rolling updates that cannot start first, on one real host: a service
//! publishing a `mode: host` port is updated stop-first (the new container
//! cannot bind the port its old replica holds) and says so; a release
//! whose container cannot start fails its batch with the engine's error
//! and rolls back.

use std::time::Duration;

use skiff_tests::cluster::Cluster;
use skiff_tests::wait_for;

use crate::stacks::{assert_ok, get, skiff, stack_cluster, wait_ready};

fn compose(version: &str, label: &str, ports: &str, command: &str) -> String {
    format!(
        "services:\n  web:\n    image: skiff-test/busybox:1\n    command: {command}\n    environment:\n      VERSION: \"{version}\"\n{ports}    healthcheck:\n      test: [\"CMD\", \"wget\", \"-q\", \"-O-\", \"http://127.0.0.1:8080/\"]\n      interval: 1s\n      timeout: 1s\n      retries: 3\n    deploy:\n      replicas: 1\n      update_config:\n        order: start-first\n        monitor: 1s\n      placement:\n        constraints: [\"node.labels.test == {label}\"]\n"
    )
}

fn serving(version: &str) -> String {
    format!("[\"sh\", \"-c\", \"echo {version} > /www/index.html && httpd -f -p 8080 -h /www\"]")
}

/// GET / on 127.0.0.1:`port`: the body.
async fn get_port(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .ok()?
    .ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut buf))
        .await
        .ok()?
        .ok()?;
    buf.split("\r\n\r\n").nth(1).map(|b| b.trim().to_owned())
}

/// The stack's events, as `skiff events --json` prints them.
async fn events(cluster: &Cluster, dir: &std::path::Path, stack: &str) -> String {
    let out = skiff(cluster, dir, &["events", "--json", "--stack", stack]).await;
    assert_ok(cluster, &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn output(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_start_first_update_of_a_host_port_goes_stop_first_and_answers_on_the_port() {
    let (cluster, label, dir) = stack_cluster(1).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ports = format!(
        "    ports:\n      - target: 8080\n        published: {port}\n        mode: host\n"
    );
    let stack = format!("hostport{label}");
    let file = dir.path().join("compose.yml");
    std::fs::write(&file, compose("v1", &label, &ports, &serving("v1"))).unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    assert_ok(&cluster, &out);
    wait_ready(&cluster, &stack, 1).await;
    wait_for(
        "v1 on the published port",
        Duration::from_secs(30),
        || async { (get_port(port).await.as_deref() == Some("v1")).then_some(()) },
    )
    .await
    .unwrap();

    // Start-first cannot bind the port the old replica holds: the update
    // goes stop-first, says so, and completes.
    std::fs::write(&file, compose("v2", &label, &ports, &serving("v2"))).unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    assert_ok(&cluster, &out);
    let said = output(&out);
    assert!(
        said.contains("web: start-first needs the port free: updated stop-first on")
            && said.contains(&format!("port {port}/tcp"))
            && said.contains("give the service fewer replicas than hosts to keep start-first"),
        "{said}"
    );
    let tasks = wait_ready(&cluster, &stack, 1).await;
    assert_eq!(get(&tasks[0].ips[0]).await.as_deref(), Some("v2"));
    wait_for(
        "v2 on the published port",
        Duration::from_secs(30),
        || async { (get_port(port).await.as_deref() == Some("v2")).then_some(()) },
    )
    .await
    .unwrap();
    let log = events(&cluster, dir.path(), &stack).await;
    assert!(
        log.contains("warning: web: start-first needs the port free")
            && log.contains("release 2 completed"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_whose_container_cannot_start_fails_its_batch_with_the_engine_error() {
    let (cluster, label, dir) = stack_cluster(1).await;
    let stack = format!("badcmd{label}");
    let file = dir.path().join("compose.yml");
    std::fs::write(&file, compose("v1", &label, "", &serving("v1"))).unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    assert_ok(&cluster, &out);
    wait_ready(&cluster, &stack, 1).await;

    // A binary that is not in the image: the engine creates the container
    // but cannot start it.
    std::fs::write(
        &file,
        compose("v2", &label, "", "[\"/no/such/binary\", \"--serve\"]"),
    )
    .unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    let said = output(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("could not start") && said.contains("/no/such/binary"),
        "the engine's error: {said}"
    );
    // The rollout failed on that error (not on its deadline) and went back.
    let log = wait_for(
        "the rollout to end rolled back",
        Duration::from_secs(60),
        || async {
            let log = events(&cluster, dir.path(), &stack).await;
            log.contains("release 2 rolled_back").then_some(log)
        },
    )
    .await
    .unwrap();
    let ended = log
        .lines()
        .find(|l| l.contains("release 2 rolled_back"))
        .unwrap_or_default();
    assert!(
        ended.contains("could not start") && ended.contains("/no/such/binary"),
        "{log}"
    );
    assert!(!ended.contains("in time"), "{ended}");
    let tasks = wait_ready(&cluster, &stack, 1).await;
    assert_eq!(get(&tasks[0].ips[0]).await.as_deref(), Some("v1"));
}
