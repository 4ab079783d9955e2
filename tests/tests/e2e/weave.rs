//! Mesh `weave`: the agent's client of Weave Net's HTTP API against the
//! fake of that API (`skiff_tests::weave_fake`; Weave Net itself cannot
//! be installed here), over real HTTP; and end to end on two tier-2 hosts,
//! each with a real Linux bridge `weave` that the test makes, the two
//! joined by a VXLAN device standing in for Weave's router, and one fake
//! (one cluster-wide allocator, as Weave's IPAM is) that each host's agent
//! reaches at its default `weave_api`, 127.0.0.1:6784, through a `socat`
//! forwarder on the host.

use std::cell::RefCell;
use std::collections::BTreeMap;

use skiff_agent::weave::{ApiUrl, api};
use skiff_tests::tier2::{Checks, Host, Tier2, Tier2Options, skipped, stdout, text};
use skiff_tests::wait_for;
use skiff_tests::weave_fake::FakeWeave;

use super::mesh::{
    CONVERGE, Replica, addresses_in_range, all_reach, in_range, of, on, replica, service,
};

#[tokio::test]
async fn addresses_are_allocated_once_per_container_and_released() {
    let fake = FakeWeave::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = ApiUrl::parse(&fake.url()).unwrap();
    api::status(&url).await.unwrap();
    let subnet = "10.66.12.0/22".parse().unwrap();
    let a = api::allocate(&url, "c1", subnet).await.unwrap();
    assert_eq!(a.to_string(), "10.66.12.1/22");
    assert_eq!(
        api::allocate(&url, "c1", subnet).await.unwrap(),
        a,
        "the same container keeps its address"
    );
    let b = api::allocate(&url, "c2", subnet).await.unwrap();
    assert_ne!(a, b);
    api::release(&url, "c1").await.unwrap();
    assert_eq!(fake.allocations().len(), 1, "{:?}", fake.allocations());
    assert_eq!(fake.allocations()[&b.addr()], "c2");

    // Weave gone: the errors say so.
    let addr = fake.addr;
    drop(fake);
    let gone = ApiUrl::parse(&format!("http://{addr}")).unwrap();
    skiff_tests::wait_until(
        "the fake to stop answering",
        std::time::Duration::from_secs(10),
        || async { api::status(&gone).await.is_err() },
    )
    .await
    .unwrap();
    assert!(api::allocate(&gone, "c3", subnet).await.is_err());
}

/// The Weave API's address on every host, as the agents' default
/// `weave_api` says.
const HOST_API: &str = "http://127.0.0.1:6784";
/// The pid file of a host's forwarder to the fake.
const FORWARDER_PID: &str = "/run/fake-weave-forwarder.pid";

/// Gives `host` what Weave Net's router would: a Linux bridge `weave`
/// (MTU 1450, for the VXLAN beneath), joined to the other host's by a
/// VXLAN device (`vxweave`, UDP 6789, to `peer`).
async fn weave_bridge(host: &Host, peer: &str) -> anyhow::Result<()> {
    let out = host
        .exec(&format!(
            "set -e; ip link add weave type bridge; ip link set weave mtu 1450; \
             ip link add vxweave mtu 1450 type vxlan id 6784 remote {peer} dstport 6789 dev eth0; \
             ip link set vxweave master weave; ip link set vxweave up; ip link set weave up"
        ))
        .await;
    anyhow::ensure!(
        out.status.success(),
        "the weave bridge in {}: {}",
        host.name,
        text(&out)
    );
    Ok(())
}

/// The packets `host`'s `vxweave` sent and received.
async fn vxlan_packets(host: &Host) -> anyhow::Result<(u64, u64)> {
    let out = host
        .exec("cat /sys/class/net/vxweave/statistics/tx_packets /sys/class/net/vxweave/statistics/rx_packets")
        .await;
    let text = stdout(&out);
    let n: Vec<u64> = text.lines().filter_map(|l| l.parse().ok()).collect();
    match n.as_slice() {
        [tx, rx] => Ok((*tx, *rx)),
        _ => anyhow::bail!("vxweave's counters in {}: {text}", host.node),
    }
}

