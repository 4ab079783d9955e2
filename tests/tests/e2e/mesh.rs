//! The cluster network across real hosts: tier-2 hosts (containers with
//! their own Docker Engine, scripts/test-host.sh) whose agents were
//! installed by the install script and joined to a coordinator on this
//! machine with the cluster network on.
//!
//! One test per cluster, each running its checks in sequence on hosts it
//! starts once (hosts take seconds to start and join): a three-host
//! WireGuard cluster, a two-host VXLAN cluster, and the faults.
//!
//! TCP is checked with busybox `httpd` and `wget` (and a long `nc` stream)
//! in the containers; UDP with an echo by the host's `socat` run in a
//! container's network namespace (busybox's `nc` has no UDP): the packets
//! are the container's, from its address.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use skiff_api_types::{MeshHostView, NetworkView, TaskView};
use skiff_tests::tier2::{
    Capture, Checks, Host, Tier2, Tier2Options, coordinator_refusal, count_packets, skipped,
    stdout, text,
};
use skiff_tests::wait_for;

/// How long the network gets to converge after a change (peers, routes,
/// firewall) before a check fails.
pub(super) const CONVERGE: Duration = Duration::from_secs(60);
/// How long a blocked connection is given to (not) succeed.
const BLOCKED_AFTER_SECS: u32 = 3;

/// A service that answers HTTP on 8080 with its hostname and echoes TCP on
/// 7000 (one `cat` per connection).
pub(super) fn service(networks: &str, deploy: &str) -> String {
    format!(
        r#"    image: skiff-test/busybox:1
    command: ["sh", "-c", "hostname > /www/index.html && httpd -p 8080 -h /www && exec nc -ll -p 7000 -e cat"]
    networks: {networks}
    deploy:
{deploy}
"#
    )
}

/// A replica as the tests use it: where it runs and its addresses.
#[derive(Debug, Clone)]
pub(super) struct Replica {
    pub(super) task: String,
    pub(super) host: Host,
    pub(super) container: String,
    pub(super) hostname: String,
    /// Network name to address.
    pub(super) addresses: BTreeMap<String, String>,
}

impl Replica {
    pub(super) fn addr(&self, network: &str) -> &str {
        self.addresses
            .get(network)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{} has no address on {network}", self.task))
    }

    pub(super) async fn sh(&self, shell: &str) -> std::process::Output {
        self.host.exec_in(&self.container, shell).await
    }

    /// One HTTP GET of `ip`:8080 from this replica: the body, or why not.
    /// (Debian's busybox 1.35 `wget -T` crashes: `timeout` bounds it.)
    async fn get(&self, ip: &str, path: &str) -> Result<String, String> {
        let out = self
            .sh(&format!(
                "busybox timeout {BLOCKED_AFTER_SECS} wget -q -O- http://{ip}:8080/{path}"
            ))
            .await;
        if out.status.success() {
            Ok(stdout(&out))
        } else {
            Err(format!("wget: {}: {}", out.status, text(&out)))
        }
    }

    /// Waits until this replica reaches `to` on `network` over TCP (its
    /// hostname comes back).
    pub(super) async fn reaches(&self, to: &Replica, network: &str) -> anyhow::Result<()> {
        let ip = to.addr(network);
        let last = RefCell::new(String::new());
        let got = wait_for(
            &format!("{} to reach {} at {ip} over TCP", self.task, to.task),
            CONVERGE,
            || {
                let last = &last;
                async move {
                    match self.get(ip, "").await {
                        Ok(body) if body == to.hostname => Some(()),
                        Ok(body) => {
                            *last.borrow_mut() = format!("answered {body:?}");
                            None
                        }
                        Err(e) => {
                            *last.borrow_mut() = e;
                            None
                        }
                    }
                }
            },
        )
        .await;
        got.map_err(|e| anyhow::anyhow!("{e}: {}", last.borrow()))
    }

    /// This replica reaches `own` on `network` (so its own traffic flows)
    /// but none of `foreign` on `foreign_network`: each connection is
    /// refused or times out.
    pub(super) async fn reaches_only(
        &self,
        own: &Replica,
        network: &str,
        foreign: &[&Replica],
        foreign_network: &str,
    ) -> anyhow::Result<()> {
        self.reaches(own, network).await?;
        for r in foreign {
            let ip = r.addr(foreign_network);
            if let Ok(body) = self.get(ip, "").await {
                anyhow::bail!(
                    "{} reached {} at {ip} (answer {body:?}); it must be blocked",
                    self.task,
                    r.task
                );
            }
        }
        Ok(())
    }

