//! Coordinator configuration: one TOML file, overridden by command-line
//! flags, validated before any socket is bound. Defaults live in the
//! `Default` impls of this file ([`Config`], [`ApiLimits`],
//! [`AgentPortLimits`]) and nowhere else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// How long a host may be silent before its replicas are placed elsewhere.
pub const DEFAULT_HOST_LOST_GRACE: Duration = Duration::from_secs(60);

/// Everything the coordinator can be configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the CA, keys and database live.
    pub data_dir: PathBuf,
    /// HTTP API listen address.
    pub api_listen: SocketAddr,
    /// Agent link (and join and install) listen address.
    pub agent_listen: SocketAddr,
    /// Names and addresses agents use to reach the coordinator; they go into
    /// the agent endpoint's certificate.
    pub advertise: Vec<String>,
    /// How often each side of the link sends a heartbeat.
    #[serde(with = "duration_str")]
    pub heartbeat_interval: Duration,
    /// Lifetime of agent client certificates; agents renew at about half of it.
    #[serde(with = "duration_str")]
    pub cert_ttl: Duration,
    /// Default lifetime of join tokens.
    #[serde(with = "duration_str")]
    pub join_token_ttl: Duration,
    /// How long a node may be unheard from before it counts as lost and
    /// its stateless replicas are placed elsewhere.
    #[serde(with = "duration_str")]
    pub host_lost_grace: Duration,
    /// The agent binary served to new servers; defaults to `skiff-agent`
    /// beside the coordinator's own executable.
    pub agent_binary: Option<PathBuf>,
    /// Deadlines and caps of the HTTP API listener (`[api_limits]`).
    pub api_limits: ApiLimits,
    /// Deadlines and caps of the agent port (`[agent_limits]`).
    pub agent_limits: AgentPortLimits,
    /// The cluster network (`[network]`).
    pub network: NetworkConfig,
    /// The edge hosts' proxy (`[ingress]`).
    pub ingress: crate::ingress::IngressConfig,
    /// Certificates from an ACME directory for HTTP routes (`[acme]`).
    pub acme: AcmeConfig,
    /// The containers' log files on every host (`[logs]`).
    pub logs: crate::logs::config::LogsConfig,
}

/// ACME: off unless a directory is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// The directory URL, such as
    /// `https://acme-v02.api.letsencrypt.org/directory`; unset: no ACME.
    pub directory: Option<String>,
    /// The account's contact email (the CA's expiry notices go there).
    pub email: Option<String>,
    /// A PEM CA certificate to trust for the directory, for a private or
    /// test CA (pebble); the system's roots otherwise.
    pub ca_bundle: Option<PathBuf>,
    /// DNS-01 through RFC 2136 updates (`[acme.dns01]`), for wildcard
    /// domains; unset: wildcards must be uploaded.
    pub dns01: Option<crate::certs::dns01::Dns01Config>,
}

impl AcmeConfig {
    /// The checked settings; `None` when ACME is off.
    ///
    /// # Errors
    /// A key that makes no sense, named.
    pub fn settings(&self) -> Result<Option<crate::certs::AcmeSettings>, ConfigError> {
        let invalid = |key, message: String| ConfigError::Invalid { key, message };
        let Some(directory) = &self.directory else {
            if self.email.is_some() || self.ca_bundle.is_some() || self.dns01.is_some() {
                return Err(invalid(
                    "acme.directory",
                    "is not set, but other [acme] keys are: set it to your CA's directory URL, or remove [acme]".into(),
                ));
            }
            return Ok(None);
        };
        let rest = directory.strip_prefix("https://").ok_or_else(|| {
            invalid(
                "acme.directory",
                format!("{directory:?} is not an https:// URL: use your CA's directory URL"),
            )
        })?;
        if rest.is_empty() || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                "acme.directory",
                format!("{directory:?} is not a URL: use your CA's directory URL"),
            ));
        }
        if let Some(email) = &self.email {
            let ok = email.split_once('@').is_some_and(|(u, d)| {
                !u.is_empty() && d.contains('.') && !email.chars().any(char::is_whitespace)
            });
            if !ok {
                return Err(invalid(
                    "acme.email",
                    format!("{email:?} is not an email address: write one like admin@example.com"),
                ));
            }
        }
        if let Some(bundle) = &self.ca_bundle
            && !bundle.is_file()
        {
            return Err(invalid(
                "acme.ca_bundle",
                format!(
                    "{} is not a file: give the PEM CA certificate of the directory, or remove the key to trust the system's roots",
                    bundle.display()
                ),
            ));
        }
        let mut settings = crate::certs::AcmeSettings::new(directory.clone());
        settings.email = self.email.clone();
        settings.ca_bundle = self.ca_bundle.clone();
        settings.dns01 = self.dns01.as_ref().map(|d| d.settings()).transpose()?;
        Ok(Some(settings))
    }
}

