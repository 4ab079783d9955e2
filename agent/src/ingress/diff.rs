//! The ingress controller's one decision: whether to put a new table in
//! force, and which listeners to close and open.

use std::collections::BTreeSet;

use skiff_shared::sections::ingress::{IngressSection, Protocol, Tls};

/// A listening socket the proxy can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Listen {
    /// A published TCP port, forwarded at layer 4.
    Tcp(u16),
    /// A published UDP port.
    Udp(u16),
    /// The HTTP port of the routes (and ACME challenges).
    Http(u16),
    /// The HTTPS port of the routes.
    Https(u16),
}

impl Listen {
    pub fn port(self) -> u16 {
        match self {
            Self::Tcp(p) | Self::Udp(p) | Self::Http(p) | Self::Https(p) => p,
        }
    }

    pub fn protocol(self) -> Protocol {
        match self {
            Self::Udp(_) => Protocol::Udp,
            Self::Tcp(_) | Self::Http(_) | Self::Https(_) => Protocol::Tcp,
        }
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(p) => write!(f, "TCP port {p}"),
            Self::Udp(p) => write!(f, "UDP port {p}"),
            Self::Http(p) => write!(f, "HTTP port {p}"),
            Self::Https(p) => write!(f, "HTTPS port {p}"),
        }
    }
}

/// What is in force now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The section the table in force was made from; `None` before any.
    pub served: Option<IngressSection>,
    /// The certificate store's version the table has.
    pub certs_version: u64,
    /// The store's version now.
    pub certs_available: u64,
    pub listening: BTreeSet<Listen>,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Put the section's table in force (endpoints, rules, routes,
    /// certificates).
    Serve,
    Close(Listen),
    Open(Listen),
}

/// The listeners a section asks for: none unless the host is an edge;
/// its published ports; the HTTP port when it has routes or challenges,
/// the HTTPS port when a route uses TLS.
pub fn wanted(desired: &IngressSection) -> BTreeSet<Listen> {
    let mut out = BTreeSet::new();
    if !desired.edge {
        return out;
    }
    for rule in &desired.ports {
        out.insert(match rule.protocol {
            Protocol::Tcp => Listen::Tcp(rule.port),
            Protocol::Udp => Listen::Udp(rule.port),
        });
    }
    if !desired.routes.is_empty() || !desired.challenges.is_empty() {
        out.insert(Listen::Http(desired.settings.http_port));
    }
    if desired.routes.iter().any(|r| r.tls != Tls::Off) {
        out.insert(Listen::Https(desired.settings.https_port));
    }
    out
}

/// The new table first (a listener opened next serves by it), then the
/// closes (a port that changes role is free again), then the opens.
pub fn diff(desired: &IngressSection, observed: &Observed) -> Vec<Action> {
    let mut actions = Vec::new();
    if observed.served.as_ref() != Some(desired)
        || observed.certs_version != observed.certs_available
    {
        actions.push(Action::Serve);
    }
    let wanted = wanted(desired);
    actions.extend(
        observed
            .listening
            .difference(&wanted)
            .map(|l| Action::Close(*l)),
    );
    actions.extend(
        wanted
            .difference(&observed.listening)
            .map(|l| Action::Open(*l)),
    );
    actions
}

