//! The `mesh` section: how a host reaches the other hosts' subnets, and
//! what its mesh reports (its public key, its peers' state).

use std::sync::Arc;

use async_trait::async_trait;
use skiff_shared::sections::mesh::{Mesh, MeshReport, MeshSection};
use skiff_shared::workload::ContainerSpec;

use crate::network::ClusterNetwork;

/// Builds each host's `mesh` section from the cluster network's records.
#[derive(Debug, Clone)]
pub struct MeshFeature {
    pub network: Arc<ClusterNetwork>,
}

#[async_trait]
impl super::Section for MeshFeature {
    type Kind = Mesh;

    fn build(&self, node_id: &str, _containers: &[ContainerSpec]) -> Option<MeshSection> {
        self.network.mesh_section(node_id)
    }

    fn report(&self, node_id: &str, report: MeshReport) {
        self.network.report_mesh(node_id, report);
    }
}
