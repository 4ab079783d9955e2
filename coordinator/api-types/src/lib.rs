//! The coordinator HTTP API's JSON types (`/api/v1`), shared by the
//! coordinator, which serves them, and its clients: the `skiff` CLI and,
//! later, the web UI. These are the stable, documented shapes that
//! `skiff ... --json` prints; fields are only ever added, never renamed or
//! removed.
//!
//! Layout:
//! - This file: the request and answer bodies, by resource: errors
//!   ([`ApiErrorBody`]), the cluster ([`ClusterView`]), nodes
//!   ([`NodeView`], [`LabelChange`], [`NodeContainersView`]), join tokens
//!   ([`CreateJoinToken`], [`JoinTokenView`]), stacks and their releases,
//!   deploys and replicas ([`DeployRequest`], [`ComposeInputs`], [`DeployView`],
//!   [`StackView`], [`ReleaseView`], [`TaskView`]), secrets
//!   ([`SetSecret`], [`SecretView`]), registry credentials
//!   ([`SetRegistry`], [`RegistryView`]) and the event log ([`Event`]).
//! - [`access`]: API tokens, their roles and stack scopes, and the answer
//!   to `skiff login`.
//! - [`certs`]: TLS certificates for HTTP routes ([`AddCertificate`],
//!   [`CertificateView`]).
//! - [`logs`]: the cluster's log sinks with each host's status
//!   ([`PutSink`], [`SinkView`]) and the lines `skiff logs` streams
//!   ([`LogEntry`]).
//! - [`policy`]: the cluster's container policy: the settings an admin
//!   allows per stack ([`policy::PolicySetting`], parsed the same on both
//!   sides) and its views.
//! - [`validate`]: checks of request fields that both sides run, the client
//!   before it sends and the coordinator before it acts, so that one rule
//!   gives one message.
//!
//! The crate knows nothing of HTTP, the store or the coordinator's
//! internal types: the coordinator converts its rows into these at the API
//! edge. With the `openapi` feature (the coordinator's) every type derives
//! `utoipa::ToSchema` for the OpenAPI document; clients leave it off and do
//! not link utoipa.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod access;
pub mod certs;
pub mod dns;
pub mod logs;
pub mod network;
pub mod policy;
pub mod routes;
pub mod validate;

pub use access::*;
pub use certs::{
    AddCertificate, CertificateRenewal, CertificateSource, CertificateView, RenewCertificate,
};
pub use dns::{DnsHostView, DnsQueryView, DnsRecordView, DnsView};
pub use logs::{LogEntry, PutSink, SinkHostView, SinkView};
pub use network::{
    AddressView, LeaseView, MeshHostView, NetworkProblemView, NetworkView, PeerView,
    StackNetworkView,
};
pub use policy::{PolicyAllowanceView, PolicyChange, PolicyRuleView, PolicyView};
pub use routes::{EdgeView, IngressView, PublishedPortView, RouteView};

/// An error answer: a stable machine-readable `code` and a human `message`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiErrorBody {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Connected,
    Disconnected,
}

impl std::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DiskView {
    pub mount: String,
    pub filesystem: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// What the agent reported about its host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostView {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub disks: Vec<DiskView>,
}

/// A node of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeView {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub status: NodeStatus,
    /// RFC 3339; set while connected.
    pub connected_since: Option<String>,
    /// RFC 3339; the last time the coordinator heard from the agent.
    pub last_seen_at: Option<String>,
    pub joined_at: String,
    pub agent_version: String,
    pub docker_version: Option<String>,
    pub docker_api_version: Option<String>,
    /// The host's interface addresses, as the agent reported them.
    pub addresses: Vec<String>,
    /// The address the agent's connection came from.
    pub remote_addr: Option<String>,
    pub host: HostView,
    /// RFC 3339 expiry of the agent's current client certificate.
    pub certificate_expires_at: String,
    /// Generation of the last plan the agent accepted.
    pub plan_generation: Option<i64>,
    /// Why the agent refused its last plan, if it did.
    pub plan_error: Option<String>,
}

/// Request to create a join token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateJoinToken {
    /// Lifetime, e.g. "30m", "24h" (default: the coordinator's join_token_ttl).
    pub ttl: Option<String>,
    /// How many nodes may join with it (default 1).
    pub uses: Option<u32>,
    /// Node labels the token grants: every node that joins with it gets
    /// them, and a joining host may ask for no label that is not among
    /// them (default: none; labels are then set with `skiff node label`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// A join token, shown in full only in this answer (`Debug` leaves it out).
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedJoinToken {
    pub id: String,
    pub token: String,
    pub expires_at: String,
    pub uses_allowed: i64,
    /// The node labels the token grants.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl std::fmt::Debug for CreatedJoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedJoinToken")
            .field("id", &self.id)
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("uses_allowed", &self.uses_allowed)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JoinTokenStatus {
    Active,
    Expired,
    UsedUp,
    Revoked,
}

impl std::fmt::Display for JoinTokenStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::UsedUp => "used_up",
            Self::Revoked => "revoked",
        })
    }
}

