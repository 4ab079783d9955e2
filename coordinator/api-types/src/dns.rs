//! ElasticDNS as the API shows it: `GET /api/v1/dns` (the records'
//! generation and what each host's server serves) and
//! `GET /api/v1/dns/query` (what a name gets, asked from a container).

use serde::{Deserialize, Serialize};

/// The cluster's DNS.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DnsView {
    /// DNS runs with the cluster network.
    pub enabled: bool,
    /// The current records' generation.
    pub generation: u64,
    pub hosts: Vec<DnsHostView>,
}

/// What one host's DNS server last reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DnsHostView {
    pub node: String,
    pub node_id: String,
    pub connected: bool,
    /// The generation it serves.
    pub generation: u64,
    pub listening: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub queries: u64,
    pub forwarded: u64,
    pub malformed: u64,
    pub rate_limited: u64,
    pub refused: u64,
    /// When the report arrived (RFC 3339).
    pub reported_at: String,
}

/// What a name gets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DnsQueryView {
    pub name: String,
    /// `A` or `SRV`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The replica asking (`STACK.SERVICE.N`); none: the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The host whose records answered.
    pub node: String,
    /// The records' generation.
    pub generation: u64,
    /// `records`, `nodata`, `nxdomain`, `forward` (not a cluster name:
    /// the host's resolvers answer it) or `refused`.
    pub outcome: String,
    pub records: Vec<DnsRecordView>,
}

/// One record of an answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DnsRecordView {
    pub name: String,
    pub ttl: u32,
    /// `A` or `SRV`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The address (A), or `PRIORITY WEIGHT PORT TARGET` (SRV).
    pub data: String,
    /// SRV: the target's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}
