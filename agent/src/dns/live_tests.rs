//! The DNS server on loopback, asked by a real DNS client (hickory's codec
//! over UDP and TCP sockets): every kind of answer, refused sources, the
//! rate limit, forwarding with its cache to a tiny upstream server in the
//! test, a dead upstream, TCP bounds, and random packets.
//!
//! Containers are played by sources on 127.0.1.0/24 (any 127/8 address
//! is the host's on Linux): the records list them as replicas' addresses,
//! so they ask as those containers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use skiff_shared::sections::dns::{
    DnsSection, NodeRecord, Policy, PortRecord, Protocol, Replica, ReplicaAddress, ServiceRecords,
};
use skiff_shared::tasks::TaskTree;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::forward::Forwarder;
use super::limit::Rate;
use super::server::{Limits, Server};
use skiff_shared::sections::dns::Records;

const DEADLINE: Duration = Duration::from_secs(5);

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn rep(slot: u32, node: &str, release: u64, network: u32, addr: &str) -> Replica {
    Replica {
        slot,
        node: node.into(),
        zone: None,
        release,
        addresses: vec![ReplicaAddress {
            network,
            ip: ip(addr),
        }],
        published: true,
    }
}

/// Stack `shop`: `web` (3 replicas, port 80) and `db` (version policy,
/// releases 1 and 2) on network 1; a `blog` stack on network 2.
fn section(generation: u64) -> DnsSection {
    DnsSection {
        generation,
        node: "n1".into(),
        zone: None,
        listen: vec![],
        services: vec![
            ServiceRecords {
                stack: "shop".into(),
                service: "web".into(),
                policy: Policy::RoundRobin,
                ttl_secs: 5,
                ports: vec![PortRecord {
                    port: 80,
                    protocol: Protocol::Tcp,
                }],
                replicas: vec![
                    rep(1, "n1", 1, 1, "127.0.1.2"),
                    rep(2, "n2", 1, 1, "10.1.1.2"),
                    rep(3, "n3", 1, 1, "10.1.2.2"),
                ],
            },
            ServiceRecords {
                stack: "shop".into(),
                service: "db".into(),
                policy: Policy::Version,
                ttl_secs: 5,
                ports: vec![],
                replicas: vec![
                    rep(1, "n1", 1, 1, "127.0.1.3"),
                    rep(1, "n2", 2, 1, "127.0.1.4"),
                ],
            },
            ServiceRecords {
                stack: "blog".into(),
                service: "web".into(),
                policy: Policy::RoundRobin,
                ttl_secs: 5,
                ports: vec![],
                replicas: vec![rep(1, "n1", 1, 2, "127.0.2.2")],
            },
        ],
        nodes: vec![NodeRecord {
            name: "n2".into(),
            address: ip("100.64.0.2"),
        }],
    }
}

struct Fixture {
    tree: TaskTree,
    server: Arc<Server>,
    addr: SocketAddr,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.tree.cancel();
    }
}

fn start(limits: Limits, upstreams: Vec<SocketAddr>) -> Fixture {
    let tree = TaskTree::root();
    let server = Arc::new(Server::new(tree.child(), limits, Forwarder::new(upstreams)));
    server.set_records(Records::new(&section(1)));
    let asked: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let addr = server.open(asked).unwrap();
    Fixture { tree, server, addr }
}

fn no_limit() -> Limits {
    Limits {
        rate: Rate {
            per_second: 0,
            burst: 0,
        },
        ..Limits::default()
    }
}

fn query(name: &str, kind: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    m
}

