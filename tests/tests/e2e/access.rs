//! API tokens and roles: every route against every role, stack-limited
//! tokens, revocation, and `skiff login` replacing the initial admin token.

use std::process::Output;
use std::time::Duration;

use skiff_api_types::{ApiRole, CreateApiToken, CreatedApiToken};
use skiff_cli::client::{Client, Method};
use skiff_tests::cluster::{Coordinator, CoordinatorOptions};
use skiff_tests::target_bin;

/// A route as the test calls it: method, path with its parameters filled
/// in, a body, the route as the API registers it, and the least role that
/// may call it (`None`: any valid token).
struct Route {
    method: Method,
    path: &'static str,
    body: Option<serde_json::Value>,
    route: &'static str,
    least: Option<ApiRole>,
}

fn routes() -> Vec<Route> {
    use ApiRole::{Admin, Deployer, Viewer};
    use serde_json::json;
    let r = |method, path, body, route, least| Route {
        method,
        path,
        body,
        route,
        least,
    };
    vec![
        r(Method::GET, "/openapi.json", None, "/openapi.json", None),
        r(Method::POST, "/login", None, "/login", None),
        r(Method::GET, "/cluster", None, "/cluster", Some(Viewer)),
        r(Method::GET, "/nodes", None, "/nodes", Some(Viewer)),
        r(Method::GET, "/network", None, "/network", Some(Viewer)),
        r(Method::GET, "/dns", None, "/dns", Some(Viewer)),
        r(Method::GET, "/routes", None, "/routes", Some(Viewer)),
        r(
            Method::GET,
            "/certificates",
            None,
            "/certificates",
            Some(Viewer),
        ),
        r(
            Method::POST,
            "/certificates",
            Some(json!({"chain_pem": "x", "key_pem": "y"})),
            "/certificates",
            Some(Admin),
        ),
        r(
            Method::POST,
            "/certificates/renew",
            Some(json!({"domain": "a.example.com"})),
            "/certificates/renew",
            Some(Admin),
        ),
        r(
            Method::DELETE,
            "/certificates/nope",
            None,
            "/certificates/{id}",
            Some(Admin),
        ),
        r(
            Method::GET,
            "/dns/query?name=web.shop.skiff",
            None,
            "/dns/query",
            Some(Viewer),
        ),
        r(
            Method::GET,
            "/nodes/nope",
            None,
            "/nodes/{id}",
            Some(Viewer),
        ),
        r(
            Method::DELETE,
            "/nodes/nope",
            None,
            "/nodes/{id}",
            Some(Admin),
        ),
        r(
            Method::PATCH,
            "/nodes/nope/labels",
            Some(json!({"set": {}, "remove": []})),
            "/nodes/{id}/labels",
            Some(Admin),
        ),
        r(
            Method::GET,
            "/nodes/nope/containers",
            None,
            "/nodes/{id}/containers",
            Some(Viewer),
        ),
        r(
            Method::GET,
            "/tokens/join",
            None,
            "/tokens/join",
            Some(Admin),
        ),
        r(
            Method::POST,
            "/tokens/join",
            Some(json!({})),
            "/tokens/join",
            Some(Admin),
        ),
        r(
            Method::DELETE,
            "/tokens/join/nope",
            None,
            "/tokens/join/{id}",
            Some(Admin),
        ),
        r(Method::GET, "/tokens/api", None, "/tokens/api", Some(Admin)),
        r(
            Method::POST,
            "/tokens/api",
            Some(json!({"role": "viewer"})),
            "/tokens/api",
            Some(Admin),
        ),
        r(
            Method::DELETE,
            "/tokens/api/nope",
            None,
            "/tokens/api/{id}",
            Some(Admin),
        ),
        r(Method::GET, "/events", None, "/events", Some(Viewer)),
        r(Method::GET, "/stacks", None, "/stacks", Some(Viewer)),
        r(
            Method::GET,
            "/stacks/mine",
            None,
            "/stacks/{name}",
            Some(Viewer),
        ),
        r(
            Method::GET,
            "/stacks/mine/tasks",
            None,
            "/stacks/{name}/tasks",
            Some(Viewer),
        ),
        r(
            Method::GET,
            "/stacks/mine/releases",
            None,
            "/stacks/{name}/releases",
            Some(Viewer),
        ),
        r(
            Method::GET,
            "/stacks/mine/secrets",
            None,
            "/stacks/{name}/secrets",
            Some(Viewer),
        ),
        r(
            Method::GET,
            "/stacks/mine/logs",
            None,
            "/stacks/{name}/logs",
            Some(Viewer),
        ),
        r(
            Method::GET,
            "/logs/sinks",
            None,
            "/logs/sinks",
            Some(Viewer),
        ),
        r(
            Method::PUT,
            "/logs/sinks/central",
            Some(json!({"url": "udp://127.0.0.1:5514"})),
            "/logs/sinks/{name}",
            Some(Admin),
        ),
        r(
            Method::DELETE,
            "/logs/sinks/nope",
            None,
            "/logs/sinks/{name}",
            Some(Admin),
        ),
        r(
            Method::PUT,
            "/stacks/mine/secrets/key",
            Some(json!({"value": "aGk="})),
            "/stacks/{name}/secrets/{secret}",
            Some(Deployer),
        ),
        r(
            Method::DELETE,
            "/stacks/mine/secrets/key",
            None,
            "/stacks/{name}/secrets/{secret}",
            Some(Deployer),
        ),
        r(
            Method::POST,
            "/stacks/mine/deploy",
            Some(json!({})),
            "/stacks/{name}/deploy",
            Some(Deployer),
        ),
        r(
            Method::POST,
            "/stacks/mine/rollback",
            Some(json!({})),
            "/stacks/{name}/rollback",
            Some(Deployer),
        ),
        r(
            Method::POST,
            "/stacks/mine/services/web/scale",
            Some(json!({"replicas": 1})),
            "/stacks/{name}/services/{service}/scale",
            Some(Deployer),
        ),
        r(
            Method::DELETE,
            "/stacks/mine",
            None,
            "/stacks/{name}",
            Some(Deployer),
        ),
        r(
            Method::GET,
            "/registries",
            None,
            "/registries",
            Some(Viewer),
        ),
        r(
            Method::PUT,
            "/registries/registry.example.com",
            Some(json!({"username": "u", "password": "p"})),
            "/registries/{host}",
            Some(Admin),
        ),
        r(
            Method::DELETE,
            "/registries/registry.example.com",
            None,
            "/registries/{host}",
            Some(Admin),
        ),
        r(Method::GET, "/policy", None, "/policy", Some(Viewer)),
        r(
            Method::POST,
            "/policy/allow",
            Some(json!({"stack": "mine", "settings": ["host-pid"]})),
            "/policy/allow",
            Some(Admin),
        ),
        r(
            Method::POST,
            "/policy/revoke",
            Some(json!({"stack": "mine", "settings": ["host-pid"]})),
            "/policy/revoke",
            Some(Admin),
        ),
    ]
}

