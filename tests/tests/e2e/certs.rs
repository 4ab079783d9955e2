//! `skiff cert` against a real coordinator: a certificate added from
//! files, listed, refused with what to fix (exit 2, nothing stored),
//! removed; the private key never shown.

use std::process::Output;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use skiff_api_types::CertificateView;
use skiff_tests::cluster::{Coordinator, CoordinatorOptions};

use crate::api_cli::skiff;

/// A leaf for `names`, signed by a CA made here: (chain PEM, key PEM).
fn issued(names: &[&str]) -> (String, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Skiff test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (format!("{}{}", leaf.pem(), ca.pem()), key.serialize_pem())
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_adds_lists_refuses_and_removes_certificates() {
    let coord = Coordinator::launch(CoordinatorOptions::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (chain, key) = issued(&["app.example.com", "www.example.com"]);
    let (_, other_key) = issued(&["app.example.com"]);
    let key_line = key.lines().nth(1).unwrap().to_owned();
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(path("chain.pem"), &chain).unwrap();
    std::fs::write(path("key.pem"), &key).unwrap();
    std::fs::write(path("other.pem"), &other_key).unwrap();

    let out = skiff(
        &coord,
        &[
            "cert",
            "add",
            "--cert",
            &path("chain.pem"),
            "--key",
            &path("key.pem"),
        ],
        &[],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("app.example.com, www.example.com") && stdout.contains("serve it now"),
        "{stdout}"
    );

    let out = skiff(&coord, &["cert", "ls", "--json"], &[]).await;
    let (stdout, _) = text(&out);
    assert!(!stdout.contains(&key_line), "keys are never shown");
    let listed: Vec<CertificateView> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].domains, ["app.example.com", "www.example.com"]);
    assert!(listed[0].served);
    let id = listed[0].id.clone();
    let out = skiff(&coord, &["cert", "ls"], &[]).await;
    let (table, _) = text(&out);
    assert!(
        table.starts_with("ID") && table.contains(&id) && table.contains("upload"),
        "{table}"
    );

    // A key that is not the certificate's: bad input, nothing stored.
    let out = skiff(
        &coord,
        &[
            "cert",
            "add",
            "--cert",
            &path("chain.pem"),
            "--key",
            &path("other.pem"),
        ],
        &[],
    )
    .await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does not match"), "{stderr}");
    let out = skiff(
        &coord,
        &[
            "cert",
            "add",
            "--cert",
            &path("missing.pem"),
            "--key",
            &path("key.pem"),
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    let out = skiff(&coord, &["cert", "ls", "--json"], &[]).await;
    let listed: Vec<CertificateView> = serde_json::from_str(&text(&out).0).unwrap();
    assert_eq!(listed.len(), 1);

    let out = skiff(&coord, &["cert", "rm", &id], &[]).await;
    assert!(out.status.success(), "{}", text(&out).1);
    let out = skiff(&coord, &["cert", "rm", &id], &[]).await;
    assert_eq!(out.status.code(), Some(1), "no such certificate any more");
    let log = coord.log();
    assert!(!log.contains(&key_line), "the key is never logged");
}
