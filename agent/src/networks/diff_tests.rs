use super::*;
use proptest::prelude::*;

fn spec(stack: &str, name: &str) -> NetworkSpec {
    NetworkSpec::local(stack, name, false)
}

fn cluster() -> ClusterNet {
    ClusterNet {
        range: "10.66.0.0/16".into(),
        hosts: "10.66.0.0/22".into(),
        mtu: 1440,
        attach: Attachment::Bridge,
    }
}

/// Network `id` of the cluster: subnet `10.66.<4 id>.0/22`, leasing its
/// first /26 (or, with `lease` 1, its second) here.
fn cspec(stack: &str, name: &str, id: u32, lease: u32) -> NetworkSpec {
    let third = 4 * id;
    let low = 64 * lease;
    NetworkSpec {
        id,
        subnet: Some(format!("10.66.{third}.0/22")),
        leases: vec![format!("10.66.{third}.{low}/26")],
        gateway: Some(format!("10.66.{third}.{}", low + 1)),
        ..NetworkSpec::local(stack, name, false)
    }
}

fn seen(stack: &str, name: &str) -> Observed {
    Observed {
        name: format!("skiff.{stack}.{name}.n1"),
        stack: stack.into(),
        network: name.into(),
        settings: None,
        in_use: false,
        bridge: None,
    }
}

/// What the engine has after making `spec` as wanted.
fn made(spec: &NetworkSpec, cluster: Option<&ClusterNet>, arp: bool) -> Observed {
    let s = settings(spec, cluster).unwrap();
    Observed {
        settings: fingerprint(&s),
        bridge: match &s {
            Settings::Plain => None,
            Settings::Cluster(c) => Some(Bridge {
                name: c.bridge.clone(),
                proxy_arp: arp,
            }),
        },
        ..seen(&spec.stack, &spec.name)
    }
}

fn create(spec: &NetworkSpec, cluster: Option<&ClusterNet>) -> Action {
    Action::Create {
        spec: spec.clone(),
        settings: settings(spec, cluster).unwrap(),
    }
}

fn host(networks: Vec<Observed>) -> Host {
    Host {
        networks,
        ..Host::default()
    }
}

fn section(networks: Vec<NetworkSpec>, cluster: Option<ClusterNet>) -> NetworksSection {
    NetworksSection { networks, cluster }
}

#[test]
fn creates_missing_and_removes_unwanted_networks() {
    let desired = section(vec![spec("shop", "default"), spec("shop", "back")], None);
    let observed = host(vec![seen("shop", "default"), seen("old", "default")]);
    assert_eq!(
        diff(&desired, &observed),
        vec![
            Action::Remove {
                name: "skiff.old.default.n1".into()
            },
            create(&spec("shop", "back"), None),
        ]
    );
    assert!(problems(&desired, &observed, "").is_empty());
    assert_eq!(rules(&desired), Ok(None));
}

#[test]
fn a_cluster_network_is_made_with_its_settings_and_then_gets_proxy_arp() {
    let c = cluster();
    let web = cspec("shop", "default", 2, 1);
    let desired = section(vec![web.clone()], Some(c.clone()));
    let Ok(Settings::Cluster(s)) = settings(&web, Some(&c)) else {
        panic!("a cluster network")
    };
    assert_eq!(
        s.fingerprint(),
        "subnet=10.66.8.0/22 range=10.66.8.64/26 gateway=10.66.8.65 bridge=sk-2 mtu=1440 internal=false"
    );
    assert_eq!(diff(&desired, &host(vec![])), vec![create(&web, Some(&c))]);
    let fresh = made(&web, Some(&c), false);
    assert_eq!(
        diff(&desired, &host(vec![fresh])),
        vec![Action::ProxyArp {
            stack: "shop".into(),
            name: "default".into(),
            bridge: "sk-2".into()
        }]
    );
    assert!(diff(&desired, &host(vec![made(&web, Some(&c), true)])).is_empty());
    // Without a cluster network the same spec is a plain bridge.
    assert_eq!(settings(&web, None), Ok(Settings::Plain));
}

