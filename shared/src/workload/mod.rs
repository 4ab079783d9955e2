//! What a host should run: the container specs a plan carries, already
//! resolved by the coordinator (image, environment, ports, mounts, health
//! check, restart policy, resources). The agent creates exactly these and
//! labels them so it can find, compare and adopt them later.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Label every Skiff-managed container carries: the node id of the agent that owns it.
pub const LABEL_NODE: &str = "skiff.node";
/// The container's stable name within the cluster: `<stack>.<service>.<slot>`.
pub const LABEL_NAME: &str = "skiff.name";
pub const LABEL_STACK: &str = "skiff.stack";
pub const LABEL_SERVICE: &str = "skiff.service";
pub const LABEL_SLOT: &str = "skiff.slot";
/// Fingerprint of the spec the container was created from.
pub const LABEL_SPEC: &str = "skiff.spec";
/// The container's key: its name and the release that made it, `<name>@<revision>`.
pub const LABEL_KEY: &str = "skiff.key";
/// On networks the agent created: the stack's name for the network.
pub const LABEL_NETWORK: &str = "skiff.network";

/// One container the host should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub stack: String,
    pub service: String,
    /// Replica slot, 1-based; 0 for the copy of a global service on each host.
    pub slot: u32,
    /// The release that introduced this replica's spec. A rolling update
    /// runs the old and the new revision of a slot side by side (start-first),
    /// so the revision is part of the container's key.
    #[serde(default)]
    pub revision: u64,
    /// Image reference, by digest once the coordinator has resolved one.
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthSpec>,
    #[serde(default)]
    pub restart: RestartSpec,
    #[serde(default)]
    pub resources: ResourceSpec,
    /// Time between SIGTERM and SIGKILL when stopping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Secrets mounted as files. The plan carries only each version's
    /// random id and a check value; the values come in a separate message
    /// and the agent mounts one only if it matches its check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretMount>,
    /// A check the agent runs against the container's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeSpec>,
    /// Config files written into the container before it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<ConfigFile>,
    /// The stack's networks the container joins, the first as its main
    /// one. None: the engine's default bridge (or the host's network, with
    /// [`RuntimeSpec::host_network`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttach>,
    /// The DNS servers the container asks (the engine's `HostConfig.Dns`):
    /// its network's gateway, where the agent's DNS server answers
    /// cluster names. Empty: the engine's default. Left out when empty,
    /// so specs without it keep their fingerprint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// The search domains of the container's resolver (the engine's
    /// `HostConfig.DnsSearch`): with ElasticDNS, `STACK.skiff`, so that a
    /// bare service name is also asked as `SERVICE.STACK.skiff` (some
    /// engines answer a name without a dot themselves and never forward
    /// it). Left out when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    /// Rights, namespaces and kernel limits that differ from the engine's
    /// defaults. The coordinator's container policy decides which a stack
    /// may have; the agent passes them on as they are.
    #[serde(default, skip_serializing_if = "RuntimeSpec::is_default")]
    pub runtime: RuntimeSpec,
}

/// How a container runs beside the engine's defaults: capabilities,
/// devices, security options, namespaces shared with the host, ulimits,
/// sysctls, `/dev/shm` and supplementary groups. Every field is left out
/// of the JSON at its default, so specs without them keep their
/// fingerprint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeSpec {
    /// Every device and capability of the host (Compose `privileged`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// Capabilities added, without the `CAP_` prefix (`NET_ADMIN`, `ALL`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities dropped, without the `CAP_` prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Host devices made available in the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceSpec>,
    /// Device cgroup rules (`c 1:3 mr`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_cgroup_rules: Vec<String>,
    /// Security options as the engine takes them (`key=value`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    /// The host's network namespace (Compose `network_mode: host`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// The host's PID namespace (`pid: host`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_pid: bool,
    /// The host's UTS namespace (`uts: host`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_uts: bool,
    /// The IPC namespace (`ipc:`); `None` is the engine's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipc: Option<IpcMode>,
    /// Resource limits by name (`nofile`, `memlock`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<String, Ulimit>,
    /// Namespaced kernel settings (`net.core.somaxconn`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// Size of `/dev/shm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size_bytes: Option<u64>,
    /// Supplementary groups of the container's user, by name or id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_add: Vec<String>,
}

impl RuntimeSpec {
    /// True when nothing differs from the engine's defaults.
    pub fn is_default(&self) -> bool {
        self == &Self::default()
    }
}

/// Capabilities the engine gives every container: adding one of these
/// (after `cap_drop: [ALL]`, say) grants nothing beyond the defaults.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// A host device in a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    /// Absolute path on the host.
    pub source: String,
    /// Absolute path in the container.
    pub target: String,
    /// Cgroup permissions: some of `r`, `w` and `m`.
    pub permissions: String,
}

