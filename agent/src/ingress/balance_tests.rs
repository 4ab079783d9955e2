use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use skiff_shared::sections::ingress::{Backend, Endpoint, IngressSection, ProxySettings};

use super::*;

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, n)
}

fn section(endpoints: &[(u8, &str)], drain_ms: u64) -> IngressSection {
    IngressSection {
        generation: 1,
        node: "n1".into(),
        edge: true,
        settings: ProxySettings {
            drain_timeout_ms: drain_ms,
            ..ProxySettings::default()
        },
        backends: vec![Backend {
            stack: "s".into(),
            service: "web".into(),
            endpoints: endpoints
                .iter()
                .enumerate()
                .map(|(slot, (n, node))| Endpoint {
                    ip: ip(*n),
                    node: (*node).into(),
                    slot: u32::try_from(slot).unwrap(),
                })
                .collect(),
        }],
        ..IngressSection::default()
    }
}

fn pool(endpoints: &[(u8, &str)]) -> Arc<Pool> {
    let tree = TaskTree::root();
    Pools::default()
        .rebuild(&section(endpoints, 1000), &tree)
        .get("s", "web")
        .unwrap()
}

async fn fired(token: &CancellationToken) {
    tokio::time::timeout(Duration::from_secs(10), token.cancelled())
        .await
        .expect("the endpoint's leaving signal fires after its drain");
}