async fn token(coord: &Coordinator, role: ApiRole, stacks: &[&str]) -> Client {
    let created: CreatedApiToken = coord
        .client()
        .call(
            Method::POST,
            "/tokens/api",
            Some(&CreateApiToken {
                name: Some(format!("{role} {}", stacks.join(","))),
                role,
                stacks: stacks.iter().map(|s| (*s).to_owned()).collect(),
                ttl: None,
            }),
        )
        .await
        .unwrap();
    Client::new(&coord.api_url(), Some(created.token)).unwrap()
}

async fn status(client: &Client, r: &Route) -> u16 {
    client
        .raw(
            r.method.clone(),
            &format!("/api/v1{}", r.path),
            r.body.as_ref(),
        )
        .await
        .unwrap()
        .0
        .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_every_role_as_its_table_says() {
    let coord = Coordinator::launch(CoordinatorOptions::default())
        .await
        .unwrap();
    let routes = routes();

    // The table covers every route the API documents.
    let doc: serde_json::Value = coord
        .client()
        .call(Method::GET, "/openapi.json", None::<&()>)
        .await
        .unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let route = path.strip_prefix("/api/v1").unwrap();
        for method in item.as_object().unwrap().keys() {
            assert!(
                routes
                    .iter()
                    .any(|r| r.route == route && r.method.as_str().eq_ignore_ascii_case(method)),
                "{method} {route} is not in the test's table"
            );
        }
    }

    for role in [ApiRole::Viewer, ApiRole::Deployer, ApiRole::Admin] {
        let client = token(&coord, role, &[]).await;
        for r in &routes {
            let got = status(&client, r).await;
            let allowed = r.least.is_none_or(|least| role >= least);
            if allowed {
                assert!(
                    got != 401 && got != 403,
                    "{role} was refused {} {}: {got}",
                    r.method,
                    r.path
                );
            } else {
                assert_eq!(got, 403, "{role} on {} {}", r.method, r.path);
            }
        }
    }

    // A token limited to one stack: its stack, and no other.
    let mine = token(&coord, ApiRole::Deployer, &["mine"]).await;
    for r in routes
        .iter()
        .filter(|r| r.route.starts_with("/stacks/{name}"))
    {
        assert!(
            ![401, 403].contains(&status(&mine, r).await),
            "{} {}",
            r.method,
            r.path
        );
        let theirs = Route {
            path: Box::leak(r.path.replace("/mine", "/theirs").into_boxed_str()),
            body: r.body.clone(),
            method: r.method.clone(),
            route: r.route,
            least: r.least,
        };
        assert_eq!(
            status(&mine, &theirs).await,
            403,
            "{} {}",
            r.method,
            theirs.path
        );
    }

    // No token, a forged one, a revoked one: 401 everywhere.
    let revoked = token(&coord, ApiRole::Admin, &[]).await;
    let tokens: Vec<skiff_api_types::ApiTokenView> = coord
        .client()
        .call(Method::GET, "/tokens/api", None::<&()>)
        .await
        .unwrap();
    let id = tokens.last().unwrap().id.clone();
    coord
        .client()
        .call::<skiff_api_types::ApiTokenView>(
            Method::DELETE,
            &format!("/tokens/api/{id}"),
            None::<&()>,
        )
        .await
        .unwrap();
    let nobody = Client::new(&coord.api_url(), None).unwrap();
    let forged = Client::new(
        &coord.api_url(),
        Some(format!("skiff_{}_{}", "0".repeat(16), "0".repeat(40))),
    )
    .unwrap();
    for client in [&revoked, &nobody, &forged] {
        for r in &routes {
            assert_eq!(status(client, r).await, 401, "{} {}", r.method, r.path);
        }
    }
}