/// A container's IPC namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpcMode {
    /// The host's.
    Host,
    /// Its own, which no other container may join.
    Private,
    /// Its own, which other containers may join.
    Shareable,
    /// Its own, without `/dev/shm`.
    None,
}

impl IpcMode {
    /// The engine's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Private => "private",
            Self::Shareable => "shareable",
            Self::None => "none",
        }
    }
}

/// A soft and a hard limit; -1 is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub soft: i64,
    pub hard: i64,
}

/// A network a container joins. The agent creates the stack's networks on
/// its host as needed (bridges, labelled as its own) and removes them when
/// no container of its plan uses them; an external one must exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttach {
    /// The stack's name for it (`default` unless the Compose file names
    /// others); for an external network, its name on the engine.
    pub name: String,
    #[serde(default)]
    pub external: bool,
    /// No route out of the host's bridge (Compose `internal: true`).
    #[serde(default)]
    pub internal: bool,
    /// Names the container is reached by on the network: its service name
    /// first, then the Compose `aliases`.
    pub aliases: Vec<String>,
}

/// A Compose config: a file the agent writes into the container before
/// starting it. The content travels in the signed plan, so a changed
/// config is a changed spec and the replicas are replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    pub name: String,
    /// Absolute path in the container.
    pub target: String,
    pub content: String,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

/// The most a config's content may hold.
pub const MAX_CONFIG_BYTES: usize = 256 * 1024;

/// An HTTP or TCP check the agent runs from the host against the
/// container's address. Its result is reported as the container's health,
/// combined with Docker's own health check when there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSpec {
    /// HTTP path (a 2xx or 3xx answer passes); `None` checks that a TCP
    /// connection is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_path: Option<String>,
    pub port: u16,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    #[serde(default)]
    pub start_period_ms: u64,
}

/// A secret mounted into a container as a read-only file.
///
/// Nothing here is a plain hash of the value: the file on the host (the
/// mount source `docker inspect` shows) is named by the version's random
/// [`id`](Self::id), and the [`check`](Self::check) is keyed with it, so
/// a weak value cannot be guessed offline from either. `Debug` shows
/// the file name only: with the id, the check value would let a reader of
/// a log test guesses.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMount {
    pub name: String,
    pub version: u64,
    /// Only in plans made before versions had ids: the SHA-256 of the
    /// value, hex, which named the file. Read, never written.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// The version's random id, 32 lowercase hex digits ([`secret_id`]):
    /// the name of the file the agent stores the value in.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// [`secret_check`] of the value: the agent mounts a delivered value
    /// only if it matches. Left out of the container's fingerprint, which
    /// is shown on the host (the id already changes with the value).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub check: String,
    /// Absolute path in the container.
    pub target: String,
}

impl std::fmt::Debug for SecretMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretMount")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("file", &self.file_name())
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// Hex digits in a secret version's id (128 random bits).
pub const SECRET_ID_HEX: usize = 32;

/// A new random secret version id: 128 bits, lowercase hex.
///
/// # Errors
/// Fails only when the system random source is unavailable.
pub fn secret_id() -> Result<String, ring::error::Unspecified> {
    Ok(hex::encode(crate::random_bytes::<{ SECRET_ID_HEX / 2 }>()?))
}

/// The check value of a secret version: HMAC-SHA256 of `value` keyed with
/// the version's `id` (its text), lowercase hex.
pub fn secret_check(id: &str, value: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, id.as_bytes());
    hex::encode(ring::hmac::sign(&key, value))
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Why a secret mount in a plan cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretMountError {
    #[error(
        "secret {name} (version {version}) has no valid id and check value; the coordinator must plan it again"
    )]
    Malformed { name: String, version: u64 },
    #[error(
        "the delivered value of secret {name} (version {version}) does not match the check value in the signed plan; it was not mounted"
    )]
    Mismatch { name: String, version: u64 },
}

impl SecretMount {
    /// The name of the file the value is kept in on the host: the id, or
    /// the digest of a mount planned before ids.
    pub fn file_name(&self) -> &str {
        if self.id.is_empty() {
            &self.digest
        } else {
            &self.id
        }
    }

    /// Checks the mount's shape: an id (32 hex digits) with a check value
    /// (64), or for a mount planned before ids, a digest (64). The file
    /// name is then safe to join to a directory.
    ///
    /// # Errors
    /// [`SecretMountError::Malformed`] naming the secret.
    pub fn validate(&self) -> Result<(), SecretMountError> {
        let keyed = is_lower_hex(&self.id, SECRET_ID_HEX) && is_lower_hex(&self.check, 64);
        let legacy = self.id.is_empty() && self.check.is_empty() && is_lower_hex(&self.digest, 64);
        if keyed || legacy {
            Ok(())
        } else {
            Err(SecretMountError::Malformed {
                name: self.name.clone(),
                version: self.version,
            })
        }
    }

