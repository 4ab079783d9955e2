//! Bounded listeners: idle, slow and oversized clients are closed at their
//! deadlines on both ports while the cluster keeps working; oversized
//! bodies get 413 and oversized heads 431; refused joins and link
//! handshakes are throttled and logged once per source and window, and
//! every one is counted.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls::pki_types::{CertificateDer, ServerName};
use skiff_api_types::{ClusterView, NodeStatus};
use skiff_cli::client::Method;
use skiff_tests::cluster::{Agent, Coordinator, CoordinatorOptions};
use skiff_tests::{ListenerLimits, launch_cluster, wait_until};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// Any connection a test client holds.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Conn = Box<dyn Io>;

/// How long a test waits for the server to close a connection whose
/// deadline is a few seconds (15 s for a TLS handshake): generous.
const CLOSE_BOUND: Duration = Duration::from_secs(60);
/// How often a trickling client sends its next byte.
const TRICKLE_EVERY: Duration = Duration::from_secs(1);

/// Short deadlines and small caps, so that tests see them at work.
fn short_limits() -> ListenerLimits {
    ListenerLimits {
        header_timeout: Some(Duration::from_secs(2)),
        body_timeout: Some(Duration::from_secs(2)),
        idle_timeout: Some(Duration::from_secs(3)),
        request_timeout: Some(Duration::from_secs(6)),
        api_max_connections: Some(16),
        agent_max_connections: Some(64),
        max_connections_per_source: Some(8),
        ..ListenerLimits::default()
    }
}

/// `127.0.0.N`: a loopback address to connect from, a source of its own.
fn local(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

async fn tcp_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

fn ca_of(coord: &Coordinator) -> CertificateDer<'static> {
    let pem = std::fs::read_to_string(coord.data_dir().join("ca.crt")).unwrap();
    skiff_shared::tls::certs_from_pem(&pem, "ca")
        .unwrap()
        .remove(0)
}

