//! The proxy on real loopback sockets with real rustls: routing, headers,
//! HTTP/2 over TLS, upgrades, bodies, timeouts, retries, draining,
//! redirects, ACME and the PROXY protocol.

use std::net::Ipv4Addr;

use http_body_util::{Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use skiff_shared::sections::ingress::{Challenge, Tls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod controller;
mod harness;
mod pool;
use harness::*;

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// Nothing listens there: connections are refused.
const REFUSED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

/// Two upstreams on one port (as two replicas of a service would be).
async fn two_upstreams(a: &'static str, b: &'static str) -> (Upstream, Upstream) {
    let ua = Upstream::start(a, A, 0).await;
    let ub = Upstream::start(b, B, ua.addr.port()).await;
    (ua, ub)
}

#[tokio::test]
async fn routes_by_domain_and_path_with_headers_rewritten() {
    let (mut web, mut api) = two_upstreams("web", "api").await;
    let port = web.addr.port();
    let s = section(
        1,
        vec![
            route("app.example.com", "/", "web", port),
            route("app.example.com", "/api", "api", port),
            route("*.example.com", "/", "api", port),
        ],
        vec![backend("web", &[A]), backend("api", &[B])],
    );
    let p = Proxy::start(&s, Vec::new()).await;

    let r = send(p.http, get("App.Example.com:80", "/index.html")).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "web"));
    let r = send(p.http, get("app.example.com", "/api/items?x=1")).await;
    assert_eq!(r.body, "api");
    let r = send(p.http, get("app.example.com", "/apix")).await;
    assert_eq!(r.body, "web", "prefixes match whole segments");
    let r = send(p.http, get("shop.example.com", "/")).await;
    assert_eq!(r.body, "api", "the wildcard");
    let r = send(p.http, get("a.b.example.com", "/")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(!r.body.is_empty());
    let connect = Request::connect("app.example.com:443")
        .body(Full::default())
        .unwrap();
    let r = send(p.http, connect).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    // What the upstream received: the X-Forwarded-* headers, no hop-by-hop ones.
    let seen = web.next().await;
    assert_eq!(seen.path, "/index.html");
    let seen = api.next().await;
    assert_eq!(seen.path, "/api/items");
    let req = Request::get("/")
        .header("host", "app.example.com")
        .header("x-forwarded-for", "198.51.100.1")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic eA==")
        .header("te", "trailers")
        .header("x-kept", "yes")
        .body(Full::default())
        .unwrap();
    let r = send(p.http, req).await;
    // Hop-by-hop headers of the answer are gone too.
    assert_eq!(r.headers["x-up-kept"], "1");
    for h in ["x-up-private", "keep-alive"] {
        assert!(!r.headers.contains_key(h), "{h} reached the client");
    }
    let _ = web.next().await; // the /apix request
    let seen = web.next().await;
    let h = &seen.headers;
    assert_eq!(h["x-forwarded-for"], "198.51.100.1, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "app.example.com");
    assert_eq!(h["host"], "app.example.com");
    assert_eq!(h["x-kept"], "yes");
    for gone in ["x-private", "keep-alive", "proxy-authorization", "te"] {
        assert!(!h.contains_key(gone), "{gone} reached the upstream: {h:?}");
    }
    let stats = p.proxy.route_stats();
    let root = stats
        .iter()
        .find(|s| s.domain == "app.example.com" && s.path == "/")
        .unwrap();
    assert_eq!(root.requests, 4, "three answered, one CONNECT refused");
    assert_eq!(root.statuses, [0, 3, 0, 1, 0]);
    assert_eq!(root.failed, 0);
}

#[tokio::test]
async fn https_chooses_the_certificate_by_sni_and_speaks_h2() {
    let (mut one, mut two) = two_upstreams("one", "two").await;
    let port = one.addr.port();
    let s = section(
        1,
        vec![
            route("one.test", "/", "one", port),
            route("two.test", "/", "two", port),
        ],
        vec![backend("one", &[A]), backend("two", &[B])],
    );
    let (k1, c1) = certificate(&["one.test"]);
    let (k2, c2) = certificate(&["*.two.test", "two.test"]);
    let p = Proxy::start(
        &s,
        vec![
            (vec!["one.test".into()], k1),
            (vec!["two.test".into(), "*.two.test".into()], k2),
        ],
    )
    .await;
    let client = tls_client(&[c1.clone(), c2.clone()], &[b"h2"]);

    for (name, cert, body) in [("one.test", &c1, "one"), ("two.test", &c2, "two")] {
        let tcp = TcpStream::connect(p.https).await.unwrap();
        let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let tls = client.connect(server_name, tcp).await.unwrap();
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(&conn.peer_certificates().unwrap()[0], cert, "{name}");
        let (mut sender, c) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(c);
        let req = Request::get(format!("https://{name}/h2"))
            .body(Full::<Bytes>::default())
            .unwrap();
        let r = read(sender.send_request(req).await.unwrap()).await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, body));
    }
    let seen = one.next().await;
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["host"], "one.test");
    let _ = two.next().await;

    // A name under the wildcard gets the wildcard's certificate.
    let tcp = TcpStream::connect(p.https).await.unwrap();
    let www = rustls::pki_types::ServerName::try_from("www.two.test".to_owned()).unwrap();
    let tls = client.connect(www, tcp).await.unwrap();
    assert_eq!(&tls.get_ref().1.peer_certificates().unwrap()[0], &c2);

    // A name with no certificate: the handshake is refused.
    let tcp = TcpStream::connect(p.https).await.unwrap();
    let other = rustls::pki_types::ServerName::try_from("three.test".to_owned()).unwrap();
    assert!(client.connect(other, tcp).await.is_err());
}

