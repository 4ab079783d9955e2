//! ACME end to end: Debian's `pebble` on this machine, validating for
//! real (no `PEBBLE_VA_ALWAYS_VALID`), with `pebble-challtestsrv` as its
//! DNS server mapping the route's domain to one edge host. Two tier-2
//! hosts, both edge hosts. A route with TLS gets a certificate by HTTP-01
//! (pebble's VA fetches the challenge from an edge host's port 80); both
//! hosts serve it by SNI, chained to pebble's root, in front of the
//! service; `skiff cert renew` gets a new one, with the challenge now
//! answered by the other host, and both hosts then serve the new one.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use skiff_tests::cluster::free_port;
use skiff_tests::tier2::{Checks, Tier2, Tier2Options, skipped, text};
use skiff_tests::wait_for;
use tokio::net::TcpStream;

const PEBBLE: &str = "/usr/bin/pebble";
const CHALLTESTSRV: &str = "/usr/bin/pebble-challtestsrv";
/// The route's domain.
const DOMAIN: &str = "secure.ingress.test";
/// How long an order (challenge, validation, issuance, delivery) gets.
const ISSUE: Duration = Duration::from_secs(300);

/// pebble and its DNS server on loopback; both killed when dropped.
struct Ca {
    children: Vec<Child>,
    dir: tempfile::TempDir,
    directory: String,
    management: u16,
    dns_management: u16,
}

impl Drop for Ca {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Ca {
    /// Starts challtestsrv (DNS only) and pebble resolving through it,
    /// validating HTTP-01 on port 80; pebble's HTTPS under a test CA
    /// made here (`ca.pem`).
    async fn start() -> anyhow::Result<Self> {
        for bin in [PEBBLE, CHALLTESTSRV] {
            anyhow::ensure!(
                std::path::Path::new(bin).is_file(),
                "{bin} is missing: run scripts/test.sh, which installs Debian's pebble"
            );
        }
        let dir = tempfile::tempdir()?;
        let path = |name: &str| dir.path().join(name);
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "Skiff e2e directory CA");
        let ca = CertifiedIssuer::self_signed(ca, ca_key)?;
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?
            .signed_by(&key, &ca)?;
        std::fs::write(path("ca.pem"), ca.pem())?;
        std::fs::write(path("cert.pem"), cert.pem())?;
        std::fs::write(path("key.pem"), key.serialize_pem())?;

        let (dns, dns_management) = (free_port(), free_port());
        let (port, management) = (free_port(), free_port());
        let mut me = Self {
            children: Vec::new(),
            directory: format!("https://127.0.0.1:{port}/dir"),
            management,
            dns_management,
            dir,
        };
        let log = std::fs::File::create(me.dir.path().join("challtestsrv.log"))?;
        me.children.push(
            Command::new(CHALLTESTSRV)
                .args(["-dns01", &format!("127.0.0.1:{dns}")])
                .args(["-management", &format!("127.0.0.1:{dns_management}")])
                // DNS only, and no answer for names it was not given.
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-defaultIPv4", "", "-defaultIPv6", ""])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        );
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": me.dir.path().join("cert.pem"),
            "privateKey": me.dir.path().join("key.pem"),
            "httpPort": 80,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(me.dir.path().join("pebble.json"), config.to_string())?;
        let log = std::fs::File::create(me.dir.path().join("pebble.log"))?;
        me.children.push(
            Command::new(PEBBLE)
                .arg("-config")
                .arg(me.dir.path().join("pebble.json"))
                .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                // Every order goes through a challenge, the renewal too.
                .env("PEBBLE_AUTHZREUSE", "0")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        );
        for p in [port, management, dns_management] {
            let up = wait_for(
                &format!("pebble or challtestsrv on port {p}"),
                Duration::from_secs(30),
                || async move { TcpStream::connect(("127.0.0.1", p)).await.ok() },
            )
            .await;
            if let Err(e) = up {
                anyhow::bail!("{e}\n{}", me.logs());
            }
        }
        Ok(me)
    }

    fn logs(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "--- pebble ---\n{}\n--- challtestsrv ---\n{}",
            read("pebble.log"),
            read("challtestsrv.log")
        )
    }

