//! Coordinator configuration: one TOML file, overridden by command-line
//! flags, validated before any socket is bound. Defaults live in
//! [`Config::default`] and nowhere else.

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
}
