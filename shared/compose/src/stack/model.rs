//! The normalized stack model: every Compose shorthand resolved to one
//! typed form, every default of Swarm's filled in, paths made absolute and
//! variables interpolated. Serializable, so a release can record the exact
//! spec it deployed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{serde_duration, serde_opt_duration};

/// A parsed stack file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stack {
    /// The top-level `name:`, if given.
    pub name: Option<String>,
    /// The services, by name.
    pub services: BTreeMap<String, Service>,
    /// Service names in an order that starts every service after the ones
    /// it depends on (ties broken by name).
    pub start_order: Vec<String>,
    /// Top-level `networks:`.
    pub networks: BTreeMap<String, Network>,
    /// Top-level `volumes:`.
    pub volumes: BTreeMap<String, Volume>,
    /// Top-level `secrets:`.
    pub secrets: BTreeMap<String, SecretDef>,
    /// Top-level `configs:`.
    pub configs: BTreeMap<String, ConfigDef>,
    /// Top-level `x-skiff:`.
    pub skiff: SkiffSettings,
}

/// One service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// Image reference, as written (`registry/name:tag` or `@sha256:...`).
    pub image: String,
    /// Replaces the image's `CMD`: an argv list.
    pub command: Option<Vec<String>>,
    /// Replaces the image's `ENTRYPOINT`: an argv list (empty clears it).
    pub entrypoint: Option<Vec<String>>,
    /// The container environment: `env_file` entries in order, then
    /// `environment`, later ones winning.
    pub environment: BTreeMap<String, String>,
    /// Published and container ports, one entry per port (ranges expanded).
    pub ports: Vec<Port>,
    /// Ports exposed to other containers only.
    pub expose: Vec<ExposedPort>,
    /// Mounts: named and anonymous volumes, binds and tmpfs.
    pub volumes: Vec<Mount>,
    /// The health check; `None` keeps the image's.
    pub healthcheck: Option<Healthcheck>,
    /// Services this one waits for, by name.
    pub depends_on: BTreeMap<String, Dependency>,
    /// Container labels.
    pub labels: BTreeMap<String, String>,
    /// Secrets mounted into the container.
    pub secrets: Vec<FileGrant>,
    /// Configs mounted into the container.
    pub configs: Vec<FileGrant>,
    /// Time between the stop signal and SIGKILL (Docker's default: 10 s).
    #[serde(with = "serde_duration")]
    pub stop_grace_period: Duration,
    /// The stop signal, when not the image's.
    pub stop_signal: Option<String>,
    /// The engine's restart policy (`restart:`).
    pub restart: Option<RestartMode>,
    /// `user:` (`uid`, `uid:gid`, `name`).
    pub user: Option<String>,
    /// `working_dir:`.
    pub working_dir: Option<String>,
    /// `hostname:`.
    pub hostname: Option<String>,
    /// Run an init process as PID 1.
    pub init: Option<bool>,
    /// Mount the root filesystem read-only.
    pub read_only: bool,
    /// Extra `/etc/hosts` entries, host name to address.
    pub extra_hosts: BTreeMap<String, String>,
    /// Networks the service joins, by name; empty means the default network.
    pub networks: BTreeMap<String, ServiceNetwork>,
    /// The `deploy:` section, with Swarm's defaults.
    pub deploy: Deploy,
    /// `x-skiff:` on the service.
    pub skiff: SkiffService,
    /// Rights, namespaces and kernel limits beside the engine's defaults
    /// (`cap_add`, `privileged`, `ulimits`, ...). Some are for the cluster's
    /// container policy to allow; the parser only checks how they are
    /// written.
    #[serde(default, skip_serializing_if = "Runtime::is_default")]
    pub runtime: Runtime,
}

