//! The certificate checks on rcgen-made chains, the store round trip
//! with the key sealed, and which certificates are served.

use std::collections::BTreeSet;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use time::OffsetDateTime;

use super::*;
use crate::store::CertStore as _;
use crate::store::sqlite::SqliteStore;

const DAY: i64 = 86_400_000;

/// A CA, and a leaf for `names` it signed, valid from `from` to `to`
/// days around now: (chain PEM leaf-then-CA, leaf key PEM).
pub(crate) fn issued(names: &[&str], from: i64, to: i64) -> (String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Test CA");
    let ca = CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    let now = OffsetDateTime::now_utc();
    leaf.not_before = now + time::Duration::days(from);
    leaf.not_after = now + time::Duration::days(to);
    let cert = leaf.signed_by(&key, &ca).unwrap();
    (format!("{}{}", cert.pem(), ca.pem()), key.serialize_pem())
}

fn now() -> i64 {
    crate::now_ms()
}

#[test]
fn a_matching_chain_and_key_pass_with_their_names_and_dates() {
    let (chain, key) = issued(&["App.Example.com", "*.example.org"], -1, 90);
    let c = check(&chain, &key, now()).unwrap();
    assert_eq!(c.domains, vec!["*.example.org", "app.example.com"]);
    assert_eq!(c.issuer, "CN=Test CA");
    assert!(c.not_before < now() && c.not_after > now() + 89 * DAY);
    assert_eq!(c.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(c.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
}

#[test]
fn a_key_of_another_certificate_does_not_match() {
    let (chain, _) = issued(&["app.example.com"], -1, 90);
    let (_, other_key) = issued(&["app.example.com"], -1, 90);
    let e = check(&chain, &other_key, now()).unwrap_err();
    assert_eq!(e, CertError::KeyMismatch);
    assert!(e.to_string().contains("does not match"), "{e}");
}

#[test]
fn an_expired_certificate_is_refused() {
    let (chain, key) = issued(&["app.example.com"], -30, -1);
    let e = check(&chain, &key, now()).unwrap_err();
    assert!(matches!(e, CertError::Expired(_)), "{e}");
    assert!(e.to_string().contains("expired"), "{e}");
}

#[test]
fn names_a_route_cannot_serve_are_refused() {
    for bad in ["localhost", "a.*.example.com", "under_score.example.com"] {
        let (chain, key) = issued(&[bad], -1, 90);
        let e = check(&chain, &key, now()).unwrap_err();
        assert!(
            matches!(&e, CertError::BadName { name, .. } if name == bad),
            "{bad}: {e}"
        );
    }
    let (chain, key) = issued(&[], -1, 90);
    assert_eq!(check(&chain, &key, now()).unwrap_err(), CertError::NoNames);
}

#[test]
fn garbage_and_misplaced_pem_are_refused_with_what_to_pass() {
    let (chain, key) = issued(&["app.example.com"], -1, 90);
    assert_eq!(
        check("not a certificate", &key, now()).unwrap_err(),
        CertError::NoCertificate
    );
    let e = check(
        "-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n",
        &key,
        now(),
    )
    .unwrap_err();
    assert!(matches!(e, CertError::BadPem(_)), "{e}");
    let e = check(
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        &key,
        now(),
    )
    .unwrap_err();
    assert!(
        matches!(e, CertError::BadCertificate { index: 1, .. }),
        "{e}"
    );
    // The key pasted into the certificate file: named by its label only.
    let e = check(&format!("{chain}{key}"), &key, now()).unwrap_err();
    assert_eq!(e, CertError::WrongBlock("PRIVATE KEY".into()));
    assert!(!e.to_string().contains(&key[30..60]));
    assert_eq!(
        check(&chain, "garbage", now()).unwrap_err(),
        CertError::NoKey
    );
    // Intermediates before the leaf.
    let mut blocks: Vec<&str> = chain
        .split_inclusive("-----END CERTIFICATE-----\n")
        .collect();
    blocks.reverse();
    let e = check(&blocks.concat(), &key, now()).unwrap_err();
    assert_eq!(e, CertError::OutOfOrder { index: 2 });
    // A leaf whose name was changed after it was signed.
    let tampered = chain.replacen(
        &chain.lines().nth(5).unwrap().to_owned(),
        &chain
            .lines()
            .nth(5)
            .unwrap()
            .replacen(char::is_alphanumeric, "A", 1),
        1,
    );
    if tampered != chain {
        let e = check(&tampered, &key, now()).unwrap_err();
        assert!(
            matches!(
                e,
                CertError::BadSignature { index: 1 } | CertError::BadCertificate { index: 1, .. }
            ),
            "{e}"
        );
    }
    let big = "x".repeat(skiff_api_types::certs::MAX_CERTIFICATE_PEM_BYTES + 1);
    assert!(matches!(
        check(&big, &key, now()).unwrap_err(),
        CertError::TooLarge(_)
    ));
}

pub(crate) async fn book_in(
    dir: &std::path::Path,
    acme: Option<AcmeSettings>,
) -> (
    Arc<CertBook>,
    Arc<SqliteStore>,
    Arc<Sessions>,
    Arc<EventLog>,
) {
    let store = Arc::new(SqliteStore::open(&dir.join("skiff.db")).await.unwrap());
    let key = Arc::new(SecretKey::load_or_create(dir).unwrap());
    let sessions = Arc::new(Sessions::default());
    let events = Arc::new(EventLog::default());
    let book = CertBook::open(store.clone(), key, sessions.clone(), events.clone(), acme)
        .await
        .unwrap();
    (Arc::new(book), store, sessions, events)
}

#[tokio::test]
async fn stored_keys_are_sealed_and_come_back_for_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let (book, store, _, _) = book_in(dir.path(), None).await;
    let (chain, key) = issued(&["app.example.com"], -1, 90);
    let changed = book.changed();
    let row = book.add(&chain, &key).await.unwrap();
    assert!(changed.has_changed().unwrap());
    let sealed = store
        .sealed_certificate_key(&row.id)
        .await
        .unwrap()
        .unwrap();
    let body = key.lines().nth(1).unwrap();
    assert!(!sealed.contains(body) && !sealed.contains("PRIVATE KEY"));
    // The database file holds no line of the key either.
    drop(store);
    let raw = std::fs::read(dir.path().join("skiff.db")).unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert!(!raw.contains(body));
    // Opened again from the store, the book delivers the same key.
    let (book, _, _, _) = book_in(dir.path(), None).await;
    assert_eq!(book.list(), vec![row.clone()]);
    let m = book.materials().await;
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].id, row.id);
    assert_eq!(
        check(&m[0].chain_pem, &m[0].key_pem, now())
            .unwrap()
            .domains,
        vec!["app.example.com"]
    );
    assert!(!format!("{m:?}").contains(body), "Debug shows no key");
    assert_eq!(book.remove(&row.id).await.unwrap(), Some(row.clone()));
    assert!(book.list().is_empty() && book.materials().await.is_empty());
    assert_eq!(book.remove(&row.id).await.unwrap(), None);
}

