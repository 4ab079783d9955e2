//! `[ingress]`: the edge hosts' proxy settings, the same on every edge
//! host.

use std::time::Duration;

use serde::Deserialize;
use skiff_shared::sections::ingress::ProxySettings;

use crate::config::{ConfigError, duration_str};

/// The proxy on edge hosts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressConfig {
    /// Where HTTP routes and ACME challenges are served.
    pub http_port: u16,
    /// Where HTTPS routes are served.
    pub https_port: u16,
    /// Clients come through a load balancer that sends the PROXY
    /// protocol first (on the HTTP, HTTPS and published TCP ports).
    pub proxy_protocol: bool,
    /// The longest a request may wait for its answer's head.
    #[serde(with = "duration_str")]
    pub request_timeout: Duration,
    /// How long an idle HTTP client connection is kept.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// How long a TCP connection to a published port with no traffic
    /// either way is kept.
    #[serde(with = "duration_str")]
    pub tcp_idle_timeout: Duration,
    /// The largest request body, in bytes.
    pub max_body_bytes: u64,
    /// How long requests and connections in flight to a replica that left
    /// may finish before the proxy cuts them.
    #[serde(with = "duration_str")]
    pub drain_timeout: Duration,
}

impl Default for IngressConfig {
    fn default() -> Self {
        let d = ProxySettings::default();
        Self {
            http_port: d.http_port,
            https_port: d.https_port,
            proxy_protocol: d.proxy_protocol,
            request_timeout: Duration::from_millis(d.request_timeout_ms),
            idle_timeout: Duration::from_millis(d.idle_timeout_ms),
            tcp_idle_timeout: Duration::from_millis(d.tcp_idle_timeout_ms),
            max_body_bytes: d.max_body_bytes,
            drain_timeout: Duration::from_millis(d.drain_timeout_ms),
        }
    }
}

impl IngressConfig {
    /// The settings every edge host gets.
    pub fn settings(&self) -> ProxySettings {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        ProxySettings {
            http_port: self.http_port,
            https_port: self.https_port,
            proxy_protocol: self.proxy_protocol,
            request_timeout_ms: ms(self.request_timeout),
            idle_timeout_ms: ms(self.idle_timeout),
            tcp_idle_timeout_ms: ms(self.tcp_idle_timeout),
            max_body_bytes: self.max_body_bytes,
            drain_timeout_ms: ms(self.drain_timeout),
        }
    }

    /// Checks values that parse but make no sense.
    ///
    /// # Errors
    /// The key and what it must be.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        if self.http_port == 0 || self.https_port == 0 {
            return invalid("ingress.http_port", "ports must be from 1 to 65535".into());
        }
        if self.http_port == self.https_port {
            return invalid(
                "ingress.https_port",
                format!(
                    "must differ from ingress.http_port ({}): give HTTPS its own port",
                    self.http_port
                ),
            );
        }
        for (key, d, min) in [
            (
                "ingress.request_timeout",
                self.request_timeout,
                Duration::from_millis(100),
            ),
            (
                "ingress.idle_timeout",
                self.idle_timeout,
                Duration::from_millis(100),
            ),
            ("ingress.drain_timeout", self.drain_timeout, Duration::ZERO),
        ] {
            if d < min || d > Duration::from_secs(24 * 3600) {
                return invalid(key, format!("must be between {min:?} and 24h, not {d:?}"));
            }
        }
        if self.max_body_bytes == 0 {
            return invalid(
                "ingress.max_body_bytes",
                "must be above zero (it is a limit, not a switch)".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        IngressConfig::default().validate().unwrap();
        let same = IngressConfig {
            https_port: 80,
            ..IngressConfig::default()
        };
        assert!(
            same.validate()
                .unwrap_err()
                .to_string()
                .contains("ingress.https_port")
        );
        let slow = IngressConfig {
            idle_timeout: Duration::from_secs(48 * 3600),
            ..IngressConfig::default()
        };
        assert!(
            slow.validate()
                .unwrap_err()
                .to_string()
                .contains("ingress.idle_timeout")
        );
        assert_eq!(
            IngressConfig::default().settings(),
            ProxySettings::default()
        );
    }
}
