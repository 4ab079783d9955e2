//! The ingress across real hosts: two tier-2 hosts on a VXLAN cluster
//! network, both edge hosts. A service's published port and its HTTP
//! route answer on both hosts and balance over replicas on either; while
//! clients keep sending keep-alive requests through one edge host and new
//! TCP connections through the other, a rolling deploy, a rollback, a
//! scale-down and a killed replica fail none of them; a long-lived TCP
//! connection to another service survives all of it; UDP is forwarded.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use skiff_tests::tier2::{Checks, Tier2, Tier2Options, skipped, text};
use skiff_tests::wait_for;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

/// How long the ingress gets to show a change.
const CONVERGE: Duration = Duration::from_secs(90);
/// The route's domain.
const DOMAIN: &str = "web.ingress.test";

fn compose(run: &str, version: &str, replicas: usize) -> String {
    let place = format!("constraints: [\"node.labels.t2 == {run}\"]");
    format!(
        r#"services:
  web:
    image: skiff-test/busybox:1
    command: ["sh", "-c", "echo $$(hostname) $$VERSION > /www/index.html && exec httpd -f -p 8080 -h /www"]
    environment:
      VERSION: "{version}"
    ports: ["18080:8080"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/"]
      interval: 1s
      retries: 2
    x-skiff:
      drain: 2s
      routes:
        - {{domain: {DOMAIN}, tls: off}}
    deploy:
      replicas: {replicas}
      placement:
        {place}
      update_config: {{parallelism: 1, order: start-first}}
  echo:
    image: skiff-test/busybox:1
    command: ["nc", "-ll", "-p", "9000", "-e", "cat"]
    ports: ["19000:9000"]
    deploy:
      placement:
        {place}
  udp:
    image: skiff-test/busybox:1
    command: ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
    ports: ["15300:5300/udp"]
    deploy:
      placement:
        {place}
"#
    )
}

/// Counts of a client's requests.
#[derive(Debug, Default)]
struct Counts {
    ok: AtomicU64,
    bad_status: AtomicU64,
    errors: AtomicU64,
    last_error: std::sync::Mutex<String>,
}

impl Counts {
    fn failed(&self, why: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = self.last_error.lock() {
            *l = why;
        }
    }

    fn summary(&self) -> String {
        format!(
            "{} ok, {} non-2xx, {} errors (last: {})",
            self.ok.load(Ordering::Relaxed),
            self.bad_status.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            self.last_error
                .lock()
                .map(|l| l.clone())
                .unwrap_or_default()
        )
    }

    fn clean(&self) -> bool {
        self.bad_status.load(Ordering::Relaxed) == 0 && self.errors.load(Ordering::Relaxed) == 0
    }
}

/// One GET of `/` with `Host: host` on an HTTP/1.1 connection.
async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
) -> anyhow::Result<(u16, String)> {
    let req = hyper::Request::get("/")
        .header(hyper::header::HOST, host)
        .body(Empty::<Bytes>::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await??;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await??
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn connect(
    addr: &str,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await??;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Keep-alive clients: `conns` connections to `addr`, each sending a GET
/// every `every`, until `stop`; the bodies they saw go to `seen`.
fn http_load(
    addr: String,
    conns: usize,
    every: Duration,
    stop: CancellationToken,
    seen: Arc<std::sync::Mutex<BTreeSet<String>>>,
) -> Arc<Counts> {
    let counts = Arc::new(Counts::default());
    for _ in 0..conns {
        let (addr, stop, counts, seen) = (addr.clone(), stop.clone(), counts.clone(), seen.clone());
        tokio::spawn(async move {
            let mut sender = None;
            let mut tick = tokio::time::interval(every);
            while !stop.is_cancelled() {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => break,
                }
                if sender
                    .as_ref()
                    .is_none_or(|s: &hyper::client::conn::http1::SendRequest<_>| s.is_closed())
                {
                    match connect(&addr).await {
                        Ok(s) => sender = Some(s),
                        Err(e) => {
                            counts.failed(format!("connect: {e}"));
                            continue;
                        }
                    }
                }
                let Some(s) = sender.as_mut() else { continue };
                if s.ready().await.is_err() {
                    sender = None;
                    counts.failed("the connection closed".into());
                    continue;
                }
                match get(s, DOMAIN).await {
                    Ok((200..=299, body)) => {
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut seen) = seen.lock() {
                            seen.insert(body.trim().to_owned());
                        }
                    }
                    Ok((status, body)) => {
                        counts.bad_status.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut l) = counts.last_error.lock() {
                            *l = format!("{status}: {body}");
                        }
                    }
                    Err(e) => {
                        sender = None;
                        counts.failed(format!("request: {e}"));
                    }
                }
            }
        });
    }
    counts
}

