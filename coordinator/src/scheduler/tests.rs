use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;
use skiff_compose::placement::{Constraint, NodeAttrs};

use super::*;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn host(id: &str, cpu_millis: u64, memory_bytes: u64) -> Host {
    Host {
        attrs: NodeAttrs {
            id: id.to_owned(),
            hostname: format!("{id}.example"),
            os: "linux".into(),
            arch: "x86_64".into(),
            labels: BTreeMap::new(),
        },
        status: HostStatus::Up,
        capacity: Resources {
            cpu_millis,
            memory_bytes,
        },
        images: BTreeSet::new(),
    }
}

fn big(id: &str) -> Host {
    host(id, 64_000, 256 * GIB)
}

fn labelled(mut h: Host, key: &str, value: &str) -> Host {
    h.attrs.labels.insert(key.into(), value.into());
    h
}

fn down(mut h: Host) -> Host {
    h.status = HostStatus::Down;
    h
}

fn svc(name: &str, replicas: u32) -> Service {
    Service {
        name: name.into(),
        mode: Mode::Replicated(replicas),
        constraints: Vec::new(),
        max_per_host: None,
        reservations: Resources::default(),
        image: format!("registry.local/{name}:1"),
        image_digest: None,
        stateful: false,
    }
}

fn global(name: &str) -> Service {
    Service {
        mode: Mode::Global,
        ..svc(name, 0)
    }
}

fn constrained(mut s: Service, text: &str) -> Service {
    match text.parse::<Constraint>() {
        Ok(c) => s.constraints.push(c),
        Err(e) => panic!("bad test constraint: {e}"),
    }
    s
}

fn reserve(mut s: Service, cpu_millis: u64, memory_bytes: u64) -> Service {
    s.reservations = Resources {
        cpu_millis,
        memory_bytes,
    };
    s
}

fn stateful(mut s: Service) -> Service {
    s.stateful = true;
    s
}

fn at(service: &str, slot: u32, host: &str) -> Placement {
    Placement {
        service: service.into(),
        slot: Slot::Replica(slot),
        host: host.into(),
    }
}

fn at_global(service: &str, host: &str) -> Placement {
    Placement {
        service: service.into(),
        slot: Slot::Global,
        host: host.into(),
    }
}

fn per_host(plan: &Plan, service: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for p in plan.placements.iter().filter(|p| p.service == service) {
        *out.entry(p.host.clone()).or_default() += 1;
    }
    out
}

fn messages(plan: &Plan) -> Vec<String> {
    plan.errors.iter().map(ToString::to_string).collect()
}

#[test]
fn spreads_replicas_across_hosts() {
    let hosts = [big("a"), big("b"), big("c")];
    let plan = schedule(&hosts, &[svc("web", 6)], &[]);
    assert!(plan.is_complete(), "{:?}", messages(&plan));
    assert_eq!(
        per_host(&plan, "web").into_values().collect::<Vec<_>>(),
        [2, 2, 2]
    );
    assert_eq!(plan.changes.len(), 6);
    assert!(
        plan.changes
            .iter()
            .all(|c| matches!(c, Change::Start { .. }))
    );
    let slots: Vec<Slot> = plan.placements.iter().map(|p| p.slot).collect();
    assert_eq!(slots, (1..=6).map(Slot::Replica).collect::<Vec<_>>());
}

#[test]
fn spreads_by_service_first_then_by_reserved_load() {
    // Neither host runs api; b is busier (it runs web), so api goes to a.
    let hosts = [big("a"), big("b")];
    let services = [
        reserve(svc("api", 1), 1000, GIB),
        reserve(svc("web", 1), 8000, 8 * GIB),
    ];
    let current = [at("web", 1, "b")];
    let plan = schedule(&hosts, &services, &current);
    assert_eq!(
        per_host(&plan, "api").into_keys().collect::<Vec<_>>(),
        ["a"]
    );
}

