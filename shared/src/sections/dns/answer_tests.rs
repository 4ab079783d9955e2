//! Every name form and policy of [`Records::answer`], and a property test
//! that it never panics.

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::*;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn from(s: &str) -> IpAddr {
    IpAddr::V4(ip(s))
}

fn replica(
    slot: u32,
    node: &str,
    zone: Option<&str>,
    release: u64,
    addrs: &[(u32, &str)],
) -> Replica {
    Replica {
        slot,
        node: node.into(),
        zone: zone.map(Into::into),
        release,
        addresses: addrs
            .iter()
            .map(|(network, a)| ReplicaAddress {
                network: *network,
                ip: ip(a),
            })
            .collect(),
        published: true,
    }
}

fn service(stack: &str, name: &str, policy: Policy, replicas: Vec<Replica>) -> ServiceRecords {
    ServiceRecords {
        stack: stack.into(),
        service: name.into(),
        policy,
        ttl_secs: 7,
        ports: vec![],
        replicas,
    }
}

/// Stack `shop` with networks 1 (front) and 2 (back); stack `blog` on 3.
/// Host `n1` (zone eu), `n2` (zone eu), `n3` (zone us).
fn section() -> DnsSection {
    let mut web = service(
        "shop",
        "web",
        Policy::RoundRobin,
        vec![
            replica(1, "n1", Some("eu"), 1, &[(1, "10.1.0.2")]),
            replica(2, "n2", Some("eu"), 1, &[(1, "10.1.1.2")]),
            replica(3, "n3", Some("us"), 1, &[(1, "10.1.2.2")]),
        ],
    );
    web.ports = vec![
        PortRecord {
            port: 80,
            protocol: Protocol::Tcp,
        },
        PortRecord {
            port: 53,
            protocol: Protocol::Udp,
        },
    ];
    let api = service(
        "shop",
        "api",
        Policy::Closest,
        vec![
            replica(1, "n2", Some("eu"), 1, &[(1, "10.1.1.3"), (2, "10.2.1.3")]),
            replica(2, "n3", Some("us"), 1, &[(1, "10.1.2.3"), (2, "10.2.2.3")]),
            replica(3, "n1", Some("eu"), 1, &[(1, "10.1.0.3"), (2, "10.2.0.3")]),
        ],
    );
    let mut db_old = replica(1, "n1", Some("eu"), 1, &[(2, "10.2.0.4")]);
    db_old.published = true;
    let db = service(
        "shop",
        "db",
        Policy::Version,
        vec![db_old, replica(1, "n2", Some("eu"), 2, &[(2, "10.2.1.4")])],
    );
    // A caller of release 2 on the back network.
    let worker = service(
        "shop",
        "worker",
        Policy::RoundRobin,
        vec![
            replica(1, "n1", Some("eu"), 2, &[(2, "10.2.0.5")]),
            replica(2, "n1", Some("eu"), 3, &[(2, "10.2.0.6")]),
        ],
    );
    let mut blog = service(
        "blog",
        "web",
        Policy::RoundRobin,
        vec![replica(1, "n1", Some("eu"), 1, &[(3, "10.3.0.2")])],
    );
    blog.replicas.push(Replica {
        published: false,
        ..replica(2, "n1", Some("eu"), 1, &[(3, "10.3.0.3")])
    });
    DnsSection {
        generation: 9,
        node: "n1".into(),
        zone: Some("eu".into()),
        listen: vec![ip("10.1.0.1"), ip("10.2.0.1"), ip("10.3.0.1")],
        services: vec![web, api, db, worker, blog],
        nodes: vec![
            NodeRecord {
                name: "n1".into(),
                address: ip("100.64.0.1"),
            },
            NodeRecord {
                name: "N2".into(),
                address: ip("100.64.0.2"),
            },
        ],
    }
}

fn ask(r: &Records, name: &str, kind: QueryKind, caller: &str, rotation: u64) -> Answer {
    r.answer(&Question { name, kind }, from(caller), rotation)
}