/// A join token as listed (the secret is never shown again).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JoinTokenView {
    pub id: String,
    pub status: JoinTokenStatus,
    pub created_at: String,
    pub expires_at: String,
    pub uses: i64,
    pub uses_allowed: i64,
    /// The node labels the token grants.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Changes to a node's labels.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LabelChange {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Facts about the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterView {
    pub cluster_id: String,
    pub ca_fingerprint: String,
    pub version: String,
    pub nodes_connected: usize,
    /// Agent links closed or refused for cause since the coordinator started.
    #[serde(default)]
    pub link: LinkCounters,
}

/// Agent links closed or refused for cause.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LinkCounters {
    /// Messages that were not valid envelopes or reports.
    pub malformed_total: u64,
    /// Frames or messages over the size limits.
    pub oversized_total: u64,
    /// TLS handshakes on the link refused (no, foreign or revoked certificate).
    pub tls_refused_total: u64,
    /// Join requests refused.
    pub joins_refused_total: u64,
    /// Certificate renewals refused over the link (a CSR for another key
    /// than the node's, an unusable CSR, or renewing too often).
    #[serde(default)]
    pub renewals_refused_total: u64,
}

/// One container on a node, as its agent last reported it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContainerView {
    /// `<stack>.<service>.<slot>`.
    pub name: String,
    pub id: String,
    /// Docker's state: `created`, `running`, `restarting`, `exited`, `dead`, `paused`.
    pub state: String,
    /// `starting`, `healthy` or `unhealthy` when the container has a health check.
    pub health: Option<String>,
    pub restart_count: u64,
    pub started_at: Option<String>,
    pub exit_code: Option<i64>,
    pub ips: Vec<String>,
    /// Its addresses on its stack's networks.
    #[serde(default)]
    pub addresses: Vec<AddressView>,
    pub image_id: String,
}

/// A node's containers as its agent last reported them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeContainersView {
    pub node_id: String,
    /// RFC 3339; when the report arrived. Null if the agent never reported.
    pub reported_at: Option<String>,
    /// The plan generation the host was reconciled to.
    pub plan_generation: Option<u64>,
    /// The agent's last reconcile error, if its last round failed.
    pub error: Option<String>,
    pub containers: Vec<ContainerView>,
}

/// A deploy request: the Compose file as written and what it refers to on
/// the deploying machine. The coordinator parses and checks the file
/// itself, with the same parser as `skiff deploy`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// Refused when set: a parsed stack model, which `skiff` releases
    /// before the coordinator parsed files itself sent.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<serde_json::Value>,
    /// The Compose file's text, kept with the release.
    pub compose: String,
    #[serde(default)]
    pub dry_run: bool,
    /// The variables and files the Compose file uses.
    #[serde(default)]
    pub inputs: ComposeInputs,
}

/// What a Compose file uses from the machine it is deployed from, as
/// `skiff deploy` read it there: enough for the coordinator to parse the
/// file the same way. `Debug` shows names and paths only, since values
/// may be secret.
#[derive(Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ComposeInputs {
    /// The file's name as messages show it (default `compose.yml`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file_name: String,
    /// The directory its relative paths are resolved against, as the
    /// client saw it (default `.`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dir: String,
    /// Variables whose values the file uses: interpolation, `environment:`
    /// entries without a value, `environment:` configs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, String>,
    /// Variables that only have to be set: the `environment:` source of a
    /// secret (its value is uploaded as a secret, never here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variables_set: Vec<String>,
    /// The text of the files the file reads (`env_file:` and `file:`
    /// configs), by path as resolved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// Files that only have to exist: the `file:` source of a secret
    /// (uploaded as a secret, never here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files_present: Vec<String>,
}

impl std::fmt::Debug for ComposeInputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComposeInputs")
            .field("file_name", &self.file_name)
            .field("dir", &self.dir)
            .field("variables", &self.variables.keys().collect::<Vec<_>>())
            .field("variables_set", &self.variables_set)
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .field("files_present", &self.files_present)
            .finish()
    }
}

/// One change of a deploy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepView {
    /// `start`, `stop` or `replace`.
    pub action: String,
    /// `<stack>.<service>.<slot>`.
    pub container: String,
    /// Node name.
    pub node: String,
    pub reason: Option<String>,
}

/// What a deploy did, or would do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeployView {
    /// The new release; null for a dry run.
    pub release: Option<i64>,
    pub steps: Vec<StepView>,
    pub warnings: Vec<String>,
}

/// A stack.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StackView {
    pub name: String,
    pub release: i64,
    pub created_at: String,
    pub updated_at: String,
    /// Replicas the stack should run.
    pub desired: usize,
    /// Replicas running from the current spec.
    pub running: usize,
    /// The latest rolling update since the coordinator started (one it
    /// resumed after a restart included).
    pub rollout: Option<RolloutView>,
}

/// A stack's latest rolling update.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolloutView {
    pub release: i64,
    /// `in_progress`, `completed`, `rolled_back`, `paused`, `superseded` or `failed`.
    pub state: String,
    pub message: String,
    pub replaced: usize,
    pub total: usize,
}

