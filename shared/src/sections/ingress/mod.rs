//! The `ingress` section: what an edge host serves to the outside.
//!
//! - **Published ports** (Compose `ports` in the default `ingress` mode):
//!   every edge host listens on the port (TCP or UDP) and forwards at
//!   layer 4 to a published replica of the service on any host, over the
//!   cluster network.
//! - **HTTP routes** (`x-skiff.routes`): a domain and a path prefix to a
//!   service's container port, served by the agent's reverse proxy on the
//!   HTTP and HTTPS ports of edge hosts, with certificates delivered by the
//!   coordinator (uploaded, or obtained by ACME; HTTP-01 challenges are
//!   answered by whichever edge host receives them).
//!
//! The endpoints come from the same records as ElasticDNS, at the same
//! generation: a replica is an endpoint once it is running (and healthy
//! when it has a check) and stops being one before it is stopped. The
//! agent reports the generation it serves, and a deploy stops a replica
//! only when every connected host serves a generation without it.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::SectionKind;
pub use super::dns::Protocol;

mod check;

pub use check::{DomainError, check_domain, check_path, domain_matches, routes_overlap};

/// The `ingress` section.
#[derive(Debug, Clone, Copy)]
pub struct Ingress;

impl SectionKind for Ingress {
    const NAME: &'static str = "ingress";
    const CAPABILITY: &'static str = "ingress.v1";
    type Desired = IngressSection;
    type Report = IngressReport;
    type Delivery = CertificatesDelivery;

    fn check_report(report: &IngressReport) -> Result<(), String> {
        report.check()
    }
}

/// What a host serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressSection {
    /// The generation of the records the endpoints come from (the DNS
    /// records' generation): it only grows.
    pub generation: u64,
    /// This host's node name (for `local_first`).
    pub node: String,
    /// Whether this host is an edge host: only edge hosts listen. Every
    /// host is one unless labelled `edge=false`.
    pub edge: bool,
    pub settings: ProxySettings,
    /// Published ports, forwarded at layer 4.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRule>,
    /// HTTP routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// The endpoints of every service a port or route leads to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Backend>,
    /// The certificates to serve (their keys are delivered apart).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateRef>,
    /// ACME HTTP-01 challenges to answer on the HTTP port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub challenges: Vec<Challenge>,
}

/// The proxy's settings, the same on every edge host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxySettings {
    /// Where HTTP routes (and ACME challenges) are served.
    pub http_port: u16,
    /// Where HTTPS routes are served.
    pub https_port: u16,
    /// Whether clients connect through a load balancer that sends the
    /// PROXY protocol (v1 or v2) first: then every connection to the HTTP,
    /// HTTPS and TCP ports must start with it.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// The longest a request may take, head to the end of the answer's
    /// head (a WebSocket or a streaming answer runs on past it).
    pub request_timeout_ms: u64,
    /// How long an idle HTTP client connection (keep-alive, or an
    /// upgraded one with no byte either way) is kept.
    pub idle_timeout_ms: u64,
    /// How long a TCP connection to a published port with no byte either
    /// way is kept (long-lived connections to databases and brokers sit
    /// idle for minutes).
    #[serde(default = "default_tcp_idle_timeout_ms")]
    pub tcp_idle_timeout_ms: u64,
    /// The largest request body (413 past it).
    pub max_body_bytes: u64,
    /// How long a replica that left keeps its requests in flight (and a
    /// TCP connection) before the proxy cuts them.
    pub drain_timeout_ms: u64,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            http_port: 80,
            https_port: 443,
            proxy_protocol: false,
            request_timeout_ms: 60_000,
            idle_timeout_ms: 120_000,
            tcp_idle_timeout_ms: default_tcp_idle_timeout_ms(),
            max_body_bytes: 100 * 1024 * 1024,
            drain_timeout_ms: 30_000,
        }
    }
}

fn default_tcp_idle_timeout_ms() -> u64 {
    3_600_000
}

/// A published port: every edge host listens on `port` and forwards to
/// the service's `target` port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRule {
    pub port: u16,
    pub protocol: Protocol,
    pub stack: String,
    pub service: String,
    pub target: u16,
}

/// How a route's endpoint is chosen for each request (or connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    /// The endpoint with the fewest requests in flight through this proxy.
    LeastConnections,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastConnections => "least_connections",
        }
    }
}

impl std::str::FromStr for Balance {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round_robin" => Ok(Self::RoundRobin),
            "least_connections" => Ok(Self::LeastConnections),
            other => Err(format!(
                "unknown balance {other:?}: use round_robin or least_connections"
            )),
        }
    }
}

