//! What an agent reports about the containers it runs: their state and
//! health as the engine and the agent's own checks see them.

use serde::{Deserialize, Serialize};

/// What an agent reports about its containers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedState {
    /// Generation of the plan the host was reconciled to.
    pub plan_generation: u64,
    pub containers: Vec<ContainerStatus>,
    /// The last reconcile error, if the last round failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Images present on the host, by tag and by id; the scheduler prefers
    /// hosts that already have a service's image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// Desired containers the agent could not bring up in its last tries
    /// (pull, create or start), each with the engine's message. A
    /// container is listed until it runs or leaves the plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<ContainerFailure>,
}

impl ObservedState {
    /// The failure reported for the container `key` (`<name>@<revision>`).
    pub fn failure(&self, key: &str) -> Option<&ContainerFailure> {
        self.failures.iter().find(|f| f.key == key)
    }
}

/// A desired container the agent could not bring up, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerFailure {
    /// `<name>@<revision>`, as in [`ContainerSpec::key`](super::ContainerSpec::key).
    pub key: String,
    pub stage: FailureStage,
    /// The engine's message (a failed pull's with the fix, where one is known).
    pub message: String,
}

/// The step at which bringing a container up failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureStage {
    /// Its image is not on the host and could not be pulled.
    Pull,
    /// The engine refused to create it (a bad spec, a name in use).
    Create,
    /// The engine created it but could not start it (a host port in use, a
    /// command or binary that does not exist).
    Start,
    /// A stage this release does not know (a newer agent's).
    #[serde(other)]
    Other,
}

impl FailureStage {
    /// What failed, as a verb phrase: "could not be pulled".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pull => "pull",
            Self::Create => "create",
            Self::Start => "start",
            Self::Other => "other",
        }
    }
}

impl std::fmt::Display for FailureStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A container's address on one of its stack's networks.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContainerAddress {
    /// The stack's name for the network.
    pub network: String,
    /// Its IPv4 address there.
    pub address: String,
}

/// One managed container as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// `<stack>.<service>.<slot>`.
    pub name: String,
    /// `<name>@<revision>`, as in [`ContainerSpec::key`].
    #[serde(default)]
    pub key: String,
    pub id: String,
    pub state: ContainerState,
    /// Set when the container has a health check (Docker's or the agent's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    pub restart_count: u64,
    /// Its addresses on its stack networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<ContainerAddress>,
    /// RFC 3339, as Docker reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// The image the container runs, by engine id (`sha256:...`).
    #[serde(default)]
    pub image_id: String,
    /// Fingerprint of the spec it was created from.
    #[serde(default)]
    pub spec: String,
}

/// A container's state, as the Docker Engine names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    /// A state this release does not know (a newer engine's).
    #[serde(other)]
    Unknown,
}

impl ContainerState {
    /// The engine's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Restarting => "restarting",
            Self::Removing => "removing",
            Self::Exited => "exited",
            Self::Dead => "dead",
            Self::Unknown => "unknown",
        }
    }

    /// From the engine's name; anything else is [`Self::Unknown`].
    pub fn from_engine(s: &str) -> Self {
        match s {
            "created" => Self::Created,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "restarting" => Self::Restarting,
            "removing" => Self::Removing,
            "exited" => Self::Exited,
            "dead" => Self::Dead,
            _ => Self::Unknown,
        }
    }

    /// Exited or dead: it runs again only if its restart policy says so.
    pub fn is_down(self) -> bool {
        matches!(self, Self::Exited | Self::Dead)
    }
}

impl std::fmt::Display for ContainerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A container's health, from its health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No check has passed yet.
    Starting,
    Healthy,
    /// `retries` checks in a row failed.
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        }
    }

    /// From the engine's name; `none` and anything unknown are no health.
    pub fn from_engine(s: &str) -> Option<Self> {
        match s {
            "starting" => Some(Self::Starting),
            "healthy" => Some(Self::Healthy),
            "unhealthy" => Some(Self::Unhealthy),
            _ => None,
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
