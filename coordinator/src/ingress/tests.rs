use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use skiff_shared::sections::dns::{Protocol, Replica, ReplicaAddress, ServiceRecords};
use skiff_shared::sections::ingress::Tls;

use super::*;
use crate::deploy::resolve::{self, ServiceDef};
use crate::dns::records::{Content, NodeInfo};

fn defs(compose: &str) -> Result<Vec<ServiceDef>, String> {
    let env = BTreeMap::new();
    let input = skiff_compose::stack::Input::new(
        compose,
        "compose.yml",
        std::path::Path::new("/srv"),
        &env,
    );
    let stack = skiff_compose::stack::parse(&input)
        .map_err(|e| e.to_string())?
        .stack;
    resolve::resolve("shop", &stack, &BTreeMap::new())
        .map(|(d, _)| d)
        .map_err(|e| {
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })
}

fn replica(slot: u32, node: &str, ip: [u8; 4], published: bool) -> Replica {
    Replica {
        slot,
        node: node.into(),
        zone: None,
        release: 1,
        addresses: vec![ReplicaAddress {
            network: 1,
            ip: Ipv4Addr::from(ip),
        }],
        published,
    }
}

fn records() -> Records {
    let service = |name: &str, replicas| ServiceRecords {
        stack: "shop".into(),
        service: name.into(),
        policy: Default::default(),
        ttl_secs: 5,
        ports: vec![],
        replicas,
    };
    Records {
        generation: 7,
        content: Content {
            services: vec![
                service(
                    "web",
                    vec![
                        replica(1, "a", [10, 66, 8, 2], true),
                        replica(2, "b", [10, 66, 9, 2], false),
                    ],
                ),
                service("db", vec![replica(1, "a", [10, 66, 8, 3], true)]),
            ],
            nodes: vec![],
        },
        nodes: BTreeMap::from([
            (
                "n1".into(),
                NodeInfo {
                    name: "a".into(),
                    zone: None,
                    edge: true,
                },
            ),
            (
                "n2".into(),
                NodeInfo {
                    name: "b".into(),
                    zone: None,
                    edge: false,
                },
            ),
        ]),
    }
}

const WEB: &str = "services:\n  web:\n    image: x\n    ports: [\"18080:8080\", \"5353:53/udp\"]\n    x-skiff:\n      routes:\n        - {domain: shop.example.com, tls: redirect}\n        - {domain: shop.example.com, path: /api, port: 9090}\n  db:\n    image: y\n";

#[test]
fn ingress_ports_leave_the_container_and_routes_find_their_port() {
    let d = defs(WEB).unwrap();
    let web = d.iter().find(|d| d.name == "web").unwrap();
    assert!(
        web.template.ports.is_empty(),
        "no Docker binding: {:?}",
        web.template.ports
    );
    assert_eq!(web.max_per_host, None, "any number of replicas per host");
    assert_eq!(
        web.ingress.ports,
        vec![
            resolve::IngressPort {
                published: 18080,
                protocol: Protocol::Tcp,
                target: 8080
            },
            resolve::IngressPort {
                published: 5353,
                protocol: Protocol::Udp,
                target: 53
            },
        ]
    );
    // `/` goes to the only TCP container port; `/api` to the one given.
    let routes: Vec<(&str, u16, Tls)> = web
        .ingress
        .routes
        .iter()
        .map(|r| (r.path.as_str(), r.port, r.tls))
        .collect();
    assert_eq!(
        routes,
        vec![("/", 8080, Tls::Redirect), ("/api", 9090, Tls::Auto)]
    );
}

#[test]
fn host_mode_ports_stay_bound_on_the_host_one_replica_per_host() {
    let d = defs(
        "services:\n  web:\n    image: x\n    ports:\n      - {target: 8080, published: 18090, mode: host}\n",
    )
    .unwrap();
    assert_eq!(d[0].template.ports.len(), 1);
    assert!(d[0].ingress.is_empty());
    assert_eq!(d[0].max_per_host, Some(1));
}

#[test]
fn bad_ingress_is_refused_naming_the_service_and_the_fix() {
    for (compose, expect) in [
        (
            "services:\n  web:\n    image: x\n    x-skiff: {routes: [{domain: a.example.com}]}\n",
            "add `port:`",
        ),
        (
            "services:\n  web:\n    image: x\n    expose: [\"80\", \"81\"]\n    x-skiff: {routes: [{domain: a.example.com}]}\n",
            "several container ports",
        ),
        (
            "services:\n  web:\n    image: x\n    ports: [\"127.0.0.1:80:80\"]\n",
            "mode: host",
        ),
        (
            "services:\n  a:\n    image: x\n    expose: [\"80\"]\n    x-skiff: {domains: [a.example.com]}\n  b:\n    image: x\n    expose: [\"80\"]\n    x-skiff: {routes: [{domain: a.example.com}]}\n",
            "also taken by service a",
        ),
        (
            "services:\n  a:\n    image: x\n    ports: [\"80:80\"]\n  b:\n    image: x\n    ports: [{target: 81, published: 80, mode: host}]\n",
            "already published by service `a`",
        ),
    ] {
        let e = defs(compose).unwrap_err();
        assert!(e.contains(expect), "{compose}\n{e}");
    }
}

#[test]
fn every_host_gets_the_ports_and_routes_and_only_published_endpoints() {
    let d = defs(WEB).unwrap();
    let services: BTreeMap<(String, String), IngressSettings> = d
        .iter()
        .filter(|d| !d.ingress.is_empty())
        .map(|d| (("shop".to_owned(), d.name.clone()), d.ingress.clone()))
        .collect();
    let shared = Shared {
        settings: ProxySettings::default(),
        services: &services,
        certificates: vec![],
        challenges: vec![],
    };
    let a = section(&records(), "n1", &shared);
    assert_eq!(a.generation, 7);
    assert!(a.edge);
    assert_eq!(a.node, "a");
    assert_eq!(a.ports.len(), 2);
    assert_eq!(a.routes.len(), 2);
    // Only the service with an ingress, only its published replica.
    assert_eq!(a.backends.len(), 1);
    assert_eq!(a.backends[0].service, "web");
    assert_eq!(
        a.backends[0].endpoints,
        vec![Endpoint {
            ip: Ipv4Addr::new(10, 66, 8, 2),
            node: "a".into(),
            slot: 1
        }]
    );
    let b = section(&records(), "n2", &shared);
    assert!(!b.edge, "labelled edge=false");
    assert_eq!(b.routes, a.routes, "the same table, only not served");
}

#[test]
fn another_stack_cannot_take_a_port_or_route() {
    let mine = defs(WEB).unwrap();
    let theirs: BTreeMap<(String, String), IngressSettings> = mine
        .iter()
        .filter(|d| !d.ingress.is_empty())
        .map(|d| (("blog".to_owned(), d.name.clone()), d.ingress.clone()))
        .collect();
    let c = conflicts("shop", &mine, &theirs);
    assert!(
        c.iter()
            .any(|m| m.contains("port 18080/tcp is already published by stack blog")),
        "{c:?}"
    );
    assert!(
        c.iter()
            .any(|m| m.contains("route shop.example.com/api is already taken by stack blog")),
        "{c:?}"
    );
    // The same stack deploying again conflicts with nothing.
    assert!(conflicts("blog", &mine, &theirs).is_empty());
}