#[tokio::test]
async fn a_refused_certificate_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (book, store, _, _) = book_in(dir.path(), None).await;
    let (chain, _) = issued(&["app.example.com"], -1, 90);
    let (_, key) = issued(&["app.example.com"], -1, 90);
    assert!(matches!(
        book.add(&chain, &key).await,
        Err(BookError::Invalid(CertError::KeyMismatch))
    ));
    assert!(store.certificates().await.unwrap().is_empty());
    assert!(book.list().is_empty());
}

#[tokio::test]
async fn each_domain_is_served_by_its_newest_valid_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (book, _, _, _) = book_in(dir.path(), None).await;
    let (chain, key) = issued(&["a.example.com", "b.example.com"], -10, 90);
    let old = book.add(&chain, &key).await.unwrap();
    let (chain, key) = issued(&["a.example.com"], -1, 90);
    let new = book.add(&chain, &key).await.unwrap();
    let (chain, key) = issued(&["c.example.com"], 5, 90);
    let later = book.add(&chain, &key).await.unwrap();
    let refs = book.refs();
    let by_id: std::collections::BTreeMap<_, _> = refs
        .iter()
        .map(|r| (r.id.clone(), r.domains.clone()))
        .collect();
    assert_eq!(by_id.get(&new.id), Some(&vec!["a.example.com".to_owned()]));
    assert_eq!(by_id.get(&old.id), Some(&vec!["b.example.com".to_owned()]));
    assert!(!by_id.contains_key(&later.id), "not valid yet");
    let r = refs.iter().find(|r| r.id == new.id).unwrap();
    assert_eq!(
        r.chain_sha256,
        hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            new.chain_pem.as_bytes()
        ))
    );
    assert_eq!(book.materials().await.len(), 2);
}

