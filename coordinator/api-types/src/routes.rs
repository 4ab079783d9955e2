//! The ingress as the API shows it: `GET /api/v1/routes` (`skiff route
//! ls`): the published ports and HTTP routes every edge host serves, how
//! many endpoints each has, and what each edge host's proxy reports.

use serde::{Deserialize, Serialize};

/// The cluster's ingress.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IngressView {
    /// The ingress runs with the cluster network.
    pub enabled: bool,
    /// The endpoints' generation.
    pub generation: u64,
    pub ports: Vec<PublishedPortView>,
    pub routes: Vec<RouteView>,
    pub edges: Vec<EdgeView>,
}

/// A port served on every edge host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PublishedPortView {
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    pub stack: String,
    pub service: String,
    /// The container port.
    pub target: u16,
    /// Published replicas it forwards to.
    pub endpoints: usize,
    pub connections: u64,
    pub failed: u64,
}

/// An HTTP route.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RouteView {
    pub domain: String,
    pub path: String,
    pub stack: String,
    pub service: String,
    /// The container port.
    pub port: u16,
    /// `auto`, `redirect` or `off`.
    pub tls: String,
    /// `round_robin` or `least_connections`.
    pub balance: String,
    pub local_first: bool,
    /// Published replicas it routes to.
    pub endpoints: usize,
    /// The certificate served for it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Counters summed over the edge hosts.
    pub requests: u64,
    /// Answers by class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub statuses: [u64; 5],
    pub failed: u64,
}

/// What one host's proxy last reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EdgeView {
    pub node: String,
    pub node_id: String,
    pub connected: bool,
    /// Whether it serves the ingress (not labelled `edge=false`).
    pub edge: bool,
    /// The endpoints' generation it routes by.
    pub generation: u64,
    /// Listening sockets, `PORT/PROTOCOL`.
    pub listening: Vec<String>,
    /// Ports it could not listen on, with why.
    pub problems: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub certificates: usize,
    /// When the report arrived (RFC 3339).
    pub reported_at: String,
}