#[test]
fn prefers_hosts_that_have_the_image() {
    let mut c = big("c");
    c.images.insert("sha256:abc".into());
    let hosts = [big("a"), big("b"), c];
    let mut s = svc("web", 1);
    s.image_digest = Some("sha256:abc".into());
    let plan = schedule(&hosts, &[s.clone()], &[]);
    assert_eq!(plan.placements, [at("web", 1, "c")]);
    // By reference too.
    let mut d = big("d");
    d.images.insert(s.image.clone());
    let plan = schedule(&[big("a"), d], &[svc("web", 1)], &[]);
    assert_eq!(plan.placements, [at("web", 1, "d")]);
    // Without the image anywhere: the smallest host id.
    let plan = schedule(&[big("b"), big("a")], &[svc("web", 1)], &[]);
    assert_eq!(plan.placements, [at("web", 1, "a")]);
}

#[test]
fn honours_constraints() {
    let hosts = [
        labelled(big("a"), "zone", "eu"),
        labelled(big("b"), "zone", "us"),
        labelled(big("c"), "zone", "eu"),
    ];
    let web = constrained(svc("web", 4), "node.labels.zone == eu");
    let plan = schedule(&hosts, &[web], &[]);
    assert!(plan.is_complete());
    assert_eq!(
        per_host(&plan, "web"),
        BTreeMap::from([("a".into(), 2), ("c".into(), 2)])
    );
    let not_a = constrained(svc("api", 2), "node.hostname != a.example");
    let plan = schedule(&hosts, &[not_a], &[]);
    assert!(plan.placements.iter().all(|p| p.host != "a"));
}

#[test]
fn never_exceeds_capacity_and_says_what_is_missing() {
    let hosts = [host("a", 1000, 4 * GIB), host("b", 1000, 4 * GIB)];
    let web = reserve(svc("web", 3), 600, 0);
    let plan = schedule(&hosts, &[web], &[]);
    assert_eq!(plan.placements.len(), 2);
    assert_eq!(
        messages(&plan),
        [
            "service web: cannot place 1 of 3 replicas: needs 0.6 CPU reserved; the largest free host has 0.4 CPU"
        ]
    );
}

#[test]
fn names_the_largest_free_host_when_nothing_fits() {
    let hosts = [host("a", 8000, 2 * GIB), host("b", 8000, 2 * GIB)];
    let services = [
        reserve(svc("cache", 1), 0, GIB / 2),
        reserve(svc("db", 1), 1000, 4 * GIB),
    ];
    let plan = schedule(&hosts, &services, &[]);
    assert_eq!(
        messages(&plan),
        ["service db: needs 4 GiB memory reserved; the largest free host has 2 GiB"]
    );
    // db is larger, so it is placed before the cache; once the cache runs
    // on the only host, that host has 1.5 GiB left.
    let plan = schedule(&hosts[..1], &services, &[at("cache", 1, "a")]);
    assert_eq!(
        messages(&plan),
        ["service db: needs 4 GiB memory reserved; the largest free host has 1.5 GiB"]
    );
    let both = reserve(svc("both", 1), 3000, 3 * GIB);
    let hosts = [host("a", 4000, GIB), host("b", 1000, 4 * GIB)];
    let plan = schedule(&hosts, &[both], &[]);
    assert_eq!(
        messages(&plan),
        [
            "service both: needs 3 CPUs and 3 GiB memory reserved; no host has both free (most free CPU: 4 CPUs, most free memory: 4 GiB)"
        ]
    );
}

