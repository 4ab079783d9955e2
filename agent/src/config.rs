//! Agent configuration: an optional TOML file, overridden by flags.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Everything the agent can be configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the identity and state live.
    pub data_dir: PathBuf,
    /// Overrides the coordinator address stored at join (HOST:PORT), e.g.
    /// after the coordinator moved.
    pub coordinator: Option<String>,
    /// Which WireGuard carries a WireGuard mesh.
    pub wireguard: WireguardChoice,
    /// The address the other hosts reach this host's mesh port at, when it
    /// is not the one its link to the coordinator comes from (NAT, a
    /// private network beside a public one).
    pub mesh_endpoint: Option<String>,
    /// Weave Net's HTTP API on this host, for mesh `weave`.
    pub weave_api: String,
    /// The DNS server (`[dns]`).
    pub dns: DnsConfig,
}

/// The `[dns]` table: the DNS server's settings beside its section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Whether the host itself gets a listener (`loopback_address`).
    pub loopback: bool,
    /// Where the host asks (put it in the host's resolv.conf to resolve
    /// cluster names on the host).
    pub loopback_address: std::net::SocketAddr,
    /// Queries per second allowed per source; 0 turns the limit off.
    pub rate: u32,
    /// Queries a source may send at once beyond its rate.
    pub burst: u32,
}

impl Default for DnsConfig {
    fn default() -> Self {
        let rate = crate::dns::Rate::default();
        Self {
            loopback: true,
            loopback_address: std::net::SocketAddr::from(([127, 0, 0, 1], 53)),
            rate: rate.per_second,
            burst: rate.burst,
        }
    }
}

impl DnsConfig {
    /// The DNS controller's options.
    pub fn options(&self) -> crate::dns::DnsOptions {
        let mut options = crate::dns::DnsOptions {
            loopback: self.loopback.then_some(self.loopback_address),
            ..crate::dns::DnsOptions::default()
        };
        options.limits.rate = crate::dns::Rate {
            per_second: self.rate,
            burst: self.burst,
        };
        options
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/skiff/agent"),
            coordinator: None,
            wireguard: WireguardChoice::Auto,
            mesh_endpoint: None,
            weave_api: crate::weave::DEFAULT_API.to_owned(),
            dns: DnsConfig::default(),
        }
    }
}

/// Which WireGuard the agent uses for a WireGuard mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireguardChoice {
    /// The kernel's where it has the module and `wg` is installed, else
    /// the agent's own over `/dev/net/tun`.
    #[default]
    Auto,
    /// The kernel's only: the mesh reports an error without it.
    Kernel,
    /// The agent's own, over `/dev/net/tun`.
    Userspace,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] skiff_shared::files::ConfigFileError),
    #[error("invalid config: {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(skiff_shared::files::read_toml(path)?)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(c) = &self.coordinator {
            skiff_shared::tls::server_name_of(c).map_err(|message| ConfigError::Invalid {
                key: "coordinator",
                message,
            })?;
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "data_dir",
                message: "must not be empty".into(),
            });
        }
        if let Some(e) = &self.mesh_endpoint {
            mesh_endpoint(e).map_err(|message| ConfigError::Invalid {
                key: "mesh_endpoint",
                message,
            })?;
        }
        self.weave_api()?;
        if self.dns.loopback && !self.dns.loopback_address.ip().is_loopback() {
            return Err(ConfigError::Invalid {
                key: "dns.loopback_address",
                message: format!(
                    "{} is not a loopback address: the host's listener must not be reachable from outside (use 127.0.0.1:53, or loopback = false)",
                    self.dns.loopback_address
                ),
            });
        }
        if self.dns.rate != 0 && self.dns.burst == 0 {
            return Err(ConfigError::Invalid {
                key: "dns.burst",
                message: "must be at least 1 when dns.rate is set (or set rate = 0 to turn the limit off)".into(),
            });
        }
        Ok(())
    }

    /// The checked `weave_api`.
    ///
    /// # Errors
    /// It is not `http://HOST:PORT`.
    pub fn weave_api(&self) -> Result<crate::weave::ApiUrl, ConfigError> {
        crate::weave::ApiUrl::parse(&self.weave_api).map_err(|message| ConfigError::Invalid {
            key: "weave_api",
            message,
        })
    }
}

/// Checks a `mesh_endpoint`: one IPv4 address other hosts can reach (the
/// mesh's port is the cluster's, so none is given here).
///
/// # Errors
/// Why it is not one.
pub fn mesh_endpoint(value: &str) -> Result<Ipv4Addr, String> {
    let addr: Ipv4Addr = value.parse().map_err(|_| {
        format!("{value:?} is not an IPv4 address (give the address only, e.g. \"203.0.113.7\"; the port is the cluster's)")
    })?;
    if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() || addr.is_broadcast() {
        return Err(format!(
            "{addr} cannot be reached from other hosts: give an address of this host they can reach"
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        let cfg: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    #[test]
    fn wireguard_defaults_to_auto_and_takes_the_three_choices() {
        assert_eq!(parse("").unwrap().wireguard, WireguardChoice::Auto);
        assert_eq!(
            parse("wireguard = \"kernel\"").unwrap().wireguard,
            WireguardChoice::Kernel
        );
        assert_eq!(
            parse("wireguard = \"userspace\"").unwrap().wireguard,
            WireguardChoice::Userspace
        );
        let err = parse("wireguard = \"fast\"").unwrap_err();
        assert!(err.contains("unknown variant"), "{err}");
    }

    #[test]
    fn dns_defaults_to_a_loopback_listener_and_a_rate_limit() {
        let cfg = parse("").unwrap();
        let options = cfg.dns.options();
        assert_eq!(options.loopback, Some("127.0.0.1:53".parse().unwrap()));
        assert_eq!(options.limits.rate, crate::dns::Rate::default());
        let cfg = parse("[dns]\nloopback = false\nrate = 0\nburst = 0").unwrap();
        assert_eq!(cfg.dns.options().loopback, None);
        assert_eq!(cfg.dns.options().limits.rate.per_second, 0);
        let cfg = parse("[dns]\nloopback_address = \"127.0.0.2:5353\"").unwrap();
        assert_eq!(
            cfg.dns.options().loopback,
            Some("127.0.0.2:5353".parse().unwrap())
        );
        let err = parse("[dns]\nloopback_address = \"0.0.0.0:53\"").unwrap_err();
        assert!(err.contains("dns.loopback_address"), "{err}");
        let err = parse("[dns]\nrate = 10\nburst = 0").unwrap_err();
        assert!(err.contains("dns.burst"), "{err}");
        let err = parse("[dns]\nport = 53").unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn mesh_endpoint_must_be_a_reachable_ipv4_address() {
        let cfg = parse("mesh_endpoint = \"203.0.113.7\"").unwrap();
        assert_eq!(cfg.mesh_endpoint.as_deref(), Some("203.0.113.7"));
        for bad in [
            "203.0.113.7:51820",
            "host.example",
            "127.0.0.1",
            "0.0.0.0",
            "::1",
        ] {
            let err = parse(&format!("mesh_endpoint = \"{bad}\"")).unwrap_err();
            assert!(err.contains("mesh_endpoint"), "{bad}: {err}");
        }
    }
}
