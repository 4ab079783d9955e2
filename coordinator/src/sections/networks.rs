//! The `networks` section: the stack networks a host's containers join.

use skiff_shared::sections::networks::{NetworkSpec, Networks, NetworksSection};
use skiff_shared::workload::ContainerSpec;

/// Builds each host's `networks` section from its containers.
#[derive(Debug, Clone, Copy)]
pub struct NetworksFeature;

impl super::Section for NetworksFeature {
    type Kind = Networks;

    fn build(&self, _node_id: &str, containers: &[ContainerSpec]) -> Option<NetworksSection> {
        let mut networks: Vec<NetworkSpec> = containers
            .iter()
            .flat_map(|c| {
                c.networks
                    .iter()
                    .filter(|n| !n.external)
                    .map(|n| NetworkSpec {
                        stack: c.stack.clone(),
                        name: n.name.clone(),
                        internal: n.internal,
                    })
            })
            .collect();
        networks.sort();
        networks.dedup();
        Some(NetworksSection { networks })
    }
}
