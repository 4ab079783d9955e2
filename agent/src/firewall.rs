//! The agent's own nftables table, `inet skiff`: the only firewall state
//! the agent writes (besides one tagged rule in Docker's `DOCKER-USER`
//! chain that accepts what this table marks). Two controllers contribute
//! to it: the networks controller (which subnets may talk across hosts,
//! what is masqueraded) and the mesh controller (its device, and who may
//! send to its port). Each change renders the whole table from both parts
//! and replaces it in one `nft -f` transaction; the rest of the host's
//! ruleset is never flushed or touched.

use std::net::Ipv4Addr;

use tokio::sync::Mutex;

/// What the mesh controller contributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshRules {
    /// The mesh device (`skw0`, `skv0`): traffic in from it is checked
    /// against the networks' rules.
    pub device: String,
    /// The mesh's UDP port, and whether only the peers may send to it
    /// (VXLAN, which has no authentication of its own).
    pub port: u16,
    pub peers_only: bool,
    /// The peers' underlay addresses.
    pub peers: Vec<Ipv4Addr>,
}

/// What the networks controller contributes: see its module.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkRules {}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Parts {
    networks: Option<NetworkRules>,
    mesh: Option<MeshRules>,
}

/// Why the table could not be set.
#[derive(Debug, thiserror::Error)]
#[error("setting the nftables table inet skiff failed: {0}")]
pub struct FirewallError(pub String);

/// The table, as both controllers last asked for it.
#[derive(Debug, Default)]
pub struct Firewall {
    parts: Mutex<Parts>,
}

impl Firewall {
    /// The networks' part; none removes it.
    ///
    /// # Errors
    /// `nft` failed; the table is as it was.
    pub async fn set_networks(&self, rules: Option<NetworkRules>) -> Result<(), FirewallError> {
        let mut parts = self.parts.lock().await;
        let mut next = parts.clone();
        next.networks = rules;
        apply(&next).await?;
        *parts = next;
        Ok(())
    }

    /// The mesh's part; none removes it.
    ///
    /// # Errors
    /// `nft` failed; the table is as it was.
    pub async fn set_mesh(&self, rules: Option<MeshRules>) -> Result<(), FirewallError> {
        let mut parts = self.parts.lock().await;
        let mut next = parts.clone();
        next.mesh = rules;
        apply(&next).await?;
        *parts = next;
        Ok(())
    }
}

/// Renders and loads the table (to be written).
async fn apply(_parts: &Parts) -> Result<(), FirewallError> {
    Ok(())
}