#[tokio::test]
async fn upgrades_pass_through_both_ways() {
    let (mut up, _) = two_upstreams("ws", "unused").await;
    let s = section(
        1,
        vec![route("ws.test", "/", "ws", up.addr.port())],
        vec![backend("ws", &[A])],
    );
    let p = Proxy::start(&s, Vec::new()).await;
    let mut tcp = TcpStream::connect(p.http).await.unwrap();
    tcp.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    let seen = up.next().await;
    assert_eq!(seen.headers["upgrade"], "echo");
    for msg in [&b"hello"[..], b"again"] {
        tcp.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tcp.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
}

#[tokio::test]
async fn bodies_stream_and_the_size_limit_holds() {
    let (mut up, _) = two_upstreams("big", "unused").await;
    let mut s = section(
        1,
        vec![route("big.test", "/", "big", up.addr.port())],
        vec![backend("big", &[A])],
    );
    s.settings.max_body_bytes = 4 << 20;
    let p = Proxy::start(&s, Vec::new()).await;

    // 3 MiB streamed in chunks of 64 KiB, with no length: it arrives whole.
    let stream_of = |chunks: usize| {
        let frames = (0..chunks)
            .map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![7u8; 64 << 10]))));
        StreamBody::new(futures_util::stream::iter(frames))
    };
    let stream = TcpStream::connect(p.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/upload")
        .header("host", "big.test")
        .body(stream_of(48))
        .unwrap();
    let r = read(sender.send_request(req).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.next().await.body_len, 48 << 16);

    // A length over the limit: 413 before any byte goes on.
    let req = Request::post("/upload")
        .header("host", "big.test")
        .header("content-length", (5u64 << 20).to_string())
        .body(Full::<Bytes>::default())
        .unwrap();
    let stream = TcpStream::connect(p.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let r = sender.send_request(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // A streamed body that passes the limit is cut: 413, or the
    // connection ends; the upstream never gets a whole request.
    let stream = TcpStream::connect(p.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/upload")
        .header("host", "big.test")
        .body(stream_of(80))
        .unwrap();
    if let Ok(r) = sender.send_request(req).await {
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    assert!(
        up.seen.try_recv().is_err(),
        "the cut body reached the upstream whole"
    );
}

#[tokio::test]
async fn a_slow_endpoint_gets_504_and_no_endpoint_503() {
    let (up, _) = two_upstreams("slow", "unused").await;
    let mut s = section(
        1,
        vec![
            route("slow.test", "/", "slow", up.addr.port()),
            route("none.test", "/", "none", 80),
        ],
        vec![backend("slow", &[A])],
    );
    s.settings.request_timeout_ms = 300;
    let p = Proxy::start(&s, Vec::new()).await;
    let r = send(p.http, get("slow.test", "/hang")).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    let r = send(p.http, get("none.test", "/")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let stats = p.proxy.route_stats();
    assert!(
        stats.iter().all(|s| s.failed == 1 && s.statuses[4] == 1),
        "{stats:?}"
    );
}

#[tokio::test]
async fn an_idempotent_request_is_retried_on_another_endpoint_and_a_post_is_not() {
    let (mut up, _) = two_upstreams("good", "unused").await;
    let s = section(
        1,
        vec![route("retry.test", "/", "svc", up.addr.port())],
        vec![backend("svc", &[REFUSED, A])],
    );
    // POSTs first, on a fresh pool: round robin sends one of two to the
    // refused endpoint, and that one fails.
    let p = Proxy::start(&s, Vec::new()).await;
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let req = Request::post("/form")
            .header("host", "retry.test")
            .body(Full::new(Bytes::from("a=1")))
            .unwrap();
        statuses.push(send(p.http, req).await.status);
    }
    assert!(statuses.contains(&StatusCode::BAD_GATEWAY), "{statuses:?}");
    for _ in 0..4 {
        let r = send(p.http, get("retry.test", "/read")).await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "good"));
    }
    let mut reads = 0;
    while let Ok(seen) = up.seen.try_recv() {
        reads += usize::from(seen.path == "/read");
    }
    assert_eq!(reads, 4);
}

#[tokio::test]
async fn a_removed_endpoint_gets_no_new_request_and_finishes_its_own() {
    let (mut old, mut new) = two_upstreams("old", "new").await;
    let port = old.addr.port();
    let p = Proxy::start(
        &section(
            1,
            vec![route("d.test", "/", "svc", port)],
            vec![backend("svc", &[A])],
        ),
        Vec::new(),
    )
    .await;

    // A keep-alive client connection, used across the update.
    let stream = TcpStream::connect(p.http).await.unwrap();
    let (mut keep, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let r = read(keep.send_request(get("d.test", "/before")).await.unwrap()).await;
    assert_eq!(r.body, "old");
    assert_eq!(old.next().await.path, "/before");

    let http = p.http;
    let slow = tokio::spawn(async move { send(http, get("d.test", "/slow")).await });
    assert_eq!(
        old.next().await.path,
        "/slow",
        "the slow request is in flight"
    );

    p.update(&section(
        2,
        vec![route("d.test", "/", "svc", port)],
        vec![backend("svc", &[B])],
    ));
    assert_eq!(p.proxy.generation(), 2);
    for _ in 0..5 {
        let r = send(p.http, get("d.test", "/after")).await;
        assert_eq!(r.body, "new");
    }
    let r = read(keep.send_request(get("d.test", "/kept")).await.unwrap()).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "new"),
        "the kept connection works"
    );
    assert!(
        old.seen.try_recv().is_err(),
        "the removed endpoint got a new request"
    );
    for _ in 0..6 {
        let _ = new.next().await;
    }

    old.release.notify_one();
    let r = slow.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "old"));
    // Its pooled connections were closed.
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        old.open.wait_for(|n| *n == 0),
    )
    .await
    .expect("the removed endpoint's connections were closed")
    .unwrap();
    assert!(
        *new.open.borrow() > 0,
        "the listed endpoint keeps its pooled connections"
    );
}

