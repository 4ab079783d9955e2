//! A service's ingress: its published ports in `ingress` mode (served on
//! every edge host, forwarded at layer 4) and its HTTP routes
//! (`x-skiff.routes`, and `x-skiff.domains`, their short form).

use serde::{Deserialize, Serialize};
use skiff_compose::stack::{PortMode, Service};
use skiff_shared::sections::dns::Protocol;
use skiff_shared::sections::ingress::{Balance, Tls};
use skiff_shared::workload::PortSpec;

/// What edge hosts serve for one service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressSettings {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<IngressPort>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteDef>,
}

/// A port published on every edge host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IngressPort {
    pub published: u16,
    pub protocol: Protocol,
    pub target: u16,
}

/// An HTTP route, its container port resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteDef {
    pub domain: String,
    pub path: String,
    pub port: u16,
    pub tls: Tls,
    pub balance: Balance,
    pub local_first: bool,
}

impl IngressSettings {
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty() && self.routes.is_empty()
    }

    /// The service's ingress, and its problems (each naming the fix).
    /// `ports` are its published ports as the container spec has them;
    /// those in ingress mode move here and leave the spec.
    pub fn of(svc: &Service, ports: &mut Vec<PortSpec>) -> (Self, Vec<String>) {
        let mut errors = Vec::new();
        let mut out = Self::default();
        let mut host = Vec::new();
        for (spec, p) in ports
            .drain(..)
            .zip(svc.ports.iter().filter(|p| p.published.is_some()))
        {
            if p.mode == PortMode::Host {
                host.push(spec);
                continue;
            }
            if spec.host_ip.is_some() {
                errors.push(format!(
                    "port {}: a host address needs `mode: host` (ingress ports are served on every address of every edge host)",
                    spec.published
                ));
                continue;
            }
            out.ports.push(IngressPort {
                published: spec.published,
                protocol: match spec.protocol {
                    skiff_shared::workload::Protocol::Tcp => Protocol::Tcp,
                    skiff_shared::workload::Protocol::Udp => Protocol::Udp,
                },
                target: spec.target,
            });
        }
        *ports = host;
        let targets = container_ports(svc);
        let short = svc
            .skiff
            .domains
            .iter()
            .map(|d| skiff_compose::stack::RouteSpec {
                domain: d.clone(),
                path: "/".into(),
                port: None,
                tls: Tls::Auto,
                balance: Balance::RoundRobin,
                local_first: false,
            });
        for r in svc.skiff.routes.iter().cloned().chain(short) {
            let port = match (r.port, targets.as_slice()) {
                (Some(p), _) => p,
                (None, [only]) => *only,
                (None, []) => {
                    errors.push(format!(
                        "route {}{}: the service has no container port to route to; add `port:` to the route",
                        r.domain, r.path
                    ));
                    continue;
                }
                (None, _) => {
                    errors.push(format!(
                        "route {}{}: the service has several container ports; add `port:` to the route",
                        r.domain, r.path
                    ));
                    continue;
                }
            };
            if out
                .routes
                .iter()
                .any(|o| o.domain == r.domain && o.path == r.path)
            {
                errors.push(format!(
                    "route {}{} is given twice (in `routes` and `domains`); keep one",
                    r.domain, r.path
                ));
                continue;
            }
            out.routes.push(RouteDef {
                domain: r.domain,
                path: r.path,
                port,
                tls: r.tls,
                balance: r.balance,
                local_first: r.local_first,
            });
        }
        (out, errors)
    }

    /// Without an ingress (no cluster network), ingress ports are bound
    /// on the hosts that run the replicas, as `mode: host` ports are.
    pub fn into_host_ports(&mut self, ports: &mut Vec<PortSpec>) {
        for p in self.ports.drain(..) {
            ports.push(PortSpec {
                target: p.target,
                published: p.published,
                protocol: match p.protocol {
                    Protocol::Tcp => skiff_shared::workload::Protocol::Tcp,
                    Protocol::Udp => skiff_shared::workload::Protocol::Udp,
                },
                host_ip: None,
            });
        }
    }
}

/// The distinct TCP container ports of `ports` and `expose`.
fn container_ports(svc: &Service) -> Vec<u16> {
    let mut out: Vec<u16> = svc
        .ports
        .iter()
        .filter(|p| p.protocol == skiff_compose::stack::Protocol::Tcp)
        .map(|p| p.target)
        .chain(
            svc.expose
                .iter()
                .filter(|e| e.protocol == skiff_compose::stack::Protocol::Tcp)
                .map(|e| e.port),
        )
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}