/// Everything to close when there is no section (or it is withdrawn).
pub fn close_all(observed: &Observed) -> Vec<Action> {
    observed
        .listening
        .iter()
        .map(|l| Action::Close(*l))
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use skiff_shared::sections::ingress::{Challenge, PortRule, Route};

    use super::*;

    fn rule(port: u16, protocol: Protocol) -> PortRule {
        PortRule {
            port,
            protocol,
            stack: "s".into(),
            service: "web".into(),
            target: 8080,
        }
    }

    fn route(tls: Tls) -> Route {
        Route {
            stack: "s".into(),
            service: "web".into(),
            domain: "app.example.com".into(),
            path: "/".into(),
            port: 8080,
            tls,
            balance: Default::default(),
            local_first: false,
        }
    }

    fn edge() -> IngressSection {
        IngressSection {
            generation: 4,
            node: "n1".into(),
            edge: true,
            ports: vec![rule(5432, Protocol::Tcp), rule(5432, Protocol::Udp)],
            routes: vec![route(Tls::Auto)],
            ..IngressSection::default()
        }
    }

    fn applied(section: &IngressSection) -> Observed {
        Observed {
            served: Some(section.clone()),
            listening: wanted(section),
            ..Observed::default()
        }
    }

    #[test]
    fn a_first_section_serves_then_opens_every_listener() {
        let actions = diff(&edge(), &Observed::default());
        assert_eq!(
            actions,
            vec![
                Action::Serve,
                Action::Open(Listen::Tcp(5432)),
                Action::Open(Listen::Udp(5432)),
                Action::Open(Listen::Http(80)),
                Action::Open(Listen::Https(443)),
            ]
        );
    }

    #[test]
    fn the_same_section_does_nothing_and_a_new_one_serves_without_touching_listeners() {
        let s = edge();
        assert!(diff(&s, &applied(&s)).is_empty());
        let mut next = s.clone();
        next.generation = 5;
        assert_eq!(diff(&next, &applied(&s)), vec![Action::Serve]);
        // New certificates alone put the table in force again.
        let mut o = applied(&s);
        o.certs_available = 1;
        assert_eq!(diff(&s, &o), vec![Action::Serve]);
    }

    #[test]
    fn a_moved_port_closes_before_it_opens() {
        let s = edge();
        let mut next = s.clone();
        next.settings.https_port = 8443;
        next.ports = vec![rule(5433, Protocol::Tcp)];
        assert_eq!(
            diff(&next, &applied(&s)),
            vec![
                Action::Serve,
                Action::Close(Listen::Tcp(5432)),
                Action::Close(Listen::Udp(5432)),
                Action::Close(Listen::Https(443)),
                Action::Open(Listen::Tcp(5433)),
                Action::Open(Listen::Https(8443)),
            ]
        );
    }

    #[test]
    fn http_listeners_only_for_routes_and_https_only_with_tls() {
        let mut s = edge();
        s.routes.clear();
        assert_eq!(wanted(&s), [Listen::Tcp(5432), Listen::Udp(5432)].into());
        s.challenges.push(Challenge {
            token: "t".into(),
            key_authorization: "k".into(),
        });
        assert!(wanted(&s).contains(&Listen::Http(80)));
        assert!(!wanted(&s).contains(&Listen::Https(443)));
        s.routes.push(route(Tls::Off));
        assert!(!wanted(&s).contains(&Listen::Https(443)));
        s.routes.push(route(Tls::Redirect));
        assert!(wanted(&s).contains(&Listen::Https(443)));
    }

    #[test]
    fn a_host_that_is_not_an_edge_closes_everything_but_still_serves_the_table() {
        let s = edge();
        let mut inner = s.clone();
        inner.edge = false;
        inner.generation = 5;
        let actions = diff(&inner, &applied(&s));
        assert_eq!(
            actions[0],
            Action::Serve,
            "its generation is still reported"
        );
        assert_eq!(actions.len(), 5);
        assert!(actions[1..].iter().all(|a| matches!(a, Action::Close(_))));
        assert_eq!(close_all(&applied(&s)).len(), 4);
    }

    proptest! {
        #[test]
        fn applying_the_diff_reaches_what_is_wanted(
            ports in prop::collection::btree_set((1u16..20, any::<bool>()), 0..6),
            had in prop::collection::btree_set((1u16..20, any::<bool>()), 0..6),
            edge_host in any::<bool>(),
        ) {
            let mut s = edge();
            s.edge = edge_host;
            s.ports = ports.iter().map(|(p, udp)| rule(*p, if *udp { Protocol::Udp } else { Protocol::Tcp })).collect();
            let mut o = Observed {
                listening: had.iter().map(|(p, udp)| if *udp { Listen::Udp(*p) } else { Listen::Tcp(*p) }).collect(),
                ..Observed::default()
            };
            for a in diff(&s, &o) {
                match a {
                    Action::Serve => o.served = Some(s.clone()),
                    Action::Close(l) => prop_assert!(o.listening.remove(&l)),
                    Action::Open(l) => prop_assert!(o.listening.insert(l)),
                }
            }
            prop_assert_eq!(&o.listening, &wanted(&s));
            prop_assert!(diff(&s, &o).is_empty());
        }
    }
}
