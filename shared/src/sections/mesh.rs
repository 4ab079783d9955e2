//! The `mesh` section: how a host reaches the stack networks' subnets on
//! the other hosts. Every host has an address on the mesh (from the
//! cluster range's host block) and one device: a WireGuard tunnel (the
//! default: encrypted; the private key never leaves the host) or a kernel
//! VXLAN device (unencrypted, for networks the team already trusts). Each
//! peer's subnets are routed to it through that device.

use serde::{Deserialize, Serialize};

use super::{Nothing, SectionKind};

/// The `mesh` section.
#[derive(Debug, Clone, Copy)]
pub struct Mesh;

impl SectionKind for Mesh {
    const NAME: &'static str = "mesh";
    const CAPABILITY: &'static str = "mesh.v1";
    type Desired = MeshSection;
    type Report = MeshReport;
    type Delivery = Nothing;

    fn check_report(report: &MeshReport) -> Result<(), String> {
        report.check()
    }
}

/// The most peers a mesh report lists.
pub const MAX_REPORTED_PEERS: usize = 4096;

/// How hosts are joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MeshMode {
    /// WireGuard between every pair of hosts: encrypted. The kernel's where
    /// it has the module, else in the agent over `/dev/net/tun`.
    #[default]
    Wireguard,
    /// Kernel VXLAN: not encrypted; for networks the team trusts.
    Vxlan,
    /// Containers are attached to an existing Weave Net through its HTTP
    /// API; Skiff makes no tunnel of its own.
    Weave,
}

impl MeshMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wireguard => "wireguard",
            Self::Vxlan => "vxlan",
            Self::Weave => "weave",
        }
    }

    /// Bytes each packet's outer headers take (IPv4 underlay): what the
    /// stack networks' MTU leaves for them.
    pub fn overhead(self) -> u32 {
        match self {
            // IPv4 20 + UDP 8 + WireGuard 32.
            Self::Wireguard => 60,
            // IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
            Self::Vxlan => 50,
            Self::Weave => 0,
        }
    }

    /// The UDP port the mesh uses unless the cluster sets one.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Wireguard => 51820,
            Self::Vxlan => 4789,
            // Weave's own data port; Skiff does not listen on it.
            Self::Weave => 6783,
        }
    }

    /// The device the mesh's routes go through, if Skiff makes one.
    pub fn device(self) -> Option<&'static str> {
        match self {
            Self::Wireguard => Some(WIREGUARD_DEVICE),
            Self::Vxlan => Some(VXLAN_DEVICE),
            Self::Weave => None,
        }
    }
}

impl std::fmt::Display for MeshMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MeshMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "wireguard" => Ok(Self::Wireguard),
            "vxlan" => Ok(Self::Vxlan),
            "weave" => Ok(Self::Weave),
            other => Err(format!(
                "unknown mesh {other:?}: use wireguard, vxlan or weave"
            )),
        }
    }
}

/// What the mesh of a host should be.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshSection {
    pub mode: MeshMode,
    /// The cluster range, e.g. `10.66.0.0/16`.
    pub range: String,
    /// This host's address on the mesh with the host block's prefix, e.g.
    /// `10.66.0.7/20`.
    pub address: String,
    /// The UDP port the mesh listens on, on every host.
    pub port: u16,
    /// The mesh device's MTU (the bridges' too): the smallest underlay MTU
    /// in the cluster less the mesh's headers.
    pub mtu: u32,
    pub peers: Vec<MeshPeer>,
}

/// The mesh device with WireGuard.
pub const WIREGUARD_DEVICE: &str = "skw0";
/// The mesh device with VXLAN.
pub const VXLAN_DEVICE: &str = "skv0";
/// The VXLAN network identifier of the mesh.
pub const VXLAN_VNI: u32 = 4242;
/// The underlay MTU assumed until hosts report theirs.
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;

/// Another host of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MeshPeer {
    pub node_id: String,
    /// Its name, for messages.
    pub name: String,
    /// Its underlay address, where its mesh port is reached.
    pub endpoint: String,
    /// Its address on the mesh (no prefix).
    pub address: String,
    /// Its WireGuard public key, base64; none until it reported one (it is
    /// then left out of a WireGuard mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// The subnets it holds, routed to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<String>,
}

/// What a host's mesh reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshReport {
    /// The host's WireGuard public key, base64 (its private key stays on
    /// the host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// What carries the mesh on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implementation: Option<Implementation>,
    /// The MTU of the interface the mesh leaves the host by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerStatus>,
    /// Why the mesh is not (fully) up, if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl MeshReport {
    /// Checks the report's size and shape: bounded lists and strings, and
    /// a public key that is one (32 bytes, base64), since it goes to every
    /// other host.
    ///
    /// # Errors
    /// The first thing wrong, named.
    pub fn check(&self) -> Result<(), String> {
        use crate::bounds::{
            MAX_REPORT_ERROR_BYTES, MAX_REPORT_STRING_BYTES, check_len, check_str,
        };
        if let Some(key) = &self.public_key {
            public_key_bytes(key)?;
        }
        check_str(
            "mesh report: error",
            self.error.as_deref().unwrap_or(""),
            MAX_REPORT_ERROR_BYTES,
        )?;
        check_len("mesh report: peers", &self.peers, MAX_REPORTED_PEERS)?;
        for p in &self.peers {
            check_str(
                "mesh report: a peer's node_id",
                &p.node_id,
                MAX_REPORT_STRING_BYTES,
            )?;
            check_str(
                "mesh report: a peer's error",
                p.error.as_deref().unwrap_or(""),
                MAX_REPORT_STRING_BYTES,
            )?;
        }
        Ok(())
    }
}

/// The 32 bytes of a base64 WireGuard public key.
///
/// # Errors
/// It is not base64, or not 32 bytes.
pub fn public_key_bytes(key: &str) -> Result<[u8; 32], String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes())
        .map_err(|_| "mesh report: the public key is not base64".to_owned())?;
    bytes
        .try_into()
        .map_err(|_| "mesh report: the public key is not 32 bytes".to_owned())
}

/// What carries a host's mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Implementation {
    /// The kernel's WireGuard module.
    KernelWireguard,
    /// WireGuard in the agent, over `/dev/net/tun`.
    UserspaceWireguard,
    /// The kernel's VXLAN.
    Vxlan,
    /// Weave Net, through its HTTP API.
    Weave,
}

impl Implementation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KernelWireguard => "kernel-wireguard",
            Self::UserspaceWireguard => "userspace-wireguard",
            Self::Vxlan => "vxlan",
            Self::Weave => "weave",
        }
    }
}

/// One peer as this host sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node_id: String,
    /// Milliseconds since the last WireGuard handshake with it; none before
    /// the first (or with VXLAN, which has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_age_ms: Option<u64>,
    #[serde(default)]
    pub rx_bytes: u64,
    #[serde(default)]
    pub tx_bytes: u64,
    /// Why it cannot be reached, when that is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