/// Roll a stack back to an earlier release.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The release to restore; default: the one before the current.
    pub to: Option<i64>,
}

/// Set a service's replica count.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    pub replicas: u32,
}

/// A release of a stack.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseView {
    pub number: i64,
    pub created_at: String,
    pub current: bool,
    /// `deploying`, `deployed`, `rolled_back`, `paused` or `failed`.
    pub status: String,
    pub message: Option<String>,
    /// Service name to image.
    pub images: BTreeMap<String, String>,
}

/// One replica of a stack.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskView {
    /// `<stack>.<service>.<slot>`.
    pub name: String,
    pub service: String,
    pub slot: u32,
    pub node: String,
    pub node_id: String,
    pub image: String,
    /// Observed Docker state, `pending` before the agent reported it.
    pub state: String,
    pub health: Option<String>,
    pub restart_count: u64,
    pub ips: Vec<String>,
    /// Its addresses on its stack's networks (with the cluster network,
    /// reachable from the network's members on every host).
    #[serde(default)]
    pub addresses: Vec<AddressView>,
    /// Whether the container runs the current spec.
    pub up_to_date: bool,
    /// Why the host could not create it, such as an image it cannot pull.
    pub error: Option<String>,
    /// Whether every connected host's DNS server and ingress proxy give
    /// this replica (absent when its service has no cluster records, or
    /// from an older coordinator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    /// The exit code of a container that stopped.
    #[serde(default)]
    pub exit_code: Option<i64>,
}

impl TaskView {
    /// Runs the current spec, is healthy (where it has a health check) and
    /// is given by every host's DNS server and proxy (where it has cluster
    /// records), or, a one-shot task, ran it to completion (exit code 0).
    pub fn is_ready(&self) -> bool {
        let running = self.state == "running"
            && self.health.as_deref().is_none_or(|h| h == "healthy")
            && self.serving != Some(false);
        let completed = self.state == "exited" && self.exit_code == Some(0);
        self.up_to_date && (running || completed)
    }
}

/// Set a secret: its value, base64 (`Debug` leaves it out).
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetSecret {
    pub value: String,
}

impl std::fmt::Debug for SetSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SetSecret { value: \"<redacted>\" }")
    }
}

/// A secret as listed: never its value.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretView {
    pub name: String,
    pub version: i64,
    pub created_at: String,
}

/// Set a registry's credentials for image pulls.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetRegistry {
    pub username: String,
    /// The password or access token. Stored sealed; never returned.
    pub password: String,
}

impl std::fmt::Debug for SetRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetRegistry")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A registry's credentials as listed: never the password.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegistryView {
    /// Registry host, normalized: lower case, Docker Hub as `docker.io`.
    pub host: String,
    pub username: String,
    /// When these credentials were set, RFC 3339.
    pub created_at: String,
}

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A release was recorded (deploy, rollback or scale), or a held
    /// replica started after its dependencies.
    Deploy,
    /// A rollout step: a replica updated, or the rollout ended.
    Rollout,
    StackRemoved,
    NodeConnected,
    NodeDisconnected,
    NodeRemoved,
    /// Replicas moved off a host lost past the grace period.
    HostLost,
    RegistryLogin,
    RegistryLogout,
    /// An admin allowed or revoked container policy settings for a stack.
    Policy,
    /// A TLS certificate was added, obtained, removed or is close to
    /// expiry, or obtaining one failed.
    Certificate,
    /// A kind a newer coordinator sends.
    #[serde(other)]
    Other,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deploy => "deploy",
            Self::Rollout => "rollout",
            Self::StackRemoved => "stack_removed",
            Self::NodeConnected => "node_connected",
            Self::NodeDisconnected => "node_disconnected",
            Self::NodeRemoved => "node_removed",
            Self::HostLost => "host_lost",
            Self::RegistryLogin => "registry_login",
            Self::RegistryLogout => "registry_logout",
            Self::Policy => "policy",
            Self::Certificate => "certificate",
            Self::Other => "other",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing that happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// Increasing from 1 since the coordinator started.
    pub id: u64,
    /// RFC 3339.
    pub at: String,
    pub kind: EventKind,
    pub stack: Option<String>,
    pub node: Option<String>,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_leaves_secrets_out() {
        let secret = "hunter2-correct-horse";
        let shown = [
            format!(
                "{:?}",
                SetSecret {
                    value: secret.into()
                }
            ),
            format!(
                "{:?}",
                SetRegistry {
                    username: "bot".into(),
                    password: secret.into(),
                }
            ),
            format!(
                "{:?}",
                CreatedJoinToken {
                    id: "0123456789abcdef".into(),
                    token: secret.into(),
                    expires_at: String::new(),
                    uses_allowed: 1,
                    labels: Default::default(),
                }
            ),
        ];
        for s in shown {
            assert!(s.contains("<redacted>") && !s.contains(secret), "{s}");
        }
    }
}