#[test]
fn errors_name_constraints_and_host_counts() {
    let hosts = [
        labelled(big("a"), "zone", "eu"),
        labelled(down(big("b")), "zone", "eu"),
        labelled(big("c"), "zone", "us"),
    ];
    let mut web = constrained(svc("web", 3), "node.labels.zone == eu");
    web.max_per_host = Some(1);
    let plan = schedule(&hosts, &[web], &[]);
    assert_eq!(
        messages(&plan),
        [
            "service web: cannot place 2 of 3 replicas: only 1 host matches constraints [node.labels.zone == eu] (at most 1 per host)"
        ]
    );
    let ap = constrained(svc("ap", 2), "node.labels.zone == ap");
    let plan = schedule(&hosts, &[ap], &[]);
    assert_eq!(
        messages(&plan),
        [
            "service ap: no host matches constraints [node.labels.zone == ap] (of 3 hosts); label a host to match or change the constraints"
        ]
    );
    let b_only = constrained(svc("bee", 2), "node.id == b");
    let plan = schedule(&hosts, &[b_only], &[]);
    assert_eq!(
        messages(&plan),
        [
            "service bee: cannot place 2 replicas: the only host matching constraints [node.id == b] is down"
        ]
    );
    assert!(plan.placements.is_empty());
}

#[test]
fn global_runs_once_on_every_eligible_up_host() {
    let hosts = [
        labelled(big("a"), "role", "edge"),
        labelled(big("b"), "role", "edge"),
        labelled(down(big("c")), "role", "edge"),
        big("d"),
    ];
    let plan = schedule(&hosts, &[global("exporter")], &[]);
    assert_eq!(
        per_host(&plan, "exporter").into_keys().collect::<Vec<_>>(),
        ["a", "b", "d"]
    );
    let edge = constrained(global("proxy"), "node.labels.role == edge");
    let plan = schedule(&hosts, &[edge], &[]);
    assert_eq!(
        plan.placements,
        [at_global("proxy", "a"), at_global("proxy", "b")]
    );
    // A host without room is named.
    let hosts = [big("a"), host("b", 100, GIB)];
    let plan = schedule(&hosts, &[reserve(global("agent"), 200, 0)], &[]);
    assert_eq!(plan.placements, [at_global("agent", "a")]);
    assert_eq!(
        messages(&plan),
        [
            "service agent: global: no room on 1 of 2 eligible hosts (b): each copy needs 0.2 CPU reserved"
        ]
    );
    // Global services are placed before replicated ones.
    let hosts = [host("a", 1000, GIB)];
    let services = [
        reserve(svc("web", 5), 200, 0),
        reserve(global("agent"), 500, 0),
    ];
    let plan = schedule(&hosts, &services, &[]);
    assert_eq!(per_host(&plan, "agent").len(), 1);
    assert_eq!(per_host(&plan, "web")["a"], 2);
}

#[test]
fn rescheduling_its_own_output_changes_nothing() {
    let hosts = [
        labelled(host("a", 4000, 8 * GIB), "zone", "eu"),
        labelled(host("b", 4000, 8 * GIB), "zone", "us"),
        host("c", 2000, 8 * GIB),
    ];
    let services = [
        reserve(svc("web", 5), 500, GIB),
        constrained(reserve(svc("eu", 3), 700, GIB), "node.labels.zone == eu"),
        reserve(global("agent"), 100, 128 * MIB),
        stateful(reserve(svc("db", 1), 1000, 2 * GIB)),
    ];
    let first = schedule(&hosts, &services, &[]);
    let second = schedule(&hosts, &services, &first.placements);
    assert!(second.changes.is_empty(), "{:?}", second.changes);
    assert_eq!(second.placements, first.placements);
    assert_eq!(second.errors, first.errors);
}

#[test]
fn scaling_up_adds_without_moving_others() {
    let hosts = [big("a"), big("b"), big("c")];
    let current = [at("web", 1, "c"), at("web", 2, "c")];
    let plan = schedule(&hosts, &[svc("web", 4)], &current);
    assert!(plan.placements.contains(&at("web", 1, "c")));
    assert!(plan.placements.contains(&at("web", 2, "c")));
    assert_eq!(
        plan.changes,
        [
            Change::Start {
                service: "web".into(),
                slot: Slot::Replica(3),
                host: "a".into()
            },
            Change::Start {
                service: "web".into(),
                slot: Slot::Replica(4),
                host: "b".into()
            },
        ]
    );
}

