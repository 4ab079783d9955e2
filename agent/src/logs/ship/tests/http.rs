//! JSON lines and OTLP to a small hyper receiver of the test's own, which
//! refuses the first requests to show they are sent again.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use skiff_shared::sections::logs::SinkFormat;
use skiff_shared::tasks::TaskTree;

use super::{records, section, source, spec, until};
use crate::logs::record::Sinks as _;
use crate::logs::ship::Shipping;

#[derive(Debug, Clone)]
struct Request {
    path: String,
    content_type: String,
    body: Vec<u8>,
}

/// Answers `refusal` (503) to the first `refuse` requests, then 200; keeps what the
/// 200s took.
struct Receiver {
    port: u16,
    taken: Arc<Mutex<Vec<Request>>>,
    refused: Arc<AtomicUsize>,
}

async fn receiver(refuse: usize, tree: &TaskTree) -> Receiver {
    receiver_answering(refuse, 503, tree).await
}

async fn receiver_answering(refuse: usize, refusal: u16, tree: &TaskTree) -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let taken = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let (t, r, stop) = (taken.clone(), refused.clone(), tree.clone());
    tree.spawn("test-http-receiver", async move {
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => accepted.unwrap(),
                () = stop.cancelled() => return,
            };
            let (t, r) = (t.clone(), r.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (t, r) = (t.clone(), r.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            let content_type = req
                                .headers()
                                .get(hyper::header::CONTENT_TYPE)
                                .map(|v| v.to_str().unwrap().to_owned())
                                .unwrap_or_default();
                            let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                            let status = if r.fetch_add(1, Ordering::SeqCst) < refuse {
                                refusal
                            } else {
                                r.fetch_sub(1, Ordering::SeqCst);
                                t.lock().unwrap().push(Request {
                                    path,
                                    content_type,
                                    body,
                                });
                                200
                            };
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(
                                        b"no field 'line' expected",
                                    )))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Receiver {
        port,
        taken,
        refused,
    }
}

impl Receiver {
    fn requests(&self) -> Vec<Request> {
        self.taken.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_arrive_once_the_receiver_takes_them_with_every_field() {
    let tree = TaskTree::root();
    let rx = receiver(2, &tree).await;
    let dir = tempfile::tempdir().unwrap();
    let shipping = Shipping::new(dir.path(), &tree);
    let url = format!("http://127.0.0.1:{}/ingest?tenant=a", rx.port);
    shipping
        .configure(&section(vec![spec("lines", &url, SinkFormat::JsonLines)]))
        .await;
    let src = source("web", "api", 3);
    shipping.push(records(&src, 0, 1500)).await;
    let seqs = || -> BTreeSet<u64> {
        rx.requests()
            .iter()
            .flat_map(|r| {
                String::from_utf8(r.body.clone())
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                    .collect::<Vec<_>>()
            })
            .map(|v| {
                v["line"].as_str().unwrap().split(' ').next().unwrap()[4..]
                    .parse::<u64>()
                    .unwrap()
            })
            .collect()
    };
    until(30, "every line arrives", || seqs().len() == 1500).await;
    assert_eq!(seqs(), (0..1500).collect());
    assert_eq!(
        rx.refused.load(Ordering::SeqCst),
        2,
        "the refused batches were sent again"
    );
    let first = &rx.requests()[0];
    assert_eq!(first.path, "/ingest");
    assert_eq!(first.content_type, "application/x-ndjson");
    assert!(
        rx.requests()
            .iter()
            .all(|r| r.body.iter().filter(|b| **b == b'\n').count() <= 1000)
    );
    let line: serde_json::Value = serde_json::from_str(
        String::from_utf8(first.body.clone())
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    for (key, want) in [
        ("host", serde_json::json!("host-1")),
        ("stack", serde_json::json!("web")),
        ("service", serde_json::json!("api")),
        ("replica", serde_json::json!(3)),
        ("release", serde_json::json!(7)),
        ("stream", serde_json::json!("stdout")),
        ("container", serde_json::json!("web.api.3")),
    ] {
        assert_eq!(line[key], want, "{key} in {line}");
    }
    assert!(line["ts"].as_str().unwrap().ends_with('Z'));
    let status = &shipping.statuses()[0];
    assert_eq!((status.delivered, status.buffered_lines), (1500, 0));
    assert!(status.healthy && status.error.is_none(), "{status:?}");
    tree.cancel();
    tree.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_logs_arrive_in_the_otlp_json_shape() {
    let tree = TaskTree::root();
    let rx = receiver(0, &tree).await;
    let dir = tempfile::tempdir().unwrap();
    let shipping = Shipping::new(dir.path(), &tree);
    let url = format!("http://127.0.0.1:{}", rx.port);
    shipping
        .configure(&section(vec![spec("otel", &url, SinkFormat::Otlp)]))
        .await;
    let src = source("web", "worker", 1);
    shipping.push(records(&src, 0, 10)).await;
    until(20, "the lines arrive", || !rx.requests().is_empty()).await;
    let req = &rx.requests()[0];
    assert_eq!(req.path, "/v1/logs");
    assert_eq!(req.content_type, "application/json");
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    let rl = &body["resourceLogs"][0];
    assert_eq!(rl["resource"]["attributes"][0]["key"], "host.name");
    let logs = rl["scopeLogs"][0]["logRecords"].as_array().unwrap();
    assert_eq!(logs.len(), 10);
    assert!(
        logs[0]["timeUnixNano"].is_string(),
        "64-bit integers are strings"
    );
    assert_eq!(logs[0]["severityText"], "INFO");
    assert!(
        logs[0]["body"]["stringValue"]
            .as_str()
            .unwrap()
            .starts_with("seq=0 ")
    );
    let keys: Vec<&str> = logs[0]["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["key"].as_str().unwrap())
        .collect();
    for key in ["stack", "service", "replica", "release", "stream"] {
        assert!(keys.contains(&key), "{key} in {keys:?}");
    }
    tree.cancel();
    tree.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_refuses_the_lines_is_named_with_the_fix_and_the_lines_stay_buffered() {
    let tree = TaskTree::root();
    let rx = receiver_answering(usize::MAX, 400, &tree).await;
    let dir = tempfile::tempdir().unwrap();
    let shipping = Shipping::new(dir.path(), &tree);
    let url = format!("http://127.0.0.1:{}/bulk", rx.port);
    shipping
        .configure(&section(vec![spec("picky", &url, SinkFormat::JsonLines)]))
        .await;
    shipping
        .push(records(&source("web", "api", 1), 0, 10))
        .await;
    until(20, "the sink reports the refusal", || {
        shipping.statuses()[0].error.is_some()
    })
    .await;
    let s = &shipping.statuses()[0];
    assert_eq!(
        s.error.as_deref().unwrap(),
        format!(
            "http://127.0.0.1:{}/bulk: the receiver answered 400 Bad Request no field 'line' expected: \
             the receiver refused the lines; check its format settings",
            rx.port
        )
    );
    assert!(!s.healthy);
    assert_eq!(
        (s.delivered, s.buffered_lines, s.dropped),
        (0, 10, 0),
        "kept, not dropped"
    );
    tree.cancel();
    tree.wait().await;
}
