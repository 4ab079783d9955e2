use skiff_shared::sections::ingress::{
    CertificateRef, IngressSection, PortRule, Protocol, Route, Tls,
};

use super::check;

fn rule(port: u16, protocol: Protocol) -> PortRule {
    PortRule {
        port,
        protocol,
        stack: "s".into(),
        service: "web".into(),
        target: 8080,
    }
}

fn route(domain: &str, path: &str) -> Route {
    Route {
        stack: "s".into(),
        service: "web".into(),
        domain: domain.into(),
        path: path.into(),
        port: 8080,
        tls: Tls::Auto,
        balance: Default::default(),
        local_first: false,
    }
}

fn with(ports: Vec<PortRule>, routes: Vec<Route>) -> IngressSection {
    IngressSection {
        edge: true,
        ports,
        routes,
        ..IngressSection::default()
    }
}

#[test]
fn a_good_section_passes() {
    let s = with(
        vec![rule(5432, Protocol::Tcp), rule(5432, Protocol::Udp)],
        vec![
            route("app.example.com", "/"),
            route("app.example.com", "/api"),
            route("*.example.com", "/"),
        ],
    );
    assert_eq!(check(&s), Ok(()));
}

#[test]
fn clashing_ports_are_refused_naming_the_port() {
    let e = check(&with(
        vec![rule(5432, Protocol::Tcp), rule(5432, Protocol::Tcp)],
        vec![],
    ))
    .unwrap_err();
    assert!(e.contains("5432") && e.contains("once"), "{e}");
    let e = check(&with(vec![rule(443, Protocol::Tcp)], vec![])).unwrap_err();
    assert!(e.contains("443") && e.contains("HTTP proxy"), "{e}");
    assert_eq!(
        check(&with(vec![rule(443, Protocol::Udp)], vec![])),
        Ok(()),
        "UDP 443 is free"
    );
    let e = check(&with(vec![rule(0, Protocol::Tcp)], vec![])).unwrap_err();
    assert!(e.contains("above 0"), "{e}");
    let mut s = with(vec![], vec![]);
    s.settings.https_port = s.settings.http_port;
    assert!(check(&s).unwrap_err().contains("two ports"));
}

#[test]
fn bad_routes_and_certificates_are_refused() {
    assert!(check(&with(vec![], vec![route("App.example.com", "/")])).is_err());
    assert!(check(&with(vec![], vec![route("app.example.com", "api")])).is_err());
    let e = check(&with(
        vec![],
        vec![route("a.example.com", "/x"), route("a.example.com", "/x")],
    ))
    .unwrap_err();
    assert!(e.contains("a.example.com/x"), "{e}");
    let mut s = with(vec![], vec![]);
    s.certificates.push(CertificateRef {
        id: "c".into(),
        domains: vec!["bad domain".into()],
        chain_sha256: String::new(),
    });
    assert!(check(&s).unwrap_err().contains("certificate c"));
}