#[test]
fn scaling_down_removes_from_the_most_loaded_hosts() {
    let hosts = [big("a"), big("b"), big("c")];
    let current = [
        at("web", 1, "a"),
        at("web", 2, "b"),
        at("web", 3, "b"),
        at("web", 4, "c"),
        at("web", 5, "b"),
    ];
    let plan = schedule(&hosts, &[svc("web", 3)], &current);
    assert_eq!(
        per_host(&plan, "web"),
        BTreeMap::from([("a".into(), 1), ("b".into(), 1), ("c".into(), 1)])
    );
    // The highest slots on the busiest host go.
    assert!(plan.changes.iter().all(|c| matches!(
        c,
        Change::Stop { host, reason: StopReason::ScaledDown, slot: Slot::Replica(3 | 5), .. } if host == "b"
    )));
    assert_eq!(plan.changes.len(), 2);
    // Replicas that would have to move go first.
    let hosts = [big("a"), down(big("b"))];
    let current = [at("web", 1, "a"), at("web", 2, "a"), at("web", 3, "b")];
    let plan = schedule(&hosts, &[svc("web", 2)], &current);
    assert_eq!(plan.placements, [at("web", 1, "a"), at("web", 2, "a")]);
}

#[test]
fn stateless_replicas_leave_a_down_host_stateful_ones_wait() {
    let hosts = [big("a"), down(big("b")), big("c")];
    let services = [svc("web", 2), stateful(svc("db", 1))];
    let current = [at("web", 1, "a"), at("web", 2, "b"), at("db", 1, "b")];
    let plan = schedule(&hosts, &services, &current);
    assert!(plan.is_complete());
    assert_eq!(
        plan.changes,
        [Change::Move {
            service: "web".into(),
            slot: Slot::Replica(2),
            from: "b".into(),
            to: "c".into()
        }]
    );
    assert_eq!(plan.waiting, [at("db", 1, "b")]);
    assert!(plan.placements.contains(&at("db", 1, "b")));
}

#[test]
fn a_returning_host_loses_its_duplicates() {
    let hosts = [big("a"), big("b"), big("c")];
    // b was down; web.2 and web.3 were moved off it; now it is back with
    // its old copies.
    let current = [
        at("web", 1, "a"),
        at("web", 2, "a"),
        at("web", 3, "c"),
        at("web", 2, "b"),
        at("web", 3, "b"),
    ];
    let plan = schedule(&hosts, &[svc("web", 3)], &current);
    assert_eq!(plan.placements.len(), 3);
    let slots: BTreeSet<Slot> = plan.placements.iter().map(|p| p.slot).collect();
    assert_eq!(slots.len(), 3);
    let stops = plan
        .changes
        .iter()
        .filter(|c| {
            matches!(
                c,
                Change::Stop {
                    reason: StopReason::Duplicate,
                    ..
                }
            )
        })
        .count();
    assert_eq!(stops, 2);
    assert_eq!(plan.changes.len(), 2);
    // The spread is restored: a loses web.2, so every host runs one.
    assert_eq!(per_host(&plan, "web").into_values().max(), Some(1));
}

#[test]
fn removed_services_and_mode_changes_stop() {
    let hosts = [big("a")];
    let current = [
        at("old", 1, "a"),
        at("agent", 1, "a"),
        at_global("web", "a"),
    ];
    let plan = schedule(&hosts, &[global("agent"), svc("web", 1)], &current);
    let reasons: Vec<(String, StopReason)> = plan
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::Stop {
                service, reason, ..
            } => Some((service.clone(), *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("agent".to_owned(), StopReason::ModeChanged),
            ("old".to_owned(), StopReason::ServiceRemoved),
            ("web".to_owned(), StopReason::ModeChanged),
        ]
    );
    assert_eq!(
        plan.placements,
        [at_global("agent", "a"), at("web", 1, "a")]
    );
}