/// Asks `server` from `source` over UDP; `None` when no answer comes
/// within the deadline.
async fn ask_from(
    source: &str,
    server: SocketAddr,
    q: &Message,
    deadline: Duration,
) -> Option<Message> {
    let socket = UdpSocket::bind((source.parse::<IpAddr>().unwrap(), 0))
        .await
        .unwrap();
    socket.send_to(&q.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(deadline, socket.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id, q.metadata.id);
    Some(m)
}

async fn ask(source: &str, server: SocketAddr, name: &str, kind: RecordType) -> Message {
    ask_from(source, server, &query(name, kind), DEADLINE)
        .await
        .unwrap_or_else(|| panic!("no answer to {name} {kind} from {source}"))
}

fn addresses(m: &Message) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

const WEB: &str = "127.0.1.2";

#[tokio::test]
async fn containers_get_every_name_form_over_udp() {
    let f = start(no_limit(), vec![]);
    let web3 = vec![ip("10.1.1.2"), ip("10.1.2.2"), ip("127.0.1.2")];
    for name in [
        "web.shop.skiff.",
        "WEB.Shop.Skiff.",
        "web.",
        "tasks.web.",
        "tasks.web.shop.skiff.",
    ] {
        let m = ask(WEB, f.addr, name, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(m.metadata.authoritative, "{name}");
        assert_eq!(addresses(&m), web3, "{name}");
        // The owner is the name asked, as asked.
        assert!(
            m.answers
                .iter()
                .all(|r| r.name.to_ascii() == name && r.ttl == 5),
            "{name}: {m:?}"
        );
    }
    assert_eq!(
        addresses(&ask(WEB, f.addr, "2.web.shop.skiff.", RecordType::A).await),
        vec![ip("10.1.1.2")]
    );
    assert_eq!(
        addresses(&ask(WEB, f.addr, "n2.nodes.skiff.", RecordType::A).await),
        vec![ip("100.64.0.2")]
    );
    // version: the web caller is release 1.
    assert_eq!(
        addresses(&ask(WEB, f.addr, "db.", RecordType::A).await),
        vec![ip("127.0.1.3")]
    );
    // SRV: one per replica, the targets' addresses in the additional section.
    let m = ask(WEB, f.addr, "_80._tcp.web.shop.skiff.", RecordType::SRV).await;
    assert_eq!(m.answers.len(), 3);
    assert!(
        m.answers
            .iter()
            .all(|r| matches!(&r.data, RData::SRV(s) if s.port == 80))
    );
    let mut targets: Vec<String> = m
        .additionals
        .iter()
        .filter(|r| matches!(r.data, RData::A(_)))
        .map(|r| r.name.to_ascii())
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            "1.web.shop.skiff.",
            "2.web.shop.skiff.",
            "3.web.shop.skiff."
        ]
    );
    // No AAAA: the name exists, without records, with the zone's SOA.
    let m = ask(WEB, f.addr, "web.shop.skiff.", RecordType::AAAA).await;
    assert_eq!(
        (m.metadata.response_code, m.answers.len()),
        (ResponseCode::NoError, 0)
    );
    assert!(matches!(
        m.authorities.first().map(|r| &r.data),
        Some(RData::SOA(_))
    ));
    // Unknown in the zone, and a stack sharing no network.
    for name in ["nope.shop.skiff.", "web.blog.skiff."] {
        let m = ask(WEB, f.addr, name, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
    }
    // Other classes are not served (nor forwarded).
    let mut q = query("version.bind.", RecordType::TXT);
    q.queries[0].set_query_class(hickory_proto::rr::DNSClass::CH);
    let m = ask_from(WEB, f.addr, &q, DEADLINE).await.unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
    // blog's own `web` is blog's.
    assert_eq!(
        addresses(&ask("127.0.2.2", f.addr, "web.", RecordType::A).await),
        vec![ip("127.0.2.2")]
    );
}

#[tokio::test]
async fn a_new_generation_is_answered_from_at_once() {
    let f = start(no_limit(), vec![]);
    assert_eq!(f.server.generation(), 1);
    let mut s = section(2);
    s.services[0].replicas.truncate(1);
    f.server.set_records(Records::new(&s));
    assert_eq!(f.server.generation(), 2);
    assert_eq!(
        addresses(&ask(WEB, f.addr, "web.shop.skiff.", RecordType::A).await),
        vec![ip("127.0.1.2")]
    );
}

/// A non-loopback address of this host, if it has one.
fn host_address() -> Option<Ipv4Addr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    match s.local_addr().ok()?.ip() {
        IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_unspecified() => Some(v4),
        _ => None,
    }
}

#[tokio::test]
async fn sources_that_are_not_containers_or_the_host_are_refused_and_counted() {
    let Some(stranger) = host_address() else {
        eprintln!("skipped: this host has no non-loopback IPv4 address to ask from");
        return;
    };
    let tree = TaskTree::root();
    let server = Server::new(tree.child(), no_limit(), Forwarder::new(vec![]));
    server.set_records(Records::new(&section(1)));
    // Listening on that address: queries from it come from a stranger.
    let addr = server
        .open(SocketAddr::new(IpAddr::V4(stranger), 0))
        .unwrap();
    for (name, kind) in [
        ("web.shop.skiff.", RecordType::A),
        ("example.com.", RecordType::A),
    ] {
        let m = ask(&stranger.to_string(), addr, name, kind).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{name}");
        assert!(m.answers.is_empty());
    }
    assert_eq!(server.stats().refused, 2);
    // The host's own address is the host once it is told so.
    server.set_records(Records::new(&section(1)).with_host_addresses([IpAddr::V4(stranger)]));
    let m = ask(
        &stranger.to_string(),
        addr,
        "n2.nodes.skiff.",
        RecordType::A,
    )
    .await;
    assert_eq!(addresses(&m), vec![ip("100.64.0.2")]);
    tree.cancel();
}

