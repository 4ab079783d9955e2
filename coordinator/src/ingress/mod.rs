//! The ingress, the coordinator's side: what every edge host serves
//! (published ports in ingress mode and HTTP routes) and to which
//! endpoints, made from the records book (the same records, at the same
//! generation, as ElasticDNS: a replica is an endpoint once it is
//! published and stops being one before it is stopped).
//!
//! The services' ingress settings (ports and routes) are kept in the
//! records book with their DNS settings; [`section`] is the pure function
//! that makes a host's `ingress` section from them.

use std::collections::BTreeMap;

use skiff_shared::sections::ingress::{
    Backend, CertificateRef, Challenge, Endpoint, IngressSection, PortRule, ProxySettings, Route,
};

use crate::deploy::resolve::IngressSettings;
use crate::dns::Records;

mod config;

pub use config::IngressConfig;

/// The node label that takes a host out of the ingress: `edge=false`.
pub const EDGE_LABEL: &str = "edge";

/// What every edge host's section holds besides the records.
#[derive(Debug, Clone)]
pub struct Shared<'a> {
    pub settings: ProxySettings,
    /// Every service's ingress, by (stack, service).
    pub services: &'a BTreeMap<(String, String), IngressSettings>,
    pub certificates: Vec<CertificateRef>,
    pub challenges: Vec<Challenge>,
}

/// A host's `ingress` section.
pub fn section(records: &Records, node_id: &str, shared: &Shared<'_>) -> IngressSection {
    let node = records.nodes.get(node_id).cloned().unwrap_or_default();
    let mut ports = Vec::new();
    let mut routes = Vec::new();
    for ((stack, service), s) in shared.services {
        ports.extend(s.ports.iter().map(|p| PortRule {
            port: p.published,
            protocol: p.protocol,
            stack: stack.clone(),
            service: service.clone(),
            target: p.target,
        }));
        routes.extend(s.routes.iter().map(|r| Route {
            stack: stack.clone(),
            service: service.clone(),
            domain: r.domain.clone(),
            path: r.path.clone(),
            port: r.port,
            tls: r.tls,
            balance: r.balance,
            local_first: r.local_first,
        }));
    }
    ports.sort();
    routes.sort_by(|a, b| (&a.domain, &a.path).cmp(&(&b.domain, &b.path)));
    let backends = records
        .content
        .services
        .iter()
        .filter(|s| {
            shared
                .services
                .get(&(s.stack.clone(), s.service.clone()))
                .is_some_and(|i| !i.is_empty())
        })
        .map(|s| {
            let mut endpoints: Vec<Endpoint> = s
                .replicas
                .iter()
                .filter(|r| r.published)
                .filter_map(|r| {
                    Some(Endpoint {
                        ip: r.addresses.first()?.ip,
                        node: r.node.clone(),
                        slot: r.slot,
                    })
                })
                .collect();
            endpoints.sort();
            Backend {
                stack: s.stack.clone(),
                service: s.service.clone(),
                endpoints,
            }
        })
        .collect();
    IngressSection {
        generation: records.generation,
        node: node.name,
        edge: node.edge,
        settings: shared.settings.clone(),
        ports,
        routes,
        backends,
        certificates: shared.certificates.clone(),
        challenges: shared.challenges.clone(),
    }
}

/// The domains of routes served with TLS: what ACME is asked for.
pub fn tls_domains(
    services: &BTreeMap<(String, String), IngressSettings>,
) -> std::collections::BTreeSet<String> {
    services
        .values()
        .flat_map(|s| &s.routes)
        .filter(|r| r.tls != skiff_shared::sections::ingress::Tls::Off)
        .map(|r| r.domain.clone())
        .collect()
}

/// The ports and routes of other stacks that `defs` of `stack` would
/// take too: each a message naming the other stack and the fix.
pub fn conflicts(
    stack: &str,
    defs: &[crate::deploy::resolve::ServiceDef],
    services: &BTreeMap<(String, String), IngressSettings>,
) -> Vec<String> {
    let mut out = Vec::new();
    for ((other, other_service), s) in services.iter().filter(|((st, _), _)| st != stack) {
        for d in defs {
            for p in &d.ingress.ports {
                if s.ports
                    .iter()
                    .any(|o| o.published == p.published && o.protocol == p.protocol)
                {
                    out.push(format!(
                        "service {}: port {}/{} is already published by stack {other} (service {other_service}); pick another port, or remove it there first",
                        d.name,
                        p.published,
                        protocol(p.protocol)
                    ));
                }
            }
            for r in &d.ingress.routes {
                if s.routes
                    .iter()
                    .any(|o| o.domain == r.domain && o.path == r.path)
                {
                    out.push(format!(
                        "service {}: route {}{} is already taken by stack {other} (service {other_service}); pick another domain or path, or remove it there first",
                        d.name, r.domain, r.path
                    ));
                }
            }
        }
    }
    out
}

fn protocol(p: skiff_shared::sections::dns::Protocol) -> &'static str {
    match p {
        skiff_shared::sections::dns::Protocol::Tcp => "tcp",
        skiff_shared::sections::dns::Protocol::Udp => "udp",
    }
}

#[cfg(test)]
mod tests;
