//! The sections of the host plan: one module per agent subsystem, each
//! naming its section, the capability an agent announces to receive it,
//! and the wire types of its desired state, its reports and its
//! deliveries.
//!
//! Adding a subsystem adds one module here and nothing elsewhere in this
//! crate: the link carries sections, reports and deliveries by name as
//! JSON and never looks inside them.

use serde::Serialize;
use serde::de::DeserializeOwned;

pub mod containers;
pub mod dns;
pub mod ingress;
pub mod logs;
pub mod mesh;
pub mod networks;

/// One kind of section.
pub trait SectionKind: Send + Sync + 'static {
    /// The section's name in host plans, reports and deliveries.
    const NAME: &'static str;
    /// The capability an agent announces when it runs this section's
    /// controller; the coordinator sends the section only to such agents.
    const CAPABILITY: &'static str;
    /// The desired state the coordinator sends.
    type Desired: Serialize + DeserializeOwned + Clone + PartialEq + std::fmt::Debug + Send + Sync;
    /// What the agent reports back (the observed state).
    type Report: Serialize + DeserializeOwned + Clone + PartialEq + std::fmt::Debug + Send + Sync;
    /// Values delivered apart from the signed plan, just before it (secret
    /// values, credentials): never stored in the plan, never logged.
    type Delivery: Serialize + DeserializeOwned + std::fmt::Debug + Send;

    /// Checks the size and shape of a report the coordinator received
    /// (lengths of lists and strings, see [`crate::bounds`]); a report that
    /// fails is refused whole and its link closed. None by default.
    ///
    /// # Errors
    /// What is over which bound.
    fn check_report(_report: &Self::Report) -> Result<(), String> {
        Ok(())
    }
}

/// For sections that take no deliveries or send no reports: no value of it
/// exists, so none is ever accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Nothing {}