    /// Checks a delivered value against the mount: its check value (in
    /// constant time), or the digest of a mount planned before ids.
    ///
    /// # Errors
    /// [`SecretMountError::Mismatch`] (or `Malformed`) naming the secret.
    pub fn verify(&self, value: &[u8]) -> Result<(), SecretMountError> {
        self.validate()?;
        let matches = if self.id.is_empty() {
            hex::encode(crate::sha256(value)) == self.digest
        } else {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.id.as_bytes());
            hex::decode(&self.check).is_ok_and(|tag| ring::hmac::verify(&key, value, &tag).is_ok())
        };
        if matches {
            Ok(())
        } else {
            Err(SecretMountError::Mismatch {
                name: self.name.clone(),
                version: self.version,
            })
        }
    }
}

/// Whether `name` can name a delivered secret's file: a version id, or
/// the digest of a version planned before ids.
pub fn is_secret_file_name(name: &str) -> bool {
    is_lower_hex(name, SECRET_ID_HEX) || is_lower_hex(name, 64)
}

/// A secret's value as delivered to an agent. `Debug` shows the id only:
/// the value never reaches a log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretValue {
    /// The mount's [`SecretMount::file_name`]. (Coordinators before ids
    /// sent the digest as `digest`.)
    #[serde(alias = "digest")]
    pub id: String,
    /// Base64 of the value.
    pub value: String,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub target: u16,
    pub published: u16,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Volume,
    Bind,
    Tmpfs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub kind: MountKind,
    /// Volume name or host path; empty for tmpfs.
    #[serde(default)]
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

/// A Docker health check (the `test` as Docker takes it: `["CMD", ...]`,
/// `["CMD-SHELL", "..."]` or `["NONE"]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    pub test: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    #[serde(default)]
    pub start_period_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", tag = "policy")]
pub enum RestartSpec {
    No,
    #[default]
    Always,
    UnlessStopped,
    OnFailure {
        #[serde(default)]
        max_attempts: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ResourceSpec {
    /// CPU limit in millicores (1000 = one CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit_millis: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// Soft memory reservation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_reservation_bytes: Option<u64>,
    /// The most processes the container may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<u64>,
}

impl ContainerSpec {
    /// A container of `image` with every other field at its default
    /// (revision 0, restart always, no command, ports, mounts or limits).
    pub fn new(stack: &str, service: &str, slot: u32, image: &str) -> Self {
        Self {
            stack: stack.to_owned(),
            service: service.to_owned(),
            slot,
            revision: 0,
            image: image.to_owned(),
            command: None,
            entrypoint: None,
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            ports: Vec::new(),
            mounts: Vec::new(),
            healthcheck: None,
            restart: RestartSpec::default(),
            resources: ResourceSpec::default(),
            stop_grace_ms: None,
            user: None,
            working_dir: None,
            secrets: Vec::new(),
            probe: None,
            configs: Vec::new(),
            networks: Vec::new(),
            dns: Vec::new(),
            dns_search: Vec::new(),
            runtime: RuntimeSpec::default(),
        }
    }

    /// `<stack>.<service>.<slot>`: unique in the cluster.
    pub fn name(&self) -> String {
        format!("{}.{}.{}", self.stack, self.service, self.slot)
    }

    /// `<stack>.<service>.<slot>@<revision>`: unique per host, also while
    /// two revisions of a slot run side by side.
    pub fn key(&self) -> String {
        format!("{}@{}", self.name(), self.revision)
    }

    /// A short digest of what the container runs (everything but the
    /// revision): equal fingerprints mean nothing needs replacing.
    ///
    /// Field order is fixed by the struct and maps are sorted, so the JSON
    /// is canonical. A field added with `skip_serializing_if` at its
    /// default keeps every existing fingerprint (a golden test pins one):
    /// otherwise an agent upgrade would restart every container it runs.
    ///
    /// Secrets' check values are left out: the fingerprint is a label on
    /// the container, and a check value in it would let anyone who can
    /// inspect the container test guesses of the value. Their ids, which
    /// change with every version, are in.
    pub fn fingerprint(&self) -> String {
        let mut canonical = self.clone();
        canonical.revision = 0;
        for s in &mut canonical.secrets {
            s.check.clear();
        }
        let bytes = match serde_json::to_vec(&canonical) {
            Ok(json) => json,
            // Unreachable for these types (every map has string keys); the
            // debug form still tells different specs apart, unlike a default.
            Err(_) => format!("{canonical:?}").into_bytes(),
        };
        hex::encode(&crate::sha256(&bytes)[..12])
    }
}

mod observed;
pub use observed::*;

#[cfg(test)]
mod tests;