#[tokio::test]
async fn redirects_to_https_and_answers_acme_challenges() {
    let mut s = section(1, vec![route("r.test", "/", "svc", 80)], vec![]);
    s.routes[0].tls = Tls::Redirect;
    s.settings.https_port = 8443;
    s.challenges = vec![Challenge {
        token: "tok123".into(),
        key_authorization: "tok123.thumb".into(),
    }];
    let p = Proxy::start(&s, Vec::new()).await;
    let r = send(p.http, get("R.test", "/a/b?c=d")).await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.headers["location"], "https://r.test:8443/a/b?c=d");
    let r = send(
        p.http,
        get("any.host", "/.well-known/acme-challenge/tok123"),
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "tok123.thumb")
    );
    let r = send(p.http, get("r.test", "/.well-known/acme-challenge/other")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(p.proxy.challenge_tokens(), vec!["tok123".to_owned()]);
}

#[tokio::test]
async fn the_proxy_protocol_gives_the_client_address() {
    let (mut up, _) = two_upstreams("pp", "unused").await;
    let mut s = section(
        1,
        vec![route("pp.test", "/", "pp", up.addr.port())],
        vec![backend("pp", &[A])],
    );
    s.settings.proxy_protocol = true;
    let p = Proxy::start(&s, Vec::new()).await;
    let request = b"GET / HTTP/1.1\r\nHost: pp.test\r\nConnection: close\r\n\r\n";

    let mut v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\n".to_vec();
    v1.extend_from_slice(request);
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[
        0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 1, 0x15, 0xb3, 0, 80,
    ]);
    v2.extend_from_slice(request);
    for (header, want) in [(v1, "203.0.113.7"), (v2, "198.51.100.9")] {
        let mut tcp = TcpStream::connect(p.http).await.unwrap();
        tcp.write_all(&header).await.unwrap();
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        assert_eq!(up.next().await.headers["x-forwarded-for"], want);
    }
    // No header: the connection is closed unanswered.
    let mut tcp = TcpStream::connect(p.http).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    assert!(answer.is_empty());
}