/// The cluster network: stack networks across hosts, on subnets of one
/// cluster range, joined by a mesh.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Off: each host's bridges get subnets the engine picks, and
    /// containers reach each other only on their own host.
    pub enabled: bool,
    /// The cluster range (private IPv4, /20 or larger). Fixed when the
    /// cluster is created: a later change is refused.
    pub range: String,
    /// `wireguard` (encrypted), `vxlan` (not encrypted) or `weave`
    /// (containers attached to the Weave Net each host already runs).
    pub mesh: String,
    /// The UDP port the mesh uses on every host (default: 51820 for
    /// WireGuard, 4789 for VXLAN).
    pub port: Option<u16>,
    /// The prefix length of each stack network's cluster-wide subnet.
    pub network_prefix: u8,
    /// The prefix length of the smallest piece of a network's subnet a
    /// host leases.
    pub lease_prefix: u8,
    /// The underlay MTU to plan for; unset: the smallest the hosts report.
    pub underlay_mtu: Option<u32>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            range: "10.66.0.0/16".into(),
            mesh: "wireguard".into(),
            port: None,
            network_prefix: crate::network::ipam::DEFAULT_NETWORK_PREFIX,
            lease_prefix: crate::network::ipam::DEFAULT_LEASE_PREFIX,
            underlay_mtu: None,
        }
    }
}

impl NetworkConfig {
    /// The checked settings.
    ///
    /// # Errors
    /// A key that makes no sense, named.
    pub fn settings(&self) -> Result<crate::network::NetworkSettings, ConfigError> {
        let invalid = |key, message: String| ConfigError::Invalid { key, message };
        let range = crate::network::ipam::Range::parse(&self.range)
            .map_err(|e| invalid("network.range", e.to_string()))?;
        let mesh: skiff_shared::sections::mesh::MeshMode = self
            .mesh
            .parse()
            .map_err(|e: String| invalid("network.mesh", e))?;
        if self.port == Some(0) {
            return Err(invalid("network.port", "must not be 0".into()));
        }
        let floor = range.net.prefix_len() + 2;
        if !(floor..=26).contains(&self.network_prefix) {
            return Err(invalid(
                "network.network_prefix",
                format!(
                    "must be between {floor} and 26 for the range {} (a network's subnet is at most a quarter of the range)",
                    range.net
                ),
            ));
        }
        if !(self.network_prefix + 1..=29).contains(&self.lease_prefix) {
            return Err(invalid(
                "network.lease_prefix",
                format!(
                    "must be between {} and 29 (a lease is a piece of a network's /{} subnet)",
                    self.network_prefix + 1,
                    self.network_prefix
                ),
            ));
        }
        if let Some(mtu) = self.underlay_mtu
            && !(1280..=9216).contains(&mtu)
        {
            return Err(invalid(
                "network.underlay_mtu",
                format!(
                    "{mtu} is not an Ethernet MTU: use 1280 to 9216, or leave it unset to use the smallest the hosts report"
                ),
            ));
        }
        let mut settings = crate::network::NetworkSettings::new(range, mesh);
        settings.port = self.port.unwrap_or(mesh.default_port());
        settings.network_prefix = self.network_prefix;
        settings.lease_prefix = self.lease_prefix;
        settings.underlay_mtu = self.underlay_mtu;
        Ok(settings)
    }
}