    /// Starts a UDP server on port 7001 in this replica's network (and
    /// host name) namespace that answers every datagram with the
    /// replica's hostname.
    async fn udp_echo(&self) -> anyhow::Result<()> {
        let out = self
            .host
            .exec(&format!(
                "pid=$(docker inspect -f '{{{{.State.Pid}}}}' {}) && \
                 setsid nsenter -t \"$pid\" -n -u socat UDP4-RECVFROM:7001,fork SYSTEM:'uname -n' </dev/null >/dev/null 2>&1 &",
                self.container
            ))
            .await;
        anyhow::ensure!(out.status.success(), "udp echo: {}", text(&out));
        Ok(())
    }

    /// Waits until a UDP datagram from this replica to `to` on `network`
    /// is answered by `to` (its hostname comes back).
    async fn reaches_udp(&self, to: &Replica, network: &str) -> anyhow::Result<()> {
        let ip = to.addr(network);
        let last = RefCell::new(String::new());
        let got = wait_for(
            &format!("{} to reach {} at {ip} over UDP", self.task, to.task),
            CONVERGE,
            || {
                let last = &last;
                async move {
                    let out = self
                        .host
                        .exec_in_netns(
                            &self.container,
                            &format!("echo {} | timeout 5 socat -T2 - UDP4:{ip}:7001", self.task),
                        )
                        .await;
                    if stdout(&out) == to.hostname {
                        Some(())
                    } else {
                        *last.borrow_mut() = text(&out);
                        None
                    }
                }
            },
        )
        .await;
        got.map_err(|e| anyhow::anyhow!("{e}: {}", last.borrow()))
    }
}

/// Every replica reaches every other on `back`, over TCP, or over UDP.
pub(super) async fn all_reach(replicas: &[&Replica], udp: bool) -> anyhow::Result<()> {
    if udp {
        for r in replicas {
            r.udp_echo().await?;
        }
    }
    for from in replicas {
        for to in replicas.iter().filter(|r| r.task != from.task) {
            if udp {
                from.reaches_udp(to, "back").await?;
            } else {
                from.reaches(to, "back").await?;
            }
        }
    }
    Ok(())
}

/// Waits until `n` replicas of `stack` run with addresses, and finds their
/// containers in their hosts.
/// Every replica of `all` has its own address in the cluster range, and
/// the `echo` replicas reach each other over TCP and UDP.
async fn reach_checks(checks: &mut Checks, t2: &Tier2, all: &[&Replica], echo: &[&Replica]) {
    checks
        .check(
            "replicas have distinct addresses in the cluster range",
            addresses_in_range(t2, all),
        )
        .await;
    checks
        .check(
            "the replicas reach each other over TCP",
            all_reach(echo, false),
        )
        .await;
    checks
        .check(
            "the replicas reach each other over UDP",
            all_reach(echo, true),
        )
        .await;
}

pub(super) async fn replicas(t2: &Tier2, stack: &str, n: usize) -> anyhow::Result<Vec<Replica>> {
    let tasks = t2.wait_running(stack, n).await?;
    let mut out = Vec::new();
    for t in tasks {
        out.push(replica(t2, &t).await?);
    }
    Ok(out)
}

/// Every replica's addresses are in the cluster range, and no two are the same.
pub(super) async fn addresses_in_range(t2: &Tier2, replicas: &[&Replica]) -> anyhow::Result<()> {
    let range = t2
        .network_view()
        .await?
        .range
        .ok_or_else(|| anyhow::anyhow!("the cluster network has no range"))?;
    let mut seen = std::collections::BTreeSet::new();
    for r in replicas {
        for (net, addr) in &r.addresses {
            anyhow::ensure!(
                in_range(addr, &range),
                "{}'s address on {net}, {addr}, is not in the cluster range {range}",
                r.task
            );
            anyhow::ensure!(seen.insert(addr.clone()), "{addr} is given twice");
        }
    }
    Ok(())
}

/// Whether IPv4 address `addr` is in `cidr`.
pub(super) fn in_range(addr: &str, cidr: &str) -> bool {
    let parse = |a: &str| a.parse::<std::net::Ipv4Addr>().ok().map(u32::from);
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    match (parse(addr), parse(net), len.parse::<u32>()) {
        (Some(a), Some(n), Ok(len)) if len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            a & mask == n & mask
        }
        _ => false,
    }
}