#[tokio::test]
async fn idle_client_connections_are_closed() {
    let (up, _) = two_upstreams("idle", "unused").await;
    let mut s = section(
        1,
        vec![route("idle.test", "/", "idle", up.addr.port())],
        vec![backend("idle", &[A])],
    );
    s.settings.idle_timeout_ms = 200;
    let p = Proxy::start(&s, Vec::new()).await;
    let mut tcp = TcpStream::connect(p.http).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: idle.test\r\n\r\n")
        .await
        .unwrap();
    // The answer, then the end of the connection, with no request sent.
    let mut all = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tcp.read_to_end(&mut all),
    )
    .await
    .expect("the idle connection was closed")
    .unwrap();
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("idle"),
        "{text}"
    );
    // A connection that never sends a byte is closed too.
    let mut tcp = TcpStream::connect(p.http).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tcp.read_to_end(&mut all),
    )
    .await
    .expect("the silent connection was closed")
    .unwrap();
}

#[tokio::test]
async fn a_request_still_in_flight_when_the_drain_time_ends_is_cut() {
    let (mut old, _new) = two_upstreams("old", "new").await;
    let port = old.addr.port();
    let mut s = section(
        1,
        vec![route("d.test", "/", "svc", port)],
        vec![backend("svc", &[A])],
    );
    s.settings.drain_timeout_ms = 100;
    let p = Proxy::start(&s, Vec::new()).await;
    let http = p.http;
    let slow = tokio::spawn(async move { send(http, get("d.test", "/slow")).await });
    assert_eq!(old.next().await.path, "/slow");
    let mut next = section(
        2,
        vec![route("d.test", "/", "svc", port)],
        vec![backend("svc", &[B])],
    );
    next.settings.drain_timeout_ms = 100;
    p.update(&next);
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), slow)
        .await
        .expect("the drain cut the request")
        .unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn h2_in_clear_with_prior_knowledge() {
    let (mut up, _) = two_upstreams("h2c", "unused").await;
    let s = section(
        1,
        vec![route("h2c.test", "/", "h2c", up.addr.port())],
        vec![backend("h2c", &[A])],
    );
    let p = Proxy::start(&s, Vec::new()).await;
    let tcp = TcpStream::connect(p.http).await.unwrap();
    let (mut sender, c) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(c);
    for _ in 0..3 {
        let req = Request::get("http://h2c.test/two")
            .body(Full::<Bytes>::default())
            .unwrap();
        let r = read(sender.send_request(req).await.unwrap()).await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "h2c"));
        let seen = up.next().await;
        assert_eq!(seen.headers["host"], "h2c.test");
        assert_eq!(seen.headers["x-forwarded-host"], "h2c.test");
    }
}

#[tokio::test]
async fn an_idle_upgraded_connection_is_closed() {
    let (up, _) = two_upstreams("ws", "unused").await;
    let mut s = section(
        1,
        vec![route("ws.test", "/", "ws", up.addr.port())],
        vec![backend("ws", &[A])],
    );
    s.settings.idle_timeout_ms = 200;
    let p = Proxy::start(&s, Vec::new()).await;
    let mut tcp = TcpStream::connect(p.http).await.unwrap();
    tcp.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tcp.read_to_end(&mut all),
    )
    .await
    .expect("the idle tunnel was closed")
    .unwrap();
    assert!(
        all.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&all)
    );
}

