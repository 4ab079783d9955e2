//! Stack networks: services of a stack reach each other by service name
//! and alias on a network the agent creates for the stack, and the network
//! goes when the stack does.

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::ListNetworksOptions;
use skiff_tests::image::docker;
use skiff_tests::wait_for;

use super::stacks::{assert_ok, skiff, stack_cluster, wait_ready};

/// `web` is healthy only while it can fetch from `db` by its alias.
fn compose(label: &str) -> String {
    format!(
        r#"services:
  web:
    image: skiff-test/busybox:1
    command: ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://database:8081/"]
      interval: 1s
      retries: 3
    networks: [back]
    deploy:
      placement: {{constraints: ["node.labels.test == {label}"]}}
  db:
    image: skiff-test/busybox:1
    command: ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8081 -h /www"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://web:8080/"]
      interval: 1s
      retries: 3
    networks:
      back:
        aliases: [database]
    deploy:
      placement: {{constraints: ["node.labels.test == {label}"]}}
networks:
  back: {{}}
"#
    )
}

async fn stack_networks(stack: &str) -> Vec<String> {
    let docker = docker().await.unwrap();
    let filters = HashMap::from([("label".to_owned(), vec![format!("skiff.stack={stack}")])]);
    docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filters),
        }))
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| n.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn services_reach_each_other_by_name_on_the_stacks_network() {
    let (cluster, label, dir) = stack_cluster(1).await;
    let stack = format!("net{label}");
    std::fs::write(dir.path().join("compose.yml"), compose(&label)).unwrap();
    assert_ok(
        &cluster,
        &skiff(&cluster, dir.path(), &["deploy", &stack]).await,
    );
    // Both health checks resolve the other service's name (or alias).
    wait_ready(&cluster, &stack, 2).await;
    let nets = stack_networks(&stack).await;
    assert_eq!(nets.len(), 1, "{nets:?}");
    assert!(
        nets[0].starts_with(&format!("skiff.{stack}.back.")),
        "{nets:?}"
    );

    assert_ok(
        &cluster,
        &skiff(&cluster, dir.path(), &["stack", "rm", &stack]).await,
    );
    wait_for(
        "the stack's network to be removed",
        Duration::from_secs(60),
        || async { stack_networks(&stack).await.is_empty().then_some(()) },
    )
    .await
    .unwrap();
}
