//! The cluster network as `GET /api/v1/network` shows it: the range, the
//! mesh, every stack network with its subnet and each host's leases, and
//! every host on the mesh with what it reports about its peers.

use serde::{Deserialize, Serialize};

/// A container's address on one of its stack's networks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddressView {
    /// The stack's name for the network.
    pub network: String,
    pub address: String,
}

/// The cluster network.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkView {
    /// Off: each host's bridges get subnets the engine picks, and
    /// containers reach only their own host.
    pub enabled: bool,
    /// The cluster range, e.g. `10.66.0.0/16`.
    pub range: Option<String>,
    /// The block the hosts' mesh addresses come from.
    pub hosts_block: Option<String>,
    /// `wireguard`, `vxlan` or `weave`.
    pub mesh: Option<String>,
    /// The mesh's UDP port.
    pub port: Option<u16>,
    /// The MTU of the bridges and mesh devices.
    pub mtu: Option<u32>,
    /// The stack networks the caller may see.
    pub networks: Vec<StackNetworkView>,
    pub hosts: Vec<MeshHostView>,
}

/// A stack network across the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StackNetworkView {
    pub stack: String,
    pub name: String,
    /// Its cluster-wide id (its bridge is `sk-<id>` on every host).
    pub id: i64,
    /// Its cluster-wide subnet.
    pub subnet: String,
    /// The pieces of it each host leases.
    pub leases: Vec<LeaseView>,
    /// Hosts that could not make it, and why.
    pub problems: Vec<NetworkProblemView>,
}

/// The leases of a network on one host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseView {
    pub node_id: String,
    pub node: String,
    pub subnets: Vec<String>,
}

/// Why a host could not make a network.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkProblemView {
    pub node_id: String,
    pub node: String,
    pub error: String,
}

/// A host on the mesh.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MeshHostView {
    pub node_id: String,
    pub node: String,
    /// Its address on the mesh.
    pub address: String,
    /// Where the other hosts reach its mesh port.
    pub endpoint: Option<String>,
    /// Its WireGuard public key (base64), once reported.
    pub public_key: Option<String>,
    /// What carries its mesh: `kernel-wireguard`, `userspace-wireguard`,
    /// `vxlan` or `weave`.
    pub implementation: Option<String>,
    /// The MTU of the interface its mesh leaves by.
    pub underlay_mtu: Option<u32>,
    /// Why its mesh is not (fully) up.
    pub error: Option<String>,
    /// Why the host clashes with the cluster range.
    pub conflict: Option<String>,
    /// Why its firewall could not be set.
    pub firewall_error: Option<String>,
    /// Its peers as it sees them.
    pub peers: Vec<PeerView>,
}

/// A peer as one host sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PeerView {
    pub node_id: String,
    pub node: String,
    pub endpoint: Option<String>,
    /// Milliseconds since the last WireGuard handshake; none before the
    /// first (and with VXLAN, which has none).
    pub handshake_age_ms: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub error: Option<String>,
}