#[test]
fn a_network_made_with_other_settings_is_remade_only_once_unused() {
    let c = cluster();
    let before = cspec("shop", "default", 2, 0);
    let after = cspec("shop", "default", 2, 1);
    let desired = section(vec![after.clone()], Some(c.clone()));
    let old = made(&before, Some(&c), true);
    assert_eq!(
        diff(&desired, &host(vec![old.clone()])),
        vec![Action::Replace {
            name: "skiff.shop.default.n1".into(),
            spec: after.clone(),
            settings: settings(&after, Some(&c)).unwrap(),
        }]
    );
    assert!(problems(&desired, &host(vec![old.clone()]), "").is_empty());
    let busy = Observed {
        in_use: true,
        ..old.clone()
    };
    assert!(diff(&desired, &host(vec![busy.clone()])).is_empty());
    // It keeps serving meanwhile: proxy ARP stays on its bridge.
    let mut rebooted = busy.clone();
    rebooted.bridge = Some(Bridge {
        name: "sk-2".into(),
        proxy_arp: false,
    });
    assert_eq!(
        diff(&desired, &host(vec![rebooted])),
        vec![Action::ProxyArp {
            stack: "shop".into(),
            name: "default".into(),
            bridge: "sk-2".into()
        }]
    );
    let p = problems(&desired, &host(vec![busy]), "");
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].stack.as_str(), p[0].name.as_str()),
        ("shop", "default")
    );
    assert!(
        p[0].error.contains("range=10.66.8.0/26") && p[0].error.contains("range=10.66.8.64/26"),
        "{}",
        p[0].error
    );
    // A plain bridge from before the cluster network, and back.
    let plain = Observed {
        in_use: true,
        ..seen("shop", "default")
    };
    let p = problems(&desired, &host(vec![plain]), "");
    assert!(
        p[0].error
            .contains("made with other settings (a plain bridge)")
    );
    let back = section(vec![spec("shop", "default")], None);
    assert_eq!(
        diff(&back, &host(vec![old])),
        vec![Action::Replace {
            name: "skiff.shop.default.n1".into(),
            spec: spec("shop", "default"),
            settings: Settings::Plain,
        }]
    );
}

#[test]
fn a_subnet_overlapping_a_route_the_agent_did_not_make_is_not_made() {
    let c = cluster();
    let web = cspec("shop", "default", 2, 0);
    let desired = section(vec![web.clone()], Some(c.clone()));
    let mut h = host(vec![]);
    h.routes = vec![
        Route {
            net: "10.66.8.0/22".parse().unwrap(),
            device: "sk-9".into(),
        },
        Route {
            net: "10.66.8.64/26".parse().unwrap(),
            device: "skw0".into(),
        },
        Route {
            net: "192.168.1.0/24".parse().unwrap(),
            device: "eth0".into(),
        },
    ];
    assert_eq!(diff(&desired, &h), vec![create(&web, Some(&c))]);
    h.routes.push(Route {
        net: "10.66.0.0/16".parse().unwrap(),
        device: "eth1".into(),
    });
    assert!(diff(&desired, &h).is_empty());
    let p = problems(&desired, &h, "");
    assert!(
        p[0].error
            .contains("subnet 10.66.8.0/22 overlaps the host's route to 10.66.0.0/16 via eth1"),
        "{}",
        p[0].error
    );
}

#[test]
fn a_spec_without_a_lease_or_gateway_is_reported_not_made() {
    let c = cluster();
    let mut web = cspec("shop", "default", 2, 0);
    web.leases.clear();
    let desired = section(vec![web], Some(c));
    assert!(diff(&desired, &host(vec![])).is_empty());
    let p = problems(&desired, &host(vec![]), "");
    assert!(
        p[0].error.contains("leases no part of 10.66.8.0/22"),
        "{}",
        p[0].error
    );
}