pub(super) async fn replica(t2: &Tier2, t: &TaskView) -> anyhow::Result<Replica> {
    let host = t2.host(&t.node).clone();
    let container = host.container(&t.name).await?;
    let hostname = stdout(&host.exec_in(&container, "hostname").await);
    Ok(Replica {
        task: t.name.clone(),
        host,
        container,
        hostname,
        addresses: t
            .addresses
            .iter()
            .map(|a| (a.network.clone(), a.address.clone()))
            .collect(),
    })
}

pub(super) fn of<'a>(rs: &'a [Replica], service: &str) -> Vec<&'a Replica> {
    let mut v: Vec<&Replica> = rs
        .iter()
        .filter(|r| r.task.split('.').nth(1) == Some(service))
        .collect();
    v.sort_by(|a, b| a.host.node.cmp(&b.host.node));
    v
}

pub(super) fn on<'a>(rs: &[&'a Replica], node: &str) -> anyhow::Result<&'a Replica> {
    rs.iter()
        .copied()
        .find(|r| r.host.node == node)
        .ok_or_else(|| anyhow::anyhow!("no replica on {node}"))
}

fn mesh_host<'a>(view: &'a NetworkView, node: &str) -> Option<&'a MeshHostView> {
    view.hosts.iter().find(|h| h.node == node)
}

/// Waits until the mesh is `nodes`, every one of them listing every other
/// as a peer, with an implementation and no error.
async fn mesh_is(t2: &Tier2, nodes: &[&str], implementation: &str) -> anyhow::Result<()> {
    let last = RefCell::new(None);
    let got = wait_for(
        &format!("the mesh to be {nodes:?}, all up with {implementation}"),
        CONVERGE,
        || {
            let last = &last;
            async move {
                let view = t2.network_view().await.ok()?;
                let mut names: Vec<&str> = view.hosts.iter().map(|h| h.node.as_str()).collect();
                names.sort_unstable();
                let ok = names == nodes
                    && view.hosts.iter().all(|h| {
                        let mut peers: Vec<&str> =
                            h.peers.iter().map(|p| p.node.as_str()).collect();
                        peers.sort_unstable();
                        let others: Vec<&str> =
                            nodes.iter().copied().filter(|n| *n != h.node).collect();
                        peers == others
                            && h.implementation.as_deref() == Some(implementation)
                            && h.error.is_none()
                            && h.firewall_error.is_none()
                    });
                *last.borrow_mut() = Some(view);
                ok.then_some(())
            }
        },
    )
    .await;
    got.map_err(|e| anyhow::anyhow!("{e}; last seen: {:#?}", last.borrow()))
}

/// Sends `marker` between two replicas on different hosts while capturing
/// the hosts' network; returns the capture's bytes and UDP packets on `port`.
async fn capture_marker(
    t2: &Tier2,
    from: &Replica,
    to: &Replica,
    network: &str,
    marker: &str,
    port: u16,
) -> anyhow::Result<(bool, usize)> {
    let capture = Capture::start(&t2.host_interface(&from.host).await?, "udp").await?;
    // Over TCP to the echo, which sends it back: it crossed both ways.
    let out = from
        .sh(&format!(
            "echo {marker} | busybox timeout 10 nc {} 7000",
            to.addr(network)
        ))
        .await;
    let (bytes, file) = capture.stop().await?;
    anyhow::ensure!(
        stdout(&out).contains(marker),
        "the marker did not come back from the echo: {}",
        text(&out)
    );
    let seen = bytes.windows(marker.len()).any(|w| w == marker.as_bytes());
    let packets = count_packets(file.path(), &format!("udp port {port}")).await?;
    eprintln!(
        "capture on {}'s link: {} bytes, {} UDP packets, {packets} on port {port}",
        from.host.node,
        bytes.len(),
        count_packets(file.path(), "udp").await?
    );
    Ok((seen, packets))
}

