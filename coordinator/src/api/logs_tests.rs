//! `/api/v1/logs/sinks` and `/api/v1/stacks/{name}/logs` on a real
//! coordinator on loopback: sinks added, listed, replaced and removed;
//! bad ones refused with the field's code and nothing stored.

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use skiff_shared::tasks::TaskTree;
use tokio::net::{TcpListener, TcpStream};

use crate::config::Config;

struct Running {
    addr: SocketAddr,
    token: String,
    tree: TaskTree,
    _dir: tempfile::TempDir,
}

async fn coordinator() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        ..Config::default()
    };
    config.network.enabled = false;
    let tree = TaskTree::root();
    let c = crate::server::prepare(config, &tree).await.unwrap();
    let token = std::fs::read_to_string(dir.path().join("initial-admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = api.local_addr().unwrap();
    tokio::spawn(crate::server::run(c, api, agent));
    Running {
        addr,
        token,
        tree,
        _dir: dir,
    }
}

impl Running {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(format!("/api/v1{path}"))
            .header("host", "127.0.0.1")
            .header("authorization", format!("Bearer {}", self.token));
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(Body::new(resp.into_body()), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn sinks(&self) -> Vec<Value> {
        let (status, list) = self.call(Method::GET, "/logs/sinks", None).await;
        assert_eq!(status, 200, "{list}");
        list.as_array().unwrap().clone()
    }
}

const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

#[tokio::test]
async fn sinks_are_added_listed_replaced_and_removed() {
    let c = coordinator().await;
    assert!(c.sinks().await.is_empty());
    let (status, view) = c
        .call(
            Method::PUT,
            "/logs/sinks/central",
            Some(json!({"url": "tcp://logs.example.com:601"})),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["format"], "syslog", "syslog unless told");
    assert_eq!(view["when_full"], "block");
    assert_eq!(view["buffer_bytes"], 256 << 20);

    let (status, view) = c
        .call(
            Method::PUT,
            "/logs/sinks/central",
            Some(json!({"url": "tls://logs.example.com", "ca_pem": PEM,
                "buffer_bytes": 1 << 30, "when_full": "drop_oldest"})),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    let list = c.sinks().await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["url"], "tls://logs.example.com");
    assert_eq!(list[0]["has_ca"], true);
    assert!(list[0].get("ca_pem").is_none(), "the CA is never shown");
    assert_eq!(list[0]["when_full"], "drop_oldest");

    let (status, _) = c
        .call(
            Method::PUT,
            "/logs/sinks/loki",
            Some(
                json!({"url": "https://loki.example.com/loki/api/v1/push", "format": "json_lines"}),
            ),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(c.sinks().await.len(), 2);

    let (status, body) = c.call(Method::DELETE, "/logs/sinks/loki", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = c.call(Method::DELETE, "/logs/sinks/loki", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(c.sinks().await.len(), 1);
    c.tree.cancel();
}

#[tokio::test]
async fn bad_sinks_are_refused_naming_the_field_and_nothing_is_stored() {
    let c = coordinator().await;
    for (name, body, code, says) in [
        (
            "a",
            json!({"url": "logs.example.com:514"}),
            "invalid_sink_url",
            "no scheme",
        ),
        (
            "a",
            json!({"url": "ftp://logs:21"}),
            "invalid_sink_url",
            "unknown scheme",
        ),
        (
            "a",
            json!({"url": "http://logs", "format": "syslog"}),
            "invalid_sink_url",
            "HTTP URL",
        ),
        (
            "a",
            json!({"url": "tcp://logs:601", "format": "gelf"}),
            "invalid_sink_format",
            "syslog, json_lines or otlp",
        ),
        (
            "a",
            json!({"url": "tls://logs", "ca_pem": "not a certificate"}),
            "invalid_sink_ca",
            "PEM",
        ),
        (
            "a",
            json!({"url": "tcp://logs", "ca_pem": PEM}),
            "invalid_sink_ca",
            "not tls://",
        ),
        (
            "a",
            json!({"url": "tcp://logs", "buffer_bytes": 10}),
            "invalid_sink_buffer",
            "1 MiB",
        ),
        (
            "a",
            json!({"url": "tcp://logs", "when_full": "wait"}),
            "invalid_sink_when_full",
            "drop_oldest",
        ),
        (
            "Bad_Name",
            json!({"url": "tcp://logs"}),
            "invalid_sink_name",
            "a-z",
        ),
        (
            "a",
            json!({"url": "tcp://user:pw@logs"}),
            "invalid_sink_url",
            "password",
        ),
    ] {
        let (status, err) = c
            .call(
                Method::PUT,
                &format!("/logs/sinks/{name}"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["code"], code, "{body}: {err}");
        let message = err["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    let (status, err) = c
        .call(
            Method::PUT,
            "/logs/sinks/a",
            Some(json!({"url": "tls://logs", "ca_pem": "x".repeat(300 * 1024)})),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["code"], "invalid_sink_ca");
    assert!(c.sinks().await.is_empty(), "nothing stored");
    c.tree.cancel();
}

#[tokio::test]
async fn logs_of_an_unknown_stack_or_with_bad_parameters_are_refused() {
    let c = coordinator().await;
    let (status, err) = c.call(Method::GET, "/stacks/nope/logs", None).await;
    assert_eq!(status, 404, "{err}");
    let (status, err) = c.call(Method::GET, "/stacks/nope/logs?tail=-1", None).await;
    assert_eq!(status, 400, "{err}");
    let (status, err) = c
        .call(Method::GET, "/stacks/nope/logs?colour=red", None)
        .await;
    assert_eq!(status, 400, "{err}");
    c.tree.cancel();
}