/// Starts a forwarder from `host`'s 127.0.0.1:6784 (the agent's default
/// `weave_api`) to the one fake on this machine, and waits until the
/// fake answers through it.
async fn start_forwarder(host: &Host, fake: std::net::SocketAddr) -> anyhow::Result<()> {
    let out = host
        .exec(&format!(
            "setsid socat TCP-LISTEN:6784,bind=127.0.0.1,fork,reuseaddr TCP:{fake} \
             </dev/null >/dev/null 2>&1 & echo $! >{FORWARDER_PID}"
        ))
        .await;
    anyhow::ensure!(out.status.success(), "forwarder: {}", text(&out));
    wait_for(
        &format!("the fake Weave API to answer in {}", host.node),
        CONVERGE,
        || async {
            host.exec(&format!("curl -sf {HOST_API}/status"))
                .await
                .status
                .success()
                .then_some(())
        },
    )
    .await?;
    Ok(())
}

/// Stops `host`'s forwarder: Weave's API no longer answers there.
async fn stop_forwarder(host: &Host) -> anyhow::Result<()> {
    let out = host.exec(&format!("kill $(cat {FORWARDER_PID})")).await;
    anyhow::ensure!(
        out.status.success(),
        "stopping the forwarder: {}",
        text(&out)
    );
    Ok(())
}