fn wireguard_stacks(run: &str) -> (String, String) {
    let spread = format!(
        "      replicas: 3\n      placement:\n        max_replicas_per_node: 1\n        constraints: [\"node.labels.t2 == {run}\"]"
    );
    let pin = |node: &str| {
        format!(
            "      placement:\n        constraints: [\"node.labels.t2 == {run}\", \"node.labels.host == {node}\"]"
        )
    };
    let a = format!(
        "services:\n  echo:\n{}  side:\n{}  both:\n{}networks:\n  back: {{}}\n  side: {{}}\n",
        service("[back]", &spread),
        service("[side]", &pin("h1")),
        service("[back, side]", &pin("h2")),
    );
    let b = format!(
        "services:\n  echo:\n{}networks:\n  back: {{}}\n",
        service(
            "[back]",
            &format!(
                "      replicas: 2\n      placement:\n        max_replicas_per_node: 1\n        constraints: [\"node.labels.t2 == {run}\", \"node.labels.host != h0\"]"
            )
        ),
    );
    (a, b)
}

#[tokio::test(flavor = "multi_thread")]
async fn wireguard_mesh_joins_three_hosts_isolates_stacks_and_survives_changes() {
    if skipped("the tier-2 WireGuard mesh test") {
        return;
    }
    let mut t2 = Tier2::launch(Tier2Options::mesh(3, "wireguard"))
        .await
        .unwrap();
    let mut checks = Checks::default();
    checks
        .check(
            "every host has the others as WireGuard peers",
            mesh_is(&t2, &["h0", "h1", "h2"], "userspace-wireguard"),
        )
        .await;

    let (a, b) = (
        format!("a{}", t2.run.replace('-', "")),
        format!("b{}", t2.run.replace('-', "")),
    );
    let (compose_a, compose_b) = wireguard_stacks(&t2.run);
    t2.expect(t2.deploy(&a, &compose_a).await).await;
    t2.expect(t2.deploy(&b, &compose_b).await).await;
    let ra = t2.expect(replicas(&t2, &a, 5).await).await;
    let rb = t2.expect(replicas(&t2, &b, 2).await).await;
    let echo = of(&ra, "echo");
    let mut nodes: Vec<&str> = echo.iter().map(|r| r.host.node.as_str()).collect();
    nodes.dedup();
    assert_eq!(nodes, ["h0", "h1", "h2"], "one echo replica per host");
    let all: Vec<&Replica> = ra.iter().chain(&rb).collect();
    reach_checks(&mut checks, &t2, &all, &echo).await;
    checks
        .check(
            "another stack reaches its own members but not the first stack's",
            async {
                let b_echo = of(&rb, "echo");
                let (b1, b2) = (on(&b_echo, "h1")?, on(&b_echo, "h2")?);
                b1.reaches_only(b2, "back", &echo, "back").await
            },
        )
        .await;
    checks
        .check(
            "a service on another network of the stack is isolated from it",
            async {
                let side = on(&of(&ra, "side"), "h1")?;
                let both = on(&of(&ra, "both"), "h2")?;
                side.reaches_only(both, "side", &echo, "back").await
            },
        )
        .await;
    checks
        .check(
            "a container on two networks reaches members of both",
            async {
                let side = on(&of(&ra, "side"), "h1")?;
                let both = on(&of(&ra, "both"), "h2")?;
                for r in &echo {
                    both.reaches(r, "back").await?;
                }
                both.reaches(side, "side").await
            },
        )
        .await;
    checks
        .check(
            "WireGuard: the underlay carries no plaintext, only UDP 51820",
            async {
                let marker = format!("skiff-plaintext-marker-{}", t2.run);
                let (seen, packets) = capture_marker(
                    &t2,
                    on(&echo, "h0")?,
                    on(&echo, "h1")?,
                    "back",
                    &marker,
                    51820,
                )
                .await?;
                anyhow::ensure!(!seen, "the marker was seen in plaintext on the underlay");
                anyhow::ensure!(packets > 0, "no UDP 51820 packets on the underlay");
                Ok(())
            },
        )
        .await;
    checks
        .check(
            "an agent restart keeps an established TCP stream",
            stream_survives_agent_restarts(&t2, on(&echo, "h0").unwrap(), on(&echo, "h1").unwrap()),
        )
        .await;
    let c = format!("c{}", t2.run.replace('-', ""));
    checks
        .check(
            "a removed host leaves every peer list; a joined one is added and reached",
            remove_and_join(&mut t2, &c),
        )
        .await;

    checks
        .check(
            "a host cut off shows as unreachable while the others keep talking",
            cut_off_peer(&t2, &c),
        )
        .await;
    checks.finish(&t2).await;
}

