//! Plans and their order: a coordinator restored from a backup, whose plan
//! generations went back, is followed again by its agents.

use std::time::Duration;

use skiff_tests::wait_until;

use crate::stacks::{assert_ok, skiff, stack_cluster, wait_ready};

fn compose(version: &str, label: &str) -> String {
    format!(
        "services:\n  web:\n    image: skiff-test/busybox:1\n    command: [\"sh\", \"-c\", \"echo {version} > /www/index.html && httpd -f -p 8080 -h /www\"]\n    environment:\n      VERSION: \"{version}\"\n    healthcheck:\n      test: [\"CMD\", \"wget\", \"-q\", \"-O-\", \"http://127.0.0.1:8080/\"]\n      interval: 1s\n      timeout: 1s\n      retries: 3\n    deploy:\n      replicas: 1\n      placement:\n        constraints: [\"node.labels.test == {label}\"]\n"
    )
}

/// Copies the coordinator's database (with its write-ahead log, if any).
fn copy_db(from: &std::path::Path, to: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let src = from.join(format!("skiff.db{suffix}"));
        let dst = to.join(format!("skiff.db{suffix}"));
        let _ = std::fs::remove_file(&dst);
        if src.exists() {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_restored_from_a_backup_is_followed_again() {
    let (mut cluster, label, dir) = stack_cluster(1).await;
    let file = dir.path().join("compose.yml");
    std::fs::write(&file, compose("one", &label)).unwrap();
    assert_ok(
        &cluster,
        &skiff(
            &cluster,
            dir.path(),
            &["deploy", "-f", "compose.yml", "restore"],
        )
        .await,
    );
    wait_ready(&cluster, "restore", 1).await;

    // The backup: taken with the coordinator stopped.
    let backup = tempfile::tempdir().unwrap();
    let data = cluster.coordinator.data_dir();
    cluster.coordinator.stop().await;
    copy_db(&data, backup.path());
    cluster.coordinator.start().await.unwrap();

    // A later release: every plan generation moves on.
    std::fs::write(&file, compose("two", &label)).unwrap();
    assert_ok(
        &cluster,
        &skiff(
            &cluster,
            dir.path(),
            &["deploy", "-f", "compose.yml", "restore"],
        )
        .await,
    );
    wait_ready(&cluster, "restore", 1).await;
    let node = cluster.agents[0].node_id();
    let before = cluster
        .coordinator
        .node(&node)
        .await
        .unwrap()
        .plan_generation;

    // The restore: the coordinator's plans go back to the backup's
    // generations, and the node follows them to release 1's container.
    cluster.coordinator.stop().await;
    copy_db(backup.path(), &data);
    cluster.coordinator.start().await.unwrap();
    wait_ready(&cluster, "restore", 1).await;
    let tasks = cluster.tasks("restore").await;
    assert_eq!(tasks[0].name, "restore.web.1");
    wait_until(
        "the node to accept the restored plan",
        Duration::from_secs(30),
        || async {
            let n = cluster.coordinator.node(&node).await.unwrap();
            n.plan_error.is_none() && n.plan_generation.is_some() && n.plan_generation < before
        },
    )
    .await
    .unwrap();
    let view: skiff_api_types::StackView = cluster
        .coordinator
        .client()
        .call(
            skiff_cli::client::Method::GET,
            "/stacks/restore",
            None::<&()>,
        )
        .await
        .unwrap();
    assert_eq!(view.release, 1, "the restored coordinator is on release 1");
}
