//! Compose configs: a `file:` config is written into the containers before
//! they start, a changed file replaces the replicas, and a config that
//! cannot be read is refused before anything changes.

use super::stacks::{assert_ok, get, skiff, stack_cluster, tasks, wait_ready};

fn compose(label: &str) -> String {
    format!(
        r#"services:
  web:
    image: skiff-test/busybox:1
    command: ["httpd", "-f", "-p", "8080", "-h", "/srv/www"]
    configs:
      - source: page
        target: /srv/www/index.html
        mode: 0444
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/"]
      interval: 1s
      retries: 3
    deploy:
      placement: {{constraints: ["node.labels.test == {label}"]}}
configs:
  page:
    file: ./page.html
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn config_files_reach_containers_and_a_change_replaces_them() {
    let (cluster, label, dir) = stack_cluster(1).await;
    let stack = format!("cfg{label}");
    std::fs::write(dir.path().join("compose.yml"), compose(&label)).unwrap();
    std::fs::write(dir.path().join("page.html"), "first\n").unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    assert_ok(&cluster, &out);
    let t = wait_ready(&cluster, &stack, 1).await;
    assert_eq!(get(&t[0].ips[0]).await.as_deref(), Some("first"));

    std::fs::write(dir.path().join("page.html"), "second\n").unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    assert_ok(&cluster, &out);
    let t = wait_ready(&cluster, &stack, 1).await;
    assert_eq!(get(&t[0].ips[0]).await.as_deref(), Some("second"));
    assert_eq!(t[0].restart_count, 0);

    // An unreadable config file: a usage error naming it; nothing changes.
    std::fs::remove_file(dir.path().join("page.html")).unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("configs.page.file") && stderr.contains("page.html"),
        "{stderr}"
    );
    let now = tasks(&cluster, &stack).await;
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].name, t[0].name);
    assert_eq!(get(&now[0].ips[0]).await.as_deref(), Some("second"));
}
