//! The HTTP API's authentication and errors, the `skiff` CLI, and config
//! validation at start-up.

use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::time::Duration;

use skiff_api_types::{NodeStatus, NodeView};
use skiff_cli::client::{Client, Method};
use skiff_tests::cluster::{Coordinator, CoordinatorOptions, free_port};
use skiff_tests::{launch_cluster, target_bin};

#[tokio::test(flavor = "multi_thread")]
async fn every_api_route_but_healthz_needs_a_valid_token() {
    let coord = Coordinator::launch(CoordinatorOptions::default())
        .await
        .unwrap();
    let doc: serde_json::Value = coord
        .client()
        .call(Method::GET, "/openapi.json", None::<&()>)
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 6, "{paths:?}");

    let anonymous = Client::new(&coord.api_url(), None).unwrap();
    let forged = Client::new(
        &coord.api_url(),
        Some(format!("skiff_{}_{}", "0".repeat(16), "0".repeat(40))),
    )
    .unwrap();
    let mut checked = 0;
    for (path, ops) in paths {
        let concrete = path.replace("{id}", "x");
        for method in ops.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            for client in [&anonymous, &forged] {
                let (status, body) = client
                    .raw(method.clone(), &concrete, Some(&serde_json::json!({})))
                    .await
                    .unwrap();
                assert_eq!(status.as_u16(), 401, "{method} {path}");
                let err: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(err["code"], "unauthorized");
                checked += 1;
            }
        }
    }
    assert!(checked >= 16);
    for path in ["/api/v1/openapi.json", "/api/v1/nope"] {
        let (status, _) = anonymous.raw(Method::GET, path, None::<&()>).await.unwrap();
        assert_eq!(status.as_u16(), 401, "{path}");
    }
    let (status, _) = anonymous
        .raw(Method::GET, "/healthz", None::<&()>)
        .await
        .unwrap();
    assert!(status.is_success());

    // Bad input gets a JSON error with a stable code.
    let (status, body) = coord
        .client()
        .raw(
            Method::POST,
            "/api/v1/tokens/join",
            Some(&serde_json::json!({"ttl": "soon"})),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 400);
    let err: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["code"], "invalid_ttl");
    assert!(err["message"].as_str().unwrap().contains("soon"));
    let (status, body) = coord
        .client()
        .raw(
            Method::POST,
            "/api/v1/tokens/join",
            Some(&serde_json::json!({"uses": 1, "colour": "red"})),
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 400, "{}", String::from_utf8_lossy(&body));
}

