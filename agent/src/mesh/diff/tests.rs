//! The mesh diff's tests: examples, and convergence in one round.

use super::*;
use proptest::prelude::*;

fn peer(n: u8, key: bool, subnets: &[&str]) -> MeshPeer {
    MeshPeer {
        node_id: format!("n{n}"),
        name: format!("host{n}"),
        endpoint: format!("192.0.2.{n}"),
        address: format!("10.66.0.{n}"),
        public_key: key.then(|| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode([n; 32])
        }),
        subnets: subnets.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn section(mode: MeshMode, peers: Vec<MeshPeer>) -> MeshSection {
    MeshSection {
        mode,
        range: "10.66.0.0/16".into(),
        address: "10.66.0.1/22".into(),
        port: mode.default_port(),
        mtu: 1440,
        peers,
    }
}

fn env(wireguard: Wireguard) -> Environment {
    Environment {
        wireguard,
        underlay: Some(Underlay {
            dev: "eth0".into(),
            address: Ipv4Addr::new(192, 0, 2, 1),
            mtu: 1500,
        }),
    }
}

fn empty(wireguard: Wireguard) -> Observed {
    Observed {
        env: env(wireguard),
        links: Vec::new(),
        wireguard: None,
        fdb: Vec::new(),
        neighbours: Vec::new(),
        routes: Vec::new(),
        firewall: None,
    }
}

/// What the host looks like after the actions (as the kernel and
/// WireGuard behave: a removed device takes its state with it).
fn simulate(o: &mut Observed, actions: &[Action]) {
    for a in actions {
        match a {
            Action::RemoveLink(name) => {
                o.links.retain(|l| &l.name != name);
                o.routes.retain(|r| r.dev() != Some(name.as_str()));
                if name == VXLAN_DEVICE {
                    o.fdb.clear();
                    o.neighbours.clear();
                } else {
                    o.wireguard = None;
                }
            }
            Action::CreateLink(spec) => o.links.push(Link {
                name: spec.name.clone(),
                kind: spec.kind.clone(),
                mtu: 1500,
                up: false,
                mac: spec.mac.clone(),
                addresses: Vec::new(),
                rp_filter: Some(1),
            }),
            Action::SetMtu { dev, mtu } => link(o, dev).mtu = *mtu,
            Action::SetMac { dev, mac } => link(o, dev).mac = Some(mac.clone()),
            Action::SetRpFilter { dev, value } => link(o, dev).rp_filter = Some(*value),
            Action::AddAddress { dev, address } => link(o, dev).addresses.push(*address),
            Action::RemoveAddress { dev, address } => {
                link(o, dev).addresses.retain(|a| a != address);
            }
            Action::SetUp(dev) => link(o, dev).up = true,
            Action::StartWireguard { port } => {
                o.wireguard = Some(WgState {
                    port: *port,
                    peers: Vec::new(),
                });
            }
            Action::SetListenPort(p) => o.wireguard.as_mut().unwrap().port = *p,
            Action::SetPeer(p) => {
                let wg = o.wireguard.as_mut().unwrap();
                wg.peers.retain(|q| q.key != p.key);
                wg.peers.push(p.clone());
            }
            Action::RemovePeer(k) => o.wireguard.as_mut().unwrap().peers.retain(|q| &q.key != k),
            Action::SetFdb(f) => {
                o.fdb.retain(|g| g != f);
                o.fdb.push(f.clone());
            }
            Action::RemoveFdb(f) => o.fdb.retain(|g| g != f),
            Action::SetNeighbour(n) => {
                o.neighbours.retain(|m| m.address != n.address);
                o.neighbours.push(n.clone());
            }
            Action::RemoveNeighbour(a) => o.neighbours.retain(|m| m.address != *a),
            Action::AddRoute(r) => {
                // `ip route replace`.
                o.routes.retain(|q| match (q, r) {
                    (Route::Unicast { dst: a, .. }, Route::Unicast { dst: b, .. }) => a != b,
                    _ => q != r,
                });
                o.routes.push(r.clone());
            }
            Action::RemoveRoute(r) => o.routes.retain(|q| q != r),
            Action::Firewall(f) => o.firewall = f.clone(),
        }
    }
}

fn link<'a>(o: &'a mut Observed, dev: &str) -> &'a mut Link {
    o.links.iter_mut().find(|l| l.name == dev).unwrap()
}

