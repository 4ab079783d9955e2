//! A sink's address and its checks, the same in the CLI, the coordinator
//! and the agent.

use super::{SinkFormat, SinkSpec};

/// Most bytes a sink's buffer may be given.
pub const MAX_BUFFER_BYTES: u64 = 64 << 30;
/// Fewest bytes a sink's buffer may be given.
pub const MIN_BUFFER_BYTES: u64 = 1 << 20;
/// The buffer a sink gets when its settings name none.
pub const DEFAULT_BUFFER_BYTES: u64 = 256 << 20;

/// A bad sink or log setting: what (`field`) and why, with the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {why}")]
pub struct SinkError {
    pub field: String,
    pub why: String,
}

impl SinkError {
    pub fn new(field: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            why: why.into(),
        }
    }
}

/// How lines travel to a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    Http,
    Https,
}

/// A sink's parsed URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub transport: Transport,
    /// A DNS name, an IPv4 address, or an IPv6 address without brackets.
    pub host: String,
    pub port: u16,
    /// For HTTP: the path and query (`/` at least).
    pub path: String,
}

impl Endpoint {
    /// `host:port`, bracketing IPv6 addresses.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether the transport is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self.transport, Transport::Tls | Transport::Https)
    }
}

impl SinkSpec {
    /// The parsed URL.
    ///
    /// # Errors
    /// What is wrong with it and the fix.
    pub fn endpoint(&self) -> Result<Endpoint, SinkError> {
        let field = format!("sink {:?}: url {:?}", self.name, self.url);
        let bad = |why: &str| SinkError::new(field.clone(), why);
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return Err(bad(
                "has no scheme: write udp://, tcp:// or tls:// for syslog, http:// or https:// for json_lines and otlp",
            ));
        };
        let (transport, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "udp" => (Transport::Udp, 514),
            "tcp" => (Transport::Tcp, 601),
            "tls" => (Transport::Tls, 6514),
            "http" => (Transport::Http, 80),
            "https" => (Transport::Https, 443),
            _ => {
                return Err(bad(
                    "has an unknown scheme: use udp://, tcp:// or tls:// for syslog, http:// or https:// for json_lines and otlp",
                ));
            }
        };
        let http = matches!(transport, Transport::Http | Transport::Https);
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(bad(
                "carries credentials: a sink's URL must not hold a password",
            ));
        }
        if !http && !path.is_empty() && path != "/" {
            return Err(bad(
                "has a path, which syslog has no use for: write scheme://host:port",
            ));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| {
            bad("has no valid host and port: write scheme://host:port (the port may be left out)")
        })?;
        let port = match port {
            Some(p) => p,
            None => default_port,
        };
        if port == 0 {
            return Err(bad("has port 0: give the receiver's port"));
        }
        match (self.format, http) {
            (SinkFormat::Syslog, true) => {
                return Err(bad(
                    "is an HTTP URL, but the format is syslog: use udp://, tcp:// or tls://, or format json_lines or otlp",
                ));
            }
            (SinkFormat::JsonLines | SinkFormat::Otlp, false) => {
                return Err(bad(&format!(
                    "is not an HTTP URL, but format {} is sent over HTTP: use http:// or https://",
                    self.format.as_str()
                )));
            }
            _ => {}
        }
        let path = if http && path.is_empty() {
            match self.format {
                SinkFormat::Otlp => "/v1/logs".to_owned(),
                _ => "/".to_owned(),
            }
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        if path.chars().any(|c| c.is_ascii_control() || c == ' ') {
            return Err(bad("has spaces or control characters in its path"));
        }
        Ok(Endpoint {
            transport,
            host,
            port,
            path,
        })
    }

    /// Checks the name, the URL against the format, the CA and the buffer.
    ///
    /// # Errors
    /// The first problem, naming the sink and the fix.
    pub fn check(&self) -> Result<(), SinkError> {
        let n = &self.name;
        if n.is_empty()
            || n.len() > 40
            || !n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            || n.starts_with('-')
        {
            return Err(SinkError::new(
                format!("sink name {n:?}"),
                "is not valid: use 1 to 40 of a-z, 0-9 and -, starting with a letter or digit",
            ));
        }
        let endpoint = self.endpoint()?;
        if let Some(ca) = &self.ca_pem {
            if !endpoint.is_tls() {
                return Err(SinkError::new(
                    format!("sink {n:?}: ca"),
                    "is set, but the URL is not tls:// or https://: remove it or use TLS",
                ));
            }
            if !ca.contains("-----BEGIN CERTIFICATE-----") || ca.len() > 256 << 10 {
                return Err(SinkError::new(
                    format!("sink {n:?}: ca"),
                    "holds no PEM certificate (or over 256 KiB): give a PEM file with the CA that signed the receiver's certificate",
                ));
            }
        }
        if !(MIN_BUFFER_BYTES..=MAX_BUFFER_BYTES).contains(&self.buffer_bytes) {
            return Err(SinkError::new(
                format!("sink {n:?}: buffer"),
                "must be between 1 MiB and 64 GiB",
            ));
        }
        Ok(())
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn split_host_port(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    let valid_name = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !(valid_name || host.parse::<std::net::IpAddr>().is_ok()) {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}