#[tokio::test]
async fn each_source_is_held_to_its_rate() {
    let f = start(
        Limits {
            rate: Rate {
                per_second: 1,
                burst: 5,
            },
            ..Limits::default()
        },
        vec![],
    );
    let socket = UdpSocket::bind("127.0.1.2:0").await.unwrap();
    for n in 0..20u16 {
        let mut q = query("web.shop.skiff.", RecordType::A);
        q.metadata.id = n;
        socket.send_to(&q.to_vec().unwrap(), f.addr).await.unwrap();
    }
    wait_until("15 queries rate limited", || {
        f.server.stats().rate_limited >= 15
    })
    .await;
    let mut answered = 0;
    let mut buf = [0u8; 2048];
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await
    {
        answered += 1;
    }
    assert!(answered <= 6, "{answered} answered");
    assert!(answered >= 5, "{answered} answered");
    // Another source has its own bucket.
    let _ = ask("127.0.1.3", f.addr, "web.shop.skiff.", RecordType::A).await;
}

async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let end = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting: {what}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A tiny upstream: `example.test` is 192.0.2.7 (TTL 60), anything else
/// NXDOMAIN with an SOA (negative TTL 60); it counts what it is asked.
async fn upstream(tree: &TaskTree, answer: bool) -> (SocketAddr, Arc<AtomicU64>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let asked = Arc::new(AtomicU64::new(0));
    let counter = asked.clone();
    let tree2 = tree.clone();
    tree.spawn("test-upstream", async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let got = tokio::select! {
                () = tree2.cancelled() => return,
                got = socket.recv_from(&mut buf) => got,
            };
            let Ok((n, from)) = got else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            if !answer {
                continue;
            }
            let q = Message::from_vec(&buf[..n]).unwrap();
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.metadata.recursion_available = true;
            r.add_queries(q.queries.clone());
            let name = q.queries[0].name().clone();
            if name.to_ascii().eq_ignore_ascii_case("example.test.")
                && q.queries[0].query_type() == RecordType::A
            {
                r.add_answer(Record::from_rdata(name, 60, RData::A(A(ip("192.0.2.7")))));
            } else {
                r.metadata.response_code = ResponseCode::NXDomain;
                let zone = Name::from_ascii("test.").unwrap();
                let soa = SOA::new(
                    Name::from_ascii("ns.test.").unwrap(),
                    Name::from_ascii("h.test.").unwrap(),
                    1,
                    60,
                    60,
                    60,
                    60,
                );
                r.add_authority(Record::from_rdata(zone, 60, RData::SOA(soa)));
            }
            let _ = socket.send_to(&r.to_vec().unwrap(), from).await;
        }
    });
    (addr, asked)
}