/// Waits until `n` replicas of `stack` run, each with an address of its
/// network's subnet on every network (Weave's, once attached), and finds
/// their containers.
async fn attached(t2: &Tier2, stack: &str, n: usize) -> anyhow::Result<Vec<Replica>> {
    let subnets: BTreeMap<String, String> = t2
        .network_view()
        .await?
        .networks
        .into_iter()
        .filter(|s| s.stack == stack)
        .map(|s| (s.name, s.subnet))
        .collect();
    let last = RefCell::new(Vec::new());
    let tasks = wait_for(
        &format!("{n} replicas of {stack} with addresses of their networks' subnets"),
        CONVERGE * 2,
        || {
            let (last, subnets) = (&last, &subnets);
            async move {
                let tasks = t2.tasks(stack).await;
                let done = tasks.len() == n
                    && tasks.iter().all(|t| {
                        t.state == "running"
                            && t.up_to_date
                            && !t.addresses.is_empty()
                            && t.addresses.iter().all(|a| {
                                subnets
                                    .get(&a.network)
                                    .is_some_and(|s| in_range(&a.address, s))
                            })
                    });
                *last.borrow_mut() = tasks
                    .iter()
                    .map(|t| format!("{} on {}: {} {:?}", t.name, t.node, t.state, t.addresses))
                    .collect();
                done.then_some(tasks)
            }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}; subnets {subnets:?}; last seen: {:#?}", last.borrow()))?;
    let mut out = Vec::new();
    for t in &tasks {
        out.push(replica(t2, t).await?);
    }
    Ok(out)
}

/// Every replica's address on `network` is on its `ethwe*` interface, and
/// it is the one the fake allocated to its container.
async fn on_weave(fake: &FakeWeave, replicas: &[&Replica], network: &str) -> anyhow::Result<()> {
    let held = fake.allocations();
    for r in replicas {
        let ip = r.addr(network);
        let ifaces = stdout(&r.sh("ip -o -4 addr show").await);
        anyhow::ensure!(
            ifaces
                .lines()
                .any(|l| l.contains(" ethwe") && l.contains(&format!(" {ip}/"))),
            "{}'s address {ip} is not on an ethwe interface: {ifaces}",
            r.task
        );
        // The fake holds the full id; `docker ps` gave the short one.
        let holder = ip.parse().ok().and_then(|a| held.get(&a));
        anyhow::ensure!(
            holder.is_some_and(|c| c.starts_with(&r.container)),
            "the fake holds {ip} for {holder:?}, not {}'s container {}",
            r.task,
            r.container
        );
    }
    Ok(())
}

/// Waits until `node` reports a Weave problem on `stack`'s networks (and
/// `skiff network ls` and `show` say it) that names the API and the fix.
async fn api_down_is_reported(t2: &Tier2, stack: &str, node: &str) -> anyhow::Result<()> {
    let last = RefCell::new(None);
    let error = wait_for(
        &format!("{node} to report that Weave's API does not answer"),
        CONVERGE,
        || {
            let last = &last;
            async move {
                let view = t2.network_view().await.ok()?;
                let found = view
                    .networks
                    .iter()
                    .filter(|n| n.stack == stack)
                    .flat_map(|n| &n.problems)
                    .find(|p| p.node == node)
                    .map(|p| p.error.clone());
                *last.borrow_mut() = Some(view);
                found
            }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}; last seen: {:#?}", last.borrow()))?;
    for says in [HOST_API, "is Weave Net running on this host?"] {
        anyhow::ensure!(error.contains(says), "no {says:?} in: {error}");
    }
    for cmd in ["ls", "show"] {
        let out = t2.skiff(&["network", cmd]).await;
        anyhow::ensure!(
            text(&out).contains(&error),
            "skiff network {cmd} does not show it: {}",
            text(&out)
        );
    }
    Ok(())
}

/// Waits until no stack network of `stack` has a problem.
async fn no_problems(t2: &Tier2, stack: &str) -> anyhow::Result<()> {
    let last = RefCell::new(None);
    wait_for(
        &format!("{stack}'s networks to have no problem"),
        CONVERGE,
        || {
            let last = &last;
            async move {
                let view = t2.network_view().await.ok()?;
                let problems: Vec<_> = view
                    .networks
                    .iter()
                    .filter(|n| n.stack == stack)
                    .flat_map(|n| n.problems.clone())
                    .collect();
                let ok = problems.is_empty();
                *last.borrow_mut() = Some(problems);
                ok.then_some(())
            }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}; last seen: {:#?}", last.borrow()))
}

#[tokio::test(flavor = "multi_thread")]
async fn weave_attaches_containers_on_two_hosts_isolates_stacks_and_releases() {
    if skipped("the tier-2 Weave test") {
        return;
    }
    let t2 = Tier2::launch(Tier2Options::mesh(2, "weave")).await.unwrap();
    // One fake for both hosts, as Weave's IPAM is one cluster-wide
    // allocator; each host reaches it at its own 127.0.0.1:6784.
    let fake = FakeWeave::start(format!("{}:0", t2.gateway).parse().unwrap())
        .await
        .unwrap();
    let (h0, h1) = (t2.host("h0").clone(), t2.host("h1").clone());
    for (host, peer) in [(&h0, &h1), (&h1, &h0)] {
        t2.expect(weave_bridge(host, &peer.ip).await).await;
        t2.expect(start_forwarder(host, fake.addr).await).await;
    }

    let run = &t2.run;
    let (a, b) = (
        format!("a{}", run.replace('-', "")),
        format!("b{}", run.replace('-', "")),
    );
    let spread = format!(
        "      replicas: 2\n      placement:\n        max_replicas_per_node: 1\n        constraints: [\"node.labels.t2 == {run}\"]"
    );
    let compose = format!(
        "services:\n  echo:\n{}networks:\n  back: {{}}\n",
        service("[back]", &spread)
    );
    t2.expect(t2.deploy(&a, &compose).await).await;
    t2.expect(t2.deploy(&b, &compose).await).await;
    let ra = t2.expect(attached(&t2, &a, 2).await).await;
    let rb = t2.expect(attached(&t2, &b, 2).await).await;
    let echo = of(&ra, "echo");
    let b_echo = of(&rb, "echo");
    let c = format!("c{}", run.replace('-', ""));
    let all: Vec<&Replica> = ra.iter().chain(&rb).collect();
    let mut checks = Checks::default();
    checks
        .check(
            "replicas have distinct addresses in the cluster range",
            addresses_in_range(&t2, &all),
        )
        .await;
    checks
        .check(
            "each address is on the container's ethwe interface, allocated by Weave's API",
            on_weave(&fake, &all, "back"),
        )
        .await;
    checks
        .check("skiff stack ps shows the Weave addresses", async {
            let out = t2.skiff(&["stack", "ps", &a]).await;
            for r in &echo {
                anyhow::ensure!(
                    text(&out).contains(r.addr("back")),
                    "no {} in: {}",
                    r.addr("back"),
                    text(&out)
                );
            }
            Ok(())
        })
        .await;
    checks
        .check(
            "the replicas on the two hosts reach each other over TCP on Weave",
            all_reach(&echo, false),
        )
        .await;
    checks
        .check(
            "that traffic crosses the VXLAN between the weave bridges",
            async {
                let before = vxlan_packets(&h0).await?;
                on(&echo, "h0")?.reaches(on(&echo, "h1")?, "back").await?;
                let after = vxlan_packets(&h0).await?;
                anyhow::ensure!(
                    after.0 > before.0 && after.1 > before.1,
                    "h0's vxweave sent and received {before:?} packets, then {after:?}"
                );
                Ok(())
            },
        )
        .await;
    checks
        .check(
            "another stack reaches its own members but not the first stack's",
            async {
                let (b0, b1) = (on(&b_echo, "h0")?, on(&b_echo, "h1")?);
                b1.reaches_only(b0, "back", &echo, "back").await?;
                b0.reaches_only(b1, "back", &echo, "back").await
            },
        )
        .await;
    checks
        .check(
            "an agent restart keeps every attachment and address",
            async {
                let before = fake.allocations();
                t2.restart_agent(&h0).await?;
                no_problems(&t2, &a).await?;
                let again = attached(&t2, &a, 2).await?;
                for r in &again {
                    let old = echo
                        .iter()
                        .find(|o| o.task == r.task)
                        .ok_or_else(|| anyhow::anyhow!("{} is new", r.task))?;
                    anyhow::ensure!(
                        r.container == old.container && r.addresses == old.addresses,
                        "{} changed: {:?} then {:?}",
                        r.task,
                        old.addresses,
                        r.addresses
                    );
                }
                anyhow::ensure!(fake.allocations() == before, "the allocations changed");
                all_reach(&echo, false).await
            },
        )
        .await;
    checks
        .check(
            "Weave's API down on a host is reported with the fix; a replica started then has no cluster address until it answers",
            async {
                stop_forwarder(&h1).await?;
                let down = async {
                    api_down_is_reported(&t2, &a, "h1").await?;
                    let pinned = format!(
                        "      placement:\n        constraints: [\"node.labels.t2 == {run}\", \"node.labels.host == h1\"]"
                    );
                    t2.deploy(
                        &c,
                        &format!(
                            "services:\n  echo:\n{}networks:\n  back: {{}}\n",
                            service("[back]", &pinned)
                        ),
                    )
                    .await?;
                    let task = wait_for(&format!("{c}'s replica to run"), CONVERGE, || async {
                        t2.tasks(&c)
                            .await
                            .into_iter()
                            .find(|t| t.state == "running")
                    })
                    .await?;
                    anyhow::ensure!(
                        task.addresses.is_empty(),
                        "{} has addresses before Weave attached it: {:?}",
                        task.name,
                        task.addresses
                    );
                    Ok::<_, anyhow::Error>(())
                }
                .await;
                // Back whatever happened, for the checks after this one.
                start_forwarder(&h1, fake.addr).await?;
                down?;
                no_problems(&t2, &a).await?;
                let rc = attached(&t2, &c, 1).await?;
                on_weave(&fake, &rc.iter().collect::<Vec<_>>(), "back").await
            },
        )
        .await;
    checks
        .check(
            "a removed stack's containers' addresses are released",
            async {
                let out = t2.skiff(&["stack", "rm", &b]).await;
                anyhow::ensure!(out.status.success(), "stack rm: {}", text(&out));
                let gone: Vec<&str> = b_echo.iter().map(|r| r.container.as_str()).collect();
                anyhow::ensure!(
                    fake.allocations()
                        .values()
                        .filter(|c| gone.iter().any(|g| c.starts_with(g)))
                        .count()
                        == 2,
                    "the fake did not hold b's two addresses: {:?}",
                    fake.allocations()
                );
                let last = RefCell::new(BTreeMap::new());
                wait_for("the fake to release b's addresses", CONVERGE, || {
                    let last = &last;
                    let gone = &gone;
                    let fake = &fake;
                    async move {
                        let held = fake.allocations();
                        let ok = !held.values().any(|c| gone.iter().any(|g| c.starts_with(g)));
                        *last.borrow_mut() = held;
                        ok.then_some(())
                    }
                })
                .await
                .map_err(|e| anyhow::anyhow!("{e}; held: {:?}", last.borrow()))?;
                // The first stack keeps its own.
                on_weave(&fake, &echo, "back").await
            },
        )
        .await;
    checks.finish(&t2).await;
}