#[test]
fn round_robin_spreads_evenly_under_concurrency() {
    let p = pool(&[(1, "a"), (2, "a"), (3, "b"), (4, "b")]);
    let counts: Vec<BTreeSet<(usize, Ipv4Addr)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let p = &p;
                s.spawn(move || {
                    (0..1000)
                        .map(|i| {
                            let pick = p.pick(Balance::RoundRobin, false, "a", &[]).unwrap();
                            (t * 1000 + i, pick.ip)
                        })
                        .collect::<BTreeSet<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut per = std::collections::BTreeMap::new();
    for (_, ip) in counts.iter().flatten() {
        *per.entry(*ip).or_insert(0) += 1;
    }
    assert_eq!(per.len(), 4);
    assert!(per.values().all(|&n| n == 2000), "{per:?}");
    assert!(
        (1..=4).all(|n| p.in_flight(ip(n)) == 0),
        "every guard released"
    );
}

#[test]
fn least_connections_goes_to_the_least_busy() {
    let p = pool(&[(1, "a"), (2, "a"), (3, "a")]);
    let a = p.pick(Balance::LeastConnections, false, "a", &[]).unwrap();
    let b = p.pick(Balance::LeastConnections, false, "a", &[]).unwrap();
    let c = p.pick(Balance::LeastConnections, false, "a", &[]).unwrap();
    let ips: BTreeSet<_> = [a.ip, b.ip, c.ip].into();
    assert_eq!(ips.len(), 3, "three picks, three endpoints");
    let freed = b.ip;
    drop(b);
    for _ in 0..3 {
        let d = p.pick(Balance::LeastConnections, false, "a", &[]).unwrap();
        assert_eq!(d.ip, freed, "the one with nothing in flight");
    }
    assert_eq!(p.in_flight(a.ip), 1);
}

#[test]
fn local_first_prefers_this_node_and_falls_back() {
    let p = pool(&[(1, "a"), (2, "b"), (3, "b")]);
    for _ in 0..5 {
        assert_eq!(
            p.pick(Balance::RoundRobin, true, "a", &[]).unwrap().ip,
            ip(1)
        );
    }
    let other = p.pick(Balance::RoundRobin, true, "a", &[ip(1)]).unwrap();
    assert_ne!(other.ip, ip(1), "elsewhere when the local one failed");
    assert!(
        p.pick(Balance::RoundRobin, true, "a", &[ip(1), ip(2), ip(3)])
            .is_none()
    );
}

#[test]
fn failures_eject_with_a_doubling_backoff_and_success_clears_it() {
    let p = pool(&[(1, "a"), (2, "a")]);
    let e = p.find(ip(1)).unwrap().clone();
    let t0 = Instant::now();
    e.failed(t0);
    e.failed(t0);
    assert!(!e.ejected(t0), "two failures are not yet an ejection");
    e.failed(t0);
    assert!(e.ejected(t0));
    for _ in 0..10 {
        let pick = p.pick_at(Balance::RoundRobin, false, "a", &[], t0).unwrap();
        assert_eq!(pick.ip, ip(2));
    }
    assert!(e.ejected(t0 + Duration::from_millis(4900)));
    let t1 = t0 + BACKOFF_MIN;
    assert!(!e.ejected(t1), "back after 5 s");
    e.failed(t1);
    assert!(
        e.ejected(t1 + Duration::from_secs(9)),
        "10 s the second time"
    );
    assert!(!e.ejected(t1 + Duration::from_secs(10)));
    let mut t = t1;
    for _ in 0..10 {
        t += Duration::from_secs(120);
        e.failed(t);
    }
    assert!(e.ejected(t + Duration::from_secs(59)));
    assert!(!e.ejected(t + BACKOFF_MAX), "never more than 60 s");
    p.succeeded(ip(1));
    assert!(!e.ejected(t));
    e.failed(t);
    assert!(!e.ejected(t), "a success starts the count again");
}

#[test]
fn when_every_endpoint_is_ejected_they_are_tried_anyway() {
    let p = pool(&[(1, "a"), (2, "a")]);
    let now = Instant::now();
    for n in [1, 2] {
        for _ in 0..3 {
            p.find(ip(n)).unwrap().failed(now);
        }
    }
    let got: BTreeSet<_> = (0..4)
        .map(|_| {
            p.pick_at(Balance::RoundRobin, false, "a", &[], now)
                .unwrap()
                .ip
        })
        .collect();
    assert_eq!(got, [ip(1), ip(2)].into());
}

#[tokio::test]
async fn a_rebuild_keeps_the_state_of_endpoints_that_remain_and_drains_the_others() {
    let tree = TaskTree::root();
    let first = Pools::default().rebuild(&section(&[(1, "a"), (2, "a")], 50), &tree);
    let p = first.get("s", "web").unwrap();
    let one = p.pick(Balance::RoundRobin, false, "a", &[ip(2)]).unwrap();
    let two = p.pick(Balance::RoundRobin, false, "a", &[ip(1)]).unwrap();
    for _ in 0..3 {
        p.failed(ip(1));
    }
    let second = first.rebuild(&section(&[(1, "a"), (3, "a")], 50), &tree);
    let q = second.get("s", "web").unwrap();
    assert_eq!(q.ips(), vec![ip(1), ip(3)]);
    assert_eq!(q.in_flight(ip(1)), 1, "what is in flight is carried over");
    assert!(
        q.find(ip(1)).unwrap().ejected(Instant::now()),
        "and its failures"
    );
    for _ in 0..20 {
        let pick = q.pick(Balance::RoundRobin, false, "a", &[]).unwrap();
        assert_eq!(
            pick.ip,
            ip(3),
            "never the one that left; not the ejected one"
        );
    }
    fired(&two.leaving()).await;
    assert!(
        !one.leaving().is_cancelled(),
        "an endpoint that stays is never cut"
    );
    drop(two);
    tree.cancel();
    tree.wait().await;
}

#[tokio::test]
async fn an_endpoint_back_before_its_drain_ends_is_taken_back() {
    let tree = TaskTree::root();
    let first = Pools::default().rebuild(&section(&[(1, "a"), (2, "a")], 60_000), &tree);
    let held = first
        .get("s", "web")
        .unwrap()
        .pick(Balance::RoundRobin, false, "a", &[ip(1)])
        .unwrap();
    let second = first.rebuild(&section(&[(1, "a")], 60_000), &tree);
    assert!(
        second
            .get("s", "web")
            .unwrap()
            .pick(Balance::RoundRobin, false, "a", &[ip(1)])
            .is_none()
    );
    let third = second.rebuild(&section(&[(1, "a"), (2, "a")], 60_000), &tree);
    let p = third.get("s", "web").unwrap();
    assert_eq!(
        p.in_flight(ip(2)),
        1,
        "the same endpoint, with its connection"
    );
    // The drain timer was called off: cancelling the tree no longer fires it.
    let leaving = held.leaving();
    tree.cancel();
    tree.wait().await;
    assert!(!leaving.is_cancelled());
}

#[tokio::test]
async fn cancelling_the_tree_cuts_what_drains_at_once() {
    let tree = TaskTree::root();
    let first = Pools::default().rebuild(&section(&[(1, "a")], 3_600_000), &tree);
    let held = first
        .get("s", "web")
        .unwrap()
        .pick(Balance::RoundRobin, false, "a", &[])
        .unwrap();
    let _second = first.rebuild(&section(&[], 3_600_000), &tree);
    tree.cancel();
    fired(&held.leaving()).await;
    tree.wait().await;
}

/// One endpoint of a generated pool: its node (0..3), whether it is
/// ejected, whether it is skipped, and how many are in flight to it.
fn arb_endpoint() -> impl Strategy<Value = (u8, bool, bool, u8)> {
    (0u8..3, any::<bool>(), any::<bool>(), 0u8..4)
}

proptest! {
    #[test]
    fn pick_follows_the_choice_rules(
        eps in prop::collection::vec(arb_endpoint(), 0..8),
        least in any::<bool>(),
        local_first in any::<bool>(),
        turns in 0usize..20,
    ) {
        let nodes = ["a", "b", "c"];
        let list: Vec<(u8, &str)> = eps
            .iter()
            .enumerate()
            .map(|(i, e)| (u8::try_from(i + 1).unwrap(), nodes[usize::from(e.0)]))
            .collect();
        let p = pool(&list);
        let now = Instant::now();
        let mut held = Vec::new();
        let mut skip = Vec::new();
        for (i, (_, ejected, skipped, busy)) in eps.iter().enumerate() {
            let e = p.endpoints[i].clone();
            if *ejected {
                for _ in 0..EJECT_AFTER {
                    e.failed(now);
                }
            }
            if *skipped {
                skip.push(e.ip);
            }
            for _ in 0..*busy {
                e.in_flight.fetch_add(1, Ordering::AcqRel);
                held.push(Pick { ip: e.ip, node: e.node.clone(), state: e.clone() });
            }
        }
        for _ in 0..turns {
            drop(p.pick_at(Balance::RoundRobin, false, "a", &[], now));
        }
        let balance = if least { Balance::LeastConnections } else { Balance::RoundRobin };
        let got = p.pick_at(balance, local_first, "a", &skip, now);
        let open: Vec<_> = p.endpoints.iter().filter(|e| !skip.contains(&e.ip)).collect();
        let Some(got) = got else {
            prop_assert!(open.is_empty(), "None only when every endpoint is skipped");
            return Ok(());
        };
        prop_assert!(!skip.contains(&got.ip), "never a skipped endpoint");
        let healthy: Vec<_> = open.iter().copied().filter(|e| !e.ejected(now)).collect();
        let mut eligible = if healthy.is_empty() { open } else { healthy };
        prop_assert!(eligible.iter().any(|e| e.ip == got.ip), "an ejected one only when all are");
        if local_first && eligible.iter().any(|e| &*e.node == "a") {
            prop_assert_eq!(&*got.node, "a", "a local endpoint when there is one");
            eligible.retain(|e| &*e.node == "a");
        }
        if least {
            // The pick itself counts one; the others are as they were.
            let min = eligible
                .iter()
                .map(|e| e.in_flight.load(Ordering::Acquire) - usize::from(e.ip == got.ip))
                .min()
                .unwrap();
            prop_assert_eq!(p.in_flight(got.ip) - 1, min, "the fewest in flight");
        }
    }
}
