//! Joining safely: the token is checked before the certificate request is
//! read, labels come from the token, and `skiff-agent join` is bounded in
//! time and in the size of the answer it reads.

use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use skiff_api_types::{JoinTokenView, NodeStatus};
use skiff_cli::client::Method;
use skiff_shared::join::{ErrorBody, JOIN_PATH, JoinToken};
use skiff_tests::cluster::{Coordinator, CoordinatorOptions, run_join};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api_cli::skiff;

/// Posts `body` to the coordinator's join endpoint over TLS pinned to the
/// CA in `token`, as an agent would; returns the status and error body.
async fn post_join(
    coord: &Coordinator,
    token: &JoinToken,
    body: &serde_json::Value,
) -> (u16, ErrorBody) {
    let (mut config, _) = skiff_shared::tls::join_client_config(token.ca_fingerprint).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(coord.agent).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            skiff_shared::tls::server_name_of(&coord.agent.to_string()).unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let exchange = async {
        let req = hyper::Request::post(JOIN_PATH)
            .header(hyper::header::HOST, coord.agent.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    };
    tokio::select! {
        r = exchange => r,
        c = conn => panic!("the connection ended first: {c:?}"),
    }
}

async fn tokens(coord: &Coordinator) -> Vec<JoinTokenView> {
    coord
        .client()
        .call(Method::GET, "/tokens/join", None::<&()>)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_token_is_refused_before_the_certificate_request_is_read() {
    let coord = Coordinator::launch(CoordinatorOptions::default())
        .await
        .unwrap();
    let created = coord.create_token(1, None).await.unwrap();
    let good: JoinToken = created.token.parse().unwrap();
    let request = |secret: &str, csr: &str| {
        serde_json::json!({
            "token_id": good.id,
            "secret": secret,
            "csr_pem": csr,
            "name": "n1",
            "facts": {"hostname": "h", "os": "", "kernel": "", "arch": "", "cpus": 1, "memory_bytes": 1},
        })
    };

    // A wrong secret with a garbage CSR: refused for the token.
    let (status, err) = post_join(&coord, &good, &request(&"0".repeat(40), "not a CSR")).await;
    assert_eq!(status, 403, "{err:?}");
    assert_eq!(err.code, "join_refused", "{err:?}");
    assert!(
        err.message
            .contains("join token is unknown or its secret is wrong"),
        "{err:?}"
    );
    // A revoked token, likewise.
    let revoked = coord.create_token(1, None).await.unwrap();
    coord
        .client()
        .call::<JoinTokenView>(
            Method::DELETE,
            &format!("/tokens/join/{}", revoked.id),
            None::<&()>,
        )
        .await
        .unwrap();
    let revoked: JoinToken = revoked.token.parse().unwrap();
    let mut body = request(&revoked.secret, "not a CSR");
    body["token_id"] = revoked.id.clone().into();
    let (status, err) = post_join(&coord, &revoked, &body).await;
    assert_eq!(
        (status, err.code.as_str()),
        (403, "join_refused"),
        "{err:?}"
    );
    assert!(err.message.contains("revoked"), "{err:?}");

    // Nothing was signed or stored, and the good token is untouched.
    assert!(coord.nodes().await.unwrap().is_empty());
    let all = tokens(&coord).await;
    assert!(all.iter().all(|t| t.uses == 0), "{all:?}");
    let log = coord.log();
    assert!(
        !log.contains("invalid_csr") && !log.contains("certificate signing request"),
        "{log}"
    );

    // With the right secret, the CSR is what is refused, and the token is not used.
    let (status, err) = post_join(&coord, &good, &request(&good.secret, "not a CSR")).await;
    assert_eq!((status, err.code.as_str()), (400, "invalid_csr"), "{err:?}");
    assert!(tokens(&coord).await.iter().all(|t| t.uses == 0));
    assert!(coord.nodes().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_gets_the_labels_its_token_grants_and_no_other() {
    let coord = Coordinator::launch(CoordinatorOptions::default())
        .await
        .unwrap();
    let out = skiff(
        &coord,
        &[
            "token", "create", "--uses", "3", "--label", "zone=eu", "--label", "tier=web",
        ],
        &[],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let out = skiff(&coord, &["token", "ls"], &[]).await;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(table.lines().next().unwrap().contains("LABELS"), "{table}");
    assert!(table.contains("tier=web,zone=eu"), "{table}");
    let listed = tokens(&coord).await;
    assert_eq!(listed[0].labels.get("zone").map(String::as_str), Some("eu"));
    let out = skiff(&coord, &["token", "create", "--label", "bad key=1"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --label"));

    let dir = tempfile::tempdir().unwrap();
    let join = |data: &str, name: &'static str, labels: &'static [&'static str]| {
        let data = dir.path().join(data);
        let addr = coord.agent.to_string();
        let token = token.clone();
        async move {
            let out = run_join(&addr, &token, &data, name, labels).await.unwrap();
            (out, data)
        }
    };

    // Asking for a label the token does not grant, or another value: refused, naming it.
    for (labels, named) in [
        (&["role=edge"] as &'static [&'static str], "role=edge"),
        (&["zone=us"], "zone=us"),
    ] {
        let (out, data) = join("refused", "n0", labels).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{stderr}");
        assert!(
            stderr.contains(&format!("label {named} is not granted by this join token"))
                && stderr.contains(&format!("skiff token create --label {named}"))
                && stderr.contains(&format!("skiff node label n0 {named}")),
            "{stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(!data.join("node.toml").exists());
    }
    assert!(coord.nodes().await.unwrap().is_empty());
    assert!(tokens(&coord).await.iter().all(|t| t.uses == 0));

    // Asking for some of the granted labels, or none: the node gets all of them.
    let (out, _) = join("a", "n1", &["zone=eu"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (out, _) = join("b", "n2", &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["n1", "n2"] {
        let node = coord.node(name).await.unwrap();
        assert_eq!(node.status, NodeStatus::Disconnected);
        assert_eq!(
            node.labels,
            [
                ("tier".to_owned(), "web".to_owned()),
                ("zone".to_owned(), "eu".to_owned())
            ]
            .into(),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn join_against_a_server_that_never_answers_ends_with_a_clear_error() {
    // Accepts connections and holds them, saying nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let token = JoinToken::generate([7u8; 32]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = run_join(
        &addr.to_string(),
        &token.to_string(),
        &dir.path().join("d"),
        "n1",
        &[],
    )
    .await
    .expect("skiff-agent join ended by its own deadline");
    silent.abort();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("the TLS handshake did not finish within"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(!dir.path().join("d").join("node.toml").exists());
}

/// A TLS server with its own CA that answers every request with an
/// endless chunked body; returns its address and a token pinned to its CA.
async fn endless_server() -> (std::net::SocketAddr, JoinToken, tokio::task::JoinHandle<()>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::default();
    leaf.subject_alt_names = vec![rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap())];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone(), ca.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(skiff_shared::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                // The request's head, then an answer that never ends.
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                if tls.write_all(head).await.is_err() {
                    return;
                }
                let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
                while tls.write_all(chunk.as_bytes()).await.is_ok() {}
            });
        }
    });
    let mut token = JoinToken::generate([0u8; 32]).unwrap();
    token.ca_fingerprint = skiff_shared::tls::fingerprint(ca.der());
    (addr, token, server)
}

#[tokio::test(flavor = "multi_thread")]
async fn join_against_an_endless_answer_ends_with_a_clear_error() {
    let (addr, token, server) = endless_server().await;
    let dir = tempfile::tempdir().unwrap();
    let out = run_join(
        &addr.to_string(),
        &token.to_string(),
        &dir.path().join("d"),
        "n1",
        &[],
    )
    .await
    .expect("skiff-agent join ended by its own deadline");
    server.abort();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("its answer is larger than 1 MiB"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(!dir.path().join("d").join("node.toml").exists());
}
