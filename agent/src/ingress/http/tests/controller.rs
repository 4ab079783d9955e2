//! The proxy as the ingress controller runs it: a section with routes and
//! a delivered certificate, published through the supervisor's router;
//! requests through the HTTP and HTTPS ports it opens.

use crate::test_support::free_port;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use skiff_shared::plan::{HostPlan, Section};
use skiff_shared::protocol::SectionMessage;
use skiff_shared::sections::ingress::{
    CertificateRef, CertificatesDelivery, Ingress, IngressReport, IngressSection,
};
use skiff_shared::tasks::TaskTree;
use tokio::net::TcpStream;

use super::harness::{Upstream, backend, read, route, section, send, tls_client};
use crate::ingress::{Controller, IngressOptions};
use crate::supervisor::{Router, Supervisor};

const LO: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const ENDPOINT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);

fn publish(router: &Router, generation: u64, s: &IngressSection) {
    let mut sections = BTreeMap::new();
    sections.insert(
        "ingress".to_owned(),
        Section::of::<Ingress>(generation, s).unwrap(),
    );
    let plan = HostPlan {
        cluster_id: "c".into(),
        epoch: 1,
        node_id: "n1".into(),
        generation,
        issued_at_ms: 0,
        sections,
    };
    for step in router.prepare(&plan).unwrap() {
        step();
    }
}

async fn report(router: &Router, cond: impl Fn(&IngressReport) -> bool) -> IngressReport {
    let wait = async {
        loop {
            let changed = router.reports().changed();
            for (_, body) in router.reports().take(|n| n == "ingress") {
                let r: IngressReport = serde_json::from_value(body).unwrap();
                if cond(&r) {
                    return r;
                }
            }
            changed.await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("an ingress report in time")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_controller_serves_routes_and_certificates_through_the_proxy() {
    let mut up = Upstream::start("app", ENDPOINT, 0).await;
    let mut s = section(
        7,
        vec![route("app.example.com", "/", "app", up.addr.port())],
        vec![backend("app", &[ENDPOINT])],
    );
    s.settings.http_port = free_port();
    s.settings.https_port = free_port();
    let cert = rcgen::generate_simple_self_signed(vec!["app.example.com".to_owned()]).unwrap();
    let chain = cert.cert.pem();
    s.certificates = vec![CertificateRef {
        id: "app".into(),
        domains: vec!["app.example.com".into()],
        chain_sha256: hex::encode(skiff_shared::sha256(chain.as_bytes())),
    }];

    let tmp = tempfile::tempdir().unwrap();
    let tree = TaskTree::root();
    let mut sup = Supervisor::new(tree.child());
    sup.add(Controller::new(
        tmp.path(),
        IngressOptions {
            bind: IpAddr::V4(LO),
            ..IngressOptions::default()
        },
    ));
    let router = sup.router();
    let delivery = CertificatesDelivery {
        certificates: vec![crate::ingress::certs::material(
            "app",
            chain,
            cert.signing_key.serialize_pem(),
        )],
    };
    router
        .deliver(SectionMessage {
            section: "ingress".into(),
            body: serde_json::to_value(&delivery).unwrap(),
        })
        .unwrap();
    publish(&router, 1, &s);
    let r = report(&router, |r| r.generation == 7).await;
    assert_eq!(r.certificates, vec!["app"], "{:?}", r.error);
    assert_eq!(r.routes.len(), 1, "the route's counters are reported");

    // Once the generation is reported, requests are routed by it.
    let http = (LO, s.settings.http_port).into();
    let answer = send(http, super::harness::get("app.example.com", "/hello")).await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (StatusCode::OK, "app")
    );
    assert_eq!(up.next().await.path, "/hello");

    let tcp = TcpStream::connect((LO, s.settings.https_port))
        .await
        .unwrap();
    let der = cert.cert.der().clone();
    let name = rustls::pki_types::ServerName::try_from("app.example.com").unwrap();
    let tls = tls_client(&[der], &[b"http/1.1"])
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/secure")
        .header("host", "app.example.com")
        .body(Full::<Bytes>::default())
        .unwrap();
    let answer = read(sender.send_request(req).await.unwrap()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(up.next().await.headers["x-forwarded-proto"], "https");

    tree.cancel();
    tree.wait().await;
}