/// The A records' addresses, in order.
fn a(answer: &Answer) -> Vec<Ipv4Addr> {
    match answer {
        Answer::Records(records) => records
            .iter()
            .map(|r| match r.data {
                RecordData::A(ip) => ip,
                RecordData::Srv { .. } => panic!("an SRV record in {answer:?}"),
            })
            .collect(),
        other => panic!("no records: {other:?}"),
    }
}

fn sorted(mut v: Vec<Ipv4Addr>) -> Vec<Ipv4Addr> {
    v.sort();
    v
}

// A web container (shop, network 1, on n1).
const WEB1: &str = "10.1.0.2";
// An api container on n1, on networks 1 and 2.
const API3: &str = "10.1.0.3";
const HOST: &str = "127.0.0.1";

#[test]
fn full_service_names_answer_the_published_replicas_on_the_callers_network() {
    let r = Records::new(&section());
    let got = ask(&r, "web.shop.skiff", QueryKind::A, WEB1, 0);
    assert_eq!(
        a(&got),
        vec![ip("10.1.0.2"), ip("10.1.1.2"), ip("10.1.2.2")]
    );
    let Answer::Records(records) = got else {
        unreachable!()
    };
    assert!(
        records
            .iter()
            .all(|r| r.ttl == 7 && &*r.name == "web.shop.skiff")
    );
    // Any case, trailing dot or not.
    assert_eq!(
        a(&ask(&r, "WEB.Shop.SKIFF.", QueryKind::A, WEB1, 0)),
        a(&ask(&r, "web.shop.skiff", QueryKind::A, WEB1, 0))
    );
}

#[test]
fn a_caller_gets_the_address_on_the_network_it_asked_from_first() {
    let r = Records::new(&section());
    // From its network-2 address, api's replicas are given on network 2.
    let got = ask(&r, "api.shop.skiff", QueryKind::A, "10.2.0.3", 0);
    assert_eq!(a(&got), vec![ip("10.2.0.3")]);
    let got = ask(&r, "api.shop.skiff", QueryKind::A, API3, 0);
    assert_eq!(a(&got), vec![ip("10.1.0.3")]);
    // web shares only network 1 with api.
    assert_eq!(
        sorted(a(&ask(&r, "tasks.api.shop.skiff", QueryKind::A, WEB1, 0))),
        vec![ip("10.1.0.3"), ip("10.1.1.3"), ip("10.1.2.3")]
    );
}

#[test]
fn a_service_sharing_no_network_with_the_caller_does_not_exist_for_it() {
    let r = Records::new(&section());
    // web (network 1) and db (network 2).
    assert_eq!(
        ask(&r, "db.shop.skiff", QueryKind::A, WEB1, 0),
        Answer::NxDomain
    );
    assert_eq!(
        ask(&r, "tasks.db.shop.skiff", QueryKind::A, WEB1, 0),
        Answer::NxDomain
    );
    assert_eq!(
        ask(&r, "1.db.shop.skiff", QueryKind::A, WEB1, 0),
        Answer::NxDomain
    );
    assert_eq!(
        ask(&r, "web.blog.skiff", QueryKind::A, WEB1, 0),
        Answer::NxDomain
    );
    // Its short name is not one the caller has: forwarded like any other.
    assert_eq!(ask(&r, "db", QueryKind::A, WEB1, 0), Answer::Forward);
}

#[test]
fn short_names_are_the_callers_own_stack_only() {
    let r = Records::new(&section());
    assert_eq!(
        sorted(a(&ask(&r, "web", QueryKind::A, API3, 0))),
        vec![ip("10.1.0.2"), ip("10.1.1.2"), ip("10.1.2.2")]
    );
    assert_eq!(
        sorted(a(&ask(&r, "tasks.web.", QueryKind::A, API3, 0))),
        vec![ip("10.1.0.2"), ip("10.1.1.2"), ip("10.1.2.2")]
    );
    // A blog container's `web` is blog's web.
    assert_eq!(
        a(&ask(&r, "web", QueryKind::A, "10.3.0.2", 0)),
        vec![ip("10.3.0.2")]
    );
    // Not a service of the stack, or not a container asking: forwarded.
    assert_eq!(ask(&r, "api", QueryKind::A, "10.3.0.2", 0), Answer::Forward);
    assert_eq!(ask(&r, "web", QueryKind::A, HOST, 0), Answer::Forward);
    assert_eq!(
        ask(&r, "example.com", QueryKind::A, WEB1, 0),
        Answer::Forward
    );
    assert_eq!(ask(&r, "", QueryKind::A, WEB1, 0), Answer::Forward);
    assert_eq!(ask(&r, ".", QueryKind::A, WEB1, 0), Answer::Forward);
    assert_eq!(ask(&r, "notskiff", QueryKind::A, WEB1, 0), Answer::Forward);
}