#[test]
fn rules_and_leases_come_from_the_section() {
    let c = cluster();
    let mut back = cspec("shop", "back", 3, 0);
    back.internal = true;
    back.leases.push("10.66.12.128/26".into());
    let desired = section(
        vec![cspec("shop", "default", 2, 0), back, spec("x", "plain")],
        Some(c),
    );
    let r = rules(&desired).unwrap().unwrap();
    assert_eq!(r.range.to_string(), "10.66.0.0/16");
    assert_eq!(r.hosts.to_string(), "10.66.0.0/22");
    let nets: Vec<_> = r
        .networks
        .iter()
        .map(|n| (n.subnet.to_string(), n.internal, n.bridge.as_str()))
        .collect();
    assert_eq!(
        nets,
        vec![
            ("10.66.8.0/22".to_owned(), false, "sk-2"),
            ("10.66.12.0/22".to_owned(), true, "sk-3"),
        ]
    );
    let l = leases(&desired, "n1");
    assert_eq!(l.len(), 2);
    let back = &l["skiff.shop.back.n1"];
    assert_eq!(back.leases.len(), 2);
    assert_eq!(back.gateway.to_string(), "10.66.12.1");
}

/// A random wanted network: plain, or cluster network `id` with one of two
/// leases.
fn any_spec() -> impl Strategy<Value = NetworkSpec> {
    (0u8..3, 0u8..3, 0u32..3, 0u32..2).prop_map(|(s, n, id, lease)| {
        let (stack, name) = (format!("s{s}"), format!("n{n}"));
        if id == 0 {
            spec(&stack, &name)
        } else {
            cspec(&stack, &name, id, lease)
        }
    })
}

proptest! {
    /// After the actions every wanted network exists and only those; each
    /// has its settings unless containers still use it (then it is
    /// reported), proxy ARP is on, and a second diff changes nothing.
    #[test]
    fn converges_in_one_round(
        want in proptest::collection::vec(any_spec(), 0..6),
        have in proptest::collection::vec((any_spec(), any::<bool>(), any::<bool>()), 0..6),
        on in any::<bool>(),
    ) {
        let c = on.then(cluster);
        let desired = section(want, c.clone());
        let mut observed: Vec<Observed> = Vec::new();
        for (s, in_use, arp) in &have {
            if observed.iter().any(|o| o.stack == s.stack && o.network == s.name) {
                continue;
            }
            let any_cluster = cluster();
            observed.push(Observed { in_use: *in_use, ..made(s, Some(&any_cluster), *arp) });
        }
        let mut h = host(observed);
        for a in diff(&desired, &h) {
            match a {
                Action::Create { spec, .. } => h.networks.push(made(&spec, c.as_ref(), false)),
                Action::Remove { name } => h.networks.retain(|o| o.name != name),
                Action::Replace { name, spec, .. } => {
                    h.networks.retain(|o| o.name != name);
                    h.networks.push(made(&spec, c.as_ref(), false));
                }
                Action::ProxyArp { bridge, .. } => {
                    for o in &mut h.networks {
                        if let Some(b) = o.bridge.as_mut().filter(|b| b.name == bridge) {
                            b.proxy_arp = true;
                        }
                    }
                }
                Action::Weave(w) => prop_assert!(false, "no Weave here: {w:?}"),
            }
        }
        // Proxy ARP is turned on the round after a bridge is made.
        let again = diff(&desired, &h);
        prop_assert!(again.iter().all(|a| matches!(a, Action::ProxyArp { .. })), "{again:?}");
        for o in &mut h.networks {
            if let Some(b) = o.bridge.as_mut() {
                b.proxy_arp = true;
            }
        }
        prop_assert!(diff(&desired, &h).is_empty());
        let names: BTreeSet<_> = h.networks.iter().map(|o| (o.stack.clone(), o.network.clone())).collect();
        let wanted: BTreeSet<_> = desired.networks.iter().map(|n| (n.stack.clone(), n.name.clone())).collect();
        prop_assert_eq!(names, wanted);
        let reported: BTreeSet<_> = problems(&desired, &h, "").into_iter().map(|p| (p.stack, p.name)).collect();
        for (key, spec) in super::wanted(&desired) {
            let o = h.networks.iter().find(|o| (o.stack.as_str(), o.network.as_str()) == key).unwrap();
            let right = o.settings == fingerprint(&settings(spec, c.as_ref()).unwrap());
            let key = (key.0.to_owned(), key.1.to_owned());
            prop_assert_eq!(right, !reported.contains(&key));
            prop_assert!(right || o.in_use);
        }
    }
}
