//! Cluster service discovery across real hosts: three tier-2 hosts on a
//! WireGuard cluster network, busybox `nslookup` in their containers
//! asking through Docker's embedded resolver, which forwards Skiff's names
//! to the agent's server on the network's gateway.
//!
//! One cluster, checks in sequence: every name form, the policies, answers
//! narrowed to the networks a caller shares, forwarding, a rolling update
//! (the `version` policy, and a client that resolves and connects in a
//! loop never failing), and names that keep resolving with the
//! coordinator away.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::Duration;

use skiff_tests::tier2::{Checks, Tier2, Tier2Options, skipped, stdout, text};
use skiff_tests::wait_for;

use super::mesh::{Replica, of, on, replicas};

/// How long names get to show a change (records travel to every host).
const CONVERGE: Duration = Duration::from_secs(60);

/// The answer of busybox `nslookup` from a replica: the addresses, or
/// `Err` with what it said (NXDOMAIN, a timeout).
async fn lookup(from: &Replica, name: &str) -> Result<BTreeSet<String>, String> {
    let out = from
        .sh(&format!("busybox timeout 10 nslookup {name}"))
        .await;
    let said = text(&out);
    if !out.status.success() {
        return Err(said);
    }
    Ok(addresses(&stdout(&out)))
}

/// The IPv4 addresses of an `nslookup` answer (not the server's own line,
/// which has a port).
fn addresses(out: &str) -> BTreeSet<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("Address:"))
        .map(str::trim)
        .filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_owned)
        .collect()
}