#[test]
fn stateful_replicas_never_move_and_say_why() {
    let hosts = [
        labelled(big("a"), "zone", "us"),
        labelled(big("b"), "zone", "eu"),
    ];
    let db = stateful(constrained(svc("db", 1), "node.labels.zone == eu"));
    let plan = schedule(&hosts, &[db], &[at("db", 1, "a")]);
    assert_eq!(plan.placements, [at("db", 1, "a")]);
    assert!(plan.changes.is_empty());
    assert_eq!(
        messages(&plan),
        [
            "service db: replica 1 runs on host a, which no longer matches constraints [node.labels.zone == eu]; it has volumes, so Skiff does not move it: restore the host's labels or change the constraints"
        ]
    );
    let hosts = [host("a", 1000, GIB), big("b")];
    let db = stateful(reserve(svc("db", 1), 2000, 0));
    let plan = schedule(&hosts, &[db], &[at("db", 1, "a")]);
    assert_eq!(plan.placements, [at("db", 1, "a")]);
    assert_eq!(
        messages(&plan),
        [
            "service db: replica 1 on host a needs 2 CPUs reserved, more than the host has left (1 CPU and 1 GiB memory free before it); it has volumes, so Skiff does not move it: lower the reservation or make room on a"
        ]
    );
}

#[test]
fn stateless_replicas_leave_hosts_that_no_longer_fit() {
    let hosts = [
        labelled(host("a", 1000, GIB), "zone", "eu"),
        labelled(big("b"), "zone", "eu"),
        big("c"),
    ];
    let web = constrained(reserve(svc("web", 2), 800, 0), "node.labels.zone == eu");
    // web.2 ran on c, which is not eu; a holds web.1 and the bigger api.
    let api = reserve(svc("api", 1), 500, 0);
    let current = [at("api", 1, "a"), at("web", 1, "a"), at("web", 2, "c")];
    let plan = schedule(&hosts, &[api, web], &current);
    assert!(plan.is_complete(), "{:?}", messages(&plan));
    assert!(
        plan.changes
            .iter()
            .all(|c| matches!(c, Change::Move { to, .. } if to == "b"))
    );
    assert_eq!(plan.changes.len(), 2);
}

#[test]
fn replicas_on_forgotten_hosts_are_replaced() {
    let plan = schedule(&[big("a")], &[svc("web", 1)], &[at("web", 1, "gone")]);
    assert_eq!(
        plan.changes,
        [Change::Move {
            service: "web".into(),
            slot: Slot::Replica(1),
            from: "gone".into(),
            to: "a".into()
        }]
    );
}

#[test]
fn duplicate_names_are_reported() {
    let plan = schedule(&[big("a"), big("a")], &[svc("web", 1), svc("web", 2)], &[]);
    assert_eq!(
        messages(&plan),
        [
            "host a: listed more than once; the first entry is used",
            "service web: defined more than once; service names must be unique",
        ]
    );
    assert_eq!(plan.placements.len(), 1);
}

#[test]
fn formats_resources_for_people() {
    assert_eq!(fmt_cpu(500), "0.5 CPU");
    assert_eq!(fmt_cpu(1000), "1 CPU");
    assert_eq!(fmt_cpu(2250), "2.25 CPUs");
    assert_eq!(fmt_bytes(3 * GIB / 2), "1.5 GiB");
    assert_eq!(fmt_bytes(4 * GIB - 1), "3.99 GiB");
    assert_eq!(fmt_bytes(256 * MIB), "256 MiB");
    assert_eq!(fmt_bytes(512), "512 bytes");
}

// Property tests.

#[derive(Debug, Clone)]
struct Case {
    hosts: Vec<Host>,
    services: Vec<Service>,
    current: Vec<Placement>,
}

const ZONES: [&str; 3] = ["eu", "us", "ap"];

