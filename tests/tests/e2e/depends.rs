//! `depends_on`: a service starts only once the services it depends on are
//! started or healthy, as its condition says; a dependency that never gets
//! there fails the deploy and its dependents are never created.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bollard::query_parameters::EventsOptions;
use futures_util::StreamExt;
use skiff_tests::image::docker;

use super::stacks::{assert_ok, engine_containers_labelled, skiff, stack_cluster};

/// `web` waits for `db` to be healthy; `db` becomes healthy after a while
/// (`healthy` is the command that makes its health check pass).
fn compose(label: &str, db_health: &str) -> String {
    format!(
        r#"services:
  web:
    image: skiff-test/busybox:1
    command: ["httpd", "-f", "-p", "8080"]
    depends_on:
      db:
        condition: service_healthy
      cache:
        condition: service_started
      migrate:
        condition: service_completed_successfully
    deploy:
      placement: {{constraints: ["node.labels.test == {label}"]}}
  migrate:
    image: skiff-test/busybox:1
    command: ["sh", "-c", "echo migrated"]
    restart: "no"
    deploy:
      placement: {{constraints: ["node.labels.test == {label}"]}}
  cache:
    image: skiff-test/busybox:1
    command: ["httpd", "-f", "-p", "8082"]
    deploy:
      placement: {{constraints: ["node.labels.test == {label}"]}}
  db:
    image: skiff-test/busybox:1
    command: ["sh", "-c", "sleep 2; touch /tmp/ready; exec httpd -f -p 8081"]
    healthcheck:
      test: ["CMD-SHELL", "{db_health}"]
      interval: 1s
      timeout: 1s
      retries: 2
      start_period: 10s
    deploy:
      placement: {{constraints: ["node.labels.test == {label}"]}}
"#
    )
}

/// Records the engine's container events of one stack: (service, action).
fn record_events(stack: &str) -> Arc<Mutex<Vec<(String, String)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    let stack = stack.to_owned();
    tokio::spawn(async move {
        let docker = docker().await.unwrap();
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("label".to_owned(), vec![format!("skiff.stack={stack}")]),
        ]);
        let mut events = docker.events(Some(EventsOptions {
            filters: Some(filters),
            ..Default::default()
        }));
        while let Some(Ok(e)) = events.next().await {
            let service = e
                .actor
                .and_then(|a| a.attributes)
                .and_then(|a| a.get("skiff.service").cloned())
                .unwrap_or_default();
            let action = e.action.unwrap_or_default();
            out.lock().unwrap().push((service, action));
        }
    });
    seen
}

fn position(events: &[(String, String)], service: &str, action: &str) -> Option<usize> {
    events
        .iter()
        .position(|(s, a)| s == service && a.starts_with(action))
}

async fn containers_of(stack: &str, service: &str) -> usize {
    engine_containers_labelled(vec![
        format!("skiff.stack={stack}"),
        format!("skiff.service={service}"),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn services_start_after_their_dependencies_and_not_when_one_fails() {
    let (cluster, label, dir) = stack_cluster(1).await;

    // In order: web starts only after db reported healthy and cache started.
    let stack = format!("deps{label}");
    let events = record_events(&stack);
    std::fs::write(
        dir.path().join("compose.yml"),
        compose(&label, "test -f /tmp/ready"),
    )
    .unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    assert_ok(&cluster, &out);
    // Progress: a bar per service, each full at the end.
    let stdout = String::from_utf8_lossy(&out.stdout);
    for service in ["cache", "db", "migrate", "web"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(service)
                && l.contains("[####################]")
                && l.ends_with("1/1 ready")),
            "{stdout}"
        );
    }
    let seen = events.lock().unwrap().clone();
    let healthy = position(&seen, "db", "health_status: healthy").expect("db became healthy");
    let cache = position(&seen, "cache", "start").expect("cache started");
    let migrated = position(&seen, "migrate", "die").expect("migrate ran");
    let web = position(&seen, "web", "start").expect("web started");
    assert!(
        healthy < web && cache < web && migrated < web,
        "web started before its dependencies were ready: {seen:?}"
    );

    // A dependency that never becomes healthy fails the deploy, names it,
    // and its dependent is never created.
    let stack = format!("depsbad{label}");
    std::fs::write(dir.path().join("compose.yml"), compose(&label, "false")).unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("web not started") && stderr.contains("db") && stderr.contains("unhealthy"),
        "{stderr}"
    );
    assert_eq!(containers_of(&stack, "web").await, 0);
    assert_eq!(containers_of(&stack, "db").await, 1);
}
