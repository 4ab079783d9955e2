//! What the agent port refuses: clients without a cluster certificate, a
//! coordinator whose CA does not match the token, malformed and oversized
//! messages (which close only their own connection), hellos over their
//! bounds, and certificate renewals for another key than the node's.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use skiff_api_types::{JoinTokenView, NodeStatus};
use skiff_cli::client::Method;
use skiff_shared::protocol::{
    self, AgentMessage, CoordinatorMessage, Hello, LINK_PATH, PROTOCOL_VERSION,
};
use skiff_tests::cluster::{Agent, Coordinator, CoordinatorOptions, run_join};
use skiff_tests::{launch_cluster, wait_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn ca_of(coord: &Coordinator) -> CertificateDer<'static> {
    let pem = std::fs::read_to_string(coord.data_dir().join("ca.crt")).unwrap();
    skiff_shared::tls::certs_from_pem(&pem, "ca")
        .unwrap()
        .remove(0)
}

/// Opens TLS with ALPN skiff-link/1 and tries the WebSocket upgrade.
async fn try_link(
    coord: &Coordinator,
    client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_of(coord)).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(skiff_shared::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client_cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![protocol::ALPN_LINK.to_vec()];
    let tcp = tokio::net::TcpStream::connect(coord.agent)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let url = format!("wss://{}{LINK_PATH}", coord.agent);
    tokio_tungstenite::client_async(url, tls)
        .await
        .map(|_| ())
        .map_err(|e| format!("ws: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_without_a_cluster_certificate_are_refused_at_tls() {
    let coord = Coordinator::launch(CoordinatorOptions::default())
        .await
        .unwrap();

    let err = try_link(&coord, None).await.unwrap_err();
    assert!(
        err.contains("CertificateRequired") || err.contains("certificate"),
        "{err}"
    );

    // A certificate from another CA, even one naming a real node id.
    let token = coord.create_token(1, None).await.unwrap().token;
    let agent = Agent::join(&coord, &token, "real", &[]).await.unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_ca = ca_params.self_signed(&key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::default();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, agent.node_id());
    let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let chain = vec![leaf.der().clone(), other_ca.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let err = try_link(&coord, Some((chain, key))).await.unwrap_err();
    assert!(
        err.contains("UnknownCA") || err.contains("BadCertificate") || err.contains("DecryptError"),
        "{err}"
    );
    assert!(
        coord
            .nodes()
            .await
            .unwrap()
            .iter()
            .all(|n| n.status == NodeStatus::Disconnected)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_ca_fingerprint_is_refused_before_the_secret_is_sent() {
    let coord = Coordinator::launch(CoordinatorOptions::default())
        .await
        .unwrap();
    let other = Coordinator::launch(CoordinatorOptions::default())
        .await
        .unwrap();
    let real = coord.create_token(1, None).await.unwrap();
    let other_fp = hex::encode(skiff_shared::tls::fingerprint(&ca_of(&other)));
    let mut token: skiff_shared::join::JoinToken = real.token.parse().unwrap();
    hex::decode_to_slice(&other_fp, &mut token.ca_fingerprint).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let out = run_join(
        &coord.agent.to_string(),
        &token.to_string(),
        &dir.path().join("d"),
        "n1",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not match the fingerprint in the join token"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");

    // The coordinator never saw a join request: the token is untouched and nothing was refused.
    let tokens: Vec<JoinTokenView> = coord
        .client()
        .call(Method::GET, "/tokens/join", None::<&()>)
        .await
        .unwrap();
    assert_eq!(tokens[0].uses, 0);
    assert!(!coord.log().contains("Join refused") && !coord.log().contains("Node joined"));
    assert!(!dir.path().join("d").join("node.toml").exists());
}

type RawLink =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens a raw link as the node whose data dir is `dir`, and says hello.
async fn raw_link(agent: &Agent) -> RawLink {
    let mut ws = raw_connect(agent).await;
    let hello = AgentMessage::Hello(Box::new(Hello {
        protocol_versions: vec![PROTOCOL_VERSION],
        agent_version: "raw".into(),
        capabilities: vec![],
        facts: Default::default(),
        plan_generation: None,
    }));
    ws.send(Message::text(protocol::encode(1, None, &hello).unwrap()))
        .await
        .unwrap();
    match ws.next().await {
        Some(Ok(Message::Text(t))) => {
            let env: protocol::Envelope<CoordinatorMessage> = protocol::decode(t.as_str()).unwrap();
            assert!(matches!(env.body, CoordinatorMessage::Welcome(_)));
        }
        other => panic!("expected welcome, got {other:?}"),
    }
    ws
}

/// Opens a raw link as the node whose data dir is `dir`, saying nothing yet.
async fn raw_connect(agent: &Agent) -> RawLink {
    let id = skiff_agent::identity::Identity::load(&agent.data_dir()).unwrap();
    let (chain, key) = id.client_cert().unwrap();
    let config = skiff_shared::tls::link_client_config(id.ca.clone(), chain, key).unwrap();
    let tcp = tokio::net::TcpStream::connect(agent.proxy.addr())
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let (ws, _) =
        tokio_tungstenite::client_async(format!("wss://{}{LINK_PATH}", agent.proxy.addr()), tls)
            .await
            .unwrap();
    ws
}

/// Reads until the connection ends; returns the close code if one came.
async fn closed_with<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
) -> Option<CloseCode> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("the connection was not closed"),
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code),
            Ok(None | Some(Err(_))) => return None,
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_oversized_messages_close_only_their_connection() {
    let cluster = launch_cluster(1, CoordinatorOptions::default())
        .await
        .unwrap();
    let coord = &cluster.coordinator;
    let bystander = cluster.agents[0].node_id();
    let since = coord.node(&bystander).await.unwrap().connected_since;
    let token = coord.create_token(1, None).await.unwrap().token;
    let raw = Agent::join(coord, &token, "raw", &[]).await.unwrap();

    let mut ws = raw_link(&raw).await;
    ws.send(Message::text("this is not an envelope"))
        .await
        .unwrap();
    assert_eq!(closed_with(&mut ws).await, Some(CloseCode::Invalid));

    let mut ws = raw_link(&raw).await;
    ws.send(Message::text(
        "{\"v\":1,\"id\":2,\"body\":{\"type\":\"launch_missiles\"}}",
    ))
    .await
    .unwrap();
    assert_eq!(closed_with(&mut ws).await, Some(CloseCode::Invalid));

    let mut ws = raw_link(&raw).await;
    ws.send(Message::binary(vec![0u8; 16])).await.unwrap();
    assert_eq!(closed_with(&mut ws).await, Some(CloseCode::Unsupported));

    let mut ws = raw_link(&raw).await;
    let huge = format!(
        "{{\"v\":1,\"id\":2,\"body\":{{\"type\":\"heartbeat\",\"pad\":\"{}\"}}}}",
        "x".repeat(9 << 20)
    );
    let _ = ws.send(Message::text(huge)).await;
    let code = closed_with(&mut ws).await;
    assert!(matches!(code, None | Some(CloseCode::Size)), "{code:?}");

    let log = coord.log();
    assert!(
        log.contains("Closing agent link: the agent sent something invalid."),
        "{log}"
    );
    assert!(
        log.contains("message too large") || log.contains("frame"),
        "{log}"
    );
    let node = coord.node(&bystander).await.unwrap();
    assert_eq!(node.status, NodeStatus::Connected);
    assert_eq!(
        node.connected_since, since,
        "the other agent's link was not touched"
    );
    // The coordinator is fine: the raw node can open a good link again.
    let _ws = raw_link(&raw).await;
    coord
        .wait_node(
            &raw.node_id(),
            NodeStatus::Connected,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn links_closed_for_cause_are_counted_and_shown() {
    let cluster = launch_cluster(1, CoordinatorOptions::default())
        .await
        .unwrap();
    let coord = &cluster.coordinator;
    let token = coord.create_token(1, None).await.unwrap().token;
    let raw = Agent::join(coord, &token, "raw", &[]).await.unwrap();
    let counters = || async {
        let view: skiff_api_types::ClusterView = coord
            .client()
            .call(Method::GET, "/cluster", None::<&()>)
            .await
            .unwrap();
        view.link
    };
    let before = counters().await;
    let mut ws = raw_link(&raw).await;
    ws.send(Message::text("this is not an envelope"))
        .await
        .unwrap();
    assert_eq!(closed_with(&mut ws).await, Some(CloseCode::Invalid));
    let mut ws = raw_link(&raw).await;
    ws.send(Message::binary(vec![0u8; 16])).await.unwrap();
    assert_eq!(closed_with(&mut ws).await, Some(CloseCode::Unsupported));
    assert!(
        try_link(coord, None).await.is_err(),
        "no certificate, no link"
    );
    wait_until(
        "the refusals to be counted",
        Duration::from_secs(10),
        || async {
            let now = counters().await;
            now.malformed_total == before.malformed_total + 2
                && now.tls_refused_total == before.tls_refused_total + 1
        },
    )
    .await
    .unwrap();
}

async fn link_counters(coord: &Coordinator) -> skiff_api_types::LinkCounters {
    let view: skiff_api_types::ClusterView = coord
        .client()
        .call(Method::GET, "/cluster", None::<&()>)
        .await
        .unwrap();
    view.link
}

#[tokio::test(flavor = "multi_thread")]
async fn hellos_over_their_bounds_close_the_link_and_nothing_is_stored() {
    let coord = Coordinator::launch(CoordinatorOptions::default())
        .await
        .unwrap();
    let token = coord.create_token(1, None).await.unwrap().token;
    let raw = Agent::join(&coord, &token, "raw", &[]).await.unwrap();
    let joined = coord.node(&raw.node_id()).await.unwrap();
    let before = link_counters(&coord).await;
    let hello = |facts: skiff_shared::protocol::HostFacts| {
        let body = AgentMessage::Hello(Box::new(Hello {
            protocol_versions: vec![PROTOCOL_VERSION],
            agent_version: "oversized".into(),
            capabilities: vec![],
            facts,
            plan_generation: None,
        }));
        Message::text(protocol::encode(1, None, &body).unwrap())
    };

    // 7.6 MB of host facts: under the link's message limit, far over a hello's.
    let mut ws = raw_connect(&raw).await;
    let huge = skiff_shared::protocol::HostFacts {
        hostname: "huge-host".into(),
        extra: [("pad".to_owned(), "x".repeat(7_600_000))].into(),
        ..Default::default()
    };
    send_fragmented(&mut ws, hello(huge)).await;
    assert_eq!(closed_with(&mut ws).await, Some(CloseCode::Size));

    // Small, but with more addresses than a host has.
    let mut ws = raw_connect(&raw).await;
    let many = skiff_shared::protocol::HostFacts {
        hostname: "many-host".into(),
        addresses: vec!["10.0.0.1".into(); 2000],
        ..Default::default()
    };
    ws.send(hello(many)).await.unwrap();
    assert_eq!(closed_with(&mut ws).await, Some(CloseCode::Invalid));

    let log = coord.log();
    assert!(log.contains("over the 65536 allowed"), "{log}");
    assert!(
        log.contains("hello is over its bounds: host facts: addresses has 2000 entries"),
        "{log}"
    );
    wait_until(
        "the refusals to be counted",
        Duration::from_secs(10),
        || async { link_counters(&coord).await.malformed_total == before.malformed_total + 2 },
    )
    .await
    .unwrap();
    // Nothing of either hello was stored.
    let node = coord.node(&raw.node_id()).await.unwrap();
    assert_eq!(node.agent_version, joined.agent_version);
    assert_eq!(node.host.hostname, joined.host.hostname);
    assert_eq!(node.connected_since, None);
    // A hello within bounds still opens the link.
    let _ws = raw_link(&raw).await;
}

/// Sends a text message in fragments of 512 KiB, each under the link's
/// frame limit, as a client that wants a large message through would.
async fn send_fragmented(ws: &mut RawLink, message: Message) {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let Message::Text(text) = message else {
        panic!("a text message")
    };
    let bytes = text.as_bytes();
    let chunks: Vec<&[u8]> = bytes.chunks(512 * 1024).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(chunk.to_vec(), opcode, i + 1 == chunks.len());
        if ws.send(Message::Frame(frame)).await.is_err() {
            return;
        }
    }
}

/// The next answer on a raw link, skipping heartbeats.
async fn next_answer(ws: &mut RawLink) -> Result<CoordinatorMessage, Option<CloseCode>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("no answer from the coordinator"),
            Ok(Some(Ok(Message::Text(t)))) => {
                let env: protocol::Envelope<CoordinatorMessage> =
                    protocol::decode(t.as_str()).unwrap();
                if !matches!(env.body, CoordinatorMessage::Heartbeat(_)) {
                    return Ok(env.body);
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => return Err(frame.map(|f| f.code)),
            Ok(None | Some(Err(_))) => return Err(None),
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn renewal_is_only_for_the_nodes_own_key() {
    let coord = Coordinator::launch(CoordinatorOptions::default())
        .await
        .unwrap();
    let token = coord.create_token(1, None).await.unwrap().token;
    let raw = Agent::join(&coord, &token, "raw", &[]).await.unwrap();
    let id = skiff_agent::identity::Identity::load(&raw.data_dir()).unwrap();
    let expiry = coord
        .node(&raw.node_id())
        .await
        .unwrap()
        .certificate_expires_at;
    let before = link_counters(&coord).await;
    let foreign = || {
        rcgen::CertificateParams::default()
            .serialize_request(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .pem()
            .unwrap()
    };
    let renew = |n: u64, csr_pem: String| {
        Message::text(
            protocol::encode(n, None, &AgentMessage::RenewCertificate { csr_pem }).unwrap(),
        )
    };

    let mut ws = raw_link(&raw).await;
    ws.send(renew(2, foreign())).await.unwrap();
    match next_answer(&mut ws).await {
        Ok(CoordinatorMessage::Ack(ack)) => {
            assert!(!ack.ok);
            let e = ack.error.unwrap_or_default();
            assert!(e.contains("another key than the node's certificate"), "{e}");
        }
        other => panic!("a renewal for another key was not refused: {other:?}"),
    }
    assert_eq!(
        coord
            .node(&raw.node_id())
            .await
            .unwrap()
            .certificate_expires_at,
        expiry,
        "no certificate was issued"
    );

    // The node's own key still renews, on the same link.
    ws.send(renew(3, id.csr().unwrap())).await.unwrap();
    match next_answer(&mut ws).await {
        Ok(CoordinatorMessage::Certificate { cert_pem, .. }) => {
            id.store_cert(&cert_pem)
                .expect("a certificate for this node and key");
        }
        other => panic!("the node's own renewal was refused: {other:?}"),
    }

    // Enough refusals close the link.
    ws.send(renew(4, foreign())).await.unwrap();
    assert!(matches!(
        next_answer(&mut ws).await,
        Ok(CoordinatorMessage::Ack(_))
    ));
    ws.send(renew(5, foreign())).await.unwrap();
    assert_eq!(
        next_answer(&mut ws).await.unwrap_err(),
        Some(CloseCode::Policy)
    );
    let log = coord.log();
    assert!(log.contains("Certificate renewal refused."), "{log}");
    assert!(
        log.contains("3 renewal requests refused on this link"),
        "{log}"
    );
    wait_until(
        "the refusals to be counted",
        Duration::from_secs(10),
        || async {
            link_counters(&coord).await.renewals_refused_total == before.renewals_refused_total + 3
        },
    )
    .await
    .unwrap();
    // The node reconnects with its renewed certificate.
    let _ws = raw_link(&raw).await;
}