fn arb_host(i: usize) -> impl Strategy<Value = Host> {
    (
        0..ZONES.len(),
        prop::bool::weighted(0.85),
        0u64..8,
        0u64..8,
        prop::bool::ANY,
    )
        .prop_map(move |(zone, up, cpu, mem, image)| {
            let mut h = labelled(
                host(&format!("h{i}"), cpu * 500, mem * 512 * MIB),
                "zone",
                ZONES[zone],
            );
            if !up {
                h.status = HostStatus::Down;
            }
            if image {
                h.images.insert("registry.local/s0:1".into());
            }
            h
        })
}

fn arb_service(i: usize) -> impl Strategy<Value = Service> {
    (
        prop_oneof![3 => (0u32..7).prop_map(Mode::Replicated), 1 => Just(Mode::Global)],
        prop_oneof![
            Just(None),
            (0..ZONES.len()).prop_map(|z| Some(format!("node.labels.zone == {}", ZONES[z]))),
            (0..ZONES.len()).prop_map(|z| Some(format!("node.labels.zone != {}", ZONES[z]))),
            (0usize..6).prop_map(|h| Some(format!("node.id != h{h}"))),
        ],
        0u64..4,
        0u64..4,
        prop::bool::weighted(0.3),
        prop_oneof![4 => Just(None), 1 => (1u32..3).prop_map(Some)],
    )
        .prop_map(move |(mode, constraint, cpu, mem, is_stateful, max)| {
            let mut s = reserve(svc(&format!("s{i}"), 0), cpu * 250, mem * 256 * MIB);
            s.mode = mode;
            s.stateful = is_stateful;
            s.max_per_host = max;
            if let Some(c) = constraint {
                s = constrained(s, &c);
            }
            s
        })
}

fn arb_case() -> impl Strategy<Value = Case> {
    (1usize..7, 1usize..5)
        .prop_flat_map(|(nh, ns)| {
            let hosts: Vec<_> = (0..nh).map(arb_host).collect();
            let services: Vec<_> = (0..ns).map(arb_service).collect();
            let current = prop::collection::vec(
                (
                    0..ns + 1,
                    prop_oneof![4 => (1u32..8).prop_map(Slot::Replica), 1 => Just(Slot::Global)],
                    0..nh + 1,
                ),
                0..12,
            );
            (hosts, services, current)
        })
        .prop_map(|(hosts, services, current)| {
            let current = current
                .into_iter()
                .map(|(s, slot, h)| Placement {
                    service: format!("s{s}"),
                    slot,
                    host: format!("h{h}"),
                })
                .collect();
            Case {
                hosts,
                services,
                current,
            }
        })
}

fn eligible_up(hosts: &[Host], s: &Service) -> Vec<String> {
    hosts
        .iter()
        .filter(|h| h.status == HostStatus::Up && s.constraints.iter().all(|c| c.matches(&h.attrs)))
        .map(|h| h.attrs.id.clone())
        .collect()
}