#[test]
fn userspace_wireguard_from_nothing() {
    let s = section(
        MeshMode::Wireguard,
        vec![peer(2, true, &["10.66.4.0/26"]), peer(3, false, &[])],
    );
    let actions = diff(&s, &empty(Wireguard::Userspace));
    let dev = || WIREGUARD_DEVICE.to_owned();
    assert_eq!(
        actions,
        vec![
            Action::CreateLink(LinkSpec {
                name: dev(),
                kind: LinkKind::Tun,
                mtu: 1440,
                mac: None
            }),
            Action::SetMtu {
                dev: dev(),
                mtu: 1440
            },
            Action::SetRpFilter {
                dev: dev(),
                value: 2
            },
            Action::AddAddress {
                dev: dev(),
                address: "10.66.0.1/22".parse().unwrap()
            },
            Action::SetUp(dev()),
            Action::StartWireguard { port: 51820 },
            Action::SetPeer(WgPeer {
                key: s.peers[0].public_key.clone().unwrap(),
                endpoint: Some("192.0.2.2:51820".parse().unwrap()),
                allowed_ips: vec![
                    "10.66.0.2/32".parse().unwrap(),
                    "10.66.4.0/26".parse().unwrap()
                ],
                keepalive: Some(25),
            }),
            Action::AddRoute(Route::Unreachable {
                dst: "10.66.0.0/16".parse().unwrap(),
                metric: 4242
            }),
            Action::AddRoute(Route::Unicast {
                dst: "10.66.4.0/26".parse().unwrap(),
                via: None,
                dev: dev()
            }),
            Action::Firewall(Some(MeshRules {
                device: dev(),
                port: 51820,
                peers_only: false,
                peers: vec![Ipv4Addr::new(192, 0, 2, 2)],
            })),
        ]
    );
    // The peer without a key is left out, and said so.
    let t = target(&s, &env(Wireguard::Userspace)).unwrap();
    assert_eq!(t.skipped.len(), 1);
    assert!(t.skipped[0].1.contains("public key"), "{:?}", t.skipped);
}

#[test]
fn vxlan_routes_via_the_peer_with_derived_macs() {
    let s = section(MeshMode::Vxlan, vec![peer(2, false, &["10.66.4.0/26"])]);
    let actions = diff(&s, &empty(Wireguard::Kernel));
    assert!(actions.contains(&Action::CreateLink(LinkSpec {
        name: VXLAN_DEVICE.into(),
        kind: LinkKind::Vxlan {
            vni: 4242,
            port: 4789,
            local: Some(Ipv4Addr::new(192, 0, 2, 1)),
            dev: Some("eth0".into()),
        },
        mtu: 1440,
        mac: Some("02:73:0a:42:00:01".into()),
    })));
    assert!(actions.contains(&Action::SetFdb(Fdb {
        mac: "02:73:0a:42:00:02".into(),
        dst: Ipv4Addr::new(192, 0, 2, 2)
    })));
    assert!(actions.contains(&Action::SetNeighbour(Neighbour {
        address: Ipv4Addr::new(10, 66, 0, 2),
        mac: "02:73:0a:42:00:02".into()
    })));
    assert!(actions.contains(&Action::AddRoute(Route::Unicast {
        dst: "10.66.4.0/26".parse().unwrap(),
        via: Some(Ipv4Addr::new(10, 66, 0, 2)),
        dev: VXLAN_DEVICE.into()
    })));
    assert!(actions.iter().any(|a| matches!(a,
        Action::Firewall(Some(r)) if r.peers_only && r.port == 4789)));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::StartWireguard { .. }))
    );
}