#[tokio::test]
async fn a_large_answer_streams_back() {
    let (up, _) = two_upstreams("big", "unused").await;
    let s = section(
        1,
        vec![route("big.test", "/", "big", up.addr.port())],
        vec![backend("big", &[A])],
    );
    let p = Proxy::start(&s, Vec::new()).await;
    let r = send(p.http, get("big.test", "/big")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 6 << 20);
}

/// A log writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_access_log_has_one_line_per_request_and_no_header_values_or_bodies() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let (mut up, _) = two_upstreams("logged", "unused").await;
    let s = section(
        1,
        vec![route("log.test", "/", "logged", up.addr.port())],
        vec![backend("logged", &[A])],
    );
    let p = Proxy::start(&s, Vec::new()).await;
    let req = Request::post("/orders?id=7")
        .header("host", "log.test")
        .header("authorization", "Bearer SECRET-TOKEN")
        .header("cookie", "session=SECRET-COOKIE")
        .body(Full::new(Bytes::from("SECRET-BODY")))
        .unwrap();
    assert_eq!(send(p.http, req).await.status, StatusCode::OK);
    assert_eq!(up.next().await.body_len, 11);
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("skiff::access"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    for want in [
        "method=POST",
        "host=log.test",
        "path=/orders",
        "status=200",
        "upstream=127.0.0.2:",
        "duration_ms=",
    ] {
        assert!(lines[0].contains(want), "{want} missing: {}", lines[0]);
    }
    assert!(!text.contains("SECRET"), "{text}");
}

#[tokio::test]
async fn websockets_echo_through_the_proxy() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let (mut up, _) = two_upstreams("ws", "unused").await;
    let s = section(
        1,
        vec![route("ws.test", "/", "ws", up.addr.port())],
        vec![backend("ws", &[A])],
    );
    let p = Proxy::start(&s, Vec::new()).await;
    let tcp = TcpStream::connect(p.http).await.unwrap();
    let (mut ws, answer) = tokio_tungstenite::client_async("ws://ws.test/ws", tcp)
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SWITCHING_PROTOCOLS);
    let seen = up.next().await;
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert!(seen.headers.contains_key("sec-websocket-key"));
    for text in ["hello", "again"] {
        ws.send(Message::text(text)).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn connections_past_the_cap_wait_for_a_free_place() {
    let (mut up, _) = two_upstreams("cap", "unused").await;
    let s = section(
        1,
        vec![route("cap.test", "/", "cap", up.addr.port())],
        vec![backend("cap", &[A])],
    );
    let p = Proxy::start_capped(&s, Vec::new(), 1).await;
    let stream = TcpStream::connect(p.http).await.unwrap();
    let (mut first, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let first_conn = tokio::spawn(conn);
    let r = read(first.send_request(get("cap.test", "/one")).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.next().await.path, "/one");

    // A second connection, its request written: the kernel took it, the
    // proxy does not serve it while the first is open. (Were the cap
    // broken, its request would race the first connection's next one.)
    let mut second = TcpStream::connect(p.http).await.unwrap();
    second
        .write_all(b"GET /two HTTP/1.1\r\nHost: cap.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let r = read(first.send_request(get("cap.test", "/again")).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        up.next().await.path,
        "/again",
        "the second connection waits"
    );
    assert!(
        up.seen.try_recv().is_err(),
        "the second connection was served past the cap"
    );

    // The first closes: the second is served.
    drop(first);
    let _ = first_conn.await;
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        second.read_to_end(&mut answer),
    )
    .await
    .expect("the waiting connection was served")
    .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(up.next().await.path, "/two");
}

/// An endpoint that answers in HTTP/1.0 and closes (busybox httpd does)
/// does not end the client's keep-alive connection: the answer goes back
/// as HTTP/1.1 and the next request on the same connection is served.
#[tokio::test]
async fn an_http_1_0_endpoint_keeps_the_client_connection_alive() {
    let ip = Ipv4Addr::new(127, 0, 0, 91);
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                s.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold\n")
                    .await
                    .unwrap();
            });
        }
    });
    let section = section(
        1,
        vec![route("old.example.com", "/", "old", port)],
        vec![backend("old", &[ip])],
    );
    let proxy = Proxy::start(&section, Vec::new()).await;
    let stream = TcpStream::connect(proxy.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        sender
            .ready()
            .await
            .expect("the client connection stays open");
        let a = read(
            sender
                .send_request(get("old.example.com", "/"))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "old\n"));
    }
}