/// Waits until `name`, asked from `from`, answers exactly `want`.
async fn answers(from: &Replica, name: &str, want: &BTreeSet<String>) -> anyhow::Result<()> {
    let last = RefCell::new(String::new());
    let got = wait_for(
        &format!("{name} from {} to answer {want:?}", from.task),
        CONVERGE,
        || {
            let last = &last;
            async move {
                match lookup(from, name).await {
                    Ok(got) if &got == want => Some(()),
                    Ok(got) => {
                        *last.borrow_mut() = format!("answered {got:?}");
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

/// Waits until `name`, asked from `from`, is not found (and has no
/// address). A name without a dot may end, after its search domain, with
/// the engine's own empty answer instead of NXDOMAIN: no address is
/// enough for it.
async fn not_found(from: &Replica, name: &str) -> anyhow::Result<()> {
    let dotless = !name.contains('.');
    let last = RefCell::new(String::new());
    let got = wait_for(
        &format!("{name} from {} to be unknown", from.task),
        CONVERGE,
        || {
            let last = &last;
            async move {
                match lookup(from, name).await {
                    Err(e) if e.contains("NXDOMAIN") => Some(()),
                    Ok(a) if a.is_empty() && dotless => Some(()),
                    Ok(a) => {
                        *last.borrow_mut() = format!("answered {a:?}");
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

fn addrs(rs: &[&Replica], network: &str) -> BTreeSet<String> {
    rs.iter().map(|r| r.addr(network).to_owned()).collect()
}

/// A busybox service: HTTP on 8080 answering its hostname (and `ENV`).
fn web(networks: &str, dns: &str, deploy: &str) -> String {
    format!(
        r#"    image: skiff-test/busybox:1
    command: ["sh", "-c", "echo $$(hostname) $$VERSION > /www/index.html && exec httpd -f -p 8080 -h /www"]
    environment:
      VERSION: "1"
    expose: ["8080"]
    networks: {networks}
    x-skiff:
      dns:
        policy: {dns}
    deploy:
{deploy}
"#
    )
}

/// A container that only waits, as callers. Its first process is a shell
/// that reaps what is left to it: busybox `timeout`, which the client loop
/// runs for every fetch, leaves its watcher to the container's first
/// process, and a `sleep` there would keep every one as a zombie until the
/// machine runs out of processes.
fn idle(networks: &str, deploy: &str) -> String {
    format!(
        "    image: skiff-test/busybox:1\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while :; do sleep 1; done\"]\n    networks: {networks}\n    deploy:\n{deploy}\n"
    )
}

struct Stacks {
    app: String,
    other: String,
}

fn compose(run: &str, version: &str) -> (String, String) {
    // One replica at a time, with a pause after each: long enough for
    // the checks made halfway through.
    let spread = |n: usize, pause: &str| {
        format!(
            "      replicas: {n}\n      placement:\n        max_replicas_per_node: 1\n        constraints: [\"node.labels.t2 == {run}\"]\n      update_config:\n        parallelism: 1\n        delay: {pause}"
        )
    };
    let pin = |node: &str| {
        format!(
            "      placement:\n        constraints: [\"node.labels.t2 == {run}\", \"node.labels.host == {node}\"]"
        )
    };
    let not_h0 = format!(
        "      replicas: 2\n      placement:\n        max_replicas_per_node: 1\n        constraints: [\"node.labels.t2 == {run}\", \"node.labels.host != h0\"]"
    );
    let app = format!(
        "services:\n  web:\n{}  near:\n{}  zoned:\n{}  ver:\n{}  client:\n{}  lonely:\n{}networks:\n  back: {{}}\n  side: {{}}\n",
        web("[back]", "round_robin", &spread(3, "5s")),
        web("[back]", "closest", &spread(3, "5s")),
        web("[back]", "closest", &not_h0),
        web("[back]", "version", &spread(2, "40s"))
            .replace("VERSION: \"1\"", &format!("VERSION: \"{version}\"")),
        idle("[back]", &pin("h0")),
        idle("[side]", &pin("h1")),
    );
    let other = format!(
        "services:\n  client:\n{}networks:\n  back: {{}}\n",
        idle("[back]", &pin("h2"))
    );
    (app, other)
}

#[tokio::test(flavor = "multi_thread")]
async fn names_resolve_across_hosts_by_policy_and_through_deploys() {
    if skipped("the tier-2 DNS test") {
        return;
    }
    let mut t2 = Tier2::launch(Tier2Options::mesh(3, "wireguard"))
        .await
        .unwrap();
    for (node, zone) in [("h0", "a"), ("h1", "a"), ("h2", "b")] {
        let out = t2
            .skiff(&["node", "label", node, &format!("zone={zone}")])
            .await;
        assert!(out.status.success(), "label {node}: {}", text(&out));
    }
    let stacks = Stacks {
        app: format!("a{}", t2.run.replace('-', "")),
        other: format!("o{}", t2.run.replace('-', "")),
    };
    let (app, other) = compose(&t2.run, "1");
    t2.expect(t2.deploy(&stacks.app, &app).await).await;
    t2.expect(t2.deploy(&stacks.other, &other).await).await;
    let ra = t2.expect(replicas(&t2, &stacks.app, 12).await).await;
    let ro = t2.expect(replicas(&t2, &stacks.other, 1).await).await;
    let client = on(&of(&ra, "client"), "h0").unwrap();
    let lonely = on(&of(&ra, "lonely"), "h1").unwrap();
    let outsider = on(&of(&ro, "client"), "h2").unwrap();
    let webs = of(&ra, "web");
    let app = stacks.app.as_str();
    let mut checks = Checks::default();

    checks
        .check(
            "a bare service name answers every replica on every host, not only the local one",
            answers(client, "web", &addrs(&webs, "back")),
        )
        .await;
    checks
        .check("every name form answers", async {
            let all = addrs(&webs, "back");
            answers(client, &format!("web.{app}.skiff"), &all).await?;
            answers(client, "tasks.web", &all).await?;
            let first = webs
                .iter()
                .find(|r| r.task.ends_with(".1"))
                .ok_or_else(|| anyhow::anyhow!("no replica 1 of web"))?;
            answers(
                client,
                &format!("1.web.{app}.skiff"),
                &addrs(&[first], "back"),
            )
            .await?;
            let view = t2.network_view().await?;
            let h1 = view
                .hosts
                .iter()
                .find(|h| h.node == "h1")
                .ok_or_else(|| anyhow::anyhow!("no h1 in the network view"))?;
            let mesh = h1.address.split('/').next().unwrap_or_default().to_owned();
            answers(client, "h1.nodes.skiff", &BTreeSet::from([mesh])).await?;
            not_found(client, &format!("nothing.{app}.skiff")).await
        })
        .await;
    checks
        .check("SRV records give each replica's port", async {
            let out = client
                .sh(&format!(
                    "busybox timeout 10 nslookup -type=SRV web.{app}.skiff"
                ))
                .await;
            let said = stdout(&out);
            anyhow::ensure!(
                out.status.success() && said.matches("8080").count() >= 3,
                "SRV web.{app}.skiff: {}",
                text(&out)
            );
            Ok(())
        })
        .await;
    checks
        .check("round robin rotates the first answer", async {
            let mut firsts = BTreeSet::new();
            for _ in 0..12 {
                let out = client
                    .sh(&format!("busybox timeout 10 nslookup web.{app}.skiff"))
                    .await;
                if let Some(first) = stdout(&out)
                    .lines()
                    .filter_map(|l| l.strip_prefix("Address:"))
                    .map(str::trim)
                    .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
                {
                    firsts.insert(first.to_owned());
                }
            }
            anyhow::ensure!(firsts.len() > 1, "12 queries all began with {firsts:?}");
            Ok(())
        })
        .await;
    checks
        .check("closest answers the caller's host, else its zone", async {
            let near = of(&ra, "near");
            answers(client, "near", &addrs(&[on(&near, "h0")?], "back")).await?;
            let zoned = of(&ra, "zoned");
            answers(client, "zoned", &addrs(&[on(&zoned, "h1")?], "back")).await
        })
        .await;
    checks
        .check(
            "a caller gets nothing for a service it shares no network with",
            async {
                not_found(lonely, "web").await?;
                not_found(lonely, &format!("web.{app}.skiff")).await?;
                not_found(outsider, &format!("web.{app}.skiff")).await
            },
        )
        .await;
    checks
        .check("other names are forwarded to the host's resolvers", async {
            // The hosts' own resolver (the engine's, on their network)
            // knows the other hosts as HOST.NETWORK.
            let h1 = t2.host("h1");
            answers(
                client,
                &format!("{}.{}", h1.name, t2.network),
                &BTreeSet::from([h1.ip.clone()]),
            )
            .await
        })
        .await;
    checks
        .check("skiff dns query shows what a replica would get", async {
            let from = format!("{app}.client.1");
            let out = t2
                .skiff(&[
                    "dns",
                    "query",
                    &format!("web.{app}.skiff"),
                    "--from",
                    &from,
                    "--json",
                ])
                .await;
            anyhow::ensure!(out.status.success(), "{}", text(&out));
            let said = stdout(&out);
            for a in addrs(&webs, "back") {
                anyhow::ensure!(said.contains(&a), "{a} missing from {said}");
            }
            let bad = t2.skiff(&["dns", "query", "web", "--from", "nope"]).await;
            anyhow::ensure!(
                !bad.status.success() && text(&bad).contains("nope"),
                "a bad --from: {}",
                text(&bad)
            );
            Ok(())
        })
        .await;
    checks
        .check(
            "during a rolling update, version answers each caller with its own release, and a resolving client never fails",
            rolling_update(&t2, &stacks, client),
        )
        .await;
    checks
        .check(
            "with the coordinator away, names keep resolving, also after an agent restart",
            coordinator_away(&mut t2, &stacks.app),
        )
        .await;
    checks.finish(&t2).await;
}

/// Starts a loop in `client` that resolves `web.STACK.skiff` and fetches
/// from every address it gets, logging `ok ADDR HOSTNAME VERSION` or
/// `FAIL ADDR why`.
async fn start_loop(client: &Replica, app: &str) -> anyhow::Result<()> {
    let script = format!(
        "while [ ! -f /tmp/stop ]; do \
           for a in $(busybox nslookup web.{app}.skiff 2>/dev/null | sed -n 's/^Address: *\\([0-9.]*\\)$/\\1/p'); do \
             if body=$(busybox timeout 3 wget -q -O- http://$a:8080/ 2>/tmp/err); then echo ok $a $body; \
             else echo FAIL $a $(cat /tmp/err); fi; \
           done; \
         done >>/tmp/loop.log 2>&1"
    );
    let out = client
        .host
        .exec(&format!(
            "docker exec -d {} sh -c {}",
            client.container,
            shell_quote(&script)
        ))
        .await;
    anyhow::ensure!(out.status.success(), "{}", text(&out));
    Ok(())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

async fn rolling_update(t2: &Tier2, stacks: &Stacks, client: &Replica) -> anyhow::Result<()> {
    let app = stacks.app.as_str();
    start_loop(client, app).await?;
    let (compose, _) = compose(&t2.run, "2");
    let compose = compose.replacen("VERSION: \"1\"", "VERSION: \"2\"", 1);
    t2.deploy(app, &compose).await?;

    // Halfway through `ver` (one replica new, one old, a 40 s pause between
    // batches): each asks for `ver` and gets its own release.
    let halfway = wait_for("one new and one old replica of ver", CONVERGE, || async {
        let tasks = t2.tasks(app).await;
        let ver: Vec<_> = tasks
            .iter()
            .filter(|t| t.service == "ver" && t.state == "running")
            .collect();
        let new = ver.iter().filter(|t| t.up_to_date).count();
        (ver.len() == 2 && new == 1).then(|| ver.iter().map(|t| (*t).clone()).collect::<Vec<_>>())
    })
    .await?;
    let mut new = None;
    let mut old = None;
    for t in &halfway {
        let r = super::mesh::replica(t2, t).await?;
        if t.up_to_date {
            new = Some(r);
        } else {
            old = Some(r);
        }
    }
    let (new, old) = (
        new.ok_or_else(|| anyhow::anyhow!("no new replica"))?,
        old.ok_or_else(|| anyhow::anyhow!("no old replica"))?,
    );
    answers(&new, "ver", &addrs(&[&new], "back")).await?;
    answers(&old, "ver", &addrs(&[&old], "back")).await?;

    // The whole stack rolled: every web replica answers version 2.
    wait_for(
        "every replica up to date",
        Duration::from_secs(300),
        || async {
            let tasks = t2.tasks(app).await;
            (tasks.len() == 12 && tasks.iter().all(|t| t.up_to_date && t.state == "running"))
                .then_some(())
        },
    )
    .await?;
    let stop = client.sh("touch /tmp/stop; cat /tmp/loop.log").await;
    let log = stdout(&stop);
    let fails: Vec<&str> = log.lines().filter(|l| l.starts_with("FAIL")).collect();
    // A replaced replica may get its predecessor's address: the versions
    // its answers carry tell old from new.
    let versions: BTreeSet<&str> = log
        .lines()
        .filter(|l| l.starts_with("ok "))
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    anyhow::ensure!(
        fails.is_empty(),
        "the resolving client failed {} times: {:?}",
        fails.len(),
        &fails[..fails.len().min(10)]
    );
    anyhow::ensure!(
        versions == BTreeSet::from(["1", "2"]),
        "the client was answered by versions {versions:?}: it must have reached old and new replicas"
    );
    Ok(())
}

async fn coordinator_away(t2: &mut Tier2, app: &str) -> anyhow::Result<()> {
    let ra = replicas(t2, app, 12).await?;
    let client = on(&of(&ra, "client"), "h0")?.clone();
    let webs = addrs(&of(&ra, "web"), "back");
    t2.coordinator.stop().await;
    let result = async {
        answers(&client, &format!("web.{app}.skiff"), &webs).await?;
        client.host.restart_agent().await?;
        answers(&client, &format!("web.{app}.skiff"), &webs).await
    }
    .await;
    t2.coordinator.start().await?;
    result
}