/// A service's rights, namespaces and kernel limits, as the Compose keys of
/// the same names give them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    /// `privileged: true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// `cap_add`, upper case without the `CAP_` prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// `cap_drop`, upper case without the `CAP_` prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// `devices`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    /// `device_cgroup_rules`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_cgroup_rules: Vec<String>,
    /// `security_opt`, each as `key=value` (`no-new-privileges=true`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    /// `network_mode: host`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// `pid: host`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_pid: bool,
    /// `uts: host`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_uts: bool,
    /// `ipc:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipc: Option<IpcMode>,
    /// `ulimits`, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<String, Ulimit>,
    /// `sysctls` (namespaced ones only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// `shm_size`, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size_bytes: Option<u64>,
    /// `group_add`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_add: Vec<String>,
}

impl Runtime {
    /// True when no key of the group was given.
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// A host device in the container (`devices:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Absolute path on the server.
    pub source: String,
    /// Absolute path in the container (the source's by default).
    pub target: String,
    /// Cgroup permissions, some of `rwm` (default `rwm`).
    pub permissions: String,
}

/// The IPC namespace (`ipc:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpcMode {
    /// The server's own.
    Host,
    Private,
    Shareable,
    /// No `/dev/shm`.
    None,
}

/// A soft and a hard limit (`ulimits:`); -1 is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub soft: i64,
    pub hard: i64,
}

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The name as written in Compose files.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// How a published port is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortMode {
    /// Swarm's routing mesh: any host forwards to some replica.
    Ingress,
    /// Published on the host that runs the replica only.
    Host,
}

/// One container port and where it is published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Port {
    /// The port inside the container.
    pub target: u16,
    /// The host port; `None` is not published (or an ephemeral port).
    pub published: Option<u16>,
    /// The host address to bind; `None` is every address.
    pub host_ip: Option<IpAddr>,
    pub protocol: Protocol,
    pub mode: PortMode,
    /// `name:` of the long syntax.
    pub name: Option<String>,
    /// `app_protocol:` of the long syntax (`http`, `grpc`, ...).
    pub app_protocol: Option<String>,
}

/// A port exposed to other containers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExposedPort {
    pub port: u16,
    pub protocol: Protocol,
}

/// A mount into the container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Mount {
    /// A named volume (declared at top level) or, without a source, an
    /// anonymous one.
    Volume {
        source: Option<String>,
        target: String,
        read_only: bool,
        nocopy: bool,
    },
    /// A path on the server.
    Bind {
        source: PathBuf,
        target: String,
        read_only: bool,
        create_host_path: bool,
    },
    /// A tmpfs.
    Tmpfs {
        target: String,
        size_bytes: Option<u64>,
        mode: Option<u32>,
    },
}

/// A health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// The test; `None` keeps the image's test (and overrides timings).
    pub test: Option<HealthTest>,
    #[serde(with = "serde_opt_duration")]
    pub interval: Option<Duration>,
    #[serde(with = "serde_opt_duration")]
    pub timeout: Option<Duration>,
    #[serde(with = "serde_opt_duration")]
    pub start_period: Option<Duration>,
    #[serde(with = "serde_opt_duration")]
    pub start_interval: Option<Duration>,
    pub retries: Option<u32>,
}

/// What a health check runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthTest {
    /// Health checking disabled (`disable: true` or `["NONE"]`).
    None,
    /// An argv run directly (`["CMD", ...]`).
    Cmd(Vec<String>),
    /// A command run by `/bin/sh -c` (`["CMD-SHELL", "..."]` or a string).
    CmdShell(String),
}

/// When a dependency counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependsCondition {
    ServiceStarted,
    ServiceHealthy,
    ServiceCompletedSuccessfully,
}

/// One `depends_on` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dependency {
    pub condition: DependsCondition,
    /// Whether the dependency must exist and start (Compose `required`).
    pub required: bool,
    /// Restart this service when the dependency is updated.
    pub restart: bool,
}

