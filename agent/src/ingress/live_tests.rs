//! The ingress controller as the link drives it, on loopback with real
//! sockets: sections published through the supervisor's router, reports
//! read back, small echo servers on 127.0.0.x as the endpoints.

use crate::test_support::free_port;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use skiff_shared::plan::{HostPlan, Section};
use skiff_shared::protocol::SectionMessage;
use skiff_shared::sections::ingress::{
    Backend, CertificateRef, CertificatesDelivery, Endpoint, Ingress, IngressReport,
    IngressSection, PortRule, Protocol, ProxySettings, Route, Tls,
};
use skiff_shared::tasks::TaskTree;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::{Controller, IngressOptions};
use crate::supervisor::{Router, Supervisor};

const DEADLINE: Duration = Duration::from_secs(10);

fn lo(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// An endpoint: says its address on connect, then echoes.
async fn tcp_endpoint(ip: Ipv4Addr, port: u16) {
    let l = TcpListener::bind((ip, port)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                s.write_all(format!("{ip}\n").as_bytes()).await?;
                let (mut r, mut w) = s.split();
                tokio::io::copy(&mut r, &mut w).await
            });
        }
    });
}

/// A UDP endpoint: answers every datagram with its address and the datagram.
async fn udp_endpoint(ip: Ipv4Addr, port: u16) {
    let s = UdpSocket::bind((ip, port)).await.unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let answer = [format!("{ip}|").as_bytes(), &buf[..n]].concat();
            let _ = s.send_to(&answer, from).await;
        }
    });
}