#[test]
fn unpublished_replicas_are_never_given() {
    let r = Records::new(&section());
    assert_eq!(
        a(&ask(&r, "web.blog.skiff", QueryKind::A, HOST, 0)),
        vec![ip("10.3.0.2")]
    );
    assert_eq!(
        a(&ask(&r, "tasks.web.blog.skiff", QueryKind::A, HOST, 0)),
        vec![ip("10.3.0.2")]
    );
    assert_eq!(
        ask(&r, "2.web.blog.skiff", QueryKind::A, HOST, 0),
        Answer::NoData { ttl: 7 }
    );
    // Nothing published at all: the name exists, without records.
    let mut s = section();
    for rep in &mut s.services[0].replicas {
        rep.published = false;
    }
    let r = Records::new(&s);
    assert_eq!(
        ask(&r, "web.shop.skiff", QueryKind::A, WEB1, 0),
        Answer::NoData { ttl: 7 }
    );
    // An unpublished replica still asks and is answered.
    assert_eq!(
        a(&ask(&r, "1.api.shop.skiff", QueryKind::A, WEB1, 0)),
        vec![ip("10.1.1.3")]
    );
}

#[test]
fn per_replica_names_answer_that_slot() {
    let r = Records::new(&section());
    assert_eq!(
        a(&ask(&r, "2.web.shop.skiff", QueryKind::A, WEB1, 0)),
        vec![ip("10.1.1.2")]
    );
    // db slot 1 has two replicas (old and new release) while replaced.
    assert_eq!(
        sorted(a(&ask(&r, "1.db.shop.skiff", QueryKind::A, "10.2.0.5", 0))),
        vec![ip("10.2.0.4"), ip("10.2.1.4")]
    );
    assert_eq!(
        ask(&r, "4.web.shop.skiff", QueryKind::A, WEB1, 0),
        Answer::NxDomain
    );
}

#[test]
fn node_names_answer_the_mesh_address() {
    let r = Records::new(&section());
    assert_eq!(
        a(&ask(&r, "n2.nodes.skiff", QueryKind::A, WEB1, 0)),
        vec![ip("100.64.0.2")]
    );
    assert_eq!(
        a(&ask(&r, "N1.NODES.skiff.", QueryKind::A, HOST, 0)),
        vec![ip("100.64.0.1")]
    );
    assert_eq!(
        ask(&r, "n9.nodes.skiff", QueryKind::A, WEB1, 0),
        Answer::NxDomain
    );
    assert_eq!(
        ask(&r, "n2.nodes.skiff", QueryKind::Aaaa, WEB1, 0),
        Answer::NoData {
            ttl: DEFAULT_TTL_SECS
        }
    );
}

#[test]
fn other_names_of_the_zone_do_not_exist() {
    let r = Records::new(&section());
    for name in [
        "nope.shop.skiff",
        "web.nope.skiff",
        "x.web.shop.skiff",
        "a.b.c.skiff",
        "tasks.skiff",
        "_80._tcp.api.shop.skiff",
    ] {
        assert_eq!(
            ask(&r, name, QueryKind::A, WEB1, 0),
            Answer::NxDomain,
            "{name}"
        );
    }
    // The apex and the names between it and records exist, empty.
    for name in ["skiff", "shop.skiff", "nodes.skiff", "_tcp.web.shop.skiff"] {
        assert_eq!(
            ask(&r, name, QueryKind::A, WEB1, 0),
            Answer::NoData {
                ttl: DEFAULT_TTL_SECS
            },
            "{name}"
        );
    }
}