/// A secret or config made available to a service as a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileGrant {
    /// The top-level secret or config name.
    pub source: String,
    /// Path in the container (secrets: under `/run/secrets/` unless
    /// absolute; configs: `/<source>` by default).
    pub target: String,
    pub uid: Option<String>,
    pub gid: Option<String>,
    pub mode: Option<u32>,
}

/// The engine restart policy (`restart:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    No,
    Always,
    UnlessStopped,
    OnFailure { max_retries: Option<u32> },
}

/// A service's attachment to a network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceNetwork {
    pub aliases: Vec<String>,
}

/// `deploy:` with Swarm's defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deploy {
    pub mode: DeployMode,
    pub placement: Placement,
    pub resources: Resources,
    pub restart_policy: RestartPolicy,
    pub update_config: UpdateConfig,
    pub rollback_config: UpdateConfig,
    /// Labels on the service (not on its containers).
    pub labels: BTreeMap<String, String>,
}

impl Default for Deploy {
    fn default() -> Self {
        Deploy {
            mode: DeployMode::Replicated { replicas: 1 },
            placement: Placement::default(),
            resources: Resources::default(),
            restart_policy: RestartPolicy::default(),
            update_config: UpdateConfig::update_default(),
            rollback_config: UpdateConfig::rollback_default(),
            labels: BTreeMap::new(),
        }
    }
}

/// How many replicas run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum DeployMode {
    /// `replicas` copies spread over eligible hosts.
    Replicated { replicas: u64 },
    /// One copy on every eligible host.
    Global,
}

/// `deploy.placement`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// Constraint expressions as written (`node.labels.zone == eu`); the
    /// scheduler parses them.
    pub constraints: Vec<String>,
    pub max_replicas_per_node: Option<u64>,
}

/// `deploy.resources`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub limits: ResourceSpec,
    pub reservations: ResourceSpec,
}

/// CPU (in billionths of a CPU), memory (bytes) and process count.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceSpec {
    pub nano_cpus: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
}

/// When Swarm-style restarts happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    None,
    OnFailure,
    Any,
}

/// `deploy.restart_policy`, defaults as Swarm's: condition `any`, delay
/// 5 s, unlimited attempts, no window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    #[serde(with = "serde_duration")]
    pub delay: Duration,
    /// `None` is unlimited.
    pub max_attempts: Option<u64>,
    #[serde(with = "serde_opt_duration")]
    pub window: Option<Duration>,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay: Duration::from_secs(5),
            max_attempts: None,
            window: None,
        }
    }
}

/// What to do when an update (or rollback) fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    Continue,
    Pause,
    Rollback,
}

/// Whether the new replica starts before the old one stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    StopFirst,
    StartFirst,
}

/// `deploy.update_config` or `deploy.rollback_config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Replicas changed at once; 0 is all at once.
    pub parallelism: u64,
    #[serde(with = "serde_duration")]
    pub delay: Duration,
    pub failure_action: FailureAction,
    /// How long a new replica is watched after it turns healthy.
    #[serde(with = "serde_duration")]
    pub monitor: Duration,
    /// Fraction of failed replicas tolerated, 0 to 1.
    pub max_failure_ratio: f64,
    pub order: UpdateOrder,
}

impl UpdateConfig {
    /// Defaults of `update_config`: Swarm's (parallelism 1, no delay,
    /// monitor 5 s, no failures tolerated, stop-first), except
    /// `failure_action`, which is `rollback` because Skiff's deploy design
    /// (issue 3) makes a failed update roll back by itself.
    pub fn update_default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay: Duration::ZERO,
            failure_action: FailureAction::Rollback,
            monitor: Duration::from_secs(5),
            max_failure_ratio: 0.0,
            order: UpdateOrder::StopFirst,
        }
    }

    /// Defaults of `rollback_config`: Swarm's, `failure_action: pause`.
    pub fn rollback_default() -> Self {
        UpdateConfig {
            failure_action: FailureAction::Pause,
            ..Self::update_default()
        }
    }
}