async fn line(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = async {
        loop {
            let mut b = [0u8; 1];
            if s.read(&mut b).await.unwrap() == 0 {
                break;
            }
            if b[0] == b'\n' {
                break;
            }
            out.push(b[0]);
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("a line in time");
    String::from_utf8(out).unwrap()
}

/// Connects through the proxy; returns the stream and the endpoint that
/// answered.
async fn hello(port: u16) -> (TcpStream, String) {
    let mut s = tokio::time::timeout(DEADLINE, TcpStream::connect((lo(1), port)))
        .await
        .unwrap()
        .unwrap();
    let who = line(&mut s).await;
    (s, who)
}

async fn echo(s: &mut TcpStream, text: &str) -> String {
    s.write_all(format!("{text}\n").as_bytes()).await.unwrap();
    line(s).await
}

async fn udp_ask(port: u16, text: &str) -> String {
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.send_to(text.as_bytes(), (lo(1), port)).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(DEADLINE, c.recv_from(&mut buf))
        .await
        .expect("a UDP answer in time")
        .unwrap();
    assert_eq!(
        from,
        SocketAddr::from((lo(1), port)),
        "the answer comes from the published port"
    );
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

fn rule(port: u16, protocol: Protocol, target: u16) -> PortRule {
    PortRule {
        port,
        protocol,
        stack: "shop".into(),
        service: "web".into(),
        target,
    }
}

fn section(generation: u64, ports: Vec<PortRule>, endpoints: &[Ipv4Addr]) -> IngressSection {
    IngressSection {
        generation,
        node: "n1".into(),
        edge: true,
        settings: ProxySettings {
            drain_timeout_ms: 1500,
            ..ProxySettings::default()
        },
        ports,
        backends: vec![Backend {
            stack: "shop".into(),
            service: "web".into(),
            endpoints: endpoints
                .iter()
                .enumerate()
                .map(|(i, ip)| Endpoint {
                    ip: *ip,
                    node: "n2".into(),
                    slot: u32::try_from(i).unwrap() + 1,
                })
                .collect(),
        }],
        ..IngressSection::default()
    }
}

fn start(tree: &TaskTree, data_dir: &Path) -> Router {
    let mut s = Supervisor::new(tree.child());
    s.add(Controller::new(
        data_dir,
        IngressOptions {
            bind: IpAddr::V4(lo(1)),
            ..IngressOptions::default()
        },
    ));
    s.router()
}

fn publish(router: &Router, generation: u64, ingress: Option<&IngressSection>) {
    let mut sections = BTreeMap::new();
    if let Some(s) = ingress {
        sections.insert(
            "ingress".to_owned(),
            Section::of::<Ingress>(generation, s).unwrap(),
        );
    }
    let plan = HostPlan {
        cluster_id: "c".into(),
        epoch: 1,
        node_id: "n1".into(),
        generation,
        issued_at_ms: 0,
        sections,
    };
    for step in router.prepare(&plan).unwrap() {
        step();
    }
}

/// The next ingress report that satisfies `cond`.
async fn report(
    router: &Router,
    what: &str,
    cond: impl Fn(&IngressReport) -> bool,
) -> IngressReport {
    let wait = async {
        loop {
            let changed = router.reports().changed();
            for (_, body) in router.reports().take(|n| n == "ingress") {
                let r: IngressReport = serde_json::from_value(body).unwrap();
                if cond(&r) {
                    return r;
                }
            }
            changed.await;
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("no ingress report: {what}"))
}

/// Waits until a connection to the port is refused.
async fn closed(port: u16) {
    let end = tokio::time::Instant::now() + DEADLINE;
    while TcpStream::connect((lo(1), port)).await.is_ok() {
        assert!(tokio::time::Instant::now() < end, "port {port} still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn published_ports_forward_spread_drain_and_skip_dead_endpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let (port, target) = (free_port(), free_port());
    for ip in [lo(11), lo(12)] {
        tcp_endpoint(ip, target).await;
        udp_endpoint(ip, target).await;
    }
    let tree = TaskTree::root();
    let router = start(&tree, tmp.path());
    let rules = || {
        vec![
            rule(port, Protocol::Tcp, target),
            rule(port, Protocol::Udp, target),
        ]
    };

    publish(&router, 1, Some(&section(7, rules(), &[lo(11), lo(12)])));
    let r = report(&router, "generation 7", |r| r.generation == 7).await;
    assert_eq!(r.error, None);
    assert_eq!(r.listeners.len(), 2);

    // TCP and UDP reach both endpoints, evenly.
    let mut seen = BTreeMap::new();
    for _ in 0..4 {
        let (mut s, who) = hello(port).await;
        assert_eq!(echo(&mut s, "ping").await, "ping");
        *seen.entry(who).or_insert(0) += 1;
    }
    assert_eq!(
        seen,
        [("127.0.0.11".into(), 2), ("127.0.0.12".into(), 2)].into()
    );
    let mut seen = BTreeMap::new();
    for _ in 0..4 {
        let answer = udp_ask(port, "hi").await;
        let (who, echoed) = answer.split_once('|').unwrap();
        assert_eq!(echoed, "hi");
        *seen.entry(who.to_owned()).or_insert(0) += 1;
    }
    assert_eq!(
        seen,
        [("127.0.0.11".into(), 2), ("127.0.0.12".into(), 2)].into()
    );

    // An endpoint leaves: once generation 8 is reported, no new connection
    // goes to it; the one open to it works until its drain ends.
    let (mut held, who) = hello(port).await;
    let (gone, stays) = if who == "127.0.0.11" {
        (lo(11), lo(12))
    } else {
        (lo(12), lo(11))
    };
    publish(&router, 2, Some(&section(8, rules(), &[stays])));
    report(&router, "generation 8", |r| r.generation == 8).await;
    for _ in 0..4 {
        let (_, who) = hello(port).await;
        assert_eq!(who, stays.to_string(), "never the endpoint that left");
        assert!(udp_ask(port, "x").await.starts_with(&stays.to_string()));
    }
    assert_eq!(echo(&mut held, "still there").await, "still there");
    let cut = async {
        let mut b = [0u8; 16];
        loop {
            match held.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, cut)
        .await
        .expect("the connection to the endpoint that left is cut after its drain");
    let _ = gone;

    // A dead endpoint (nothing listens there) is skipped; clients succeed.
    publish(&router, 3, Some(&section(9, rules(), &[lo(13), stays])));
    report(&router, "generation 9", |r| r.generation == 9).await;
    for _ in 0..6 {
        let (mut s, who) = hello(port).await;
        assert_eq!(who, stays.to_string());
        assert_eq!(echo(&mut s, "ok").await, "ok");
    }

    // A port already taken is reported, naming what holds it.
    let taken = free_port();
    let blocker = std::net::TcpListener::bind((lo(1), taken)).unwrap();
    let mut with_taken = rules();
    with_taken.push(rule(taken, Protocol::Tcp, target));
    publish(&router, 4, Some(&section(10, with_taken, &[stays])));
    let r = report(&router, "the port taken", |r| {
        r.generation == 10 && r.error.is_some()
    })
    .await;
    let l = r.listeners.iter().find(|l| l.port == taken).unwrap();
    let error = l.error.as_deref().unwrap();
    assert!(error.contains(&format!("TCP port {taken}")), "{error}");
    assert!(
        error.contains(&format!("pid {}", std::process::id())),
        "{error}"
    );
    assert!(
        r.listeners
            .iter()
            .filter(|l| l.port == port)
            .all(|l| l.error.is_none())
    );
    let stats = r
        .ports
        .iter()
        .find(|p| p.port == port && p.protocol == Protocol::Tcp)
        .unwrap();
    assert!(
        stats.connections >= 15 && stats.bytes_in > 0 && stats.bytes_out > 0,
        "{stats:?}"
    );
    assert_eq!(
        stats.failed, 0,
        "a skipped dead endpoint fails no connection"
    );
    drop(blocker);

    // A plan without the section closes every listener.
    publish(&router, 5, None);
    closed(port).await;
    tree.cancel();
    tree.wait().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_port_with_the_proxy_protocol_reads_the_header_and_refuses_without_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (port, target) = (free_port(), free_port());
    tcp_endpoint(lo(21), target).await;
    let tree = TaskTree::root();
    let router = start(&tree, tmp.path());
    let mut s = section(3, vec![rule(port, Protocol::Tcp, target)], &[lo(21)]);
    s.settings.proxy_protocol = true;
    publish(&router, 1, Some(&s));
    report(&router, "generation 3", |r| r.generation == 3).await;

    let mut c = TcpStream::connect((lo(1), port)).await.unwrap();
    c.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 51234 80\r\nfirst\n")
        .await
        .unwrap();
    assert_eq!(line(&mut c).await, "127.0.0.21");
    assert_eq!(
        line(&mut c).await,
        "first",
        "the endpoint gets the payload, not the header"
    );

    let mut c = TcpStream::connect((lo(1), port)).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(DEADLINE, c.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "refused without a header");
    // Counters go out with the next round (a new plan, or every 30 s).
    s.generation = 4;
    publish(&router, 2, Some(&s));
    let r = report(&router, "the refusal counted", |r| r.generation == 4).await;
    assert_eq!(r.ports[0].failed, 1);
    assert_eq!(r.ports[0].connections, 2);
    tree.cancel();
    tree.wait().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_are_kept_private_and_serve_again_after_a_restart() {
    use std::os::unix::fs::PermissionsExt;

    let tmp = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["app.example.com".to_owned()]).unwrap();
    let chain = cert.cert.pem();
    let mut s = section(5, vec![], &[lo(31)]);
    s.settings.http_port = free_port();
    s.settings.https_port = free_port();
    s.routes = vec![Route {
        stack: "shop".into(),
        service: "web".into(),
        domain: "app.example.com".into(),
        path: "/".into(),
        port: 8080,
        tls: Tls::Auto,
        balance: Default::default(),
        local_first: false,
    }];
    s.certificates = vec![CertificateRef {
        id: "app".into(),
        domains: vec!["app.example.com".into()],
        chain_sha256: hex::encode(skiff_shared::sha256(chain.as_bytes())),
    }];

    let tree = TaskTree::root();
    let router = start(&tree, tmp.path());
    let delivery = CertificatesDelivery {
        certificates: vec![super::certs::material(
            "app",
            chain.clone(),
            cert.signing_key.serialize_pem(),
        )],
    };
    router
        .deliver(SectionMessage {
            section: "ingress".into(),
            body: serde_json::to_value(&delivery).unwrap(),
        })
        .unwrap();
    publish(&router, 1, Some(&s));
    let r = report(&router, "the certificate served", |r| r.generation == 5).await;
    assert_eq!(r.certificates, vec!["app"], "{:?}", r.error);
    let file = tmp.path().join("ingress/certs/app.pem");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        std::fs::metadata(file.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    tree.cancel();
    tree.wait().await;

    // A restart with the coordinator away: the stored plan, no delivery.
    let tree = TaskTree::root();
    let router = start(&tree, tmp.path());
    publish(&router, 1, Some(&s));
    let r = report(&router, "served again", |r| r.generation == 5).await;
    assert_eq!(r.certificates, vec!["app"], "{:?}", r.error);
    assert_eq!(r.error, None);

    // A plan naming another chain does not serve the stored one.
    let mut other = s.clone();
    other.generation = 6;
    other.certificates[0].chain_sha256 = "00".repeat(32);
    publish(&router, 2, Some(&other));
    let r = report(&router, "not served", |r| r.generation == 6).await;
    assert!(r.certificates.is_empty());
    assert!(r.error.unwrap().contains("certificate app"));
    tree.cancel();
    tree.wait().await;
}