    fn ca_bundle(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The coordinator's `[acme]` table for this directory.
    fn acme_table(&self) -> String {
        format!(
            "[acme]\ndirectory = \"{}\"\nemail = \"admin@ingress.test\"\nca_bundle = {:?}\n",
            self.directory,
            self.ca_bundle()
        )
    }

    /// Makes the DNS server answer `domain` with `ip` only.
    async fn point(&self, domain: &str, ip: &str) -> anyhow::Result<()> {
        let host = format!("{domain}.");
        let clear = serde_json::json!({ "host": host });
        let add = serde_json::json!({ "host": host, "addresses": [ip] });
        for (path, body) in [("/clear-a", clear), ("/add-a", add)] {
            let stream = TcpStream::connect(("127.0.0.1", self.dns_management)).await?;
            let (status, said) = request(stream, "POST", path, "127.0.0.1", Some(body)).await?;
            anyhow::ensure!(status == 200, "challtestsrv {path}: {status} {said}");
        }
        Ok(())
    }

    /// Pebble's root of this run, which issued certificates chain to.
    async fn root(&self) -> anyhow::Result<rustls::RootCertStore> {
        let mut trust = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.ca_bundle())? {
            trust.add(c?)?;
        }
        let addr = format!("127.0.0.1:{}", self.management);
        let (_, status, pem) = https_get(&addr, "127.0.0.1", &trust, "/roots/0").await?;
        anyhow::ensure!(status == 200, "pebble /roots/0: {status} {pem}");
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(c?)?;
        }
        anyhow::ensure!(
            !roots.is_empty(),
            "pebble /roots/0 gave no certificate: {pem}"
        );
        Ok(roots)
    }
}

/// One HTTP/1.1 request on `io`: (status, body).
async fn request<I>(
    io: I,
    method: &str,
    path: &str,
    host: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, String)>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, host)
        .body(http_body_util::Full::new(Bytes::from(body)))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await??;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await??
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A GET of `path` over TLS to `addr` with SNI and `Host` `name`, the
/// server's chain verified against `roots` for `name`: (the leaf it
/// served, status, body).
async fn https_get(
    addr: &str,
    name: &str,
    roots: &rustls::RootCertStore,
    path: &str,
) -> anyhow::Result<(CertificateDer<'static>, u16, String)> {
    let config = rustls::ClientConfig::builder_with_provider(skiff_shared::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await??;
    let server = ServerName::try_from(name.to_owned())?;
    let tls =
        tokio::time::timeout(Duration::from_secs(10), connector.connect(server, tcp)).await??;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| anyhow::anyhow!("{addr} served no certificate"))?
        .clone()
        .into_owned();
    let (status, body) = request(tls, "GET", path, name, None).await?;
    Ok((leaf, status, body))
}

/// A certificate's serial number, hex.
fn serial(leaf: &CertificateDer<'_>) -> anyhow::Result<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| anyhow::anyhow!("the served leaf does not parse: {e}"))?;
    Ok(cert.raw_serial_as_string())
}

/// The ACME certificates `skiff cert ls --json` lists for [`DOMAIN`]
/// and serves: their ids.
async fn served_acme(t2: &Tier2) -> anyhow::Result<Vec<String>> {
    let out = t2.skiff(&["cert", "ls", "--json"]).await;
    anyhow::ensure!(out.status.success(), "cert ls: {}", text(&out));
    let list: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    Ok(list
        .iter()
        .filter(|c| c["source"] == "acme" && c["served"] == true)
        .filter(|c| {
            c["domains"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d == DOMAIN))
        })
        .filter_map(|c| c["id"].as_str().map(str::to_owned))
        .collect())
}

/// Waits until `ip:443` serves a certificate for [`DOMAIN`] chained to
/// `roots` whose serial `accept` takes, and answers the service's page
/// through it; returns the serial.
async fn serves(
    ip: &str,
    roots: &rustls::RootCertStore,
    accept: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let addr = format!("{ip}:443");
    let last = std::sync::Mutex::new(String::new());
    let got = wait_for(&format!("{addr} to serve it"), ISSUE, || async {
        let r = async {
            let (leaf, status, body) = https_get(&addr, DOMAIN, roots, "/").await?;
            let serial = serial(&leaf)?;
            anyhow::ensure!(accept(&serial), "still serial {serial}");
            anyhow::ensure!(
                status == 200 && body.contains("secure"),
                "answered {status} {body}"
            );
            Ok(serial)
        }
        .await;
        match r {
            Ok(s) => Some(s),
            Err(e) => {
                if let Ok(mut l) = last.lock() {
                    *l = format!("{e:#}");
                }
                None
            }
        }
    })
    .await;
    got.map_err(|e| {
        let why = last.lock().map(|l| l.clone()).unwrap_or_default();
        anyhow::anyhow!("{e} (last: {why})")
    })
}

