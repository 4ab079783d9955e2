//! Logs through the coordinator, with a raw agent standing in for the
//! logs controller: `GET /stacks/{name}/logs` asks the host over the link
//! and streams its answer as JSON lines; a reader that leaves gets its
//! query cancelled on the host; a stack's own sinks (`x-skiff.logs`)
//! follow its releases, rollbacks included. (Real agents and real
//! receivers come with the agent's logs controller.)

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use serde_json::json;
use skiff_api_types::{LogEntry, SinkView};
use skiff_cli::client::Method;
use skiff_shared::protocol::{
    self, Ack, AgentMessage, CoordinatorMessage, Heartbeat, Hello, LINK_PATH, PROTOCOL_VERSION,
    SectionMessage,
};
use skiff_shared::sections::logs::{LogChunk, LogLine, LogQuery, Stream};
use skiff_tests::cluster::{Agent, Coordinator, CoordinatorOptions};
use skiff_tests::wait_until;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// What the raw agent saw.
#[derive(Debug)]
enum Seen {
    Query(u64, LogQuery),
    Cancel(u64),
}

/// A link that says it runs containers and logs, acknowledges plans,
/// answers heartbeats, reports what it is asked and sends what it is
/// given as answers.
async fn raw_agent(
    agent: &Agent,
) -> (
    mpsc::UnboundedReceiver<Seen>,
    mpsc::UnboundedSender<(u64, LogChunk)>,
) {
    let id = skiff_agent::identity::Identity::load(&agent.data_dir()).unwrap();
    let (chain, key) = id.client_cert().unwrap();
    let config = skiff_shared::tls::link_client_config(id.ca.clone(), chain, key).unwrap();
    let tcp = tokio::net::TcpStream::connect(agent.proxy.addr())
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("wss://{}{LINK_PATH}", agent.proxy.addr()), tls)
            .await
            .unwrap();
    let hello = AgentMessage::Hello(Box::new(Hello {
        protocol_versions: vec![PROTOCOL_VERSION],
        agent_version: "raw".into(),
        capabilities: vec!["containers.v1".into(), "logs.v1".into()],
        facts: Default::default(),
        plan_generation: None,
    }));
    ws.send(Message::text(protocol::encode(1, None, &hello).unwrap()))
        .await
        .unwrap();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let (answer, mut answers) = mpsc::unbounded_channel::<(u64, LogChunk)>();
    tokio::spawn(async move {
        let mut next = 1u64;
        loop {
            let (re, body) = tokio::select! {
                msg = ws.next() => {
                    let Some(Ok(Message::Text(t))) = msg else { break };
                    let env: protocol::Envelope<CoordinatorMessage> =
                        protocol::decode(t.as_str()).unwrap();
                    match env.body {
                        CoordinatorMessage::Heartbeat(_) => (None, AgentMessage::Heartbeat(Heartbeat { sent_at_ms: 0 })),
                        CoordinatorMessage::Plan(_) => (Some(env.id), AgentMessage::Ack(Ack::ok())),
                        CoordinatorMessage::Query(q) => {
                            assert_eq!(q.section, "logs");
                            let query: LogQuery = serde_json::from_value(q.body).unwrap();
                            let _ = seen_tx.send(Seen::Query(env.id, query));
                            continue;
                        }
                        CoordinatorMessage::Cancel { query } => {
                            let _ = seen_tx.send(Seen::Cancel(query));
                            continue;
                        }
                        _ => continue,
                    }
                }
                Some((query, chunk)) = answers.recv() => (
                    Some(query),
                    AgentMessage::Answer(SectionMessage {
                        section: "logs".into(),
                        body: serde_json::to_value(chunk).unwrap(),
                    }),
                ),
            };
            next += 1;
            if ws
                .send(Message::text(protocol::encode(next, re, &body).unwrap()))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    (seen, answer)
}

fn line(ts_ns: i64, slot: u32, text: &str) -> LogLine {
    LogLine {
        ts_ns,
        stream: Stream::Stdout,
        service: "web".into(),
        slot,
        release: 1,
        line: text.into(),
    }
}

const STACK: &str =
    "services:\n  web:\n    image: skiff-test/busybox:1\n    deploy:\n      replicas: 2\n";

async fn deploy(coord: &Coordinator, compose: &str) {
    let _: serde_json::Value = coord
        .client()
        .call(
            Method::POST,
            "/stacks/shop/deploy",
            Some(&json!({"compose": compose})),
        )
        .await
        .unwrap();
}

/// The next thing the raw agent saw; a reader that left is noticed by
/// the coordinator at the latest when its stream's keep-alive line fails
/// (30 s), so this waits up to a minute.
async fn next_seen(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(60), seen.recv())
        .await
        .expect("the raw agent saw nothing in 60s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_stream_from_the_host_and_a_reader_that_leaves_cancels_its_query() {
    let coord = Coordinator::launch(CoordinatorOptions::default())
        .await
        .unwrap();
    let token = coord.create_token(1, None).await.unwrap().token;
    let raw = Agent::join(&coord, &token, "raw", &[]).await.unwrap();
    let (mut seen, answer) = raw_agent(&raw).await;
    wait_until(
        "the raw node is connected",
        Duration::from_secs(30),
        || async {
            coord
                .client()
                .call::<Vec<skiff_api_types::NodeView>>(Method::GET, "/nodes", None::<&()>)
                .await
                .is_ok_and(|n| {
                    n.iter()
                        .any(|n| n.status == skiff_api_types::NodeStatus::Connected)
                })
        },
    )
    .await
    .unwrap();
    deploy(&coord, STACK).await;

    // The history, then a live line; the reader stops after it.
    let client = coord.client();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        client
            .follow_lines(
                "/stacks/shop/logs?follow=true&tail=10&service=web",
                |text| {
                    let e: LogEntry = serde_json::from_str(text).unwrap();
                    let live = e.line.as_deref() == Some("live");
                    got.push(e);
                    !live
                },
            )
            .await
            .unwrap();
        got
    });
    let Seen::Query(query, asked) = next_seen(&mut seen).await else {
        panic!("expected a query");
    };
    assert_eq!(asked.stack, "shop");
    assert_eq!(asked.service.as_deref(), Some("web"));
    assert_eq!(asked.tail, Some(10));
    assert!(asked.follow);
    answer
        .send((
            query,
            LogChunk {
                lines: vec![line(2, 2, "second"), line(1, 1, "first")],
                history_done: true,
                ..LogChunk::default()
            },
        ))
        .unwrap();
    answer
        .send((
            query,
            LogChunk {
                lines: vec![line(3, 1, "live")],
                ..LogChunk::default()
            },
        ))
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .unwrap()
        .unwrap();
    let lines: Vec<(&str, Option<u32>, &str)> = got
        .iter()
        .map(|e| (e.host.as_str(), e.slot, e.line.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        lines,
        [
            ("raw", Some(1), "first"),
            ("raw", Some(2), "second"),
            ("raw", Some(1), "live")
        ],
        "the history in time order, then the live line, each with its host and replica"
    );
    // The reader left: the host is told to stop.
    match next_seen(&mut seen).await {
        Seen::Cancel(q) => assert_eq!(q, query),
        other => panic!("expected the query cancelled, got {other:?}"),
    }

    // A host with no history in time gets a notice, without follow.
    let out = coord
        .client()
        .raw(
            Method::GET,
            "/api/v1/stacks/shop/logs?since=1h",
            None::<&()>,
        )
        .await
        .unwrap();
    assert_eq!(out.0.as_u16(), 200);
    let Seen::Query(_, asked) = next_seen(&mut seen).await else {
        panic!("expected a query");
    };
    assert!(asked.since_ns.is_some() && !asked.follow);
    let text = String::from_utf8_lossy(&out.1).into_owned();
    assert!(text.contains("sent no history within 10s"), "{text}");

    // Bad parameters are refused with the fix.
    let (status, body) = coord
        .client()
        .raw(
            Method::GET,
            "/api/v1/stacks/shop/logs?since=yesterday",
            None::<&()>,
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 400);
    assert!(String::from_utf8_lossy(&body).contains("10m"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stacks_own_sinks_follow_its_releases() {
    let coord = Coordinator::launch(CoordinatorOptions::default())
        .await
        .unwrap();
    let token = coord.create_token(1, None).await.unwrap().token;
    let raw = Agent::join(&coord, &token, "raw", &[]).await.unwrap();
    let (_seen, _answer) = raw_agent(&raw).await;
    let own = format!(
        "x-skiff:\n  logs:\n    sinks:\n      - {{name: shop-logs, url: \"udp://127.0.0.1:5514\", format: syslog}}\n{STACK}"
    );
    let sinks = || async {
        coord
            .client()
            .call::<Vec<SinkView>>(Method::GET, "/logs/sinks", None::<&()>)
            .await
            .unwrap()
    };
    wait_until(
        "the raw node is connected",
        Duration::from_secs(30),
        || async {
            coord
                .client()
                .call::<Vec<skiff_api_types::NodeView>>(Method::GET, "/nodes", None::<&()>)
                .await
                .is_ok_and(|n| {
                    n.iter()
                        .any(|n| n.status == skiff_api_types::NodeStatus::Connected)
                })
        },
    )
    .await
    .unwrap();
    deploy(&coord, &own).await;
    let list = sinks().await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].stack.as_deref(), Some("shop"));
    assert_eq!(list[0].name, "shop-logs");

    deploy(&coord, STACK).await;
    assert!(
        sinks().await.is_empty(),
        "release 2 names no sinks of its own"
    );

    let _: serde_json::Value = coord
        .client()
        .call(
            Method::POST,
            "/stacks/shop/rollback",
            Some(&json!({"to": 1})),
        )
        .await
        .unwrap();
    let list = sinks().await;
    assert_eq!(
        list.len(),
        1,
        "the rollback brings release 1's sinks back: {list:?}"
    );
}
