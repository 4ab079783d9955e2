//! ACME against a real CA: Debian's `pebble` on free loopback ports, its
//! HTTPS listener under a test CA made here and trusted through
//! `ca_bundle`. `PEBBLE_VA_ALWAYS_VALID=1` makes pebble accept each
//! HTTP-01 challenge once it is told to check it: the coordinator's side
//! (account, order, publishing the challenge, waiting until every edge
//! host answers it, finalizing with a fresh key, storing) is the real
//! one; answering on port 80 is the agent's, tested end to end.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use skiff_shared::tasks::TaskTree;
use tokio::time::Instant;

use super::tests::book_in;
use super::*;
use crate::sessions::SessionInfo;
use crate::store::CertStore as _;

const PEBBLE: &str = "/usr/bin/pebble";
const DOMAIN: &str = "app.skiff.test";

/// A pebble process; killed when dropped.
pub(super) struct Pebble {
    child: Child,
    dir: tempfile::TempDir,
    pub(super) directory: String,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Pebble {
    async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Pebble; with `dns_server`, it really validates challenges and
    /// resolves (DNS-01 TXT records included) through that server,
    /// otherwise it takes every challenge as valid.
    pub(super) async fn start_with(dns_server: Option<std::net::SocketAddr>) -> Self {
        assert!(
            std::path::Path::new(PEBBLE).is_file(),
            "{PEBBLE} is missing: run scripts/test.sh, which installs Debian's pebble"
        );
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "Skiff test directory CA");
        let ca = CertifiedIssuer::self_signed(ca, ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("ca.pem"), ca.pem()).unwrap();
        std::fs::write(path("cert.pem"), cert.pem()).unwrap();
        std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
        let port = free_port();
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{}", free_port()),
            "certificate": path("cert.pem"),
            "privateKey": path("key.pem"),
            "httpPort": free_port(),
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(path("pebble.json"), config.to_string()).unwrap();
        let log = std::fs::File::create(path("pebble.log")).unwrap();
        let mut command = Command::new(PEBBLE);
        command.arg("-config").arg(path("pebble.json"));
        if let Some(server) = dns_server {
            command.arg("-dnsserver").arg(server.to_string());
        }
        let always_valid = if dns_server.is_some() { "0" } else { "1" };
        let child = command
            .env("PEBBLE_VA_ALWAYS_VALID", always_valid)
            .env("PEBBLE_VA_NOSLEEP", "1")
            // Every order goes through its challenge, renewals too.
            .env("PEBBLE_AUTHZREUSE", "0")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pebble = Self {
            child,
            dir,
            directory: format!("https://127.0.0.1:{port}/dir"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "pebble did not listen:\n{}",
                pebble.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pebble
    }

    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    pub(super) fn settings(&self) -> AcmeSettings {
        let mut s = AcmeSettings::new(self.directory.clone());
        s.email = Some("admin@skiff.test".into());
        s.ca_bundle = Some(self.dir.path().join("ca.pem"));
        s.challenge_wait = Duration::from_secs(30);
        s.order_timeout = Duration::from_secs(60);
        s.retry_base = Duration::from_millis(500);
        s
    }
}

/// An edge host that answers every challenge it is given: it reports
/// the tokens of each change of the book's challenges, as an agent's
/// ingress report would. Returns every challenge it saw.
fn edge_host(
    book: &Arc<CertBook>,
    sessions: &Sessions,
    tree: &TaskTree,
) -> Arc<Mutex<Vec<Challenge>>> {
    sessions.insert(
        "edge-1",
        SessionInfo {
            conn_id: 1,
            connected_at_ms: 0,
            remote_addr: "127.0.0.1:1".into(),
            close: tokio_util::sync::CancellationToken::new(),
            capabilities: vec![Ingress::CAPABILITY.to_owned()],
            queries: None,
        },
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (book, out, t) = (book.clone(), seen.clone(), tree.clone());
    tree.spawn("test-edge-host", async move {
        let mut changed = book.changed();
        loop {
            let challenges = book.challenges();
            let tokens: Vec<String> = challenges.iter().map(|c| c.token.clone()).collect();
            out.lock().unwrap().extend(challenges);
            book.report_challenges("edge-1", &tokens);
            tokio::select! {
                () = t.cancelled() => break,
                r = changed.changed() => if r.is_err() { break },
            }
        }
    });
    seen
}

/// Waits until the book lists an ACME certificate other than `not`.
async fn acme_cert(book: &CertBook, not: Option<&str>, pebble: &Pebble) -> CertRow {
    let mut changed = book.changed();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(c) = book
            .list()
            .into_iter()
            .find(|c| c.source == CertSource::Acme && Some(c.id.as_str()) != not)
        {
            return c;
        }
        let r = tokio::time::timeout_at(deadline, changed.changed()).await;
        assert!(
            r.is_ok(),
            "no certificate from pebble in time:\n{}",
            pebble.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_obtained_from_pebble_stored_listed_and_renewed_when_forced() {
    let pebble = Pebble::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (book, store, sessions, events) = book_in(dir.path(), Some(pebble.settings())).await;
    let tree = TaskTree::root();
    let seen = edge_host(&book, &sessions, &tree);
    book.want(BTreeSet::from([DOMAIN.to_owned()]));
    book.spawn(&tree);

    let first = acme_cert(&book, None, &pebble).await;
    assert_eq!(first.domains, vec![DOMAIN]);
    assert!(first.not_after > crate::now_ms());
    let refs = book.refs();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].id, first.id);
    let m = book.materials().await;
    assert_eq!(m.len(), 1);
    check(&m[0].chain_pem, &m[0].key_pem, crate::now_ms()).expect("a matching key");
    {
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty(), "the challenge was published");
        assert!(
            seen.iter()
                .all(|c| c.key_authorization.starts_with(&format!("{}.", c.token))),
            "HTTP-01 key authorizations"
        );
    }
    assert!(book.challenges().is_empty(), "dropped once done");
    assert!(book.due(crate::now_ms()).is_empty(), "covered");
    let sealed = store
        .acme_account(&pebble.directory)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !sealed.contains("key_pkcs8"),
        "the account is stored sealed"
    );

    let challenges_before = seen.lock().unwrap().len();
    book.renew(DOMAIN).unwrap();
    let second = acme_cert(&book, Some(&first.id), &pebble).await;
    assert_eq!(second.domains, vec![DOMAIN]);
    assert!(
        seen.lock().unwrap().len() > challenges_before,
        "the renewal answered a challenge of its own"
    );
    // The renewed certificate replaces the old one.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut changed = book.changed();
    while book.list().len() != 1 {
        let r = tokio::time::timeout_at(deadline, changed.changed()).await;
        assert!(r.is_ok(), "the old certificate stays: {:?}", book.list());
    }
    assert_eq!(book.refs()[0].id, second.id);
    let (kept, _) = events.subscribe();
    assert!(
        kept.iter()
            .filter(|e| e.message.contains("obtained from the ACME directory"))
            .count()
            >= 2
    );
    tree.cancel();
    tree.wait().await;
}
