//! The DNS controller as the link drives it: sections published through
//! the supervisor's router, reports read back, queries on loopback.

use crate::test_support::free_port;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use skiff_shared::plan::{HostPlan, Section};
use skiff_shared::sections::dns::{
    Dns, DnsReport, DnsSection, Policy, Replica, ReplicaAddress, ServiceRecords,
};
use skiff_shared::tasks::TaskTree;

use super::{Controller, DnsOptions};
use crate::supervisor::{Router, Supervisor};

const DEADLINE: Duration = Duration::from_secs(10);

fn section(generation: u64, listen: &[Ipv4Addr], web: &[&str]) -> DnsSection {
    DnsSection {
        generation,
        node: "n1".into(),
        zone: None,
        listen: listen.to_vec(),
        services: vec![ServiceRecords {
            stack: "shop".into(),
            service: "web".into(),
            policy: Policy::RoundRobin,
            ttl_secs: 5,
            ports: vec![],
            replicas: web
                .iter()
                .enumerate()
                .map(|(i, ip)| Replica {
                    slot: i as u32 + 1,
                    node: "n1".into(),
                    zone: None,
                    release: 1,
                    addresses: vec![ReplicaAddress {
                        network: 1,
                        ip: ip.parse().unwrap(),
                    }],
                    published: true,
                })
                .collect(),
        }],
        nodes: vec![],
    }
}

fn publish(router: &Router, generation: u64, dns: Option<&DnsSection>) {
    let mut sections = BTreeMap::new();
    if let Some(s) = dns {
        sections.insert("dns".to_owned(), Section::of::<Dns>(generation, s).unwrap());
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

/// The next dns report that satisfies `cond`.
async fn report(router: &Router, what: &str, cond: impl Fn(&DnsReport) -> bool) -> DnsReport {
    let wait = async {
        loop {
            let changed = router.reports().changed();
            for (name, body) in router.reports().take(|n| n == "dns") {
                assert_eq!(name, "dns");
                let r: DnsReport = serde_json::from_value(body).unwrap();
                if cond(&r) {
                    return r;
                }
            }
            changed.await;
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("no dns report: {what}"))
}

async fn ask_a(server: SocketAddr, name: &str) -> Message {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut q = Message::query();
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    socket.send_to(&q.to_vec().unwrap(), server).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(DEADLINE, socket.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

fn a(m: &Message) -> Vec<Ipv4Addr> {
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

#[tokio::test(flavor = "multi_thread")]
async fn sections_are_served_reported_and_closed() {
    let port = free_port();
    let tree = TaskTree::root();
    let mut s = Supervisor::new(tree.child());
    s.add(Controller::new(DnsOptions {
        loopback: None,
        upstreams: Some(vec![]),
        port,
        ..DnsOptions::default()
    }));
    let router = s.router();
    let lo = Ipv4Addr::LOCALHOST;
    let addr = SocketAddr::from((lo, port));

    publish(&router, 1, Some(&section(7, &[lo], &["10.0.0.2"])));
    let r = report(&router, "generation 7", |r| r.generation == 7).await;
    assert_eq!(
        (r.listening.as_slice(), r.error.as_deref()),
        (&[lo][..], None)
    );
    assert_eq!(
        a(&ask_a(addr, "web.shop.skiff.").await),
        ["10.0.0.2".parse::<Ipv4Addr>().unwrap()]
    );

    // A new generation is answered from, and reported, at once.
    publish(
        &router,
        2,
        Some(&section(8, &[lo], &["10.0.0.2", "10.0.0.3"])),
    );
    let r = report(&router, "generation 8", |r| r.generation == 8).await;
    assert!(r.stats.queries >= 1, "{r:?}");
    assert_eq!(a(&ask_a(addr, "web.shop.skiff.").await).len(), 2);

    // An address whose port is taken is reported, and retried until free.
    let second = Ipv4Addr::new(127, 0, 0, 2);
    let blocker = UdpSocket::bind((second, port)).unwrap();
    publish(&router, 3, Some(&section(9, &[lo, second], &["10.0.0.2"])));
    let r = report(&router, "the port taken", |r| {
        r.generation == 9 && r.error.is_some()
    })
    .await;
    let error = r.error.unwrap();
    assert!(
        error.contains("127.0.0.2") && error.contains("stop the other program"),
        "{error}"
    );
    assert_eq!(r.listening, [lo]);
    drop(blocker);
    let r = report(&router, "the port free again", |r| {
        r.error.is_none() && r.listening.len() == 2
    })
    .await;
    assert_eq!(r.listening, [lo, second]);
    let m = ask_a(SocketAddr::from((second, port)), "web.shop.skiff.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);

    // A plan without the section closes every listener.
    publish(&router, 4, None);
    let end = tokio::time::Instant::now() + DEADLINE;
    while UdpSocket::bind(addr).is_err() {
        assert!(
            tokio::time::Instant::now() < end,
            "still listening on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tree.cancel();
    tree.wait().await;
}