/// How a route uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tls {
    /// HTTPS with the certificate that covers the domain (uploaded, or
    /// obtained by ACME when the cluster has it), and plain HTTP too.
    #[default]
    Auto,
    /// HTTPS as with `auto`; plain HTTP requests are redirected to it
    /// (308), except ACME challenges.
    Redirect,
    /// Plain HTTP only.
    Off,
}

impl Tls {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Redirect => "redirect",
            Self::Off => "off",
        }
    }
}

impl std::str::FromStr for Tls {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "redirect" => Ok(Self::Redirect),
            "off" => Ok(Self::Off),
            other => Err(format!("unknown tls {other:?}: use auto, redirect or off")),
        }
    }
}

/// An HTTP route: requests for `domain` whose path starts with `path`
/// go to the service's container `port`. The longest matching path wins;
/// an exact domain wins over a wildcard one (`*.example.com`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub stack: String,
    pub service: String,
    /// Lower case; `*.` first for a wildcard of one label.
    pub domain: String,
    /// Starts with `/`; matches at a segment boundary (`/api` matches
    /// `/api` and `/api/x`, not `/apix`).
    pub path: String,
    pub port: u16,
    #[serde(default)]
    pub tls: Tls,
    #[serde(default)]
    pub balance: Balance,
    /// Endpoints on this host first, when it has any.
    #[serde(default)]
    pub local_first: bool,
}

/// A service's endpoints: its published replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub stack: String,
    pub service: String,
    pub endpoints: Vec<Endpoint>,
}

/// One published replica.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    /// Its cluster address (on its first stack network).
    pub ip: Ipv4Addr,
    /// The node it runs on (its name).
    pub node: String,
    pub slot: u32,
}

/// A certificate to serve, by the id its chain and key are delivered
/// under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRef {
    pub id: String,
    /// The names it covers (lower case, `*.` for wildcards).
    pub domains: Vec<String>,
    /// Hex SHA-256 of the delivered chain's PEM: a delivery that does
    /// not match is not served.
    pub chain_sha256: String,
}

/// An ACME HTTP-01 challenge: `GET /.well-known/acme-challenge/<token>`
/// on the HTTP port answers `key_authorization` (text/plain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub token: String,
    pub key_authorization: String,
}

/// The certificates of an edge host, delivered before its plan; each
/// delivery replaces the ones before.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificatesDelivery {
    pub certificates: Vec<CertificateMaterial>,
}

impl std::fmt::Debug for CertificatesDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.certificates.iter().map(|c| &c.id))
            .finish()
    }
}

/// A certificate chain and its private key, PEM.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateMaterial {
    pub id: String,
    pub chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertificateMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateMaterial")
            .field("id", &self.id)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// What an edge host's proxy reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressReport {
    /// The generation of the endpoints it routes to.
    pub generation: u64,
    /// What it listens on, and what it could not bind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
    /// The ids of the certificates it serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<String>,
    /// The ACME challenge tokens it answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub challenges: Vec<String>,
    /// Why it does not serve all it was asked to, with the fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Counters per route and per published port since the agent started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteStats>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortStats>,
}

/// A listening socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub port: u16,
    pub protocol: Protocol,
    /// Why it is not listening (the port is taken...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The upper bounds (ms) of the latency histogram's buckets; the last
/// bucket counts everything slower.
pub const LATENCY_BUCKETS_MS: [u64; 10] = [1, 2, 5, 10, 25, 50, 100, 250, 1000, 5000];

/// A route's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteStats {
    pub domain: String,
    pub path: String,
    pub requests: u64,
    /// Answers by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub statuses: [u64; 5],
    /// Requests that found no endpoint, or whose endpoint failed (502,
    /// 503, 504 made by the proxy; also counted in `statuses`).
    pub failed: u64,
    /// Requests by latency to the answer's head: one count per bucket of
    /// [`LATENCY_BUCKETS_MS`], then one for slower ones.
    pub latency: Vec<u64>,
}

/// A published port's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStats {
    pub port: u16,
    pub protocol: Protocol,
    /// TCP connections, or UDP sessions (one per client address).
    pub connections: u64,
    /// Connections or datagrams that found no endpoint, or whose endpoint
    /// refused.
    pub failed: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// The most entries of each list in a report.
pub const MAX_REPORTED: usize = 4096;

