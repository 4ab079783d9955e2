//! The `dns` section: the records of cluster service discovery, which the
//! agent's DNS server answers from (ElasticDNS).
//!
//! The records are the same on every host and carry one cluster-wide
//! generation: the coordinator makes a new one whenever a replica is
//! published (running, and healthy when it has a health check) or
//! unpublished (leaving: before it is stopped), and knows which generation
//! each host serves from its reports. A deploy stops an old replica only
//! once every host reports a generation in which it is gone.
//!
//! Every replica with a cluster address is listed, published or not: the
//! server tells who asks by the query's source address (a container's
//! networks, stack and release), and a replica still starting asks too.
//! Only published replicas are ever given in answers.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{Nothing, SectionKind};

mod answer;
#[cfg(test)]
mod answer_tests;
mod index;

pub use answer::{Answer, QueryKind, Question, Record, RecordData, Records};

/// The `dns` section.
#[derive(Debug, Clone, Copy)]
pub struct Dns;

impl SectionKind for Dns {
    const NAME: &'static str = "dns";
    const CAPABILITY: &'static str = "dns.v1";
    type Desired = DnsSection;
    type Report = DnsReport;
    type Delivery = Nothing;

    fn check_report(report: &DnsReport) -> Result<(), String> {
        report.check()
    }
}

/// The zone Skiff answers for: `SERVICE.STACK.skiff`, `NODE.nodes.skiff`.
pub const ZONE: &str = "skiff";
/// Answers' TTL unless a service sets its own: short, so a replica that
/// leaves is forgotten quickly by clients that cache.
pub const DEFAULT_TTL_SECS: u32 = 5;
/// The port the agent's server listens on.
pub const PORT: u16 = 53;

/// The records a host serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsSection {
    /// The records' generation: the same records have the same generation
    /// on every host, and it only grows.
    pub generation: u64,
    /// This host's node name and zone label (the `closest` policy).
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The addresses the server listens on (port [`PORT`], UDP and TCP):
    /// the gateways of the host's stack networks.
    pub listen: Vec<Ipv4Addr>,
    pub services: Vec<ServiceRecords>,
    pub nodes: Vec<NodeRecord>,
}

/// How the replicas of a name are chosen and ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Every published replica, rotated on each query.
    #[default]
    RoundRobin,
    /// The replicas on the asking host; if none, those on hosts with the
    /// same zone label; if none, every replica.
    Closest,
    /// The replicas of the asking container's release; if none, every
    /// replica.
    Version,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::Closest => "closest",
            Self::Version => "version",
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round_robin" => Ok(Self::RoundRobin),
            "closest" => Ok(Self::Closest),
            "version" => Ok(Self::Version),
            other => Err(format!(
                "unknown DNS policy {other:?}: use round_robin, closest or version"
            )),
        }
    }
}

/// A port's protocol, for SRV records.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// A service's records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecords {
    pub stack: String,
    pub service: String,
    #[serde(default)]
    pub policy: Policy,
    pub ttl_secs: u32,
    /// The ports its containers listen on (SRV records).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRecord>,
    pub replicas: Vec<Replica>,
}

/// A port of a service, for SRV records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRecord {
    pub port: u16,
    pub protocol: Protocol,
}

/// One replica (one container) of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub slot: u32,
    /// The node it runs on, and that node's zone label.
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The stack release its spec came from (the `version` policy).
    pub release: u64,
    /// Its cluster addresses, one per stack network it is on.
    pub addresses: Vec<ReplicaAddress>,
    /// Given in answers: running, healthy when it has a health check, and
    /// not leaving.
    pub published: bool,
}

/// A replica's address on one stack network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaAddress {
    /// The network's cluster-wide id (its bridge is `sk-<id>`).
    pub network: u32,
    pub ip: Ipv4Addr,
}

/// A host, for `NODE.nodes.skiff`: its address on the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub address: Ipv4Addr,
}

/// What the agent's DNS server reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsReport {
    /// The records' generation it answers from.
    pub generation: u64,
    /// The addresses it listens on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listening: Vec<Ipv4Addr>,
    /// Why it does not serve as asked (an address it cannot bind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Counters since the agent started.
    #[serde(default)]
    pub stats: DnsStats,
}

/// The DNS server's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStats {
    pub queries: u64,
    pub forwarded: u64,
    /// Dropped: not a DNS query that could be parsed.
    pub malformed: u64,
    /// Dropped: over the per-source rate.
    pub rate_limited: u64,
    /// Refused: not from a Skiff container or the host.
    pub refused: u64,
}

/// The most listening addresses a DNS report lists.
pub const MAX_REPORTED_LISTEN: usize = 4096;

impl DnsReport {
    /// Trims the report into its bounds.
    #[must_use]
    pub fn fit(mut self) -> Self {
        use crate::bounds::{MAX_REPORT_ERROR_BYTES, truncate};
        if let Some(e) = self.error.as_mut() {
            truncate(e, MAX_REPORT_ERROR_BYTES);
        }
        self.listening.truncate(MAX_REPORTED_LISTEN);
        self
    }

    /// Checks the report's size.
    ///
    /// # Errors
    /// The first thing over its bound, named.
    pub fn check(&self) -> Result<(), String> {
        use crate::bounds::{MAX_REPORT_ERROR_BYTES, check_len, check_str};
        check_str(
            "dns report: error",
            self.error.as_deref().unwrap_or(""),
            MAX_REPORT_ERROR_BYTES,
        )?;
        check_len(
            "dns report: listening",
            &self.listening,
            MAX_REPORTED_LISTEN,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_read_and_write_their_names() {
        for p in [Policy::RoundRobin, Policy::Closest, Policy::Version] {
            assert_eq!(p.as_str().parse::<Policy>(), Ok(p));
            assert_eq!(
                serde_json::to_value(p).unwrap(),
                serde_json::json!(p.as_str())
            );
        }
        assert!("nearest".parse::<Policy>().unwrap_err().contains("closest"));
    }

    #[test]
    fn fit_brings_a_report_into_its_bounds() {
        let report = DnsReport {
            listening: vec![Ipv4Addr::LOCALHOST; MAX_REPORTED_LISTEN + 1],
            error: Some("x".repeat(100_000)),
            ..DnsReport::default()
        };
        assert!(report.check().is_err());
        assert_eq!(report.fit().check(), Ok(()));
    }
}