#[test]
fn aaaa_and_other_types_get_no_data() {
    let r = Records::new(&section());
    for kind in [QueryKind::Aaaa, QueryKind::Other] {
        assert_eq!(
            ask(&r, "web.shop.skiff", kind, WEB1, 0),
            Answer::NoData { ttl: 7 }
        );
        assert_eq!(ask(&r, "web", kind, WEB1, 0), Answer::NoData { ttl: 7 });
        assert_eq!(
            ask(&r, "_80._tcp.web.shop.skiff", kind, WEB1, 0),
            Answer::NoData { ttl: 7 }
        );
    }
    assert_eq!(
        ask(&r, "_80._tcp.web.shop.skiff", QueryKind::A, WEB1, 0),
        Answer::NoData { ttl: 7 }
    );
    // A service without ports has no SRV records.
    assert_eq!(
        ask(&r, "api.shop.skiff", QueryKind::Srv, WEB1, 0),
        Answer::NoData { ttl: 7 }
    );
}

#[test]
fn srv_records_give_each_replica_and_port_with_its_address() {
    let r = Records::new(&section());
    let Answer::Records(records) = ask(&r, "web.shop.skiff", QueryKind::Srv, API3, 0) else {
        panic!("no SRV records");
    };
    assert_eq!(records.len(), 6);
    let mut got: Vec<(u16, String, Ipv4Addr)> = records
        .iter()
        .map(|r| match &r.data {
            RecordData::Srv {
                port,
                target,
                address,
                ..
            } => (*port, target.to_string(), *address),
            RecordData::A(_) => panic!("an A record"),
        })
        .collect();
    got.sort();
    assert_eq!(got[0], (53, "1.web.shop.skiff".into(), ip("10.1.0.2")));
    assert_eq!(got[5], (80, "3.web.shop.skiff".into(), ip("10.1.2.2")));
    // One port, by its name, full or short.
    for name in ["_80._tcp.web.shop.skiff", "_80._tcp.web"] {
        let Answer::Records(records) = ask(&r, name, QueryKind::Srv, API3, 0) else {
            panic!("no SRV records for {name}");
        };
        assert_eq!(records.len(), 3, "{name}");
        assert!(
            records
                .iter()
                .all(|r| matches!(r.data, RecordData::Srv { port: 80, .. }))
        );
    }
    let Answer::Records(records) = ask(&r, "_53._udp.web.shop.skiff", QueryKind::Srv, API3, 0)
    else {
        panic!("no SRV records");
    };
    assert_eq!(records.len(), 3);
    assert_eq!(
        ask(&r, "_53._tcp.web.shop.skiff", QueryKind::Srv, API3, 0),
        Answer::NxDomain
    );
}

#[test]
fn round_robin_rotates_with_each_query() {
    let r = Records::new(&section());
    let first: Vec<Ipv4Addr> = (0..3)
        .map(|n| a(&ask(&r, "web.shop.skiff", QueryKind::A, WEB1, n))[0])
        .collect();
    assert_eq!(
        sorted(first.clone()),
        vec![ip("10.1.0.2"), ip("10.1.1.2"), ip("10.1.2.2")]
    );
    // The order is a rotation: the same cycle.
    assert_eq!(
        a(&ask(&r, "web.shop.skiff", QueryKind::A, WEB1, 1)),
        vec![ip("10.1.1.2"), ip("10.1.2.2"), ip("10.1.0.2")]
    );
    assert_eq!(
        a(&ask(&r, "web.shop.skiff", QueryKind::A, WEB1, 3)),
        a(&ask(&r, "web.shop.skiff", QueryKind::A, WEB1, 0))
    );
}

