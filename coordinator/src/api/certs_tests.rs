//! `/api/v1/certificates` on a real coordinator on loopback: upload,
//! list, refusals that say what to fix and store nothing, removal, the
//! body limit, keys that never come back, and renewals asked for.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use skiff_shared::tasks::TaskTree;
use tokio::net::{TcpListener, TcpStream};

use crate::certs::CertBook;
use crate::certs::tests::issued;
use crate::config::Config;

struct Running {
    addr: SocketAddr,
    token: String,
    tree: TaskTree,
    _dir: tempfile::TempDir,
}

async fn coordinator() -> Running {
    coordinator_with(None).await.0
}

/// A coordinator, with ACME on when `acme` names a directory; its
/// certificates handle too.
async fn coordinator_with(acme: Option<&str>) -> (Running, Arc<CertBook>) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    config.network.enabled = false;
    config.acme.directory = acme.map(str::to_owned);
    let tree = TaskTree::root();
    let c = crate::server::prepare(config, &tree).await.unwrap();
    let certs = c.certs();
    let token = std::fs::read_to_string(dir.path().join("initial-admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = api.local_addr().unwrap();
    tokio::spawn(crate::server::run(c, api, agent));
    let running = Running {
        addr,
        token,
        tree,
        _dir: dir,
    };
    (running, certs)
}

impl Running {
    async fn call(&self, method: Method, path: &str, body: Option<String>) -> (u16, String) {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("/api/v1{path}"))
            .header("host", "127.0.0.1");
        if !self.token.is_empty() {
            req = req.header("authorization", format!("Bearer {}", self.token));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b)),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(Body::new(resp.into_body()), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    async fn add(&self, chain: &str, key: &str) -> (u16, Value) {
        let (status, body) = self
            .call(
                Method::POST,
                "/certificates",
                Some(json!({"chain_pem": chain, "key_pem": key}).to_string()),
            )
            .await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn certificates_are_uploaded_listed_refused_and_removed() {
    let c = coordinator().await;
    let (chain, key) = issued(&["app.example.com", "www.example.com"], -1, 90);
    let key_line = key.lines().nth(1).unwrap().to_owned();

    let (status, view) = c.add(&chain, &key).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        view["domains"],
        json!(["app.example.com", "www.example.com"])
    );
    assert_eq!(view["source"], "upload");
    assert_eq!(view["served"], true);
    assert_eq!(view["issuer"], "CN=Test CA");
    let id = view["id"].as_str().unwrap().to_owned();

    let (status, list) = c.call(Method::GET, "/certificates", None).await;
    assert_eq!(status, 200);
    assert!(
        !list.contains(&key_line) && !list.contains("PRIVATE"),
        "{list}"
    );
    let list: Vec<Value> = serde_json::from_str(&list).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());

    // A key of another certificate: refused, saying so; nothing stored.
    let (_, other_key) = issued(&["app.example.com"], -1, 90);
    let (status, err) = c.add(&chain, &other_key).await;
    assert_eq!(status, 400);
    assert_eq!(err["code"], "invalid_certificate");
    assert!(
        err["message"].as_str().unwrap().contains("does not match"),
        "{err}"
    );
    let (status, err) = c.add("garbage", &key).await;
    assert_eq!(status, 400);
    assert!(err["message"].as_str().unwrap().contains("PEM"), "{err}");
    assert!(!err.to_string().contains(&key_line));
    let (_, list) = c.call(Method::GET, "/certificates", None).await;
    assert_eq!(serde_json::from_str::<Vec<Value>>(&list).unwrap().len(), 1);

    // Over 64 KiB: refused by the check; far over: by the body limit.
    let (status, err) = c.add(&"a".repeat(70 * 1024), &key).await;
    assert_eq!(status, 400, "{err}");
    assert!(err["message"].as_str().unwrap().contains("64 KiB"), "{err}");
    let (status, err) = c.add(&"a".repeat(400 * 1024), &key).await;
    assert_eq!(status, 413, "{err}");

    let (status, removed) = c
        .call(Method::DELETE, &format!("/certificates/{id}"), None)
        .await;
    assert_eq!(status, 200, "{removed}");
    let (status, _) = c
        .call(Method::DELETE, &format!("/certificates/{id}"), None)
        .await;
    assert_eq!(status, 404);
    let (_, list) = c.call(Method::GET, "/certificates", None).await;
    assert_eq!(list, "[]");
    c.tree.cancel();
}

#[tokio::test]
async fn certificates_need_a_token() {
    let mut c = coordinator().await;
    c.token = String::new();
    let (status, _) = c.call(Method::GET, "/certificates", None).await;
    assert_eq!(status, 401);
    let (chain, key) = issued(&["app.example.com"], -1, 90);
    let (status, _) = c.add(&chain, &key).await;
    assert_eq!(status, 401);
    c.tree.cancel();
}

async fn renew(c: &Running, domain: &str) -> (u16, Value) {
    let (status, body) = c
        .call(
            Method::POST,
            "/certificates/renew",
            Some(json!({ "domain": domain }).to_string()),
        )
        .await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_renewal_is_refused_without_acme_saying_how_to_turn_it_on() {
    let c = coordinator().await;
    let (status, err) = renew(&c, "app.example.com").await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["code"], "acme_disabled");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("[acme] directory"),
        "{err}"
    );
    c.tree.cancel();
}

#[tokio::test]
async fn a_renewal_is_asked_for_a_routes_domain_and_refused_for_others() {
    // Nothing listens on the directory: the renewal is only asked for.
    let (c, certs) = coordinator_with(Some("https://127.0.0.1:9/directory")).await;
    let (status, err) = renew(&c, "app.example.com").await;
    assert_eq!(status, 404, "{err}");
    assert_eq!(err["code"], "no_route");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("no route with TLS wants a certificate for app.example.com"),
        "{err}"
    );

    // A route wants it (as the ingress section says when routes change),
    // and an uploaded certificate serves it now.
    certs.want(BTreeSet::from(["app.example.com".to_owned()]));
    let (chain, key) = issued(&["app.example.com"], -1, 90);
    let (_, view) = c.add(&chain, &key).await;
    let (status, renewal) = renew(&c, "App.Example.com").await;
    assert_eq!(status, 200, "{renewal}");
    assert_eq!(renewal["domain"], "app.example.com");
    assert_eq!(renewal["replaces"], json!([view["id"]]));

    let (status, err) = renew(&c, "*.example.com").await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("wildcard"),
        "{err}"
    );
    let (status, err) = renew(&c, "app.example.com:443").await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["code"], "invalid_domain");
    let (status, err) = renew(&c, "other.example.com").await;
    assert_eq!(status, 404, "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("app.example.com"),
        "names the routes' domains: {err}"
    );

    // Without a token, refused (the access table asks for an admin).
    let anonymous = Running {
        addr: c.addr,
        token: String::new(),
        tree: c.tree.clone(),
        _dir: tempfile::tempdir().unwrap(),
    };
    let (status, _) = renew(&anonymous, "app.example.com").await;
    assert_eq!(status, 401);
    c.tree.cancel();
}