/// Deadlines and caps of the HTTP API listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiLimits {
    /// Connections served at once; further ones wait in the kernel's
    /// backlog until one closes.
    pub max_connections: usize,
    /// Time a client has to send a complete request head, from the
    /// connection's start or the first byte after an idle spell.
    #[serde(with = "duration_str")]
    pub header_timeout: Duration,
    /// Time a client has to send a request's body once its head arrived.
    #[serde(with = "duration_str")]
    pub body_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request,
    /// and how long a client may leave an answer unread.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers); larger gets 431.
    pub max_header_bytes: usize,
    /// Largest request body; larger gets 413.
    pub max_body_bytes: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
            max_body_bytes: 2 * 1024 * 1024,
        }
    }
}

/// Deadlines and caps of the agent port. Agent links (authenticated
/// WebSockets) have a budget of their own, `max_links`; every other
/// connection (TLS handshakes, joins, install script and binary
/// downloads) counts against `max_connections` and, per source address,
/// against `max_connections_per_source` until it has become a link.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentPortLimits {
    /// Connections that are not (yet) agent links, served at once;
    /// further ones wait in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// Connections from one source address that are not (yet) agent
    /// links; further ones are closed at once.
    pub max_connections_per_source: usize,
    /// Agent links open at once (one per connected agent).
    pub max_links: usize,
    /// Time a client has to send a complete request head after the TLS
    /// handshake, or from the first byte after an idle spell.
    #[serde(with = "duration_str")]
    pub header_timeout: Duration,
    /// Time a client has to send a request's body once its head arrived.
    #[serde(with = "duration_str")]
    pub body_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request,
    /// and how long a client may leave an answer unread.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// Time for a whole request, from its head to the last byte of the
    /// answer (this bounds the agent binary's download too).
    #[serde(with = "duration_str")]
    pub request_timeout: Duration,
    /// Largest request head (request line and headers); larger gets 431.
    pub max_header_bytes: usize,
    /// The window refusals are counted and logged in, per source.
    #[serde(with = "duration_str")]
    pub refusal_window: Duration,
    /// Refused joins, and refused agent link handshakes, one source may
    /// have in a window; past it, that source's joins are answered 429
    /// and its link handshakes closed unread until the window ends.
    pub max_refusals_per_source: u32,
}

impl Default for AgentPortLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_source: 32,
            max_links: 16_384,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(300),
            max_header_bytes: 16 * 1024,
            refusal_window: Duration::from_secs(60),
            max_refusals_per_source: 30,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/skiff/coordinator"),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            agent_listen: SocketAddr::from(([0, 0, 0, 0], 7443)),
            advertise: Vec::new(),
            heartbeat_interval: Duration::from_secs(10),
            cert_ttl: Duration::from_secs(72 * 3600),
            join_token_ttl: Duration::from_secs(24 * 3600),
            host_lost_grace: DEFAULT_HOST_LOST_GRACE,
            agent_binary: None,
            api_limits: ApiLimits::default(),
            agent_limits: AgentPortLimits::default(),
            network: NetworkConfig::default(),
            ingress: crate::ingress::IngressConfig::default(),
            acme: AcmeConfig::default(),
            logs: crate::logs::config::LogsConfig::default(),
        }
    }
}