/// A new TCP connection for each request through a published port
/// (busybox httpd closes after one answer).
fn tcp_load(addr: String, every: Duration, stop: CancellationToken) -> Arc<Counts> {
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        while !stop.is_cancelled() {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => break,
            }
            match one_shot(&addr).await {
                Ok(head) if head.starts_with("HTTP/1.") && head.contains(" 200") => {
                    c.ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(head) => {
                    c.bad_status.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut l) = c.last_error.lock() {
                        *l = head;
                    }
                }
                Err(e) => c.failed(e.to_string()),
            }
        }
    });
    counts
}

async fn one_shot(addr: &str) -> anyhow::Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await??;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out).into_owned();
    anyhow::ensure!(!text.is_empty(), "closed without an answer");
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// What GETs through `addr` see in a few rounds, or why they failed.
async fn sample(addr: &str, rounds: usize) -> Result<BTreeSet<String>, String> {
    let mut seen = BTreeSet::new();
    let mut sender = connect(addr).await.map_err(|e| e.to_string())?;
    for _ in 0..rounds {
        match get(&mut sender, DOMAIN).await {
            Ok((200, body)) => {
                seen.insert(body.trim().to_owned());
            }
            Ok((s, b)) => return Err(format!("{s}: {b}")),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(seen)
}

/// Waits until GETs through `addr` see exactly the replicas of `web` that
/// run at `version` (`n` tasks in the stack in all): each answers
/// `HOSTNAME VERSION`.
async fn serves(
    t2: &Tier2,
    stack: &str,
    version: &str,
    n: usize,
    addr: &str,
) -> anyhow::Result<()> {
    let last = std::sync::Mutex::new(String::new());
    wait_for(
        &format!("{addr} to serve every replica at {version}"),
        CONVERGE,
        || async {
            let want = match bodies(t2, stack, version, n).await {
                Ok(w) => w,
                Err(e) => {
                    *last.lock().ok()? = e.to_string();
                    return None;
                }
            };
            match sample(addr, want.len() * 6).await {
                Ok(seen) if seen == want => Some(()),
                Ok(seen) => {
                    *last.lock().ok()? = format!("saw {seen:?}, want {want:?}");
                    None
                }
                Err(e) => {
                    *last.lock().ok()? = e;
                    None
                }
            }
        },
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}: {}",
            last.lock().map(|l| l.clone()).unwrap_or_default()
        )
    })
}

