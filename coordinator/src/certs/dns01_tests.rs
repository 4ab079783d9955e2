//! DNS-01 against real parts: Debian's BIND (`named`) serving a zone
//! that accepts updates signed with a TSIG key made here, and `pebble`
//! validating for real through that server (`-dnsserver`). The ACME
//! task obtains a wildcard certificate by writing and then deleting the
//! challenge record; a wrong secret gives the message naming the fix.
//! Both tests skip, saying why, when `named` or `pebble` is missing
//! (scripts/test.sh installs them).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use skiff_shared::tasks::TaskTree;
use tokio::time::Instant;

use super::dns01::{Dns01Config, Dns01Settings};
use super::pebble_tests::{Pebble, free_port};
use super::tests::book_in;
use super::*;

const NAMED: &str = "/usr/sbin/named";
const PEBBLE: &str = "/usr/bin/pebble";
const WILDCARD: &str = "*.app.skiff.test";
const KEY: &str = "skiff-acme";
/// A key named gets no right to update the zone.
const OTHER_KEY: &str = "other-key";
/// A key with the right, signing with HMAC-SHA512.
const SHA512_KEY: &str = "sha512-key";

/// Whether the programs these tests need are here; says why not.
fn programs_present() -> bool {
    for program in [NAMED, PEBBLE] {
        if !std::path::Path::new(program).is_file() {
            eprintln!(
                "{program} is missing: skipping the DNS-01 test (scripts/test.sh installs bind9 and pebble)"
            );
            return false;
        }
    }
    true
}

/// A fresh 256-bit TSIG secret, base64.
fn random_secret() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A `named` serving `skiff.test.` on a free loopback port, updatable
/// with the key; killed when dropped.
struct Named {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    secret: String,
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Named {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let secret = random_secret();
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
}};
controls {{ }};
key "{KEY}" {{ algorithm hmac-sha256; secret "{secret}"; }};
key "{OTHER_KEY}" {{ algorithm hmac-sha256; secret "{secret}"; }};
key "{SHA512_KEY}" {{ algorithm hmac-sha512; secret "{secret}"; }};
zone "skiff.test" {{
    type primary;
    file "{d}/skiff.test.zone";
    // As docs/ingress.md suggests: the keys may change TXT records only.
    update-policy {{ grant {KEY} zonesub TXT; grant {SHA512_KEY} zonesub TXT; }};
}};
"#
        );
        let zone = "$TTL 60\n\
             @ IN SOA ns1.skiff.test. admin.skiff.test. 1 60 60 600 60\n\
             @ IN NS ns1.skiff.test.\n\
             ns1 IN A 127.0.0.1\n";
        std::fs::write(dir.path().join("named.conf"), conf).unwrap();
        std::fs::write(dir.path().join("skiff.test.zone"), zone).unwrap();
        let log = std::fs::File::create(dir.path().join("named.log")).unwrap();
        let child = Command::new(NAMED)
            .arg("-g")
            .arg("-c")
            .arg(dir.path().join("named.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let named = Self {
            child,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            secret,
        };
        // Ready once it answers for the zone over TCP.
        let settings = named.settings(&named.secret);
        let apex = settings.zone.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        while dns01::rfc2136::txt_values(&settings, &apex).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "named did not start:\n{}",
                named.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        named
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }

    /// `[acme.dns01]` for this server, with `secret` in a 0600 file.
    fn settings(&self, secret: &str) -> Dns01Settings {
        self.settings_for(secret, KEY, "skiff.test", &self.addr.to_string())
    }

    fn settings_for(&self, secret: &str, key: &str, zone: &str, server: &str) -> Dns01Settings {
        let path = tempfile::Builder::new()
            .suffix(".key")
            .tempfile_in(self.dir.path())
            .unwrap()
            .into_temp_path()
            .keep()
            .unwrap();
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Dns01Config {
            server: Some(server.into()),
            zone: Some(zone.into()),
            key_name: Some(key.into()),
            algorithm: Some("hmac-sha256".into()),
            secret_file: Some(path),
            propagation_timeout: Some("20s".into()),
        }
        .settings()
        .unwrap()
    }
}

/// Waits until the book lists an ACME certificate other than `not`;
/// says what pebble, named and the events said if none comes.
async fn acme_cert(
    book: &CertBook,
    not: Option<&str>,
    pebble: &Pebble,
    named: &Named,
    events: &crate::events::EventLog,
) -> CertRow {
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
        if tokio::time::timeout_at(deadline, changed.changed())
            .await
            .is_err()
        {
            let (said, _) = events.subscribe();
            let said: Vec<String> = said.into_iter().map(|e| e.message).collect();
            panic!(
                "no certificate in time; events: {said:#?}\npebble:\n{}\nnamed:\n{}",
                pebble.log(),
                named.log()
            );
        }
    }
}

