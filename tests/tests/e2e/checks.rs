//! The agent's own HTTP and TCP health checks (`x-skiff.healthcheck`):
//! their result is the replicas' reported health, and a rolling update
//! whose new replicas fail the check rolls back by itself.

use super::stacks::{assert_ok, get, skiff, stack_cluster, wait_ready};

/// `web` serves its version and answers `/ok` only when `ok` is true;
/// `db` is checked by TCP alone. Neither image has a health check.
fn compose(label: &str, version: &str, ok: bool) -> String {
    let make_ok = if ok { " && touch /www/ok" } else { "" };
    format!(
        r#"services:
  web:
    image: skiff-test/busybox:1
    command: ["sh", "-c", "mkdir -p /www && echo {version} > /www/index.html{make_ok} && exec httpd -f -p 8080 -h /www"]
    x-skiff:
      healthcheck: {{type: http, port: 8080, path: /ok, interval: 500ms, timeout: 1s, retries: 2}}
    deploy:
      placement: {{constraints: ["node.labels.test == {label}"]}}
      update_config: {{order: start-first}}
  db:
    image: skiff-test/busybox:1
    command: ["httpd", "-f", "-p", "9000"]
    x-skiff:
      healthcheck: {{type: tcp, port: 9000, interval: 500ms}}
    deploy:
      placement: {{constraints: ["node.labels.test == {label}"]}}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_checks_gate_health_and_a_failing_update_rolls_back() {
    let (cluster, label, dir) = stack_cluster(1).await;
    let stack = format!("checks{label}");
    let file = dir.path().join("compose.yml");

    std::fs::write(&file, compose(&label, "v1", true)).unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    assert_ok(&cluster, &out);
    // Both report healthy from the agent's checks alone.
    let tasks = wait_ready(&cluster, &stack, 2).await;
    let web = tasks.iter().find(|t| t.service == "web").unwrap();
    assert_eq!(get(&web.ips[0]).await.as_deref(), Some("v1"));

    // v2 answers 404 on /ok: the agent reports it unhealthy and the
    // update rolls back by itself; v1 keeps serving.
    std::fs::write(&file, compose(&label, "v2", false)).unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("rolled back") && stderr.contains("unhealthy"),
        "{stderr}"
    );
    let tasks = wait_ready(&cluster, &stack, 2).await;
    let web = tasks.iter().find(|t| t.service == "web").unwrap();
    assert_eq!(get(&web.ips[0]).await.as_deref(), Some("v1"));
}