#[test]
fn closest_prefers_the_callers_host_then_its_zone_then_all() {
    let r = Records::new(&section());
    // A container on n1: api's replica on n1.
    assert_eq!(
        a(&ask(&r, "api.shop.skiff", QueryKind::A, WEB1, 0)),
        vec![ip("10.1.0.3")]
    );
    // The host n1 (zone eu) likewise.
    assert_eq!(
        a(&ask(&r, "api.shop.skiff", QueryKind::A, HOST, 1)),
        vec![ip("10.1.0.3")]
    );
    // tasks. is never narrowed.
    assert_eq!(
        a(&ask(&r, "tasks.api.shop.skiff", QueryKind::A, HOST, 0)).len(),
        3
    );
    // Without a replica on n1: those of zone eu (n2).
    let mut s = section();
    s.services[1].replicas.retain(|rep| rep.node != "n1");
    let r = Records::new(&s);
    assert_eq!(
        a(&ask(&r, "api.shop.skiff", QueryKind::A, WEB1, 0)),
        vec![ip("10.1.1.3")]
    );
    // A caller in zone us on n3 gets n3's; the host with zone "ap": all.
    let mut s = section();
    s.services[1].replicas.retain(|rep| rep.node != "n1");
    s.zone = Some("ap".into());
    let r = Records::new(&s);
    assert_eq!(
        a(&ask(&r, "api.shop.skiff", QueryKind::A, HOST, 0)).len(),
        2
    );
    s.node = "n3".into();
    let r = Records::new(&s);
    assert_eq!(
        a(&ask(&r, "api.shop.skiff", QueryKind::A, HOST, 0)),
        vec![ip("10.1.2.3")]
    );
    // SRV follows the policy too.
    let Answer::Records(records) = ask(&r, "_80._tcp.web.shop.skiff", QueryKind::Srv, HOST, 0)
    else {
        panic!("no SRV");
    };
    assert_eq!(records.len(), 3, "web is round robin: every replica");
}

#[test]
fn version_answers_the_callers_release_else_all() {
    let r = Records::new(&section());
    // worker slot 1 is release 2: db's release-2 replica only.
    assert_eq!(
        a(&ask(&r, "db.shop.skiff", QueryKind::A, "10.2.0.5", 0)),
        vec![ip("10.2.1.4")]
    );
    assert_eq!(
        a(&ask(&r, "db", QueryKind::A, "10.2.0.5", 5)),
        vec![ip("10.2.1.4")]
    );
    // api is release 1: the old one.
    assert_eq!(
        a(&ask(&r, "db.shop.skiff", QueryKind::A, "10.2.0.3", 0)),
        vec![ip("10.2.0.4")]
    );
    // worker slot 2 is release 3, which db has not: every replica.
    assert_eq!(
        a(&ask(&r, "db.shop.skiff", QueryKind::A, "10.2.0.6", 0)).len(),
        2
    );
    // The host has no release: every replica.
    assert_eq!(a(&ask(&r, "db.shop.skiff", QueryKind::A, HOST, 0)).len(), 2);
    // Once the old one is unpublished, everyone gets the new one.
    let mut s = section();
    s.services[2].replicas[0].published = false;
    let r = Records::new(&s);
    assert_eq!(
        a(&ask(&r, "db.shop.skiff", QueryKind::A, "10.2.0.3", 0)),
        vec![ip("10.2.1.4")]
    );
}

#[test]
fn only_containers_of_the_records_and_the_host_are_answered() {
    let r = Records::new(&section());
    for stranger in ["192.0.2.1", "10.1.0.99", "100.64.0.2"] {
        assert_eq!(
            ask(&r, "web.shop.skiff", QueryKind::A, stranger, 0),
            Answer::Refused,
            "{stranger}"
        );
        assert_eq!(
            ask(&r, "example.com", QueryKind::A, stranger, 0),
            Answer::Refused,
            "{stranger}"
        );
        assert!(!r.knows(from(stranger)));
    }
    // The host: loopback (v4 and v6), its listen addresses, its mesh
    // address, and what it is told.
    for host in ["127.0.0.1", "127.8.0.1", "10.2.0.1", "100.64.0.1"] {
        assert_eq!(
            ask(&r, "example.com", QueryKind::A, host, 0),
            Answer::Forward,
            "{host}"
        );
    }
    assert!(r.knows("::1".parse().unwrap()));
    assert!(r.knows("::ffff:10.1.0.2".parse().unwrap()));
    assert!(!r.knows("2001:db8::1".parse().unwrap()));
    let r = r.with_host_addresses(["192.0.2.1".parse().unwrap()]);
    assert_eq!(
        ask(&r, "example.com", QueryKind::A, "192.0.2.1", 0),
        Answer::Forward
    );
    assert_eq!(r.generation(), 9);
}