/// The TXT values named serves at the wildcard's challenge name.
async fn challenge_txt(settings: &Dns01Settings) -> Vec<Vec<u8>> {
    let name = dns01::rfc2136::challenge_name(settings, WILDCARD).unwrap();
    dns01::rfc2136::txt_values(settings, &name).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_certificate_is_obtained_by_dns01_through_bind() {
    if !programs_present() {
        return;
    }
    let named = Named::start().await;
    let pebble = Pebble::start_with(Some(named.addr)).await;
    let dns01 = named.settings(&named.secret);
    let mut settings = pebble.settings();
    settings.dns01 = Some(dns01.clone());
    let dir = tempfile::tempdir().unwrap();
    // No edge host: DNS-01 needs none.
    let (book, _, _, events) = book_in(dir.path(), Some(settings)).await;
    let tree = TaskTree::root();
    book.want(BTreeSet::from([WILDCARD.to_owned()]));
    book.spawn(&tree);

    let cert = acme_cert(&book, None, &pebble, &named, &events).await;
    assert_eq!(cert.domains, vec![WILDCARD]);
    let m = book.materials().await;
    check(&m[0].chain_pem, &m[0].key_pem, crate::now_ms()).expect("a matching key");
    let log = named.log();
    assert!(
        log.contains("adding an RR at '_acme-challenge.app.skiff.test' TXT"),
        "the record was added by a signed update:\n{log}"
    );
    assert!(
        log.contains("deleting an RR at _acme-challenge.app.skiff.test TXT")
            || log.contains("deleting an RR at '_acme-challenge.app.skiff.test' TXT"),
        "the record was deleted:\n{log}"
    );
    assert!(challenge_txt(&dns01).await.is_empty(), "the record is gone");
    assert!(book.due(crate::now_ms()).is_empty(), "covered");

    // A renewal takes the same way.
    book.renew(WILDCARD).unwrap();
    let second = acme_cert(&book, Some(&cert.id), &pebble, &named, &events).await;
    assert_eq!(second.domains, vec![WILDCARD]);
    assert!(challenge_txt(&dns01).await.is_empty(), "the record is gone");
    tree.cancel();
    tree.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_tsig_secret_says_to_fix_the_secret_file_and_gets_no_certificate() {
    if !programs_present() {
        return;
    }
    let named = Named::start().await;
    let pebble = Pebble::start_with(Some(named.addr)).await;
    let wrong = random_secret();
    let mut settings = pebble.settings();
    settings.dns01 = Some(named.settings(&wrong));
    let dir = tempfile::tempdir().unwrap();
    let (book, _, _, events) = book_in(dir.path(), Some(settings)).await;
    let (_, mut rx) = events.subscribe();
    let tree = TaskTree::root();
    book.want(BTreeSet::from([WILDCARD.to_owned()]));
    book.spawn(&tree);

    // Two failures in a row: the first, then a retry after its backoff.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut failures = Vec::new();
    while failures.len() < 2 {
        let event = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no failure reported in time: {failures:?}"))
            .unwrap();
        if event.message.contains("failed") {
            failures.push(event.message);
        }
    }
    assert!(
        failures[0].contains(&format!(
            "Obtaining a certificate for {WILDCARD} failed (1 in a row"
        )),
        "{failures:?}"
    );
    assert!(
        failures[0].contains("secret_file holds the secret of key skiff-acme"),
        "{failures:?}"
    );
    assert!(failures[1].contains("(2 in a row"), "{failures:?}");
    assert!(book.list().is_empty(), "no certificate");
    tree.cancel();
    tree.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_bind_answers_to_a_wrong_key_zone_or_server_names_the_fix() {
    if !programs_present() {
        return;
    }
    let named = Named::start().await;
    let server = named.addr.to_string();
    let add = |settings: Dns01Settings, domain: &'static str| async move {
        let mut records = dns01::TxtRecords::new(settings);
        records.add(domain, "value").await.unwrap_err().to_string()
    };
    let sha512 = |key: &str| Dns01Settings {
        algorithm: TsigAlgorithm::HmacSha512,
        ..named.settings_for(&named.secret, key, "skiff.test", &server)
    };
    let cases = [
        (
            sha512(KEY),
            WILDCARD,
            "does not know key skiff-acme (hmac-sha512)",
        ),
        (
            named.settings_for(&named.secret, "nobody", "skiff.test", &server),
            WILDCARD,
            "does not know key nobody (hmac-sha256): check [acme.dns01] key_name and algorithm",
        ),
        (
            named.settings_for(&random_secret(), KEY, "skiff.test", &server),
            WILDCARD,
            "check that [acme.dns01] secret_file holds the secret of key skiff-acme",
        ),
        (
            named.settings_for(&named.secret, OTHER_KEY, "skiff.test", &server),
            WILDCARD,
            "refused the update: check that key other-key may update zone skiff.test",
        ),
        (
            named.settings_for(&named.secret, KEY, "example.org", &server),
            "*.app.example.org",
            "not authoritative for zone example.org",
        ),
        (
            named.settings_for(&named.secret, KEY, "skiff.test", &server),
            "*.app.example.org",
            "*.app.example.org is not in zone skiff.test ([acme.dns01] zone)",
        ),
        (
            named.settings_for(
                &named.secret,
                KEY,
                "skiff.test",
                &format!("127.0.0.1:{}", free_port()),
            ),
            WILDCARD,
            "cannot reach the DNS server 127.0.0.1:",
        ),
    ];
    for (settings, domain, says) in cases {
        let e = add(settings, domain).await;
        assert!(e.contains(says), "{e}\nwanted: {says}");
    }
    let dns01 = named.settings(&named.secret);
    assert!(challenge_txt(&dns01).await.is_empty(), "nothing was added");

    // Records of an attempt cut short (dropped without removal) are
    // deleted all the same.
    let mut records = dns01::TxtRecords::new(dns01.clone());
    records.add(WILDCARD, "cut-short").await.unwrap();
    assert_eq!(challenge_txt(&dns01).await, vec![b"cut-short".to_vec()]);
    drop(records);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !challenge_txt(&dns01).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the record stays:\n{}",
            named.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // HMAC-SHA512 keys work as well.
    let mut records = dns01::TxtRecords::new(sha512(SHA512_KEY));
    records.add(WILDCARD, "sha512").await.unwrap();
    assert_eq!(challenge_txt(&dns01).await, vec![b"sha512".to_vec()]);
    records.remove_all().await;
    assert!(challenge_txt(&dns01).await.is_empty(), "deleted");
}