#[tokio::test]
async fn wanted_domains_are_due_until_a_fresh_certificate_covers_them() {
    let dir = tempfile::tempdir().unwrap();
    // ACME on, its task not running: `due` is what it would order.
    let acme = AcmeSettings::new("https://acme.invalid/directory");
    let (book, _, _, _) = book_in(dir.path(), Some(acme)).await;
    let wanted: BTreeSet<String> = [
        "a.example.com",
        "b.example.com",
        "*.example.net",
        "x.example.org",
    ]
    .map(str::to_owned)
    .into();
    book.want(wanted.clone());
    assert_eq!(book.wanted(), wanted);
    assert_eq!(
        book.due(now()),
        vec!["a.example.com", "b.example.com", "x.example.org"]
    );
    // Fresh for a; two thirds of b's life gone; a wildcard covers x.
    let (chain, key) = issued(&["a.example.com"], -1, 89);
    book.add(&chain, &key).await.unwrap();
    let (chain, key) = issued(&["b.example.com"], -70, 20);
    book.add(&chain, &key).await.unwrap();
    let (chain, key) = issued(&["*.example.org"], -1, 89);
    book.add(&chain, &key).await.unwrap();
    assert_eq!(book.due(now()), vec!["b.example.com"]);
    assert_eq!(book.uncovered(), vec!["*.example.net"]);
    let a = book
        .refs()
        .into_iter()
        .find(|r| r.domains == ["a.example.com"]);
    assert_eq!(
        book.renew("A.Example.com").unwrap(),
        vec![a.unwrap().id],
        "the certificate it replaces"
    );
    assert_eq!(book.due(now()), vec!["a.example.com", "b.example.com"]);
}

