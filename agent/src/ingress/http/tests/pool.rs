//! The pool of endpoint connections: kept alive across requests, and an
//! endpoint closing an idle one costs the next request nothing.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::harness::*;

/// An endpoint that answers two requests per connection (keep-alive, the
/// body says which connection it came on), then closes it and says so.
async fn closes_after_two(ip: Ipv4Addr) -> (u16, Arc<AtomicUsize>, mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                for _ in 0..2 {
                    loop {
                        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            got.drain(..end + 4);
                            break;
                        }
                        let r = s.read(&mut buf).await.unwrap();
                        if r == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..r]);
                    }
                    let body = format!("conn {n}");
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    s.write_all(answer.as_bytes()).await.unwrap();
                }
                drop(s);
                let _ = closed_tx.send(());
            });
        }
    });
    (port, accepted, closed)
}

#[tokio::test]
async fn endpoint_connections_are_reused_and_one_the_endpoint_closed_is_not() {
    let ip = Ipv4Addr::new(127, 0, 0, 92);
    let (port, accepted, mut closed) = closes_after_two(ip).await;
    let p = Proxy::start(
        &section(
            1,
            vec![route("pool.test", "/", "svc", port)],
            vec![backend("svc", &[ip])],
        ),
        Vec::new(),
    )
    .await;
    // Separate client connections, one after the other: the second request
    // goes out on the first one's endpoint connection.
    for _ in 0..2 {
        let r = send(p.http, get("pool.test", "/")).await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "conn 1"));
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one endpoint connection"
    );
    tokio::time::timeout(std::time::Duration::from_secs(10), closed.recv())
        .await
        .expect("the endpoint closed its connection")
        .unwrap();
    // The pooled connection is closed: the next request gets a new one
    // rather than an error.
    for _ in 0..2 {
        let r = send(p.http, get("pool.test", "/")).await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "conn 2"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}