fn erred(plan: &Plan, service: &str) -> bool {
    plan.errors.iter().any(|e| e.service() == Some(service))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn capacity_is_never_exceeded(case in arb_case()) {
        let plan = schedule(&case.hosts, &case.services, &case.current);
        let by_name: HashMap<&str, &Service> = case.services.iter().map(|s| (s.name.as_str(), s)).collect();
        for h in &case.hosts {
            let mut cpu = 0;
            let mut mem = 0;
            for p in plan.placements.iter().filter(|p| p.host == h.attrs.id) {
                let r = by_name[p.service.as_str()].reservations;
                cpu += r.cpu_millis;
                mem += r.memory_bytes;
            }
            let over = cpu > h.capacity.cpu_millis || mem > h.capacity.memory_bytes;
            let excused = plan.errors.iter().any(|e| matches!(e, ScheduleError::StatefulOverCapacity { host, .. } if *host == h.attrs.id));
            prop_assert!(!over || excused, "host {} over capacity: {:?}", h.attrs.id, plan);
        }
    }

    #[test]
    fn constraints_are_always_satisfied(case in arb_case()) {
        let plan = schedule(&case.hosts, &case.services, &case.current);
        let hosts: HashMap<&str, &Host> = case.hosts.iter().map(|h| (h.attrs.id.as_str(), h)).collect();
        for p in &plan.placements {
            let s = case.services.iter().find(|s| s.name == p.service);
            prop_assert!(s.is_some());
            let Some(s) = s else { continue };
            let ok = hosts.get(p.host.as_str()).is_some_and(|h| {
                h.status == HostStatus::Up && s.constraints.iter().all(|c| c.matches(&h.attrs))
            });
            if !ok {
                // Only a stateful replica that was already there, and it is
                // either waiting for its host or reported.
                prop_assert!(s.stateful, "{p:?} breaks constraints");
                prop_assert!(case.current.contains(p));
                let reported = plan.waiting.contains(p) || plan.errors.iter().any(|e| matches!(e, ScheduleError::StatefulIneligible { host, .. } if *host == p.host));
                prop_assert!(reported, "{p:?} not reported");
            }
        }
    }

    #[test]
    fn replica_counts_are_met_or_the_service_is_named(case in arb_case()) {
        let plan = schedule(&case.hosts, &case.services, &case.current);
        for s in &case.services {
            let mine: Vec<&Placement> = plan.placements.iter().filter(|p| p.service == s.name).collect();
            match s.mode {
                Mode::Replicated(n) => {
                    prop_assert!(mine.len() <= n as usize, "{} has {} > {n}", s.name, mine.len());
                    let slots: BTreeSet<Slot> = mine.iter().map(|p| p.slot).collect();
                    prop_assert_eq!(slots.len(), mine.len(), "one copy per slot");
                    prop_assert!(mine.len() == n as usize || erred(&plan, &s.name));
                }
                Mode::Global => {
                    let hosts: BTreeSet<&str> = mine.iter().map(|p| p.host.as_str()).collect();
                    prop_assert_eq!(hosts.len(), mine.len(), "one copy per host");
                    for h in eligible_up(&case.hosts, s) {
                        prop_assert!(hosts.contains(h.as_str()) || erred(&plan, &s.name));
                    }
                }
            }
        }
    }

    /// One service on a fresh cluster: greedy placement is exact, so the
    /// number placed is what a simple capacity count allows.
    #[test]
    fn places_everything_that_fits(case in arb_case()) {
        let Some(s) = case.services.first() else { return Ok(()) };
        let Mode::Replicated(n) = s.mode else { return Ok(()) };
        let plan = schedule(&case.hosts, std::slice::from_ref(s), &[]);
        let r = s.reservations;
        let room: u64 = case.hosts.iter()
            .filter(|h| h.status == HostStatus::Up && s.constraints.iter().all(|c| c.matches(&h.attrs)))
            .map(|h| {
                let by = |cap: u64, need: u64| cap.checked_div(need).unwrap_or(u64::MAX);
                let fit = by(h.capacity.cpu_millis, r.cpu_millis).min(by(h.capacity.memory_bytes, r.memory_bytes));
                fit.min(s.max_per_host.map_or(u64::MAX, u64::from))
            })
            .fold(0u64, u64::saturating_add);
        let expected = room.min(u64::from(n));
        prop_assert_eq!(plan.placements.len() as u64, expected);
        prop_assert_eq!(plan.errors.is_empty(), expected == u64::from(n), "{:?}", messages(&plan));
    }

    #[test]
    fn unconstrained_replicas_spread_evenly(n in 0u32..40, hosts in 1usize..8, down_at in 0usize..8) {
        let hosts: Vec<Host> = (0..hosts).map(|i| {
            let h = big(&format!("h{i}"));
            if i == down_at { down(h) } else { h }
        }).collect();
        let services = [svc("web", n), reserve(svc("api", n / 2), 10, MIB)];
        let plan = schedule(&hosts, &services, &[]);
        let up: Vec<&str> = hosts.iter().filter(|h| h.status == HostStatus::Up).map(|h| h.attrs.id.as_str()).collect();
        for s in &services {
            let counts = per_host(&plan, &s.name);
            let per: Vec<usize> = up.iter().map(|h| counts.get(*h).copied().unwrap_or(0)).collect();
            if let (Some(max), Some(min)) = (per.iter().max(), per.iter().min()) {
                prop_assert!(max - min <= 1, "{}: {per:?}", s.name);
            }
        }
    }

    #[test]
    fn deterministic_whatever_the_input_order(case in arb_case(), seed in any::<u64>()) {
        let plan = schedule(&case.hosts, &case.services, &case.current);
        let mut shuffled = case.clone();
        let rotate = |len: usize| if len == 0 { 0 } else { (seed as usize) % len };
        let k = rotate(shuffled.hosts.len());
        shuffled.hosts.rotate_left(k);
        shuffled.services.reverse();
        let k = rotate(shuffled.current.len());
        shuffled.current.rotate_right(k);
        let again = schedule(&shuffled.hosts, &shuffled.services, &shuffled.current);
        prop_assert_eq!(&again, &plan);
        prop_assert_eq!(schedule(&case.hosts, &case.services, &case.current), plan);
    }

    #[test]
    fn idempotent_on_its_own_output(case in arb_case()) {
        let first = schedule(&case.hosts, &case.services, &case.current);
        let second = schedule(&case.hosts, &case.services, &first.placements);
        prop_assert!(second.changes.is_empty(), "{:?}", second.changes);
        prop_assert_eq!(&second.placements, &first.placements);
        prop_assert_eq!(&second.waiting, &first.waiting);
    }

    #[test]
    fn stateful_replicas_never_move(case in arb_case()) {
        let plan = schedule(&case.hosts, &case.services, &case.current);
        for s in case.services.iter().filter(|s| s.stateful) {
            for c in &plan.changes {
                let moved = matches!(c, Change::Move { service, .. } if *service == s.name);
                prop_assert!(!moved, "{c:?}");
            }
            for p in plan.placements.iter().filter(|p| p.service == s.name) {
                let before: Vec<&Placement> = case.current.iter()
                    .filter(|c| c.service == p.service && c.slot == p.slot && matches!(p.slot, Slot::Replica(_)))
                    .collect();
                prop_assert!(before.is_empty() || before.iter().any(|c| c.host == p.host), "{p:?} moved from {before:?}");
            }
        }
    }

    /// A host goes down, its replicas are moved, it comes back with its old
    /// copies: nobody runs more than desired.
    #[test]
    fn a_returning_host_leaves_exactly_the_desired_count(case in arb_case(), lost in 0usize..7) {
        let lost = lost % case.hosts.len();
        let settled = schedule(&case.hosts, &case.services, &case.current);
        let mut hosts = case.hosts.clone();
        hosts[lost].status = HostStatus::Down;
        let while_down = schedule(&hosts, &case.services, &settled.placements);
        hosts[lost].status = HostStatus::Up;
        let mut current = while_down.placements.clone();
        let lost_id = &hosts[lost].attrs.id;
        current.extend(settled.placements.iter().filter(|p| &p.host == lost_id).cloned());
        let back = schedule(&hosts, &case.services, &current);
        for s in &case.services {
            let mine: Vec<&Placement> = back.placements.iter().filter(|p| p.service == s.name).collect();
            if let Mode::Replicated(n) = s.mode {
                prop_assert!(mine.len() <= n as usize);
                let slots: BTreeSet<Slot> = mine.iter().map(|p| p.slot).collect();
                prop_assert_eq!(slots.len(), mine.len());
            }
        }
        // And the stateless moves away from the lost host happened.
        for p in while_down.placements.iter().filter(|p| &p.host == lost_id) {
            let s = case.services.iter().find(|s| s.name == p.service);
            prop_assert!(s.is_some_and(|s| s.stateful), "{p:?} stayed on the lost host");
        }
    }
}