/// Runs the `skiff` CLI against `coord` with its admin token and `env`.
pub(crate) async fn skiff(coord: &Coordinator, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(target_bin("skiff"));
    cmd.args(args)
        .env("SKIFF_URL", coord.api_url())
        .env("SKIFF_TOKEN", coord.admin_token())
        .env("SKIFF_CONFIG", coord.root.path().join("cli.toml"))
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .unwrap()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn one_error_line(o: &Output) -> String {
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(e.trim_end().lines().count(), 1, "one line on stderr: {e:?}");
    assert!(e.starts_with("skiff: "), "{e}");
    e
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_tokens_nodes_labels_and_errors() {
    let cluster = launch_cluster(1, CoordinatorOptions::default())
        .await
        .unwrap();
    let coord = &cluster.coordinator;
    let name = cluster.agents[0].name.clone();

    let out = skiff(
        coord,
        &["token", "create", "--ttl", "1h", "--uses", "2"],
        &[],
    )
    .await;
    assert!(out.status.success());
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "the token alone: {text:?}");
    assert!(text.trim().parse::<skiff_shared::join::JoinToken>().is_ok());

    let out = skiff(coord, &["token", "ls", "--json"], &[]).await;
    let listed: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        !stdout(&out).contains(text.trim()),
        "secrets are never listed"
    );
    let out = skiff(coord, &["token", "ls"], &[]).await;
    assert!(stdout(&out).starts_with("ID"), "{}", stdout(&out));

    let out = skiff(coord, &["node", "ls"], &[]).await;
    let table = stdout(&out);
    assert!(
        table.lines().next().unwrap().starts_with("ID")
            && table.contains(&name)
            && table.contains("connected"),
        "{table}"
    );
    let out = skiff(coord, &["node", "ls", "--json"], &[]).await;
    let nodes: Vec<NodeView> = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(nodes.len(), 1);
    let out = skiff(coord, &["node", "show", &name, "--json"], &[]).await;
    let node: NodeView = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(node.status, NodeStatus::Connected);
    let out = skiff(coord, &["node", "show", &node.id], &[]).await;
    assert!(stdout(&out).contains("Docker:") && stdout(&out).contains(&name));

    let out = skiff(
        coord,
        &["node", "label", &name, "zone=eu-1", "tier=web"],
        &[],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = skiff(coord, &["node", "label", &name, "tier-"], &[]).await;
    assert!(out.status.success());
    let node = coord.node(&name).await.unwrap();
    assert_eq!(node.labels.get("zone").map(String::as_str), Some("eu-1"));
    assert!(!node.labels.contains_key("tier"));

    // Errors: one line, distinct exit codes, nothing changed.
    let out = skiff(coord, &["node", "label", &name, "bad key=1"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(one_error_line(&out).contains("invalid label key"));
    let out = skiff(coord, &["token", "create", "--ttl", "soon"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    one_error_line(&out);
    let out = skiff(coord, &["node", "show", "no-such-node"], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(one_error_line(&out).contains("no node \"no-such-node\""));
    let bad = format!("skiff_{}_{}", "1".repeat(16), "2".repeat(40));
    let out = skiff(coord, &["node", "ls"], &[("SKIFF_TOKEN", &bad)]).await;
    assert_eq!(out.status.code(), Some(4));
    one_error_line(&out);
    let out = skiff(
        coord,
        &[
            "node",
            "ls",
            "--url",
            &format!("http://127.0.0.1:{}", free_port()),
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(3));
    assert!(one_error_line(&out).contains("cannot reach the coordinator"));
    assert_eq!(
        coord.node(&name).await.unwrap().labels.len(),
        2,
        "test label and zone"
    );

    // login saves URL and token (0600); later commands need neither.
    let out = skiff(coord, &["login"], &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = coord.root.path().join("cli.toml");
    assert_eq!(
        std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut cmd = tokio::process::Command::new(target_bin("skiff"));
    let out = cmd
        .args(["node", "ls", "--json"])
        .env_remove("SKIFF_URL")
        .env_remove("SKIFF_TOKEN")
        .env("SKIFF_CONFIG", &cfg)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = skiff(coord, &["node", "rm", &name], &[]).await;
    assert!(out.status.success());
    let out = skiff(coord, &["node", "ls", "--json"], &[]).await;
    assert_eq!(
        serde_json::from_str::<Vec<NodeView>>(&stdout(&out))
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_config_is_refused_before_any_port_is_bound() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    for (text, key) in [
        (
            format!("api_listen = \"127.0.0.1:{port}\"\nheartbeat_interval = \"0s\"\n"),
            "heartbeat_interval",
        ),
        (
            format!("api_listen = \"127.0.0.1:{port}\"\ncert_tll = \"1h\"\n"),
            "cert_tll",
        ),
        ("api_listen = \"not an address\"\n".to_owned(), "api_listen"),
        (
            format!("api_listen = \"127.0.0.1:{port}\"\nadvertise = [\"bad name!\"]\n"),
            "advertise",
        ),
        (
            format!(
                "api_listen = \"127.0.0.1:{port}\"\n[acme]\ndirectory = \"http://acme.test/dir\"\n"
            ),
            "acme.directory",
        ),
    ] {
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            format!("data_dir = {:?}\n{text}", dir.path().join("data")),
        )
        .unwrap();
        let out = tokio::process::Command::new(target_bin("skiff-coordinator"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(key), "{key} named in {stderr:?}");
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "nothing was bound"
        );
        assert!(!dir.path().join("data").exists(), "nothing was written");
    }
}
