//! The `networks` section: the stack networks a host's containers join,
//! with their subnets and leases on the cluster network when it is on,
//! and what hosts report about them.

use std::sync::Arc;

use async_trait::async_trait;
use skiff_shared::sections::networks::{NetworkSpec, Networks, NetworksReport, NetworksSection};
use skiff_shared::workload::ContainerSpec;

use crate::network::ClusterNetwork;

/// Builds each host's `networks` section from its containers.
#[derive(Debug, Clone)]
pub struct NetworksFeature {
    /// None: no cluster network; the engine picks each bridge's subnet.
    pub network: Option<Arc<ClusterNetwork>>,
}

#[async_trait]
impl super::Section for NetworksFeature {
    type Kind = Networks;

    fn build(&self, node_id: &str, containers: &[ContainerSpec]) -> Option<NetworksSection> {
        if let Some(network) = &self.network {
            return Some(network.networks_section(node_id, containers));
        }
        let mut networks: Vec<NetworkSpec> = containers
            .iter()
            .flat_map(|c| {
                c.networks
                    .iter()
                    .filter(|n| !n.external)
                    .map(|n| NetworkSpec::local(&c.stack, &n.name, n.internal))
            })
            .collect();
        networks.sort();
        networks.dedup();
        Some(NetworksSection {
            networks,
            cluster: None,
        })
    }

    fn report(&self, node_id: &str, report: NetworksReport) {
        if let Some(network) = &self.network {
            network.report_networks(node_id, report);
        }
    }
}