async fn skiff(coord: &Coordinator, args: &[&str], token: &str) -> Output {
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(target_bin("skiff"))
            .args(args)
            .env("SKIFF_URL", coord.api_url())
            .env("SKIFF_TOKEN", token)
            .env("SKIFF_CONFIG", coord.root.path().join("cli.toml"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_made_listed_and_revoked_and_login_replaces_the_initial_one() {
    let coord = Coordinator::launch(CoordinatorOptions::default())
        .await
        .unwrap();
    let admin = coord.admin_token();

    // A viewer made by the CLI reads but may not deploy or make tokens.
    let out = skiff(
        &coord,
        &["api-token", "create", "--role", "viewer", "--name", "ci"],
        &admin,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let viewer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        skiff(&coord, &["node", "ls"], &viewer)
            .await
            .status
            .success()
    );
    let out = skiff(&coord, &["token", "create"], &viewer).await;
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs an admin token") && err.contains("viewer"),
        "{err}"
    );
    let out = skiff(
        &coord,
        &["api-token", "create", "--role", "admin", "--stack", "x"],
        &admin,
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "an admin token cannot be limited to stacks"
    );

    let out = skiff(&coord, &["api-token", "ls", "--json"], &admin).await;
    let list: Vec<skiff_api_types::ApiTokenView> = serde_json::from_slice(&out.stdout).unwrap();
    let ci = list.iter().find(|t| t.name == "ci").unwrap();
    assert_eq!(ci.role, ApiRole::Viewer);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&viewer),
        "never the secret"
    );
    assert!(
        skiff(&coord, &["api-token", "revoke", &ci.id], &admin)
            .await
            .status
            .success()
    );
    assert_eq!(
        skiff(&coord, &["node", "ls"], &viewer).await.status.code(),
        Some(4)
    );

    // The first login with the initial admin token replaces it.
    let initial = coord.initial_token().unwrap();
    let file = coord.data_dir().join("initial-admin-token");
    let out = skiff(
        &coord,
        &["login", "--token-file", file.to_str().unwrap()],
        "",
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("initial admin token was replaced"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!file.exists(), "the file is gone");
    assert_eq!(
        skiff(&coord, &["node", "ls"], &initial).await.status.code(),
        Some(4)
    );
    let saved = tokio::process::Command::new(target_bin("skiff"))
        .args(["node", "ls"])
        .env_remove("SKIFF_TOKEN")
        .env_remove("SKIFF_URL")
        .env("SKIFF_CONFIG", coord.root.path().join("cli.toml"))
        .output()
        .await
        .unwrap();
    assert!(
        saved.status.success(),
        "the saved, new token works: {}",
        String::from_utf8_lossy(&saved.stderr)
    );
}