/// A configuration problem, naming the file or key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] skiff_shared::files::ConfigFileError),
    #[error("invalid config: {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Config {
    /// Reads a TOML config file; missing keys take their defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(skiff_shared::files::read_toml(path)?)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| ConfigError::Invalid {
            key,
            message: message.to_owned(),
        };
        if self.heartbeat_interval < Duration::from_millis(100) {
            return Err(invalid("heartbeat_interval", "must be at least 100ms"));
        }
        if self.heartbeat_interval > Duration::from_secs(300) {
            return Err(invalid("heartbeat_interval", "must be at most 5m"));
        }
        if self.cert_ttl < Duration::from_secs(10) {
            return Err(invalid("cert_ttl", "must be at least 10s"));
        }
        if self.cert_ttl > Duration::from_secs(365 * 86400) {
            return Err(invalid("cert_ttl", "must be at most 365d"));
        }
        if self.join_token_ttl < Duration::from_secs(1) {
            return Err(invalid("join_token_ttl", "must be at least 1s"));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        for name in &self.advertise {
            crate::pki::check_san(name).map_err(|e| ConfigError::Invalid {
                key: "advertise",
                message: e.to_string(),
            })?;
        }
        if let Some(bin) = &self.agent_binary
            && !bin.is_file()
        {
            return Err(ConfigError::Invalid {
                key: "agent_binary",
                message: format!("{} is not a file", bin.display()),
            });
        }
        self.api_limits.validate()?;
        self.agent_limits.validate()?;
        self.ingress.validate()?;
        if self.network.enabled {
            self.network.settings()?;
        }
        self.acme.settings()?;
        self.logs.validate()?;
        Ok(())
    }
}

/// Bounds every listener limit must stay within.
mod bounds {
    use std::time::Duration;

    pub const TIMEOUT: (Duration, Duration) =
        (Duration::from_millis(100), Duration::from_secs(3600));
    pub const CONNECTIONS: (usize, usize) = (1, 1_000_000);
    pub const HEADER_BYTES: (usize, usize) = (1024, 1024 * 1024);
    pub const BODY_BYTES: (usize, usize) = (1024, 1024 * 1024 * 1024);
}

fn check_timeout(key: &'static str, value: Duration) -> Result<(), ConfigError> {
    let (min, max) = bounds::TIMEOUT;
    if value < min || value > max {
        return Err(ConfigError::Invalid {
            key,
            message: format!("must be between 100ms and 1h, not {value:?}"),
        });
    }
    Ok(())
}

fn check_count(
    key: &'static str,
    value: usize,
    (min, max): (usize, usize),
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::Invalid {
            key,
            message: format!("must be between {min} and {max}, not {value}"),
        });
    }
    Ok(())
}

impl ApiLimits {
    fn validate(&self) -> Result<(), ConfigError> {
        check_count(
            "api_limits.max_connections",
            self.max_connections,
            bounds::CONNECTIONS,
        )?;
        check_timeout("api_limits.header_timeout", self.header_timeout)?;
        check_timeout("api_limits.body_timeout", self.body_timeout)?;
        check_timeout("api_limits.idle_timeout", self.idle_timeout)?;
        check_count(
            "api_limits.max_header_bytes",
            self.max_header_bytes,
            bounds::HEADER_BYTES,
        )?;
        check_count(
            "api_limits.max_body_bytes",
            self.max_body_bytes,
            bounds::BODY_BYTES,
        )
    }
}

