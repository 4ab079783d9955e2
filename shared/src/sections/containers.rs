//! The `containers` section: the complete set of containers a host should
//! run ([`crate::workload::ContainerSpec`]), what the agent reports about
//! them ([`crate::workload::ObservedState`]), and the values delivered
//! for them apart from the plan (secret values, registry credentials).

use serde::{Deserialize, Serialize};

use super::SectionKind;
use crate::registry::RegistryCredential;
use crate::workload::{ContainerSpec, ObservedState, SecretValue};

/// The `containers` section.
#[derive(Debug, Clone, Copy)]
pub struct Containers;

impl SectionKind for Containers {
    const NAME: &'static str = "containers";
    const CAPABILITY: &'static str = "containers.v1";
    type Desired = ContainersSection;
    type Report = ObservedState;
    type Delivery = ContainersDelivery;

    fn check_report(report: &ObservedState) -> Result<(), String> {
        report.check()
    }
}

/// The containers a host should run: exactly these, and no other container
/// labelled as the agent's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainersSection {
    pub containers: Vec<ContainerSpec>,
}

/// Values the next plan's containers need, sent just before it. Each is
/// complete: it replaces what the agent held of its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ContainersDelivery {
    /// Values of the secrets the containers mount, by file name (the
    /// version's id); the agent mounts one only if it matches the check
    /// value in the signed plan.
    Secrets { values: Vec<SecretValue> },
    /// Credentials for the registries the containers' images come from.
    RegistryAuth { registries: Vec<RegistryCredential> },
}