/// A TCP stream from `client` to `server`'s echo: a line goes and comes
/// back, both hosts' agents restart, and another line goes and comes back
/// on the same connection (the same `nc` process, still running).
async fn stream_survives_agent_restarts(
    t2: &Tier2,
    client: &Replica,
    server: &Replica,
) -> anyhow::Result<()> {
    let ip = server.addr("back");
    let setup = client
        .sh("busybox mkfifo /tmp/stream.in && (sleep 100000 >/tmp/stream.in &)")
        .await;
    anyhow::ensure!(setup.status.success(), "{}", text(&setup));
    let out = client
        .host
        .exec(&format!(
            "docker exec -d {} sh -c 'echo $$ >/tmp/stream.pid; exec nc {ip} 7000 </tmp/stream.in >/tmp/stream.out'",
            client.container
        ))
        .await;
    anyhow::ensure!(out.status.success(), "{}", text(&out));
    let says = |line: &'static str| async move {
        let out = client.sh(&format!("echo {line} >/tmp/stream.in")).await;
        anyhow::ensure!(out.status.success(), "{}", text(&out));
        wait_for(
            &format!("{line:?} to come back over the stream"),
            CONVERGE,
            || async {
                stdout(&client.sh("cat /tmp/stream.out").await)
                    .lines()
                    .any(|l| l == line)
                    .then_some(())
            },
        )
        .await
    };
    says("before-restart").await?;
    let pid = stdout(&client.sh("cat /tmp/stream.pid").await);
    for host in [&client.host, &server.host] {
        t2.restart_agent(host).await?;
    }
    says("after-restart").await?;
    let alive = client.sh(&format!("kill -0 {pid}")).await;
    anyhow::ensure!(
        alive.status.success(),
        "the client's nc (pid {pid}) ended: the connection broke"
    );
    Ok(())
}

/// `skiff node rm` of h2: it leaves every peer list; a new host h3 joins
/// and becomes everyone's peer, and a stack deployed then (`stack`, one
/// echo replica on each of h0, h1, h3) reaches across all three.
async fn remove_and_join(t2: &mut Tier2, stack: &str) -> anyhow::Result<()> {
    let h2 = t2.host("h2").clone();
    let id = t2.node_id(&h2).await?;
    let out = t2.skiff(&["node", "rm", &id]).await;
    anyhow::ensure!(out.status.success(), "node rm: {}", text(&out));
    mesh_is(t2, &["h0", "h1"], "userspace-wireguard").await?;
    // Its containers go with it (it is no longer part of the cluster).
    skiff_tests::tier2::stop_host(&h2.name);

    t2.add_host(true).await?;
    mesh_is(t2, &["h0", "h1", "h3"], "userspace-wireguard").await?;
    let spread = format!(
        "      replicas: 3\n      placement:\n        max_replicas_per_node: 1\n        constraints: [\"node.labels.t2 == {}\"]",
        t2.run
    );
    let compose = format!(
        "services:\n  echo:\n{}networks:\n  back: {{}}\n",
        service("[back]", &spread)
    );
    t2.deploy(stack, &compose).await?;
    let rc = replicas(t2, stack, 3).await?;
    all_reach(&of(&rc, "echo"), false).await
}

/// How old a WireGuard handshake is when the agent calls it stale
/// (handshakes renew every two minutes while keepalives flow).
const STALE_HANDSHAKE_MS: u64 = 180_000;

