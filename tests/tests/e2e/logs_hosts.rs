//! Logs across real hosts: two tier-2 hosts whose agents follow a stack's
//! replicas (one per host) writing sequence-numbered lines, and ship them
//! to a real rsyslog on this machine over TCP (octet counting). Every line
//! arrives with its host, stack, service, replica, release and stream;
//! none is missing after the receiver was down for a minute, nor after an
//! agent was killed with SIGKILL mid-stream and started again; `skiff logs
//! --follow` shows new lines of both hosts live.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use skiff_api_types::{LogEntry, SinkView};
use skiff_tests::tier2::{Checks, Tier2, Tier2Options, skipped, text};
use skiff_tests::wait_for;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
/// How long lines get to arrive after a change.
const ARRIVE: Duration = Duration::from_secs(120);

/// A real rsyslog taking RFC 5424 over TCP on `address:port` and writing
/// each message's header fields, structured data and text to a file.
struct Rsyslog {
    dir: tempfile::TempDir,
    address: String,
    port: u16,
    /// Takes TLS (RFC 5425) with the certificate in its dir.
    tls: bool,
    child: Option<Child>,
}

/// A CA (its PEM) and a certificate it signed for `ip`, with its key.
fn pki(ip: &str) -> anyhow::Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "skiff logs test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec![ip.to_owned()])?.signed_by(&key, &ca)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}

impl Rsyslog {
    fn out(&self) -> PathBuf {
        self.dir.path().join("received.log")
    }

    async fn start(address: &str, port: u16) -> anyhow::Result<Self> {
        let mut r = Self {
            dir: tempfile::tempdir()?,
            address: address.to_owned(),
            port,
            tls: false,
            child: None,
        };
        r.run().await?;
        Ok(r)
    }

    /// One taking TLS with a certificate for `address`; returns it and
    /// the PEM of the CA that signed the certificate.
    async fn start_tls(address: &str, port: u16) -> anyhow::Result<(Self, String)> {
        let dir = tempfile::tempdir()?;
        let (ca, cert, key) = pki(address)?;
        std::fs::write(dir.path().join("ca.pem"), &ca)?;
        std::fs::write(dir.path().join("cert.pem"), cert)?;
        std::fs::write(dir.path().join("key.pem"), key)?;
        let mut r = Self {
            dir,
            address: address.to_owned(),
            port,
            tls: true,
            child: None,
        };
        r.run().await?;
        Ok((r, ca))
    }

    /// Starts rsyslogd (again) and waits until it takes connections.
    async fn run(&mut self) -> anyhow::Result<()> {
        let d = self.dir.path();
        let conf = d.join("rsyslog.conf");
        let module = if self.tls {
            format!(
                r#"global(DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="{d}/ca.pem" DefaultNetstreamDriverCertFile="{d}/cert.pem" DefaultNetstreamDriverKeyFile="{d}/key.pem")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")"#,
                d = d.display()
            )
        } else {
            r#"module(load="imtcp")"#.to_owned()
        };
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{work}")
{module}
input(type="imtcp" address="{addr}" port="{port}")
template(name="t" type="string" string="%hostname% %app-name% %procid% %msgid% %structured-data% %msg%\n")
action(type="omfile" file="{out}" template="t")
"#,
                work = d.display(),
                addr = self.address,
                port = self.port,
                out = self.out().display()
            ),
        )?;
        let child = Command::new(RSYSLOGD)
            .args(["-n", "-f"])
            .arg(&conf)
            .arg("-i")
            .arg(d.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        let addr = format!("{}:{}", self.address, self.port);
        wait_for(
            &format!("rsyslogd to listen on {addr}"),
            Duration::from_secs(20),
            || {
                let addr = addr.clone();
                async move { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) }
            },
        )
        .await
    }

    async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
    }
}

/// What rsyslog received of one replica: its sequence numbers per stream.
#[derive(Debug, Default)]
struct Received {
    stdout: BTreeSet<u64>,
    stderr: BTreeSet<u64>,
}