/// The bodies the running replicas of `web` at `version` answer.
async fn bodies(
    t2: &Tier2,
    stack: &str,
    version: &str,
    n: usize,
) -> anyhow::Result<BTreeSet<String>> {
    let tasks = t2.wait_running(stack, n).await?;
    let mut out = BTreeSet::new();
    for t in tasks.iter().filter(|t| t.service == "web") {
        let host = t2.host(&t.node);
        let id = host.container(&t.name).await?;
        let name = skiff_tests::tier2::stdout(&host.exec_in(&id, "hostname").await);
        out.insert(format!("{} {version}", name.trim()));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn published_ports_and_routes_answer_on_every_edge_and_drop_nothing_across_deploys() {
    if skipped("the tier-2 ingress test") {
        return;
    }
    let t2 = Tier2::launch(Tier2Options::mesh(2, "vxlan")).await.unwrap();
    let stack = format!("i{}", t2.run.replace('-', ""));
    t2.expect(t2.deploy(&stack, &compose(&t2.run, "1", 3)).await)
        .await;
    t2.expect(t2.wait_running(&stack, 5).await).await;
    let (h0, h1) = (t2.host("h0").ip.clone(), t2.host("h1").ip.clone());
    let mut checks = Checks::default();

    checks
        .check(
            "three replicas of a published port answer on both hosts, balanced over both",
            async {
                serves(&t2, &stack, "1", 5, &format!("{h0}:80")).await?;
                serves(&t2, &stack, "1", 5, &format!("{h1}:80")).await?;
                // The layer-4 port too, on both hosts.
                for h in [&h0, &h1] {
                    let head = one_shot(&format!("{h}:18080")).await?;
                    anyhow::ensure!(head.contains(" 200"), "{h}:18080 answered {head}");
                }
                Ok(())
            },
        )
        .await;

    checks
        .check("a host that no route names gets 404", async {
            let mut s = connect(&format!("{h0}:80")).await?;
            let req = hyper::Request::get("/")
                .header(hyper::header::HOST, "nothing.ingress.test")
                .body(Empty::<Bytes>::new())?;
            let status = s.send_request(req).await?.status().as_u16();
            anyhow::ensure!(status == 404, "answered {status}");
            Ok(())
        })
        .await;

    // A long-lived connection to another service, open through it all.
    let mut echo = BufReader::new(
        t2.expect(
            TcpStream::connect(format!("{h0}:19000"))
                .await
                .map_err(anyhow::Error::from),
        )
        .await,
    );
    let stop = CancellationToken::new();
    let seen = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    // About 200 requests a second over keep-alive connections through
    // h0's route, and new TCP connections through h1's published port.
    let http = http_load(
        format!("{h0}:80"),
        4,
        Duration::from_millis(20),
        stop.clone(),
        seen.clone(),
    );
    let tcp = tcp_load(
        format!("{h1}:18080"),
        Duration::from_millis(50),
        stop.clone(),
    );

    checks
        .check("a rolling deploy fails no request", async {
            t2.deploy(&stack, &compose(&t2.run, "2", 3)).await?;
            serves(&t2, &stack, "2", 5, &format!("{h0}:80")).await
        })
        .await;
    checks
        .check("a rollback fails no request", async {
            let out = t2.skiff(&["rollback", &stack, "--detach"]).await;
            anyhow::ensure!(out.status.success(), "rollback: {}", text(&out));
            serves(&t2, &stack, "1", 5, &format!("{h0}:80")).await
        })
        .await;
    checks
        .check("a scale-down fails no request", async {
            let out = t2
                .skiff(&["service", "scale", &format!("{stack}.web=2"), "--detach"])
                .await;
            anyhow::ensure!(out.status.success(), "scale: {}", text(&out));
            serves(&t2, &stack, "1", 4, &format!("{h0}:80")).await
        })
        .await;
    checks
        .check(
            "a killed replica is taken out and requests still succeed",
            async {
                let before = bodies(&t2, &stack, "1", 4).await?;
                let tasks = t2.wait_running(&stack, 4).await?;
                let victim = tasks
                    .iter()
                    .find(|t| t.service == "web")
                    .ok_or_else(|| anyhow::anyhow!("no web replica"))?;
                let host = t2.host(&victim.node);
                let id = host.container(&victim.name).await?;
                let name = skiff_tests::tier2::stdout(&host.exec_in(&id, "hostname").await);
                let gone = format!("{} 1", name.trim());
                // A crash: its process killed from outside.
                let out = host
                    .exec(&format!(
                        "kill -9 $(docker inspect -f '{{{{.State.Pid}}}}' {id})"
                    ))
                    .await;
                anyhow::ensure!(out.status.success(), "kill: {}", text(&out));
                // Every answer through the route is a 200 from a live replica
                // (without it, or with it again once restarted); the load
                // clients, checked below, see no failure meanwhile.
                let others: BTreeSet<String> =
                    before.iter().filter(|b| **b != gone).cloned().collect();
                let last = std::sync::Mutex::new(String::new());
                wait_for("answers from the live replicas", CONVERGE, || async {
                    match sample(&format!("{h0}:80"), 12).await {
                        Ok(seen) if seen == others || seen == before => Some(()),
                        Ok(seen) => {
                            *last.lock().ok()? = format!("saw {seen:?}");
                            None
                        }
                        Err(e) => {
                            *last.lock().ok()? = e;
                            None
                        }
                    }
                })
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{e}: {}",
                        last.lock().map(|l| l.clone()).unwrap_or_default()
                    )
                })
            },
        )
        .await;
    stop.cancel();
    checks
        .check(
            "keep-alive clients through the route saw no failure",
            async {
                anyhow::ensure!(
                    http.clean() && http.ok.load(Ordering::Relaxed) > 100,
                    "{}",
                    http.summary()
                );
                Ok(())
            },
        )
        .await;
    checks
        .check(
            "new connections through the published port saw no failure",
            async {
                anyhow::ensure!(
                    tcp.clean() && tcp.ok.load(Ordering::Relaxed) > 20,
                    "{}",
                    tcp.summary()
                );
                Ok(())
            },
        )
        .await;
    checks
        .check(
            "the long-lived TCP connection survived every deploy",
            async {
                echo.get_mut().write_all(b"still here\n").await?;
                let mut line = String::new();
                tokio::time::timeout(Duration::from_secs(10), echo.read_line(&mut line)).await??;
                anyhow::ensure!(line == "still here\n", "echoed {line:?}");
                Ok(())
            },
        )
        .await;
    checks
        .check("UDP is forwarded on both hosts", async {
            // busybox has no UDP server: socat from the host's tools
            // answers inside the replica's network namespace.
            let tasks = t2.tasks(&stack).await;
            let udp = tasks
                .iter()
                .find(|t| t.service == "udp")
                .ok_or_else(|| anyhow::anyhow!("no udp replica"))?;
            let host = t2.host(&udp.node);
            let id = host.container(&udp.name).await?;
            let out = host
                .exec_in_netns(
                    &id,
                    "setsid socat UDP4-RECVFROM:5300,fork EXEC:cat </dev/null >/dev/null 2>&1 &",
                )
                .await;
            anyhow::ensure!(out.status.success(), "socat: {}", text(&out));
            for h in [&h0, &h1] {
                let sock = UdpSocket::bind("0.0.0.0:0").await?;
                sock.connect(format!("{h}:15300")).await?;
                let got = wait_for(&format!("a UDP echo through {h}"), CONVERGE, || async {
                    sock.send(b"ping").await.ok()?;
                    let mut buf = [0u8; 64];
                    let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
                        .await
                        .ok()?
                        .ok()?;
                    (buf[..n] == *b"ping").then_some(())
                })
                .await;
                got?;
            }
            Ok(())
        })
        .await;
    checks
        .check(
            "skiff route ls shows the port and the route with their endpoints",
            async {
                let out = t2.skiff(&["route", "ls"]).await;
                let said = text(&out);
                anyhow::ensure!(out.status.success(), "{said}");
                anyhow::ensure!(
                    said.contains("18080/tcp") && said.contains("15300/udp"),
                    "{said}"
                );
                anyhow::ensure!(said.contains(&format!("{DOMAIN}/")), "{said}");
                anyhow::ensure!(said.contains("h0") && said.contains("h1"), "{said}");
                Ok(())
            },
        )
        .await;
    checks
        .check("another stack cannot publish the same port", async {
            let other = format!("o{}", t2.run.replace('-', ""));
            let file =
                "services:\n  x:\n    image: skiff-test/busybox:1\n    ports: [\"18080:80\"]\n";
            let r = t2.deploy(&other, file).await;
            let e = r.err().map(|e| e.to_string()).unwrap_or_default();
            anyhow::ensure!(
                e.contains(&format!("already published by stack {stack}")),
                "{e}"
            );
            Ok(())
        })
        .await;
    checks
        .check("the keep-alive clients saw both versions", async {
            let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
            anyhow::ensure!(
                seen.iter().any(|b| b.ends_with(" 1")) && seen.iter().any(|b| b.ends_with(" 2")),
                "{seen:?}"
            );
            Ok(())
        })
        .await;
    checks.finish(&t2).await;
}