/// h1 is cut off the network: the echo replicas on two other hosts still
/// reach each other, and h0's view of h1 shows it cannot be reached (an
/// error, or a handshake gone stale).
async fn cut_off_peer(t2: &Tier2, stack: &str) -> anyhow::Result<()> {
    let mut others = Vec::new();
    for t in t2.tasks(stack).await {
        if t.service == "echo" && t.node != "h1" && t.state == "running" {
            others.push(replica(t2, &t).await?);
        }
    }
    let [a, b, ..] = others.as_slice() else {
        anyhow::bail!("fewer than two echo replicas run outside h1: {others:#?}");
    };
    let watcher = a.host.node.clone();
    t2.cut_off(t2.host("h1")).await?;
    a.reaches(b, "back").await?;
    b.reaches(a, "back").await?;
    let last = RefCell::new(None);
    let stale = wait_for(
        &format!("{watcher} to report h1 as unreachable"),
        Duration::from_millis(STALE_HANDSHAKE_MS) + Duration::from_secs(120),
        || {
            let (last, watcher) = (&last, &watcher);
            async move {
                let view = t2.network_view().await.ok()?;
                let peer = mesh_host(&view, watcher)?
                    .peers
                    .iter()
                    .find(|p| p.node == "h1")
                    .cloned();
                *last.borrow_mut() = peer.clone();
                peer.filter(|p| {
                    p.error.is_some() || p.handshake_age_ms.is_some_and(|a| a >= STALE_HANDSHAKE_MS)
                })
            }
        },
    )
    .await;
    let peer =
        stale.map_err(|e| anyhow::anyhow!("{e}; {watcher}'s view of h1: {:#?}", last.borrow()))?;
    eprintln!("{watcher}'s view of the cut-off h1: {peer:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn vxlan_mesh_joins_two_hosts_and_carries_plaintext() {
    if skipped("the tier-2 VXLAN mesh test") {
        return;
    }
    let t2 = Tier2::launch(Tier2Options::mesh(2, "vxlan")).await.unwrap();
    let mut checks = Checks::default();
    checks
        .check(
            "both hosts have each other as VXLAN peers",
            mesh_is(&t2, &["h0", "h1"], "vxlan"),
        )
        .await;
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
    let ra = t2.expect(replicas(&t2, &a, 2).await).await;
    let rb = t2.expect(replicas(&t2, &b, 2).await).await;
    let echo = of(&ra, "echo");
    let (e0, e1) = (on(&echo, "h0").unwrap(), on(&echo, "h1").unwrap());
    let all: Vec<&Replica> = ra.iter().chain(&rb).collect();
    reach_checks(&mut checks, &t2, &all, &echo).await;
    checks
        .check(
            "another stack reaches its own members but not them",
            async {
                let b_echo = of(&rb, "echo");
                let (b0, b1) = (on(&b_echo, "h0")?, on(&b_echo, "h1")?);
                b1.reaches_only(b0, "back", &echo, "back").await
            },
        )
        .await;
    checks
        .check(
            "VXLAN: the marker is in plaintext on the underlay, in UDP 4789",
            async {
                let marker = format!("skiff-plaintext-marker-{run}");
                let (seen, packets) = capture_marker(&t2, e0, e1, "back", &marker, 4789).await?;
                anyhow::ensure!(seen, "the marker was not seen on the underlay");
                anyhow::ensure!(packets > 0, "no UDP 4789 packets on the underlay");
                Ok(())
            },
        )
        .await;
    checks.finish(&t2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_are_refused_or_reported_clearly() {
    if skipped("the tier-2 network fault test") {
        return;
    }
    // A host without /dev/net/tun: its mesh reports why, naming the device.
    let t2 = Tier2::launch(Tier2Options {
        tun: false,
        ..Tier2Options::mesh(1, "wireguard")
    })
    .await
    .unwrap();
    let mut checks = Checks::default();
    checks
        .check("a host without /dev/net/tun reports it", async {
            let last = RefCell::new(None);
            let t2 = &t2;
            let got = wait_for("h0 to report a mesh error", CONVERGE, || {
                let last = &last;
                async move {
                    let view = t2.network_view().await.ok()?;
                    let h = mesh_host(&view, "h0")?.clone();
                    *last.borrow_mut() = Some(h.clone());
                    h.error
                }
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}; last seen: {:#?}", last.borrow()))?;
            anyhow::ensure!(
                got.contains("/dev/net/tun"),
                "the error does not name /dev/net/tun: {got}"
            );
            let out = t2.skiff(&["network", "show"]).await;
            anyhow::ensure!(
                text(&out).contains("/dev/net/tun"),
                "skiff network show does not show it: {}",
                text(&out)
            );
            Ok(())
        })
        .await;

    // Ranges a coordinator refuses to start with, saying why.
    let subnet = stdout(
        &skiff_tests::tier2::run(tokio::process::Command::new("docker").args([
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
            &t2.network,
        ]))
        .await,
    );
    for (range, says) in [
        ("10.66.0.0/33", "network.range"),
        ("8.8.0.0/16", "not private"),
        (subnet.as_str(), "overlaps"),
    ] {
        checks
            .check(
                &format!("a coordinator with range {range} refuses to start"),
                async {
                    let out =
                        coordinator_refusal(&format!("enabled = true\nrange = \"{range}\"\n"))
                            .await?;
                    anyhow::ensure!(
                        !out.status.success(),
                        "it exited with success: {}",
                        text(&out)
                    );
                    anyhow::ensure!(text(&out).contains(says), "no {says:?} in: {}", text(&out));
                    Ok(())
                },
            )
            .await;
    }
    checks.finish(&t2).await;
}