#[tokio::test]
async fn a_renewal_needs_acme_and_a_route_that_wants_the_domain() {
    let dir = tempfile::tempdir().unwrap();
    let (off, _, _, _) = book_in(dir.path(), None).await;
    off.want(BTreeSet::from(["a.example.com".to_owned()]));
    let e = off.renew("a.example.com").unwrap_err();
    assert_eq!(e, RenewError::AcmeOff);
    assert!(e.to_string().contains("[acme] directory"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let acme = AcmeSettings::new("https://acme.invalid/directory");
    let (book, _, _, _) = book_in(dir.path(), Some(acme)).await;
    let e = book.renew("a.example.com").unwrap_err();
    assert!(e.to_string().contains("routes with TLS: none"), "{e}");
    book.want(BTreeSet::from([
        "a.example.com".to_owned(),
        "*.example.org".to_owned(),
    ]));
    let e = book.renew("b.example.com").unwrap_err();
    assert!(
        matches!(&e, RenewError::NotWanted { domain, .. } if domain == "b.example.com"),
        "{e}"
    );
    assert!(e.to_string().contains("a.example.com"), "{e}");
    let e = book.renew("*.example.org").unwrap_err();
    assert!(matches!(e, RenewError::Wildcard(_)), "{e}");
    let e = book.renew("not a domain").unwrap_err();
    assert!(matches!(e, RenewError::Invalid(_)), "{e}");
    assert!(book.due(now()).contains(&"a.example.com".to_owned()));
    // Nothing covers it: a renewal is asked for all the same, and
    // replaces nothing.
    assert_eq!(book.renew("a.example.com").unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn certificates_close_to_expiry_are_warned_of_once() {
    let dir = tempfile::tempdir().unwrap();
    let (book, _, _, events) = book_in(dir.path(), None).await;
    let (chain, key) = issued(&["soon.example.com"], -80, 10);
    let soon = book.add(&chain, &key).await.unwrap();
    let (chain, key) = issued(&["later.example.com"], -1, 80);
    book.add(&chain, &key).await.unwrap();
    let mut warned = BTreeSet::new();
    assert_eq!(
        book.warn_expiring(&mut warned, now()),
        vec![soon.id.clone()]
    );
    assert!(book.warn_expiring(&mut warned, now()).is_empty());
    let (kept, _) = events.subscribe();
    let last = kept.last().unwrap();
    assert_eq!(last.kind, EventKind::Certificate);
    assert!(last.message.contains(&soon.id) && last.message.contains("skiff cert add"));
    assert!(
        book.warn_expiring(&mut BTreeSet::new(), now() + 75 * DAY)
            .len()
            == 2,
        "both, when both are close"
    );
}

#[test]
fn backoff_doubles_up_to_its_cap() {
    let s = AcmeSettings::new("https://ca.test/dir");
    assert_eq!(s.backoff(1), s.retry_base);
    assert_eq!(s.backoff(2), s.retry_base * 2);
    assert_eq!(s.backoff(3), s.retry_base * 4);
    assert_eq!(s.backoff(40), s.retry_max);
}

#[test]
fn acme_config_is_off_without_a_directory_and_checked_with_one() {
    use crate::config::AcmeConfig;
    assert_eq!(AcmeConfig::default().settings().unwrap(), None);
    let with = |directory: &str, email: Option<&str>| AcmeConfig {
        directory: Some(directory.into()),
        email: email.map(str::to_owned),
        ca_bundle: None,
        dns01: None,
    };
    let s = with("https://acme.test/dir", Some("ops@example.com"))
        .settings()
        .unwrap()
        .unwrap();
    assert_eq!(s.directory, "https://acme.test/dir");
    assert_eq!(s.email.as_deref(), Some("ops@example.com"));
    for (bad, key) in [
        (with("http://acme.test/dir", None), "acme.directory"),
        (with("https://", None), "acme.directory"),
        (with("https://acme.test/dir", Some("nobody")), "acme.email"),
        (
            AcmeConfig {
                ca_bundle: Some("/nonexistent/ca.pem".into()),
                ..with("https://acme.test/dir", None)
            },
            "acme.ca_bundle",
        ),
        (
            AcmeConfig {
                email: Some("ops@example.com".into()),
                ..AcmeConfig::default()
            },
            "acme.directory",
        ),
    ] {
        let e = bad.settings().unwrap_err().to_string();
        assert!(e.contains(key), "{e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coordinator.toml");
    std::fs::write(
        &path,
        "[acme]\ndirectory = \"https://acme.test/dir\"\nemail = \"ops@example.com\"\n",
    )
    .unwrap();
    let parsed = crate::config::Config::load(&path).unwrap();
    assert!(parsed.acme.settings().unwrap().is_some());
    std::fs::write(&path, "[acme]\ndirectroy = \"https://acme.test/dir\"\n").unwrap();
    assert!(
        crate::config::Config::load(&path).is_err(),
        "unknown keys refused"
    );
}

#[test]
fn acme_dns01_is_read_from_the_config_file_and_checked_at_validation() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("tsig.key");
    std::fs::write(&secret, "c2tpZmYtYWNtZS10ZXN0LXNlY3JldA==\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = dir.path().join("coordinator.toml");
    let text = format!(
        "[acme]\ndirectory = \"https://acme.test/dir\"\n\n[acme.dns01]\nserver = \"127.0.0.1:5353\"\nzone = \"example.com\"\nkey_name = \"skiff-acme\"\nsecret_file = {:?}\npropagation_timeout = \"30s\"\n",
        secret.display().to_string()
    );
    std::fs::write(&path, &text).unwrap();
    let parsed = crate::config::Config::load(&path).unwrap();
    parsed.validate().unwrap();
    let settings = parsed.acme.settings().unwrap().unwrap();
    let dns01 = settings.dns01.unwrap();
    assert_eq!(dns01.server, "127.0.0.1:5353");
    assert_eq!(dns01.propagation_timeout, Duration::from_secs(30));

    // The start refuses a secret other users may read, naming the key.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = crate::config::Config::load(&path)
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("acme.dns01.secret_file"), "{e}");
    assert!(e.contains("chmod 600"), "{e}");

    // [acme.dns01] without a directory says to set one.
    std::fs::write(
        &path,
        text.replace("directory = \"https://acme.test/dir\"\n", ""),
    )
    .unwrap();
    let e = crate::config::Config::load(&path)
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("acme.directory"), "{e}");

    std::fs::write(&path, text.replace("zone =", "zones =")).unwrap();
    assert!(
        crate::config::Config::load(&path).is_err(),
        "unknown keys refused"
    );
}

#[test]
fn the_acme_client_trusts_the_system_roots_without_a_ca_bundle() {
    // Public CAs' directories are checked against the system's roots
    // (ca-certificates): the client must build with ring alone.
    let settings = AcmeSettings::new("https://acme.test/dir");
    if let Err(e) = acme::builder(&settings) {
        panic!("the ACME client cannot be built: {e}");
    }
}

fn connect(sessions: &Sessions, node: &str, capabilities: &[&str]) {
    sessions.insert(
        node,
        crate::sessions::SessionInfo {
            conn_id: 1,
            connected_at_ms: 0,
            remote_addr: "127.0.0.1:1".into(),
            close: tokio_util::sync::CancellationToken::new(),
            capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
            queries: None,
        },
    );
}

#[tokio::test]
async fn a_challenge_is_ready_only_once_every_connected_edge_host_answers_it() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let (book, _, sessions, _) = book_in(dir.path(), None).await;
    let short = Duration::from_millis(200);
    assert!(matches!(
        acme::wait_answered(&book, "tok", short).await,
        Err(acme::AcmeError::NoEdgeHost)
    ));
    connect(&sessions, "n1", &["ingress.v1"]);
    connect(&sessions, "n2", &["ingress.v1"]);
    connect(&sessions, "old", &["containers.v1"]);
    let changed = book.changed();
    book.publish_challenge("tok", "tok.thumb");
    assert!(changed.has_changed().unwrap());
    assert_eq!(book.challenges()[0].key_authorization, "tok.thumb");
    book.report_challenges("n1", &["tok".to_owned()]);
    assert!(matches!(
        acme::wait_answered(&book, "tok", short).await,
        Err(acme::AcmeError::NotAnswered(1))
    ));
    let waiting = {
        let book = book.clone();
        tokio::spawn(
            async move { acme::wait_answered(&book, "tok", Duration::from_secs(30)).await },
        )
    };
    book.report_challenges("n2", &["other".to_owned(), "tok".to_owned()]);
    waiting.await.unwrap().unwrap();
    book.drop_challenge("tok");
    assert!(book.challenges().is_empty());
}

mod fuzzed {
    use std::sync::LazyLock;

    use proptest::prelude::*;

    use super::*;

    static VALID: LazyLock<(String, String)> =
        LazyLock::new(|| issued(&["app.example.com"], -1, 90));

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever a client sends, the check answers (an error naming
        /// the problem), and never with a byte of the key it was given.
        #[test]
        fn any_input_gets_an_answer_without_the_key(
            chain in ".{0,300}",
            key in ".{0,300}",
        ) {
            if let Err(e) = check(&chain, &key, now()) {
                prop_assert!(!e.to_string().is_empty());
            }
        }

        /// A valid chain with one byte changed is refused or still
        /// matches its key; the check never panics on it.
        #[test]
        fn a_damaged_chain_is_refused_or_still_sound(at in 0usize..4000, byte in any::<u8>()) {
            let (chain, key) = &*VALID;
            let mut bytes = chain.as_bytes().to_vec();
            let i = at % bytes.len();
            bytes[i] = byte;
            let damaged = String::from_utf8_lossy(&bytes);
            match check(&damaged, key, now()) {
                // The signatures cover every byte that matters.
                Ok(c) => prop_assert_eq!(c.domains, vec!["app.example.com".to_owned()]),
                Err(e) => {
                    let key_line = key.lines().nth(1).unwrap_or_default();
                    prop_assert!(!e.to_string().contains(key_line));
                }
            }
        }
    }
}

#[tokio::test]
async fn acme_says_once_that_a_wildcard_must_be_uploaded() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let settings = AcmeSettings::new("https://127.0.0.1:1/dir");
    let (book, _, _, events) = book_in(dir.path(), Some(settings)).await;
    let (_, mut rx) = events.subscribe();
    book.want(BTreeSet::from(["*.example.net".to_owned()]));
    let tree = skiff_shared::tasks::TaskTree::root();
    book.spawn(&tree);
    let event = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.kind, EventKind::Certificate);
    assert!(event.message.contains("*.example.net") && event.message.contains("skiff cert add"));
    // Another wake does not say it again.
    book.want(BTreeSet::from([
        "*.example.net".to_owned(),
        "*.example.org".to_owned(),
    ]));
    let event = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(event.message.contains("*.example.org"), "{}", event.message);
    tree.cancel();
    tree.wait().await;
}

