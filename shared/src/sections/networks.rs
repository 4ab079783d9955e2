//! The `networks` section: the stack networks a host's containers join,
//! which the agent creates on its host (bridges it labels as its own) and
//! removes once no longer wanted.
//!
//! With a cluster network ([`ClusterNet`]), each stack network has a
//! cluster-wide id and subnet, and on every host where it has containers
//! it leases one or more pieces of that subnet. The agent creates the
//! network's bridge with the whole subnet (so every member is on-link for
//! the containers, on every network they join) and gives its containers
//! addresses from the host's leases only; the host answers ARP for the
//! other hosts' leases (proxy ARP) and routes them through the mesh. Its
//! firewall lets two addresses talk across hosts only when they are on the
//! same network, and masquerades only traffic leaving the cluster range.

use serde::{Deserialize, Serialize};

use super::{Nothing, SectionKind};

/// The `networks` section.
#[derive(Debug, Clone, Copy)]
pub struct Networks;

impl SectionKind for Networks {
    const NAME: &'static str = "networks";
    const CAPABILITY: &'static str = "networks.v1";
    type Desired = NetworksSection;
    type Report = NetworksReport;
    type Delivery = Nothing;

    fn check_report(report: &NetworksReport) -> Result<(), String> {
        report.check()
    }
}

/// The most problems a networks report lists.
pub const MAX_REPORTED_PROBLEMS: usize = 4096;

/// The networks a host should have.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworksSection {
    pub networks: Vec<NetworkSpec>,
    /// The cluster network; none when it is off (the engine then picks
    /// each bridge's subnet, and containers reach only their own host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterNet>,
}

/// The cluster network, as a host's firewall and bridges need it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNet {
    /// The cluster range, e.g. `10.66.0.0/16`: traffic leaving it is
    /// masqueraded, traffic inside it never.
    pub range: String,
    /// The block of hosts' mesh addresses, e.g. `10.66.0.0/22`: hosts may
    /// reach containers of every network (as Docker lets a host reach its
    /// own containers).
    pub hosts: String,
    /// The bridges' MTU: the smallest underlay MTU in the cluster less the
    /// mesh's headers.
    pub mtu: u32,
    /// How containers join the cluster network: through Skiff's bridges
    /// (the default), or attached to Weave Net.
    #[serde(default, skip_serializing_if = "Attachment::is_bridge")]
    pub attach: Attachment,
}

/// How a host's containers join the cluster network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attachment {
    /// Each stack network is a bridge `sk-<id>` with the network's subnet;
    /// the engine hands out addresses from the host's leases.
    #[default]
    Bridge,
    /// Each stack network is a plain bridge of the engine (local traffic
    /// and the way out), and every container is also attached to Weave
    /// Net's `weave` bridge with an address of the network's subnet that
    /// Weave's IPAM allocates (cluster-wide): mesh mode `weave`.
    Weave,
}

impl Attachment {
    pub fn is_bridge(&self) -> bool {
        *self == Self::Bridge
    }
}

/// One stack network on a host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub stack: String,
    /// The stack's name for it (`default` unless the Compose file names others).
    pub name: String,
    /// No traffic out of the network (Compose `internal: true`); with a
    /// cluster network its members still reach each other across hosts.
    #[serde(default)]
    pub internal: bool,
    /// The network's cluster-wide id (its bridge is `sk-<id>`); 0 without
    /// a cluster network.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: u32,
    /// The network's cluster-wide subnet, e.g. `10.66.8.0/22`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// The pieces of `subnet` this host leases, e.g. `10.66.8.64/26`: its
    /// containers get addresses from these only. Never empty with a subnet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<String>,
    /// The bridge's address on this host: the first address of the first
    /// lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl NetworkSpec {
    /// A network without a cluster network (no id, no subnet).
    pub fn local(stack: &str, name: &str, internal: bool) -> Self {
        Self {
            stack: stack.to_owned(),
            name: name.to_owned(),
            internal,
            id: 0,
            subnet: None,
            leases: Vec::new(),
            gateway: None,
        }
    }

    /// The network's name on a host's engine: unique per node (several
    /// agents may share one engine), readable in `docker network ls`.
    pub fn engine_name(&self, node_id: &str) -> String {
        engine_name(&self.stack, &self.name, node_id)
    }

    /// The Linux name of its bridge on the cluster network (at most 15
    /// bytes), none without one.
    pub fn bridge_name(&self) -> Option<String> {
        (self.id != 0).then(|| format!("{BRIDGE_PREFIX}{}", self.id))
    }
}

/// Bridges of the cluster network are `sk-<id>`.
pub const BRIDGE_PREFIX: &str = "sk-";

/// The engine name of stack `stack`'s network `name` on node `node_id`.
pub fn engine_name(stack: &str, name: &str, node_id: &str) -> String {
    format!("skiff.{stack}.{name}.{node_id}")
}

/// What a host's networks controller reports: the networks it could not
/// make as asked, and its firewall's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworksReport {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<NetworkProblem>,
    /// Why the firewall could not be set, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall_error: Option<String>,
}

/// A network the host could not make as asked, and why (e.g. its subnet
/// overlaps a network or route the host already has).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkProblem {
    pub stack: String,
    pub name: String,
    pub error: String,
}

impl NetworksReport {
    /// Trims the report into its bounds: errors cut, the problems list
    /// shortened (networks and stacks are names the plan gave).
    #[must_use]
    pub fn fit(mut self) -> Self {
        use crate::bounds::{MAX_REPORT_ERROR_BYTES, MAX_REPORT_STRING_BYTES, truncate};
        if let Some(e) = self.firewall_error.as_mut() {
            truncate(e, MAX_REPORT_ERROR_BYTES);
        }
        self.problems.truncate(MAX_REPORTED_PROBLEMS);
        for p in &mut self.problems {
            truncate(&mut p.error, MAX_REPORT_STRING_BYTES);
        }
        self
    }

    /// Checks the report's size: bounded lists and strings.
    ///
    /// # Errors
    /// The first thing over its bound, named.
    pub fn check(&self) -> Result<(), String> {
        use crate::bounds::{
            MAX_REPORT_ERROR_BYTES, MAX_REPORT_STRING_BYTES, check_len, check_str,
        };
        check_str(
            "networks report: firewall_error",
            self.firewall_error.as_deref().unwrap_or(""),
            MAX_REPORT_ERROR_BYTES,
        )?;
        check_len(
            "networks report: problems",
            &self.problems,
            MAX_REPORTED_PROBLEMS,
        )?;
        for p in &self.problems {
            check_str(
                "networks report: a stack",
                &p.stack,
                MAX_REPORT_STRING_BYTES,
            )?;
            check_str(
                "networks report: a network",
                &p.name,
                MAX_REPORT_STRING_BYTES,
            )?;
            check_str(
                "networks report: an error",
                &p.error,
                MAX_REPORT_STRING_BYTES,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_brings_a_report_into_its_bounds() {
        let problem = NetworkProblem {
            stack: "s".into(),
            name: "n".into(),
            error: "é".repeat(2000),
        };
        let report = NetworksReport {
            problems: vec![problem; MAX_REPORTED_PROBLEMS + 1],
            firewall_error: Some("x".repeat(100_000)),
        };
        assert!(report.check().is_err());
        let fitted = report.fit();
        assert_eq!(fitted.check(), Ok(()));
        assert_eq!(fitted.problems.len(), MAX_REPORTED_PROBLEMS);
    }
}