fn tls_client(ca: CertificateDer<'static>, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(skiff_shared::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// TLS to the agent port's public endpoints, from `from`.
async fn public_tls(ca: CertificateDer<'static>, port: SocketAddr, from: IpAddr) -> Conn {
    let tcp = tcp_from(from, port).await;
    let tls = tls_client(ca, b"http/1.1")
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    Box::new(tls)
}

/// What a misbehaving client does.
#[derive(Debug, Clone, Copy)]
enum Attack {
    /// Sends nothing.
    Idle,
    /// Sends one request, reads the answer, then nothing.
    IdleAfterRequest,
    /// Sends a head declaring a 10 GB body, and no body.
    HugeBody,
    /// Sends a head one byte at a time.
    TrickleHead,
    /// Sends a head declaring 100 bytes of body, then the body one byte
    /// at a time.
    TrickleBody,
}

/// Runs `attack` on `conn` (`post` is a path that reads a body, with the
/// headers it needs) until the server closes the connection; fails if it
/// does not within [`CLOSE_BOUND`]. Returns what the server answered.
async fn until_closed(mut conn: Conn, attack: Attack, post: &str) -> String {
    let (upfront, trickle): (String, &[u8]) = match attack {
        Attack::Idle => (String::new(), b""),
        Attack::IdleAfterRequest => ("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n".into(), b""),
        Attack::HugeBody => (
            format!("POST {post}Content-Length: 10000000000\r\n\r\n"),
            b"",
        ),
        Attack::TrickleHead => (String::new(), b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"),
        Attack::TrickleBody => (format!("POST {post}Content-Length: 100\r\n\r\n"), b"x"),
    };
    let _ = conn.write_all(upfront.as_bytes()).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut next = trickle.iter().cycle();
    let mut tick = tokio::time::interval(TRICKLE_EVERY);
    let deadline = Instant::now() + CLOSE_BOUND;
    loop {
        tokio::select! {
            r = conn.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            },
            _ = tick.tick(), if !trickle.is_empty() => {
                if let Some(b) = next.next()
                    && conn.write_all(&[*b]).await.is_err()
                {
                    break;
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                panic!("{attack:?} ({post:?}) was not closed within {CLOSE_BOUND:?}")
            }
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Checks what the server answered a client that did `attack`.
fn check_answer(attack: Attack, answer: &str, port: &str) {
    match attack {
        Attack::HugeBody => assert!(
            answer.starts_with("HTTP/1.1 413") && answer.contains("too_large"),
            "{port}: a 10 GB body is refused before it is read: {answer:?}"
        ),
        Attack::IdleAfterRequest => assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{port}: the request before the idle spell was answered: {answer:?}"
        ),
        // Closed at the deadline, without an answer.
        _ => assert!(answer.is_empty(), "{port} {attack:?}: {answer:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_slow_and_oversized_clients_are_closed_while_the_cluster_keeps_working() {
    let cluster = launch_cluster(
        1,
        CoordinatorOptions {
            limits: short_limits(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let coord = &cluster.coordinator;
    let bystander = cluster.agents[0].node_id();
    let since = coord.node(&bystander).await.unwrap().connected_since;
    let ca = ca_of(coord);
    let (api, agent_port) = (coord.api, coord.agent);
    let api_post = format!(
        "/api/v1/tokens/join HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n",
        coord.admin_token()
    );
    let join_post = "/v1/join HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n".to_owned();

    let mut attacks = Vec::new();
    // The API: more idle connections than its cap (16), and the rest.
    let api_attacks = std::iter::repeat_n(Attack::Idle, 24).chain(
        [
            Attack::IdleAfterRequest,
            Attack::HugeBody,
            Attack::TrickleHead,
            Attack::TrickleBody,
        ]
        .into_iter()
        .flat_map(|a| std::iter::repeat_n(a, 3)),
    );
    for attack in api_attacks {
        let post = api_post.clone();
        attacks.push(tokio::spawn(async move {
            let conn: Conn = Box::new(tcp_from(local(1), api).await);
            let answer = until_closed(conn, attack, &post).await;
            check_answer(attack, &answer, "api");
        }));
    }
    // The agent port, after TLS, from three sources (at most 8 each).
    let public_attacks = [
        (2, Attack::Idle),
        (2, Attack::IdleAfterRequest),
        (3, Attack::HugeBody),
        (3, Attack::TrickleHead),
        (4, Attack::TrickleBody),
    ];
    for (from, attack) in public_attacks {
        for _ in 0..3 {
            let (ca, post) = (ca.clone(), join_post.clone());
            attacks.push(tokio::spawn(async move {
                let conn = public_tls(ca, agent_port, local(from)).await;
                let answer = until_closed(conn, attack, &post).await;
                check_answer(attack, &answer, "agent port");
            }));
        }
    }
    // Raw TCP that never starts TLS: 12 from one source whose cap is 8.
    for _ in 0..12 {
        attacks.push(tokio::spawn(async move {
            let conn: Conn = Box::new(tcp_from(local(5), agent_port).await);
            until_closed(conn, Attack::Idle, "").await;
        }));
    }

    // Meanwhile the CLI answers, and a new server joins and connects.
    let dir = tempfile::tempdir().unwrap();
    let out = cluster.skiff(dir.path(), &["node", "ls"], None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("node-0"));
    let token = coord.create_token(1, None).await.unwrap().token;
    let mut late = Agent::join(coord, &token, "late", &[]).await.unwrap();
    late.start().unwrap();
    coord
        .wait_node(
            &late.node_id(),
            NodeStatus::Connected,
            Duration::from_secs(30),
        )
        .await
        .unwrap();

    for attack in attacks {
        attack.await.unwrap();
    }
    let node = coord.node(&bystander).await.unwrap();
    assert_eq!(node.status, NodeStatus::Connected);
    assert_eq!(
        node.connected_since, since,
        "the agent's own link outlived every deadline"
    );
    let log = coord.log();
    assert!(
        log.lines()
            .any(|l| l.contains("max_connections_per_source") && l.contains("127.0.0.5")),
        "connections over the per-source cap are closed and logged:\n{log}"
    );
}

/// Sends `request` from `from` and reads the answer to its end.
async fn exchange(mut conn: Conn, request: &[u8]) -> String {
    conn.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(CLOSE_BOUND, conn.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_get_413_and_oversized_heads_431_on_both_ports() {
    let coord = Coordinator::launch(CoordinatorOptions {
        limits: ListenerLimits {
            api_max_body_bytes: Some(4096),
            max_header_bytes: Some(4096),
            ..ListenerLimits::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let ca = ca_of(&coord);
    let api = || async { Box::new(tcp_from(local(1), coord.api).await) as Conn };
    let public = || public_tls(ca.clone(), coord.agent, local(1));
    let auth = format!("Authorization: Bearer {}\r\n", coord.admin_token());
    let post = |path: &str, headers: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(5000));

    // Declared too large: refused before a byte of the body is read.
    let head_only = "POST /api/v1/tokens/join HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n";
    let answer = exchange(api().await, head_only.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"code\":\"too_large\""), "{answer}");
    let head_only = "POST /v1/join HTTP/1.1\r\nHost: t\r\nContent-Length: 70000\r\n\r\n";
    let answer = exchange(public().await, head_only.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"code\":\"too_large\""), "{answer}");

    // Sent in full with its length: the same.
    let answer = exchange(
        api().await,
        post("/api/v1/tokens/join", &auth, &big).as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Chunked, so only reading it shows it is too large: 413 all the same.
    let chunked = format!(
        "POST /api/v1/tokens/join HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let answer = exchange(api().await, chunked.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"code\":\"too_large\""), "{answer}");

    // Malformed JSON under the limit stays a 400.
    let answer = exchange(
        api().await,
        post("/api/v1/tokens/join", &auth, "{not json").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"code\":\"invalid_request\""), "{answer}");

    // A head over 4 KiB: 431 on both ports.
    let fat_head = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        "y".repeat(6000)
    );
    for conn in [api().await, public().await] {
        let answer = exchange(conn, fat_head.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    }
    // Both ports still serve well-formed requests.
    let answer = exchange(
        public().await,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    coord.nodes().await.unwrap();
}

/// Sends `n` bogus joins from `from` over keep-alive connections; returns
/// the statuses answered.
async fn bogus_joins(coord: &Coordinator, from: IpAddr, n: usize) -> Vec<u16> {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr_pem = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let body = serde_json::to_vec(&skiff_shared::join::JoinRequest {
        token_id: "bogus".into(),
        secret: "not-the-secret".into(),
        csr_pem,
        name: "intruder".into(),
        labels: Default::default(),
        facts: Default::default(),
    })
    .unwrap();
    let ca = ca_of(coord);
    let mut statuses = Vec::new();
    let mut sender = None;
    while statuses.len() < n {
        let s = match sender.as_mut() {
            Some(s) => s,
            None => {
                let tls = public_tls(ca.clone(), coord.agent, from).await;
                let (s, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                sender.insert(s)
            }
        };
        let req = hyper::Request::post(skiff_shared::join::JOIN_PATH)
            .header("host", "t")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        match s.send_request(req).await {
            Ok(resp) => {
                statuses.push(resp.status().as_u16());
                let _ = resp.into_body().collect().await;
            }
            // Closed (a deadline, say): a new connection.
            Err(_) => sender = None,
        }
    }
    statuses
}

/// Opens `n` link handshakes without a client certificate from `from`.
async fn bogus_links(coord: &Coordinator, from: IpAddr, n: usize) {
    let connector = tls_client(ca_of(coord), skiff_shared::protocol::ALPN_LINK);
    for _ in 0..n {
        let tcp = tcp_from(from, coord.agent).await;
        if let Ok(mut tls) = connector
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
        {
            // The server's refusal arrives after the client's side is done.
            let mut buf = [0u8; 64];
            let _ = tokio::time::timeout(CLOSE_BOUND, tls.read(&mut buf)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_joins_and_handshakes_are_throttled_logged_per_source_and_all_counted() {
    let mut coord = Coordinator::launch(CoordinatorOptions::default())
        .await
        .unwrap();
    let counters = || async {
        let view: ClusterView = coord
            .client()
            .call(Method::GET, "/cluster", None::<&()>)
            .await
            .unwrap();
        view.link
    };
    let before = counters().await;

    let statuses = bogus_joins(&coord, local(7), 1000).await;
    assert!(
        statuses.iter().all(|s| [403, 429].contains(s)),
        "every bogus join is refused: {statuses:?}"
    );
    assert_eq!(statuses[0], 403, "the first refusals are the token's");
    assert!(
        statuses.contains(&429),
        "a source past its allowance is throttled"
    );
    bogus_links(&coord, local(8), 100).await;
    wait_until(
        "every refusal to be counted",
        Duration::from_secs(20),
        || async {
            let now = counters().await;
            now.joins_refused_total == before.joins_refused_total + 1000
                && now.tls_refused_total == before.tls_refused_total + 100
        },
    )
    .await
    .unwrap();

    // Stopping sums up the windows still open.
    coord.stop().await.unwrap();
    let log = coord.log();
    let warnings = |word: &str| {
        log.lines()
            .filter(|l| l.contains(" WARN ") && l.to_lowercase().contains(word))
            .count()
    };
    assert!(
        warnings("join") <= 4,
        "a handful of lines for 1000 refused joins:\n{log}"
    );
    assert!(
        warnings("handshake") <= 4,
        "a handful of lines for 100 refused handshakes:\n{log}"
    );
    assert!(log.contains("Join refused."), "{log}");
    assert!(log.contains("joins from 127.0.0.7 in the last"), "{log}");
    assert!(
        log.contains("agent link TLS handshakes from 127.0.0.8 in the last"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_stream_outlives_the_idle_and_head_deadlines() {
    let coord = Coordinator::launch(CoordinatorOptions {
        limits: short_limits(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut events = tcp_from(local(1), coord.api).await;
    let request = format!(
        "GET /api/v1/events?follow=true HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n",
        coord.admin_token()
    );
    events.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
        let n = events.read(&mut buf).await.unwrap();
        assert!(n > 0, "the event stream was closed before it started");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    // Connections opened after it reach their head and idle deadlines...
    for attack in [Attack::Idle, Attack::IdleAfterRequest] {
        let conn: Conn = Box::new(tcp_from(local(1), coord.api).await);
        until_closed(conn, attack, "").await;
    }
    // ...and the stream still follows.
    let token = coord.create_token(1, None).await.unwrap().token;
    let agent = Agent::join(&coord, &token, "short-lived", &[])
        .await
        .unwrap();
    let _: skiff_api_types::NodeView = coord
        .client()
        .call(
            Method::DELETE,
            &format!("/nodes/{}", agent.node_id()),
            None::<&()>,
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&seen).contains("node_removed") {
        let n = tokio::time::timeout_at(deadline, events.read(&mut buf))
            .await
            .expect("the removal arrives on the stream")
            .unwrap();
        assert!(n > 0, "the event stream was closed");
        seen.extend_from_slice(&buf[..n]);
    }
}

/// Whether the server has closed `conn` (it reads the end or an error).
async fn wait_closed(mut conn: TcpStream) {
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(CLOSE_BOUND, async {
        while let Ok(n) = conn.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "not closed within {CLOSE_BOUND:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_file_descriptors_the_agent_port_backs_off_and_says_so_once() {
    let coord = Coordinator::launch(CoordinatorOptions {
        process: skiff_tests::ProcessOptions {
            open_files: Some(64),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    // More connections than the process can open files, from four sources
    // (under the per-source cap), none of which starts TLS: each is held
    // until the handshake deadline.
    let mut held = Vec::new();
    for i in 0..80u8 {
        held.push(tcp_from(local(10 + i % 4), coord.agent).await);
    }
    let accept_failures = || {
        coord
            .log()
            .lines()
            .filter(|l| l.contains(" WARN ") && l.contains("Accepting") && l.contains("fail"))
            .count()
    };
    wait_until("accepting to fail", Duration::from_secs(30), || async {
        accept_failures() > 0
    })
    .await
    .unwrap();
    // The coordinator closes them all at the deadline, accepting the rest
    // as files free up.
    for conn in held {
        wait_closed(conn).await;
    }
    let log = coord.log();
    assert!(
        accept_failures() <= 2,
        "one line for the streak, not one per attempt:\n{log}"
    );
    assert!(
        log.contains("Accepting connections works again after"),
        "{log}"
    );
    assert!(
        log.contains("The open file limit is below what the connection caps allow"),
        "{log}"
    );
    // And it serves again.
    coord.nodes().await.unwrap();
    let public = public_tls(ca_of(&coord), coord.agent, local(1)).await;
    let answer = exchange(
        public,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
