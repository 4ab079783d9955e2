//! The cluster network's part of the store: stack networks' ids, the
//! subnets they lease on hosts, and the hosts' mesh addresses and keys.

use async_trait::async_trait;

use super::Result;

/// A stack network with a cluster-wide id and subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNetworkRow {
    pub id: i64,
    pub stack: String,
    pub name: String,
    pub subnet: String,
}

/// A piece of a network's subnet a host leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub network_id: i64,
    pub node_id: String,
    pub subnet: String,
}

/// A host's place on the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshHostRow {
    pub node_id: String,
    pub address: String,
    /// Its WireGuard public key, once it reported one.
    pub public_key: Option<String>,
    /// The MTU of the interface its mesh leaves by, once reported.
    pub underlay_mtu: Option<u32>,
}

/// The cluster network's records.
#[async_trait]
pub trait NetworkStore: Send + Sync {
    async fn cluster_networks(&self) -> Result<Vec<ClusterNetworkRow>>;
    /// Records a network with its subnet; returns its new id. A network
    /// already recorded, or a subnet already taken, is refused.
    async fn add_cluster_network(
        &self,
        stack: &str,
        name: &str,
        subnet: &str,
        now: i64,
    ) -> Result<i64>;
    /// Forgets a network and its leases.
    async fn remove_cluster_network(&self, id: i64) -> Result<()>;
    async fn leases(&self) -> Result<Vec<LeaseRow>>;
    /// Records one more lease. A subnet already leased is refused.
    async fn add_lease(&self, lease: &LeaseRow, now: i64) -> Result<()>;
    /// Ends every lease of the network on the host.
    async fn remove_leases(&self, network_id: i64, node_id: &str) -> Result<()>;
    async fn mesh_hosts(&self) -> Result<Vec<MeshHostRow>>;
    async fn put_mesh_host(&self, host: &MeshHostRow, now: i64) -> Result<()>;
    async fn remove_mesh_host(&self, node_id: &str) -> Result<()>;
}
