//! The `networks` section: the stack networks a host's containers join,
//! which the agent creates on its host (bridges it labels as its own) and
//! removes once no longer wanted.

use serde::{Deserialize, Serialize};

use super::{Nothing, SectionKind};

/// The `networks` section.
#[derive(Debug, Clone, Copy)]
pub struct Networks;

impl SectionKind for Networks {
    const NAME: &'static str = "networks";
    const CAPABILITY: &'static str = "networks.v1";
    type Desired = NetworksSection;
    type Report = Nothing;
    type Delivery = Nothing;
}

/// The networks a host should have.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworksSection {
    pub networks: Vec<NetworkSpec>,
}

/// One stack network on a host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub stack: String,
    /// The stack's name for it (`default` unless the Compose file names others).
    pub name: String,
    /// No route out of the host's bridge (Compose `internal: true`).
    #[serde(default)]
    pub internal: bool,
}

impl NetworkSpec {
    /// The network's name on a host's engine: unique per node (several
    /// agents may share one engine), readable in `docker network ls`.
    pub fn engine_name(&self, node_id: &str) -> String {
        engine_name(&self.stack, &self.name, node_id)
    }
}

/// The engine name of stack `stack`'s network `name` on node `node_id`.
pub fn engine_name(stack: &str, name: &str, node_id: &str) -> String {
    format!("skiff.{stack}.{name}.{node_id}")
}