impl IngressReport {
    /// Trims the report into its bounds.
    #[must_use]
    pub fn fit(mut self) -> Self {
        use crate::bounds::{MAX_REPORT_ERROR_BYTES, MAX_REPORT_STRING_BYTES, truncate};
        if let Some(e) = self.error.as_mut() {
            truncate(e, MAX_REPORT_ERROR_BYTES);
        }
        self.listeners.truncate(MAX_REPORTED);
        for l in &mut self.listeners {
            if let Some(e) = l.error.as_mut() {
                truncate(e, MAX_REPORT_STRING_BYTES);
            }
        }
        self.certificates.truncate(MAX_REPORTED);
        self.challenges.truncate(MAX_REPORTED);
        self.routes.truncate(MAX_REPORTED);
        self.ports.truncate(MAX_REPORTED);
        for s in self
            .certificates
            .iter_mut()
            .chain(self.challenges.iter_mut())
        {
            truncate(s, MAX_REPORT_STRING_BYTES);
        }
        for r in &mut self.routes {
            truncate(&mut r.domain, MAX_REPORT_STRING_BYTES);
            truncate(&mut r.path, MAX_REPORT_STRING_BYTES);
            r.latency.truncate(LATENCY_BUCKETS_MS.len() + 1);
        }
        self
    }

    /// Checks the report's size.
    ///
    /// # Errors
    /// The first thing over its bound, named.
    pub fn check(&self) -> Result<(), String> {
        use crate::bounds::{
            MAX_REPORT_ERROR_BYTES, MAX_REPORT_STRING_BYTES, check_len, check_str,
        };
        check_str(
            "ingress report: error",
            self.error.as_deref().unwrap_or(""),
            MAX_REPORT_ERROR_BYTES,
        )?;
        check_len("ingress report: listeners", &self.listeners, MAX_REPORTED)?;
        check_len(
            "ingress report: certificates",
            &self.certificates,
            MAX_REPORTED,
        )?;
        check_len("ingress report: challenges", &self.challenges, MAX_REPORTED)?;
        check_len("ingress report: routes", &self.routes, MAX_REPORTED)?;
        check_len("ingress report: ports", &self.ports, MAX_REPORTED)?;
        for l in &self.listeners {
            check_str(
                "ingress report: a listener's error",
                l.error.as_deref().unwrap_or(""),
                MAX_REPORT_STRING_BYTES,
            )?;
        }
        for s in self.certificates.iter().chain(&self.challenges) {
            check_str("ingress report: an id", s, MAX_REPORT_STRING_BYTES)?;
        }
        for r in &self.routes {
            check_str(
                "ingress report: a route's domain",
                &r.domain,
                MAX_REPORT_STRING_BYTES,
            )?;
            check_str(
                "ingress report: a route's path",
                &r.path,
                MAX_REPORT_STRING_BYTES,
            )?;
            check_len(
                "ingress report: a route's latency",
                &r.latency,
                LATENCY_BUCKETS_MS.len() + 1,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_and_write_as_written() {
        for b in [Balance::RoundRobin, Balance::LeastConnections] {
            assert_eq!(b.as_str().parse::<Balance>(), Ok(b));
            assert_eq!(
                serde_json::to_value(b).unwrap(),
                serde_json::json!(b.as_str())
            );
        }
        for t in [Tls::Auto, Tls::Redirect, Tls::Off] {
            assert_eq!(t.as_str().parse::<Tls>(), Ok(t));
            assert_eq!(
                serde_json::to_value(t).unwrap(),
                serde_json::json!(t.as_str())
            );
        }
        assert!(
            "random"
                .parse::<Balance>()
                .unwrap_err()
                .contains("least_connections")
        );
        assert!("on".parse::<Tls>().unwrap_err().contains("redirect"));
    }

    #[test]
    fn keys_never_show_in_debug() {
        let d = CertificatesDelivery {
            certificates: vec![CertificateMaterial {
                id: "c1".into(),
                chain_pem: "CHAIN".into(),
                key_pem: "SECRET KEY".into(),
            }],
        };
        let text = format!("{d:?} {:?}", d.certificates[0]);
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("c1"), "{text}");
    }

    #[test]
    fn fit_brings_a_report_into_its_bounds() {
        let report = IngressReport {
            error: Some("x".repeat(100_000)),
            challenges: vec!["t".into(); MAX_REPORTED + 1],
            routes: vec![RouteStats {
                domain: "d".repeat(5000),
                latency: vec![0; 40],
                ..RouteStats::default()
            }],
            ..IngressReport::default()
        };
        assert!(report.check().is_err());
        assert_eq!(report.fit().check(), Ok(()));
    }
}