/// A top-level network.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// Created outside the stack; Skiff only attaches to it.
    pub external: bool,
    /// The name on the engine when not derived from the stack.
    pub name: Option<String>,
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
}

/// A top-level volume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    pub external: bool,
    pub name: Option<String>,
    pub driver: Option<String>,
    pub driver_opts: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

/// Where a top-level secret's value comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretSource {
    /// A file beside the stack file (absolute path); read at deploy time.
    File(PathBuf),
    /// An environment variable of the deploying shell, by name.
    Environment(String),
    /// Already stored in Skiff (`skiff secret set`), under this name.
    External(String),
}

/// A top-level secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretDef {
    pub source: SecretSource,
    pub labels: BTreeMap<String, String>,
}

/// Where a top-level config's content comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigSource {
    File(PathBuf),
    Environment(String),
    /// Inline `content:`.
    Content(String),
    External(String),
}

/// A top-level config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigDef {
    pub source: ConfigSource,
    pub labels: BTreeMap<String, String>,
}

/// Top-level `x-skiff:`. Known keys are typed; the rest are kept in
/// `other` (and reported as warnings) so newer settings survive.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SkiffSettings {
    /// `x-skiff.logs.sinks`: where this stack's container output is
    /// shipped instead of the cluster's sinks; `Some(empty)` ships it
    /// nowhere, `None` leaves it to the cluster's sinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_sinks: Option<Vec<skiff_shared::sections::logs::SinkSpec>>,
    pub other: BTreeMap<String, serde_json::Value>,
}

/// Service-level `x-skiff:`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SkiffService {
    /// Host names the edge proxy routes to this service (`/` of each, to
    /// its only container port): a short form of `routes`.
    pub domains: Vec<String>,
    /// `x-skiff.routes`: HTTP routes to this service on edge hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
    /// A check the agent itself runs against every replica.
    pub healthcheck: Option<Probe>,
    /// `x-skiff.dns`: how the service's name is answered (ElasticDNS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsOptions>,
    /// `x-skiff.drain`: how long a replica that left DNS keeps running
    /// before it is stopped, for its connections in flight.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "serde_opt_duration"
    )]
    pub drain: Option<Duration>,
    pub other: BTreeMap<String, serde_json::Value>,
}

/// One of `x-skiff.routes`: requests for `domain` under `path` go to the
/// container `port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// Lower case; `*.` first for a wildcard.
    pub domain: String,
    /// A path prefix, `/` by default.
    pub path: String,
    /// The container port; none: the service's only container port.
    pub port: Option<u16>,
    pub tls: skiff_shared::sections::ingress::Tls,
    pub balance: skiff_shared::sections::ingress::Balance,
    pub local_first: bool,
}

/// `x-skiff.dns`: `policy` and `ttl`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsOptions {
    pub policy: DnsPolicy,
    /// The answers' TTL; none: the default (a few seconds).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "serde_opt_duration"
    )]
    pub ttl: Option<Duration>,
}

/// How a service's name is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsPolicy {
    /// Every healthy replica, rotated on each query.
    #[default]
    RoundRobin,
    /// The asking host's replicas first, then its zone's, then the rest.
    Closest,
    /// The replicas of the asking container's release.
    Version,
}

/// `x-skiff.healthcheck`: an HTTP or TCP check the agent runs from the host
/// against each replica's address, beside any Docker `HEALTHCHECK`. Unlike a
/// Docker check it needs nothing inside the image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// `Some(path)` for HTTP (a 2xx or 3xx answer passes), `None` for TCP
    /// (an accepted connection passes).
    pub http_path: Option<String>,
    pub port: u16,
    #[serde(with = "serde_duration")]
    pub interval: Duration,
    #[serde(with = "serde_duration")]
    pub timeout: Duration,
    /// Consecutive failures that make the replica unhealthy.
    pub retries: u32,
    /// Failures in this time after the start do not count.
    #[serde(with = "serde_duration")]
    pub start_period: Duration,
}