#[tokio::test]
async fn other_names_are_forwarded_and_cached_positive_and_negative() {
    let tree = TaskTree::root();
    let (up, asked) = upstream(&tree, true).await;
    let f = start(no_limit(), vec![up]);
    for source in [WEB, "127.0.0.1", WEB] {
        let m = ask(source, f.addr, "example.test.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&m), vec![ip("192.0.2.7")]);
        assert!(!m.metadata.authoritative);
    }
    for _ in 0..3 {
        let m = ask(WEB, f.addr, "missing.test.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }
    // Once each: the rest came from the cache.
    assert_eq!(asked.load(Ordering::SeqCst), 2);
    assert_eq!(f.server.stats().forwarded, 6);
    tree.cancel();
}

#[tokio::test]
async fn a_dead_upstream_gets_servfail_not_silence() {
    let tree = TaskTree::root();
    let (up, asked) = upstream(&tree, false).await;
    let f = start(no_limit(), vec![up]);
    let m = ask(WEB, f.addr, "example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(asked.load(Ordering::SeqCst) >= 1);
    // No upstream at all: the same.
    let g = start(no_limit(), vec![]);
    let m = ask(WEB, g.addr, "example.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    tree.cancel();
}

async fn tcp_ask(stream: &mut TcpStream, q: &Message) -> Message {
    let bytes = q.to_vec().unwrap();
    stream
        .write_all(&(bytes.len() as u16).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&bytes).await.unwrap();
    let mut len = [0u8; 2];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut len))
        .await
        .unwrap()
        .unwrap();
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

#[tokio::test]
async fn tcp_answers_in_order_and_closes_idle_connections() {
    let f = start(
        Limits {
            tcp_idle: Duration::from_millis(200),
            ..no_limit()
        },
        vec![],
    );
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.1.2:0".parse().unwrap()).unwrap();
    let mut stream = socket.connect(f.addr).await.unwrap();
    for _ in 0..3 {
        let m = tcp_ask(&mut stream, &query("web.shop.skiff.", RecordType::A)).await;
        assert_eq!(m.answers.len(), 3);
    }
    // Then silence: the server closes it.
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let f = start(no_limit(), vec![]);
    let mut s = section(2);
    s.services[0].replicas = (0..100u32)
        .map(|n| rep(n, "n1", 1, 1, &format!("10.9.{}.{}", n / 200, n % 200 + 1)))
        .chain([rep(999, "n1", 1, 1, WEB)])
        .collect();
    f.server.set_records(Records::new(&s));
    let m = ask(WEB, f.addr, "web.shop.skiff.", RecordType::A).await;
    assert!(m.metadata.truncation);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.1.2:0".parse().unwrap()).unwrap();
    let mut stream = socket.connect(f.addr).await.unwrap();
    let m = tcp_ask(&mut stream, &query("web.shop.skiff.", RecordType::A)).await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 101);
}

#[tokio::test]
async fn random_packets_are_dropped_and_counted_and_the_server_goes_on() {
    let f = start(no_limit(), vec![]);
    let socket = UdpSocket::bind("127.0.1.2:0").await.unwrap();
    let valid = query("web.shop.skiff.", RecordType::A).to_vec().unwrap();
    // A fixed-seed xorshift: random lengths, random bytes, and valid
    // queries with random bytes flipped.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut sent = 0u64;
    for i in 0..3000 {
        let packet: Vec<u8> = if i % 2 == 0 {
            let len = (next() % 600) as usize;
            (0..len).map(|_| next() as u8).collect()
        } else {
            let mut p = valid.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % p.len();
                p[at] = next() as u8;
            }
            p.truncate((next() as usize) % (p.len() + 1));
            p
        };
        if packet.is_empty() {
            continue;
        }
        socket.send_to(&packet, f.addr).await.unwrap();
        sent += 1;
        // In batches the socket's buffer holds: none is lost unread.
        if sent.is_multiple_of(50) {
            wait_until("every packet handled", || {
                let s = f.server.stats();
                s.queries + s.malformed >= sent
            })
            .await;
        }
    }
    assert!(f.server.stats().malformed > 1000, "{:?}", f.server.stats());
    // Still answering.
    let m = ask(WEB, f.addr, "web.shop.skiff.", RecordType::A).await;
    assert_eq!(m.answers.len(), 3);
    // A response sent to it is not answered (no reflection), counted.
    let before = f.server.stats().malformed;
    let mut response = query("web.shop.skiff.", RecordType::A);
    response.metadata.message_type = MessageType::Response;
    socket
        .send_to(&response.to_vec().unwrap(), f.addr)
        .await
        .unwrap();
    wait_until("the response counted", || {
        f.server.stats().malformed > before
    })
    .await;
}

#[tokio::test]
async fn closing_an_address_frees_its_port_even_while_queries_trickle_in() {
    let f = start(no_limit(), vec![]);
    let asked: SocketAddr = "127.0.0.1:0".parse().unwrap();
    assert_eq!(f.server.local_addr(asked), Some(f.addr));
    // A query every few milliseconds keeps the receive threads busy.
    let addr = f.addr;
    let trickle = f.tree.spawn("trickle", async move {
        let socket = UdpSocket::bind("127.0.1.2:0").await.unwrap();
        let q = query("web.shop.skiff.", RecordType::A).to_vec().unwrap();
        loop {
            let _ = socket.send_to(&q, addr).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    f.server.close(asked);
    assert!(f.server.listening().is_empty());
    let end = tokio::time::Instant::now() + DEADLINE;
    while std::net::UdpSocket::bind(f.addr).is_err() || std::net::TcpListener::bind(f.addr).is_err()
    {
        assert!(tokio::time::Instant::now() < end, "{} still bound", f.addr);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    trickle.abort();
}