/// Reads the receiver's file: per (host, replica), the numbers seen; any
/// line of the stack whose metadata is wrong is an error.
fn received(file: &Path, stack: &str) -> anyhow::Result<BTreeMap<(String, u32), Received>> {
    let service = "seq";
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut out: BTreeMap<(String, u32), Received> = BTreeMap::new();
    for line in text.lines() {
        // HOSTNAME APP-NAME PROCID MSGID [skiff@32473 ...] MSG
        let mut parts = line.splitn(5, ' ');
        let (Some(host), Some(app), Some(procid), Some(msgid), Some(rest)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            continue;
        };
        if app != format!("{stack}.{service}") {
            continue;
        }
        let Some((sd, msg)) = rest.split_once("] ") else {
            anyhow::bail!("no structured data in {line:?}");
        };
        let field = |k: &str| {
            sd.split(&format!(" {k}=\""))
                .nth(1)
                .and_then(|v| v.split('"').next())
                .map(str::to_owned)
        };
        let replica: u32 = procid.parse()?;
        anyhow::ensure!(
            field("host").as_deref() == Some(host)
                && field("stack").as_deref() == Some(stack)
                && field("service").as_deref() == Some(service)
                && field("replica") == Some(replica.to_string())
                && field("release").is_some_and(|r| r.parse::<u64>().is_ok_and(|r| r >= 1))
                && field("stream").as_deref() == Some(msgid),
            "wrong metadata in {line:?}"
        );
        let r = out.entry((host.to_owned(), replica)).or_default();
        match (msgid, msg.split_once(' ')) {
            ("stdout", Some(("seq", n))) => {
                r.stdout.insert(n.trim().parse()?);
            }
            ("stderr", Some(("err", n))) => {
                r.stderr.insert(n.trim().parse()?);
            }
            _ => anyhow::bail!("unexpected line {line:?}"),
        }
    }
    Ok(out)
}