#[test]
fn leaving_removes_devices_routes_and_the_firewall_part() {
    let s = section(MeshMode::Wireguard, vec![peer(2, true, &["10.66.4.0/26"])]);
    let mut o = empty(Wireguard::Userspace);
    let a = diff(&s, &o);
    simulate(&mut o, &a);
    // Someone else's route is never listed (only proto 242 is read),
    // so leaving names only the agent's own.
    let leave = diff(&MeshSection::default(), &o);
    simulate(&mut o, &leave);
    assert!(o.links.is_empty() && o.routes.is_empty() && o.firewall.is_none());
    assert!(leave.contains(&Action::RemoveLink(WIREGUARD_DEVICE.into())));
    assert!(diff(&MeshSection::default(), &o).is_empty());
}

#[test]
fn weave_makes_nothing() {
    let s = section(MeshMode::Weave, vec![peer(2, true, &["10.66.4.0/26"])]);
    assert!(diff(&s, &empty(Wireguard::Userspace)).is_empty());
}

#[test]
fn a_device_of_another_kind_is_remade() {
    let s = section(MeshMode::Wireguard, vec![]);
    let mut o = empty(Wireguard::Userspace);
    o.links.push(Link {
        name: WIREGUARD_DEVICE.into(),
        kind: LinkKind::Other("dummy".into()),
        mtu: 1500,
        up: true,
        mac: None,
        addresses: vec![],
        rp_filter: Some(2),
    });
    let actions = diff(&s, &o);
    assert_eq!(actions[0], Action::RemoveLink(WIREGUARD_DEVICE.into()));
    assert!(matches!(actions[1], Action::CreateLink(_)));
}

fn arb_section() -> impl Strategy<Value = MeshSection> {
    (
        prop_oneof![
            Just(MeshMode::Wireguard),
            Just(MeshMode::Vxlan),
            Just(MeshMode::Weave)
        ],
        proptest::collection::vec((2u8..8, any::<bool>(), 0u8..4, 0u8..4), 0..6),
        prop_oneof![Just(1440u32), Just(1380)],
        any::<bool>(),
    )
        .prop_map(|(mode, peers, mtu, leave)| {
            if leave {
                return MeshSection::default();
            }
            let mut s = section(
                mode,
                peers
                    .into_iter()
                    .map(|(n, key, a, b)| {
                        let subnets = [
                            format!("10.66.{}.0/26", 4 + a),
                            format!("10.66.{}.64/26", 4 + b),
                        ];
                        let subnets: Vec<&str> = subnets.iter().map(String::as_str).collect();
                        peer(n, key, &subnets)
                    })
                    .collect(),
            );
            s.mtu = mtu;
            s
        })
}

proptest! {
    /// From whatever an earlier section left, one round of actions
    /// reaches the target: a second diff changes nothing.
    #[test]
    fn converges_in_one_round(
        before in arb_section(),
        after in arb_section(),
        kernel in any::<bool>(),
    ) {
        let wg = if kernel { Wireguard::Kernel } else { Wireguard::Userspace };
        let mut o = empty(wg);
        let a = diff(&before, &o);
        simulate(&mut o, &a);
        prop_assert!(diff(&before, &o).is_empty(), "before: {:?}", diff(&before, &o));
        let a = diff(&after, &o);
        simulate(&mut o, &a);
        let again = diff(&after, &o);
        prop_assert!(again.is_empty(), "after: {:?}", again);
        let t = target(&after, &o.env).unwrap();
        let mut routes = o.routes.clone();
        routes.sort();
        prop_assert_eq!(routes, t.routes);
        prop_assert_eq!(o.links.len(), usize::from(t.link.is_some()));
    }
}
