//! The host plan: the complete desired state of one host, one section per
//! agent subsystem (containers, networks; later DNS, proxy, logs, metrics,
//! firewall).
//!
//! The coordinator signs a plan's exact bytes ([`crate::signing`]); the
//! agent verifies them before it parses anything. The envelope below is all
//! the agent's link knows: each section's body is handed, as it is, to the
//! controller that announced the section's capability, which alone knows
//! its type ([`crate::sections`]). Each section has its own generation, so
//! a controller only runs again when its own section changed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sections::SectionKind;

/// The desired state of one host.
///
/// Plans are ordered by `(epoch, generation)`. An agent accepts a plan
/// only if it is later than the last it accepted, or is that same plan
/// byte for byte (sent again after a reconnect): an old signed plan
/// replayed, or another plan under a generation already seen, is refused.
/// A coordinator starts a new epoch each time it starts, later than any
/// before it, so one restored from a backup (whose generations went back)
/// is followed again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostPlan {
    /// The cluster this plan belongs to.
    #[serde(default)]
    pub cluster_id: String,
    /// The coordinator's epoch: it increases with every start.
    #[serde(default)]
    pub epoch: u64,
    /// The node this plan is for; an agent refuses a plan for another node.
    pub node_id: String,
    /// Increases with every change of any section, within an epoch and
    /// across them.
    pub generation: u64,
    /// Coordinator wall clock when the plan was signed, Unix milliseconds.
    pub issued_at_ms: u64,
    /// By section name. Only sections whose capability the agent announced
    /// are sent to it.
    #[serde(default)]
    pub sections: BTreeMap<String, Section>,
}

/// One subsystem's part of a host plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Section {
    /// The host generation at which this section last changed.
    pub generation: u64,
    /// The section's own type, as JSON; see [`crate::sections`].
    pub body: serde_json::Value,
}

impl Section {
    /// A section holding `body` of kind `K`.
    ///
    /// # Errors
    /// When the body cannot be serialised (a map with non-string keys).
    pub fn of<K: SectionKind>(generation: u64, body: &K::Desired) -> serde_json::Result<Self> {
        Ok(Self {
            generation,
            body: serde_json::to_value(body)?,
        })
    }

    /// The body as kind `K`'s desired state.
    ///
    /// # Errors
    /// When the body is not a valid `K::Desired`.
    pub fn parse<K: SectionKind>(&self) -> serde_json::Result<K::Desired> {
        K::Desired::deserialize(&self.body)
    }
}

impl HostPlan {
    /// Where the plan stands in the order plans are accepted in.
    pub fn position(&self) -> (u64, u64) {
        (self.epoch, self.generation)
    }

    /// The section of kind `K`, parsed; `None` when the plan has none.
    ///
    /// # Errors
    /// When the section is present but not a valid `K::Desired`.
    pub fn section<K: SectionKind>(&self) -> serde_json::Result<Option<K::Desired>> {
        self.sections
            .get(K::NAME)
            .map(Section::parse::<K>)
            .transpose()
    }
}