#[tokio::test]
async fn a_directory_that_never_answers_fails_the_attempt_and_it_is_retried() {
    use std::time::Duration;
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let mut settings = AcmeSettings::new(format!("https://127.0.0.1:{port}/dir"));
    settings.attempt_timeout = Duration::from_millis(300);
    settings.retry_base = Duration::from_millis(100);
    let dir = tempfile::tempdir().unwrap();
    let (book, _, _, events) = book_in(dir.path(), Some(settings)).await;
    let (_, mut rx) = events.subscribe();
    book.want(BTreeSet::from(["app.example.com".to_owned()]));
    let tree = skiff_shared::tasks::TaskTree::root();
    book.spawn(&tree);
    for failures in ["1 in a row", "2 in a row"] {
        let event = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.kind, EventKind::Certificate);
        assert!(
            event.message.contains("app.example.com")
                && event.message.contains("did not complete")
                && event.message.contains(failures),
            "{}",
            event.message
        );
    }
    assert!(book.list().is_empty() && book.challenges().is_empty());
    tree.cancel();
    tree.wait().await;
    held.abort();
}

#[tokio::test]
async fn an_asked_for_renewal_is_tried_at_once_despite_the_backoff() {
    use std::time::Duration;
    // Refuses every connection: each attempt fails at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut settings = AcmeSettings::new(format!("https://127.0.0.1:{port}/dir"));
    // The next try after a failure would be an hour away.
    settings.retry_base = Duration::from_secs(3600);
    let dir = tempfile::tempdir().unwrap();
    let (book, _, _, events) = book_in(dir.path(), Some(settings)).await;
    let (_, mut rx) = events.subscribe();
    book.want(BTreeSet::from(["app.example.com".to_owned()]));
    let tree = skiff_shared::tasks::TaskTree::root();
    book.spawn(&tree);
    for failures in ["1 in a row", "2 in a row"] {
        let event = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("an attempt at once, not after the backoff")
            .unwrap();
        assert!(
            event.message.contains("app.example.com") && event.message.contains(failures),
            "{}",
            event.message
        );
        if failures.starts_with('1') {
            book.renew("app.example.com").unwrap();
        }
    }
    tree.cancel();
    tree.wait().await;
}