fn compose(run: &str) -> String {
    format!(
        r#"services:
  web:
    image: skiff-test/busybox:1
    command: ["sh", "-c", "echo secure $$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/"]
      interval: 1s
      retries: 2
    x-skiff:
      routes:
        - {{domain: {DOMAIN}, port: 8080}}
    deploy:
      replicas: 2
      placement:
        constraints: ["node.labels.t2 == {run}"]
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn acme_certificates_are_obtained_served_on_every_edge_and_renewed() {
    if skipped("the tier-2 ACME test") {
        return;
    }
    let ca = Ca::start().await.unwrap();
    let t2 = Tier2::launch(Tier2Options {
        coordinator_tables: ca.acme_table(),
        ..Tier2Options::mesh(2, "vxlan")
    })
    .await
    .unwrap();
    let (h0, h1) = (t2.host("h0").ip.clone(), t2.host("h1").ip.clone());
    // The CA reaches the domain at h0 for the first order.
    t2.expect(ca.point(DOMAIN, &h0).await).await;
    let roots = t2.expect(ca.root().await).await;
    let stack = format!("a{}", t2.run.replace('-', ""));
    t2.expect(t2.deploy(&stack, &compose(&t2.run)).await).await;
    t2.expect(t2.wait_running(&stack, 2).await).await;
    let mut checks = Checks::default();

    let first = std::sync::Mutex::new((String::new(), String::new()));
    checks
        .check(
            "skiff cert ls lists an ACME certificate for the route",
            async {
                let ids = wait_for("an ACME certificate for the route", ISSUE, || async {
                    served_acme(&t2).await.ok().filter(|ids| !ids.is_empty())
                })
                .await;
                let ids = ids.map_err(|e| anyhow::anyhow!("{e}\n{}", ca.logs()))?;
                anyhow::ensure!(ids.len() == 1, "{ids:?}");
                if let Ok(mut f) = first.lock() {
                    f.0.clone_from(&ids[0]);
                }
                Ok(())
            },
        )
        .await;
    checks
        .check(
            "both edge hosts serve it by SNI, chained to pebble's root, in front of the service",
            async {
                let s0 = serves(&h0, &roots, |_| true).await?;
                let s1 = serves(&h1, &roots, |s| s == s0).await?;
                anyhow::ensure!(s0 == s1, "h0 serves {s0}, h1 {s1}");
                if let Ok(mut f) = first.lock() {
                    f.1 = s0;
                }
                Ok(())
            },
        )
        .await;
    let (first_id, first_serial) = first.lock().map(|f| f.clone()).unwrap_or_default();

    checks
        .check(
            "skiff cert renew gets a new certificate, the challenge answered by the other host",
            async {
                ca.point(DOMAIN, &h1).await?;
                let out = t2.skiff(&["cert", "renew", DOMAIN]).await;
                let said = text(&out);
                anyhow::ensure!(out.status.success(), "{said}");
                anyhow::ensure!(
                    said.contains("asked for") && said.contains(&first_id),
                    "{said}"
                );
                let ids = wait_for("the renewed certificate", ISSUE, || async {
                    served_acme(&t2)
                        .await
                        .ok()
                        .filter(|ids| ids.len() == 1 && ids[0] != first_id)
                })
                .await;
                ids.map_err(|e| anyhow::anyhow!("{e}\n{}", ca.logs()))?;
                Ok(())
            },
        )
        .await;
    checks
        .check("both edge hosts then serve the new certificate", async {
            let fresh = |s: &str| s != first_serial;
            let s1 = serves(&h1, &roots, fresh).await?;
            let s0 = serves(&h0, &roots, |s| s == s1).await?;
            anyhow::ensure!(s0 == s1, "h0 serves {s0}, h1 {s1}");
            Ok(())
        })
        .await;
    checks
        .check(
            "a domain no route wants is refused by skiff cert renew",
            async {
                let out = t2.skiff(&["cert", "renew", "other.ingress.test"]).await;
                let said = text(&out);
                anyhow::ensure!(!out.status.success(), "{said}");
                anyhow::ensure!(said.contains("no route with TLS wants"), "{said}");
                Ok(())
            },
        )
        .await;
    checks
        .check("pebble validated each order over HTTP", async {
            let logs = ca.logs();
            let valid = logs.matches("set VALID by completed challenge").count();
            anyhow::ensure!(valid >= 2, "{valid} validations:\n{logs}");
            Ok(())
        })
        .await;
    checks.finish(&t2).await;
}