/// Waits until each of the two replicas has sent at least `past` lines
/// and none of its numbers up to its highest is missing (every tenth also
/// on stderr).
async fn complete_past(rsyslog: &Rsyslog, stack: &str, past: u64) -> anyhow::Result<u64> {
    let last = std::sync::Mutex::new(String::new());
    let file = rsyslog.out();
    wait_for(&format!("every line up to {past} from both replicas"), ARRIVE, || async {
        let got = match received(&file, stack) {
            Ok(g) => g,
            Err(e) => {
                *last.lock().ok()? = e.to_string();
                return None;
            }
        };
        let mut highest = u64::MAX;
        let hosts: BTreeSet<&str> = got.keys().map(|(h, _)| h.as_str()).collect();
        if got.len() != 2 || hosts.len() != 2 {
            *last.lock().ok()? = format!("replicas seen: {:?}", got.keys().collect::<Vec<_>>());
            return None;
        }
        for (k, r) in &got {
            let max = r.stdout.last().copied().unwrap_or(0);
            let missing: Vec<u64> = (1..=max).filter(|n| !r.stdout.contains(n)).take(10).collect();
            let err_missing: Vec<u64> = (1..=max)
                .filter(|n| n % 10 == 0 && !r.stderr.contains(n))
                .take(10)
                .collect();
            // The line written last may have reached stdout's file before
            // stderr's: only lines before it must be complete on stderr.
            let err_missing: Vec<u64> = err_missing.into_iter().filter(|n| *n + 10 <= max).collect();
            if max < past || !missing.is_empty() || !err_missing.is_empty() {
                *last.lock().ok()? = format!(
                    "{k:?}: highest {max}, missing {missing:?} (stdout) {err_missing:?} (stderr)"
                );
                return None;
            }
            highest = highest.min(max);
        }
        Some(highest)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {}", last.lock().map(|l| l.clone()).unwrap_or_default()))
}

fn compose(run: &str) -> String {
    format!(
        r#"services:
  seq:
    image: skiff-test/busybox:1
    command: ["sh", "-c", "trap 'exit 0' TERM; i=0; while :; do i=$$((i+1)); echo \"seq $$i\"; [ $$((i % 10)) -ne 0 ] || echo \"err $$i\" >&2; sleep 0.05; done"]
    deploy:
      replicas: 2
      placement:
        max_replicas_per_node: 1
        constraints: ["node.labels.t2 == {run}"]
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn container_lines_reach_rsyslog_from_every_host_with_none_missing() {
    if skipped("the tier-2 logs test") {
        return;
    }
    if !Path::new(RSYSLOGD).exists() {
        eprintln!("skipping the tier-2 logs test: {RSYSLOGD} is missing (apt-get install rsyslog)");
        return;
    }
    let t2 = Tier2::launch(Tier2Options::mesh(2, "vxlan")).await.unwrap();
    let port = skiff_tests::cluster::free_port();
    let mut rsyslog = t2.expect(Rsyslog::start(&t2.gateway, port).await).await;
    let url = format!("tcp://{}:{port}", t2.gateway);
    let out = t2
        .skiff(&["sink", "add", "central", &url, "--format", "syslog"])
        .await;
    assert!(out.status.success(), "sink add: {}", text(&out));
    let stack = format!("l{}", t2.run.replace('-', ""));
    t2.expect(t2.deploy(&stack, &compose(&t2.run)).await).await;
    t2.expect(t2.wait_running(&stack, 2).await).await;
    let mut checks = Checks::default();

    checks
        .check(
            "lines of replicas on both hosts reach rsyslog with their metadata",
            async { complete_past(&rsyslog, &stack, 20).await.map(|_| ()) },
        )
        .await;

    checks
        .check(
            "a stack's own sink over TLS takes its lines, and the cluster's sink none of them",
            async {
                let port = skiff_tests::cluster::free_port();
                let (tls, ca) = Rsyslog::start_tls(&t2.gateway, port).await?;
                std::fs::write(t2.dir.path().join("receiver-ca.pem"), ca)?;
                let own = format!("s{}", t2.run.replace('-', ""));
                let compose = format!(
                    "{}x-skiff:\n  logs:\n    sinks:\n      - {{name: secure, url: \"tls://{}:{port}\", format: syslog, ca_file: receiver-ca.pem}}\n",
                    compose(&t2.run),
                    t2.gateway
                );
                t2.deploy(&own, &compose).await?;
                t2.wait_running(&own, 2).await?;
                complete_past(&tls, &own, 20).await?;
                let central = received(&rsyslog.out(), &own)?;
                anyhow::ensure!(central.is_empty(), "the cluster's sink got {:?}", central.keys());
                let out = t2.skiff(&["stack", "rm", &own]).await;
                anyhow::ensure!(out.status.success(), "stack rm: {}", text(&out));
                Ok(())
            },
        )
        .await;

    checks
        .check(
            "skiff logs --follow shows new lines of both hosts live",
            async {
                let mut child = t2
                    .coordinator
                    .skiff_command(
                        t2.dir.path(),
                        &["logs", &stack, "--follow", "--tail", "1", "--json"],
                    )
                    .spawn()?;
                let stdout = child
                    .stdout
                    .take()
                    .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
                let mut lines = BufReader::new(stdout).lines();
                // Past the history (one line per replica), lines must keep
                // coming from both hosts.
                let mut live: BTreeMap<String, usize> = BTreeMap::new();
                let deadline = tokio::time::Instant::now() + ARRIVE;
                while live.len() < 2 || live.values().any(|n| *n < 20) {
                    let next = tokio::time::timeout_at(deadline, lines.next_line()).await;
                    let Ok(Ok(Some(line))) = next else {
                        anyhow::bail!(
                            "skiff logs --follow ended or stalled; live lines so far: {live:?}"
                        );
                    };
                    let entry: LogEntry = serde_json::from_str(&line)?;
                    anyhow::ensure!(entry.error.is_none(), "a host's answer failed: {line}");
                    if entry.line.is_some() {
                        *live.entry(entry.host.clone()).or_default() += 1;
                    }
                }
                let _ = child.kill().await;
                Ok(())
            },
        )
        .await;

    checks
        .check(
            "the receiver down for a minute: nothing missing once it is back",
            async {
                let before = complete_past(&rsyslog, &stack, 1).await?;
                rsyslog.stop().await;
                // The outage itself: the issue's minute of lines written
                // while nothing receives them.
                tokio::time::sleep(Duration::from_secs(60)).await;
                rsyslog.run().await?;
                // 60 s at 20 lines a second is about 1200 lines past
                // `before`: they must all arrive.
                complete_past(&rsyslog, &stack, before + 1000)
                    .await
                    .map(|_| ())
            },
        )
        .await;

    checks
        .check(
            "an agent killed with SIGKILL mid-stream and started again loses nothing",
            async {
                let before = complete_past(&rsyslog, &stack, 1).await?;
                t2.host("h0").kill_agent().await?;
                t2.wait_connected(t2.host("h0")).await?;
                complete_past(&rsyslog, &stack, before + 200)
                    .await
                    .map(|_| ())
            },
        )
        .await;

    checks
        .check(
            "skiff sink ls shows each host delivering and dropping nothing",
            async {
                let out = t2.skiff(&["sink", "ls", "--json"]).await;
                anyhow::ensure!(out.status.success(), "sink ls: {}", text(&out));
                let sinks: Vec<SinkView> = serde_json::from_slice(&out.stdout)?;
                let central = sinks
                    .iter()
                    .find(|s| s.name == "central")
                    .ok_or_else(|| anyhow::anyhow!("no sink central in {sinks:?}"))?;
                let hosts: BTreeSet<&str> = central.hosts.iter().map(|h| h.host.as_str()).collect();
                anyhow::ensure!(hosts == BTreeSet::from(["h0", "h1"]), "{central:?}");
                anyhow::ensure!(
                    central
                        .hosts
                        .iter()
                        .all(|h| h.delivered > 0 && h.dropped == 0),
                    "{central:?}"
                );
                Ok(())
            },
        )
        .await;

    checks.finish(&t2).await;
    rsyslog.stop().await;
}
