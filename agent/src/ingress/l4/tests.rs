//! The forwarders alone, on loopback: bounds and timeouts.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use skiff_shared::sections::ingress::{Backend, Endpoint, IngressSection, PortRule, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::*;

const DEADLINE: Duration = Duration::from_secs(10);

fn section(port: u16, protocol: Protocol, target: u16, idle_ms: u64) -> IngressSection {
    let mut s = IngressSection {
        generation: 1,
        node: "n1".into(),
        edge: true,
        ports: vec![PortRule {
            port,
            protocol,
            stack: "s".into(),
            service: "web".into(),
            target,
        }],
        backends: vec![Backend {
            stack: "s".into(),
            service: "web".into(),
            endpoints: vec![Endpoint {
                ip: Ipv4Addr::LOCALHOST,
                node: "n2".into(),
                slot: 1,
            }],
        }],
        ..IngressSection::default()
    };
    s.settings.tcp_idle_timeout_ms = idle_ms;
    s
}

fn shared_for(section: &IngressSection, tree: &TaskTree, limits: Limits) -> Arc<Shared> {
    let shared = Shared::new(tree.child(), limits);
    let pools = Arc::new(Pools::default().rebuild(section, tree));
    shared.set_table(Table::new(section, pools));
    shared
}

#[tokio::test]
async fn udp_sessions_are_bounded_and_the_least_recently_used_one_goes() {
    let tree = TaskTree::root();
    let endpoint = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = endpoint.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = endpoint.recv_from(&mut buf).await {
            let _ = endpoint.send_to(&buf[..n], from).await;
        }
    });
    let listen = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = listen.local_addr().unwrap().port();
    let s = section(port, Protocol::Udp, target, 60_000);
    let limits = Limits {
        max_sessions: 2,
        ..Limits::default()
    };
    let shared = shared_for(&s, &tree, limits);
    let cancel = CancellationToken::new();
    tree.spawn(
        "udp",
        udp::serve(listen, port, shared.clone(), cancel.clone()),
    );
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    let ask = |i: usize| {
        let c = &clients[i];
        async move {
            c.send_to(b"hi", ("127.0.0.1", port)).await.unwrap();
            let mut buf = [0u8; 16];
            let (n, _) = tokio::time::timeout(DEADLINE, c.recv_from(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
            assert_eq!(&buf[..n], b"hi");
        }
    };
    let sessions = || {
        shared
            .counters(port, Protocol::Udp)
            .connections
            .load(Ordering::Relaxed)
    };
    ask(0).await;
    ask(1).await;
    ask(0).await;
    assert_eq!(sessions(), 2, "one session per client address");
    ask(2).await;
    assert_eq!(
        sessions(),
        3,
        "a third client evicts the least recently used (1)"
    );
    ask(0).await;
    assert_eq!(sessions(), 3, "0 kept its session");
    ask(1).await;
    assert_eq!(sessions(), 4, "1 had lost its session");
    let c = shared.counters(port, Protocol::Udp);
    assert_eq!(c.bytes_in.load(Ordering::Relaxed), 12);
    assert_eq!(c.bytes_out.load(Ordering::Relaxed), 12);
    cancel.cancel();
    tree.cancel();
    tree.wait().await;
}

#[tokio::test]
async fn an_idle_tcp_connection_is_closed() {
    let tree = TaskTree::root();
    let endpoint = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = endpoint.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = endpoint.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                tokio::io::copy(&mut r, &mut w).await
            });
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let s = section(port, Protocol::Tcp, target, 300);
    let shared = shared_for(&s, &tree, Limits::default());
    let cancel = CancellationToken::new();
    tree.spawn(
        "tcp",
        tcp::serve(listener, port, shared.clone(), cancel.clone()),
    );

    let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    c.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).await.unwrap();
    let ended = async {
        loop {
            match c.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, ended)
        .await
        .expect("an idle connection is closed");
    cancel.cancel();
    tree.cancel();
    tree.wait().await;
}