impl AgentPortLimits {
    fn validate(&self) -> Result<(), ConfigError> {
        check_count(
            "agent_limits.max_connections",
            self.max_connections,
            bounds::CONNECTIONS,
        )?;
        check_count(
            "agent_limits.max_connections_per_source",
            self.max_connections_per_source,
            (1, self.max_connections),
        )?;
        check_count(
            "agent_limits.max_links",
            self.max_links,
            bounds::CONNECTIONS,
        )?;
        check_timeout("agent_limits.header_timeout", self.header_timeout)?;
        check_timeout("agent_limits.body_timeout", self.body_timeout)?;
        check_timeout("agent_limits.idle_timeout", self.idle_timeout)?;
        check_timeout("agent_limits.request_timeout", self.request_timeout)?;
        check_count(
            "agent_limits.max_header_bytes",
            self.max_header_bytes,
            bounds::HEADER_BYTES,
        )?;
        if self.refusal_window < Duration::from_secs(1)
            || self.refusal_window > Duration::from_secs(86400)
        {
            return Err(ConfigError::Invalid {
                key: "agent_limits.refusal_window",
                message: format!("must be between 1s and 24h, not {:?}", self.refusal_window),
            });
        }
        if self.max_refusals_per_source == 0 {
            return Err(ConfigError::Invalid {
                key: "agent_limits.max_refusals_per_source",
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// Durations written the way people write them: `10s`, `5m`, `24h`, `7d`.
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write e.g. \"10s\", \"5m\", \"24h\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path).and_then(|c| c.validate().map(|()| c))
    }

    #[test]
    fn defaults_and_overrides() {
        let c = load_str(
            "heartbeat_interval = \"2s\"\nadvertise = [\"coord.example\", \"10.0.0.1\"]\n",
        )
        .unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(c.api_listen.port(), 7070);
        assert_eq!(c.advertise.len(), 2);
    }

    #[test]
    fn every_mesh_mode_is_accepted() {
        for mesh in ["wireguard", "vxlan", "weave"] {
            let c = load_str(&format!("[network]\nmesh = \"{mesh}\"")).unwrap();
            assert_eq!(c.network.settings().unwrap().mesh.as_str(), mesh);
        }
    }

    #[test]
    fn errors_name_the_key() {
        let e = load_str("api_lisen = \"x\"").unwrap_err().to_string();
        assert!(e.contains("api_lisen"), "{e}");
        let e = load_str("api_listen = \"nope\"").unwrap_err().to_string();
        assert!(e.contains("api_listen"), "{e}");
        let e = load_str("cert_ttl = \"1s\"").unwrap_err().to_string();
        assert!(e.contains("cert_ttl"), "{e}");
        let e = load_str("heartbeat_interval = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("heartbeat_interval") && e.contains("invalid duration"),
            "{e}"
        );
        let e = load_str("advertise = [\"bad name!\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("advertise"), "{e}");
    }

    #[test]
    fn listener_limits_have_defaults_and_take_overrides() {
        let c = load_str("").unwrap();
        assert_eq!(c.api_limits, ApiLimits::default());
        assert_eq!(c.agent_limits, AgentPortLimits::default());
        assert!(
            c.agent_limits.max_links >= 10_000,
            "a 10,000-agent cluster connects with the defaults"
        );
        let c = load_str(
            "[api_limits]\nheader_timeout = \"2s\"\nmax_connections = 8\n\
             [agent_limits]\nmax_connections_per_source = 4\nrequest_timeout = \"1m\"\n",
        )
        .unwrap();
        assert_eq!(c.api_limits.header_timeout, Duration::from_secs(2));
        assert_eq!(c.api_limits.max_connections, 8);
        assert_eq!(
            c.api_limits.body_timeout,
            ApiLimits::default().body_timeout,
            "the rest keep their defaults"
        );
        assert_eq!(c.agent_limits.max_connections_per_source, 4);
        assert_eq!(c.agent_limits.request_timeout, Duration::from_secs(60));
    }

    #[test]
    fn listener_and_network_errors_name_the_key() {
        for (text, key) in [
            ("[api_limits]\nheader_timout = \"2s\"", "header_timout"),
            (
                "[agent_limits]\nrequest_timeout = \"soon\"",
                "request_timeout",
            ),
            (
                "[api_limits]\nmax_connections = 0",
                "api_limits.max_connections",
            ),
            (
                "[api_limits]\nidle_timeout = \"10ms\"",
                "api_limits.idle_timeout",
            ),
            (
                "[api_limits]\nmax_body_bytes = 10",
                "api_limits.max_body_bytes",
            ),
            (
                "[agent_limits]\nmax_connections = 10\nmax_connections_per_source = 11",
                "agent_limits.max_connections_per_source",
            ),
            (
                "[agent_limits]\nmax_header_bytes = 100",
                "agent_limits.max_header_bytes",
            ),
            (
                "[agent_limits]\nrefusal_window = \"10ms\"",
                "agent_limits.refusal_window",
            ),
            (
                "[agent_limits]\nmax_refusals_per_source = 0",
                "agent_limits.max_refusals_per_source",
            ),
            ("[agent_limits]\nmax_links = 0", "agent_limits.max_links"),
            ("[network]\nmesh = \"gre\"", "network.mesh"),
        ] {
            let e = load_str(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