#[test]
fn the_host_gets_each_replicas_first_address() {
    let r = Records::new(&section());
    assert_eq!(
        sorted(a(&ask(&r, "tasks.api.shop.skiff", QueryKind::A, HOST, 0))),
        vec![ip("10.1.0.3"), ip("10.1.1.3"), ip("10.1.2.3")]
    );
}

#[test]
fn empty_records_refuse_strangers_and_forward_for_the_host() {
    let r = Records::new(&DnsSection::default());
    assert_eq!(
        ask(&r, "web.shop.skiff", QueryKind::A, HOST, 0),
        Answer::NxDomain
    );
    assert_eq!(
        ask(&r, "example.com", QueryKind::A, HOST, 0),
        Answer::Forward
    );
    assert_eq!(
        ask(&r, "example.com", QueryKind::A, "10.1.0.2", 0),
        Answer::Refused
    );
}

fn arb_section() -> impl Strategy<Value = DnsSection> {
    let name = "[a-cA-C0-9_.-]{0,6}";
    let rep = (
        0u32..4,
        "[n][0-3]",
        proptest::option::of("[ab]"),
        0u64..3,
        proptest::collection::vec((0u32..3, 0u8..8), 0..3),
        any::<bool>(),
    )
        .prop_map(|(slot, node, zone, release, addrs, published)| Replica {
            slot,
            node,
            zone,
            release,
            addresses: addrs
                .into_iter()
                .map(|(network, last)| ReplicaAddress {
                    network,
                    ip: Ipv4Addr::new(10, 0, 0, last),
                })
                .collect(),
            published,
        });
    let svc = (
        name,
        name,
        prop_oneof![
            Just(Policy::RoundRobin),
            Just(Policy::Closest),
            Just(Policy::Version)
        ],
        proptest::collection::vec((any::<u16>(), any::<bool>()), 0..3),
        proptest::collection::vec(rep, 0..5),
    )
        .prop_map(|(stack, service, policy, ports, replicas)| ServiceRecords {
            stack,
            service,
            policy,
            ttl_secs: 5,
            ports: ports
                .into_iter()
                .map(|(port, tcp)| PortRecord {
                    port,
                    protocol: if tcp { Protocol::Tcp } else { Protocol::Udp },
                })
                .collect(),
            replicas,
        });
    (
        "[n][0-3]",
        proptest::option::of("[ab]"),
        proptest::collection::vec(svc, 0..4),
        proptest::collection::vec(("[nN][0-3.]{0,2}", 0u8..4), 0..3),
    )
        .prop_map(|(node, zone, services, nodes)| DnsSection {
            generation: 1,
            node,
            zone,
            listen: vec![Ipv4Addr::new(10, 0, 0, 1)],
            services,
            nodes: nodes
                .into_iter()
                .map(|(name, last)| NodeRecord {
                    name,
                    address: Ipv4Addr::new(100, 64, 0, last),
                })
                .collect(),
        })
}

proptest! {
    #[test]
    fn answer_never_panics_and_only_gives_published_replicas(
        section in arb_section(),
        name in "([a-cA-C0-9_-]{0,4}\\.?){0,5}(skiff|SKIFF)?\\.?|\\PC{0,40}",
        kind in prop_oneof![Just(QueryKind::A), Just(QueryKind::Aaaa), Just(QueryKind::Srv), Just(QueryKind::Other)],
        last in 0u8..8,
        host in any::<bool>(),
        rotation in any::<u64>(),
    ) {
        let r = Records::new(&section);
        let source = if host { from("127.0.0.1") } else { IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)) };
        let answer = r.answer(&Question { name: &name, kind }, source, rotation);
        let published: Vec<Ipv4Addr> = section
            .services
            .iter()
            .flat_map(|s| s.replicas.iter())
            .filter(|rep| rep.published)
            .flat_map(|rep| rep.addresses.iter().map(|a| a.ip))
            .chain(section.nodes.iter().map(|n| n.address))
            .collect();
        if let Answer::Records(records) = &answer {
            prop_assert!(!records.is_empty());
            for rec in records {
                let ip = match &rec.data {
                    RecordData::A(ip) => *ip,
                    RecordData::Srv { address, .. } => *address,
                };
                prop_assert!(published.contains(&ip), "{ip} is not published");
            }
        }
    }
}
