//! Shipping to a real rsyslog (Debian `rsyslog`, `rsyslog-gnutls`) started
//! by the test: TCP with octet counting, TLS, a receiver away and back,
//! a full buffer, and a TLS setting refused on probation.

use crate::test_support::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use skiff_shared::sections::logs::{FullPolicy, SinkFormat};
use skiff_shared::tasks::TaskTree;

use super::{records, section, source, spec, until};
use crate::logs::record::Sinks as _;
use crate::logs::ship::Shipping;

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
const GTLS: &str = "/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so";

fn missing(tls: bool) -> bool {
    if !Path::new(RSYSLOGD).is_file() {
        eprintln!(
            "skipped: {RSYSLOGD} is missing (Debian package rsyslog; scripts/test.sh installs it)"
        );
        return true;
    }
    if tls && !Path::new(GTLS).is_file() {
        eprintln!(
            "skipped: {GTLS} is missing (Debian package rsyslog-gnutls; scripts/test.sh installs it)"
        );
        return true;
    }
    false
}

/// TLS material made by the test: a CA and a certificate for localhost.
struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn pki(name: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, name);
    let ca = CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    Pki {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// An rsyslogd of the test's own, writing what it receives to `out`, one
/// line per message with its header fields and structured data. Stopped
/// when dropped.
struct Rsyslog {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    tls: bool,
}

impl Rsyslog {
    fn start(dir: &Path, port: u16, pki: Option<&Pki>) -> Self {
        let mut r = Self {
            child: None,
            dir: dir.to_owned(),
            port,
            tls: pki.is_some(),
        };
        if let Some(p) = pki {
            std::fs::write(dir.join("ca.pem"), &p.ca).unwrap();
            std::fs::write(dir.join("cert.pem"), &p.cert).unwrap();
            std::fs::write(dir.join("key.pem"), &p.key).unwrap();
        }
        r.up();
        r
    }

    fn up(&mut self) {
        let d = self.dir.display();
        let tls = if self.tls {
            format!(
                "global(DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"{d}/ca.pem\" \
                 DefaultNetstreamDriverCertFile=\"{d}/cert.pem\" DefaultNetstreamDriverKeyFile=\"{d}/key.pem\")\n\
                 module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")\n"
            )
        } else {
            // Plain TCP, and UDP on the same port number.
            format!(
                "module(load=\"imtcp\")\nmodule(load=\"imudp\")\n\
                 input(type=\"imudp\" port=\"{}\" address=\"127.0.0.1\")\n",
                self.port
            )
        };
        let conf = format!(
            "global(workDirectory=\"{d}\")\n{tls}\
             input(type=\"imtcp\" port=\"{port}\" address=\"127.0.0.1\")\n\
             template(name=\"t\" type=\"string\" string=\"%hostname%|%app-name%|%procid%|%msgid%|%pri%|%structured-data%|%msg%\\n\")\n\
             action(type=\"omfile\" file=\"{d}/out.log\" template=\"t\")\n",
            port = self.port
        );
        std::fs::write(self.dir.join("rsyslog.conf"), conf).unwrap();
        let log = std::fs::File::create(self.dir.join("rsyslogd.log")).unwrap();
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "rsyslogd did not listen: {}",
                std::fs::read_to_string(self.dir.join("rsyslogd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Stops it (SIGTERM: it closes its connections) and waits for it.
    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("out.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The `seq=N` numbers received.
    fn seqs(&self) -> std::collections::BTreeSet<u64> {
        self.lines()
            .iter()
            .filter_map(|l| l.split("seq=").nth(1)?.split(' ').next()?.parse().ok())
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_from_several_containers_reach_rsyslog_over_tcp_with_their_metadata() {
    if missing(false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let rsyslog = Rsyslog::start(dir.path(), port, None);
    let tree = TaskTree::root();
    let shipping = Shipping::new(&dir.path().join("data"), &tree);
    let url = format!("tcp://127.0.0.1:{port}");
    shipping
        .configure(&section(vec![spec("central", &url, SinkFormat::Syslog)]))
        .await;
    let api = source("web", "api", 1);
    let worker = source("web", "worker", 2);
    shipping.push(records(&api, 0, 150)).await;
    shipping.push(records(&worker, 150, 150)).await;
    until(20, "rsyslog has every line", || rsyslog.seqs().len() == 300).await;
    for line in rsyslog.lines() {
        let seq: u64 = line
            .split("seq=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let (service, slot) = if seq < 150 { ("api", 1) } else { ("worker", 2) };
        let (stream, pri) = if seq.is_multiple_of(2) {
            ("stdout", 14)
        } else {
            ("stderr", 11)
        };
        let want = format!(
            "host-1|web.{service}|{slot}|{stream}|{pri}|[skiff@32473 host=\"host-1\" stack=\"web\" service=\"{service}\" \
             replica=\"{slot}\" release=\"7\" stream=\"{stream}\"]|seq={seq} "
        );
        assert!(
            line.starts_with(&want),
            "{line:?} should start with {want:?}"
        );
    }
    let status = &shipping.statuses()[0];
    assert_eq!(
        (status.delivered, status.buffered_lines, status.dropped),
        (300, 0, 0)
    );
    assert!(status.healthy && status.error.is_none() && status.refused.is_none());
    tree.cancel();
    tree.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_missing_after_the_receiver_was_away_or_the_agent_restarted() {
    if missing(false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut rsyslog = Rsyslog::start(dir.path(), port, None);
    let data = dir.path().join("data");
    let url = format!("tcp://127.0.0.1:{port}");
    let sinks = section(vec![spec("central", &url, SinkFormat::Syslog)]);
    let src = source("web", "api", 1);

    let tree = TaskTree::root();
    let shipping = Shipping::new(&data, &tree);
    shipping.configure(&sinks).await;
    shipping.push(records(&src, 0, 100)).await;
    until(20, "the first lines arrive", || rsyslog.seqs().len() == 100).await;

    rsyslog.down();
    for i in 0..10 {
        shipping.push(records(&src, 100 + i * 50, 50)).await;
    }
    until(20, "the sink says the receiver is away", || {
        let s = &shipping.statuses()[0];
        !s.healthy && s.error.is_some()
    })
    .await;
    let s = &shipping.statuses()[0];
    assert!(s.buffered_lines > 0, "{s:?}");
    assert!(
        s.error.as_deref().unwrap().contains("connection refused"),
        "{s:?}"
    );

    // The agent stops while the receiver is away, and starts again.
    tree.cancel();
    tree.wait().await;
    let tree = TaskTree::root();
    let shipping = Shipping::new(&data, &tree);
    shipping.configure(&sinks).await;
    assert!(
        shipping.statuses()[0].refused.is_none(),
        "the settings in force before the restart start again without a probe"
    );
    shipping.push(records(&src, 600, 100)).await;

    rsyslog.up();
    until(30, "every line arrives", || rsyslog.seqs().len() == 700).await;
    assert_eq!(
        rsyslog.seqs(),
        (0..700).collect(),
        "no sequence number is missing"
    );
    until(10, "the buffer is empty", || {
        shipping.statuses()[0].buffered_lines == 0
    })
    .await;
    assert_eq!(shipping.statuses()[0].dropped, 0);
    tree.cancel();
    tree.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_drops_and_counts_under_drop_oldest_and_waits_losing_nothing_under_block() {
    if missing(false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut rsyslog = Rsyslog::start(dir.path(), port, None);
    let url = format!("tcp://127.0.0.1:{port}");
    let mut dropping = spec("dropping", &url, SinkFormat::Syslog);
    dropping.when_full = FullPolicy::DropOldest;
    let blocking = spec("blocking", &url, SinkFormat::Syslog);
    let tree = TaskTree::root();
    let shipping = Shipping::new(&dir.path().join("data"), &tree);
    // The cluster's sink blocks; the stack `batch` has its own, dropping.
    let mut sinks = section(vec![blocking]);
    sinks.stack_sinks.insert("batch".into(), vec![dropping]);
    shipping.configure(&sinks).await;
    rsyslog.down();

    // About 3 MiB of lines into 1 MiB buffers.
    let batch = source("batch", "job", 1);
    for i in 0..60 {
        shipping.push(records(&batch, i * 500, 500)).await;
    }
    let s = shipping.statuses();
    let drop = &s[1];
    assert_eq!(drop.stack.as_deref(), Some("batch"));
    assert!(drop.dropped > 0, "drop_oldest dropped: {drop:?}");
    assert_eq!(
        drop.dropped + drop.buffered_lines,
        30_000,
        "every line buffered or counted: {drop:?}"
    );
    assert!(drop.buffered_bytes <= 1 << 20);

    let src = source("web", "api", 1);
    let pusher = {
        let shipping = shipping.clone();
        tokio::spawn(async move {
            for i in 0..60 {
                shipping.push(records(&src, i * 500, 500)).await;
            }
        })
    };
    until(20, "the blocking sink's buffer is full", || {
        let s = shipping.statuses();
        s[0].buffered_bytes > (1 << 20) - (128 << 10)
    })
    .await;
    assert!(!pusher.is_finished(), "push waits for room under block");
    let s = shipping.statuses();
    assert_eq!(s[0].dropped, 0, "block drops nothing: {:?}", s[0]);

    rsyslog.up();
    pusher.await.unwrap();
    until(30, "both sinks are drained", || {
        shipping.statuses().iter().all(|s| s.buffered_lines == 0)
    })
    .await;
    let s = shipping.statuses();
    assert_eq!(s[0].delivered, 30_000, "block lost nothing: {:?}", s[0]);
    let web: std::collections::BTreeSet<u64> = rsyslog
        .lines()
        .iter()
        .filter(|l| l.starts_with("host-1|web.api|"))
        .filter_map(|l| l.split("seq=").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(
        web,
        (0..30_000).collect(),
        "no sequence number is missing under block"
    );
    assert_eq!(
        s[1].delivered + s[1].dropped,
        30_000,
        "every line delivered or counted: {:?}",
        s[1]
    );
    tree.cancel();
    tree.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_lines_arrive_and_a_certificate_that_does_not_verify_is_refused_keeping_the_old_settings()
 {
    if missing(true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let good = pki("Receiver CA");
    let other = pki("Some other CA");
    let rsyslog = Rsyslog::start(dir.path(), port, Some(&good));
    let tree = TaskTree::root();
    let shipping = Shipping::new(&dir.path().join("data"), &tree);
    let url = format!("tls://localhost:{port}");
    let mut central = spec("central", &url, SinkFormat::Syslog);
    central.ca_pem = Some(good.ca.clone());
    shipping.configure(&section(vec![central.clone()])).await;
    let src = source("web", "api", 1);
    shipping.push(records(&src, 0, 100)).await;
    let arrived = || rsyslog.seqs().len() == 100;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !arrived() {
        assert!(
            std::time::Instant::now() < deadline,
            "lines did not arrive over TLS: {:?}\nrsyslogd: {}",
            shipping.statuses(),
            std::fs::read_to_string(dir.path().join("rsyslogd.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(rsyslog.lines()[0].contains("[skiff@32473 host=\"host-1\" stack=\"web\""));

    // The same sink with a CA that did not sign the receiver's certificate,
    // and a new sink trusting the host's roots only.
    let mut wrong = central.clone();
    wrong.ca_pem = Some(other.ca.clone());
    let roots_only = spec("roots-only", &url, SinkFormat::Syslog);
    shipping.configure(&section(vec![wrong, roots_only])).await;
    let s = shipping.statuses();
    let refused = s[0].refused.as_deref().unwrap_or_default();
    assert_eq!(
        refused,
        format!(
            "tls://localhost:{port}: the certificate did not verify: unknown issuer; give the CA with --ca"
        )
    );
    assert_eq!(s[1].name, "roots-only");
    assert!(
        s[1].refused
            .as_deref()
            .unwrap_or_default()
            .contains("unknown issuer"),
        "{s:?}"
    );
    assert_eq!(s[1].delivered, 0);

    shipping.push(records(&src, 100, 100)).await;
    until(20, "lines still arrive through the old settings", || {
        rsyslog.seqs().len() == 200
    })
    .await;

    // Back to the settings in force: nothing refused any more.
    shipping.configure(&section(vec![central])).await;
    let s = shipping.statuses();
    assert_eq!(s.len(), 1);
    assert!(s[0].refused.is_none(), "{s:?}");
    tree.cancel();
    tree.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_reach_rsyslog_over_udp_one_datagram_each_and_long_ones_are_cut() {
    if missing(false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let rsyslog = Rsyslog::start(dir.path(), port, None);
    let tree = TaskTree::root();
    let shipping = Shipping::new(&dir.path().join("data"), &tree);
    let url = format!("udp://127.0.0.1:{port}");
    shipping
        .configure(&section(vec![spec("datagrams", &url, SinkFormat::Syslog)]))
        .await;
    let src = source("web", "api", 1);
    let mut recs = records(&src, 0, 50);
    recs[49].line = format!("seq=49 {}", "y".repeat(20_000));
    shipping.push(recs).await;
    until(20, "rsyslog has every datagram", || {
        rsyslog.seqs().len() == 50
    })
    .await;
    let long = rsyslog
        .lines()
        .into_iter()
        .find(|l| l.contains("seq=49 "))
        .unwrap();
    assert!(
        long.len() < 8192,
        "the long line was cut: {} bytes",
        long.len()
    );
    assert!(long.starts_with("host-1|web.api|1|stderr|11|[skiff@32473 host=\"host-1\""));
    assert_eq!(shipping.statuses()[0].delivered, 50);
    tree.cancel();
    tree.wait().await;
}
