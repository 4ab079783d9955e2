//! `[acme.dns01]`: the zone's primary server, the zone, and the TSIG key
//! the coordinator signs its updates with, checked at start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hickory_proto::rr::Name;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use serde::Deserialize;

use crate::config::ConfigError;

/// The default wait for the server to answer a new TXT record.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest wait allowed: with the CA's validation and issuance it
/// must fit in one attempt's deadline (10 minutes).
const PROPAGATION_TIMEOUT_MAX: Duration = Duration::from_secs(300);
/// How long one exchange with the server (an update or a query) may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// `[acme.dns01]` as written; every key is checked by
/// [`Dns01Config::settings`] so that a missing one gets a message naming
/// it and the fix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dns01Config {
    /// The zone's primary server, `host[:port]` (port 53 by default).
    pub server: Option<String>,
    /// The zone the challenge records go in, such as `example.com`.
    pub zone: Option<String>,
    /// The TSIG key's name, as the server knows it.
    pub key_name: Option<String>,
    /// `hmac-sha256` (default), `hmac-sha384` or `hmac-sha512`.
    pub algorithm: Option<String>,
    /// A file (mode 0600) holding the key's base64 secret, or the key
    /// clause `tsig-keygen` writes.
    pub secret_file: Option<PathBuf>,
    /// How long the server has to answer a new TXT record (`2m`, at
    /// most `5m`).
    pub propagation_timeout: Option<String>,
}

/// A TSIG secret; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct TsigSecret(Vec<u8>);

impl TsigSecret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for TsigSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TsigSecret(..)")
    }
}

/// How challenge records are written (checked `[acme.dns01]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns01Settings {
    /// `host:port` of the zone's primary, resolved at each use.
    pub server: String,
    /// The zone (fully qualified).
    pub zone: Name,
    /// The TSIG key's name (fully qualified).
    pub key_name: Name,
    pub algorithm: TsigAlgorithm,
    pub secret: TsigSecret,
    /// How long the server has to answer a new TXT record.
    pub propagation_timeout: Duration,
    /// How long one exchange with the server may take.
    pub exchange_timeout: Duration,
}

fn invalid(key: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid { key, message }
}

impl Dns01Config {
    /// The checked settings (the secret read from its file).
    ///
    /// # Errors
    /// A missing or senseless key, named with the fix.
    pub fn settings(&self) -> Result<Dns01Settings, ConfigError> {
        let required = |key: &'static str, value: &Option<String>, what: &str| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| invalid(key, format!("is not set: {what}")))
        };
        let server = required(
            "acme.dns01.server",
            &self.server,
            "give the zone's primary DNS server as host or host:port, such as \"ns1.example.com:53\"",
        )?;
        let server = parse_server(&server).map_err(|m| invalid("acme.dns01.server", m))?;
        let zone = required(
            "acme.dns01.zone",
            &self.zone,
            "give the zone the _acme-challenge records go in, such as \"example.com\"",
        )?;
        let zone = fqdn(&zone).map_err(|e| {
            invalid(
                "acme.dns01.zone",
                format!("{zone:?} is not a domain name ({e}): write one like \"example.com\""),
            )
        })?;
        let key = required(
            "acme.dns01.key_name",
            &self.key_name,
            "give the name of the TSIG key the server accepts updates signed with",
        )?;
        let key_name = fqdn(&key).map_err(|e| {
            invalid(
                "acme.dns01.key_name",
                format!("{key:?} is not a key name ({e}): write the name from the server's key clause, such as \"skiff-acme\""),
            )
        })?;
        let algorithm = match &self.algorithm {
            None => TsigAlgorithm::HmacSha256,
            Some(a) => parse_algorithm(a).ok_or_else(|| {
                invalid(
                    "acme.dns01.algorithm",
                    format!("{a:?} is not supported: use hmac-sha256, hmac-sha384 or hmac-sha512 (the key's algorithm on the server)"),
                )
            })?,
        };
        let Some(path) = &self.secret_file else {
            return Err(invalid(
                "acme.dns01.secret_file",
                "is not set: give a file (mode 0600) holding the TSIG key's base64 secret, such as the output of `tsig-keygen`".into(),
            ));
        };
        let secret = read_secret(path).map_err(|m| invalid("acme.dns01.secret_file", m))?;
        let propagation_timeout = match &self.propagation_timeout {
            None => PROPAGATION_TIMEOUT,
            Some(s) => humantime::parse_duration(s)
                .ok()
                .filter(|d| *d >= Duration::from_secs(1) && *d <= PROPAGATION_TIMEOUT_MAX)
                .ok_or_else(|| {
                    invalid(
                        "acme.dns01.propagation_timeout",
                        format!("{s:?} is not a duration from 1s to 5m: write e.g. \"2m\""),
                    )
                })?,
        };
        Ok(Dns01Settings {
            server,
            zone,
            key_name,
            algorithm,
            secret,
            propagation_timeout,
            exchange_timeout: EXCHANGE_TIMEOUT,
        })
    }
}

/// A fully qualified name from `text` (a trailing dot or not).
pub(super) fn fqdn(text: &str) -> Result<Name, String> {
    let text = text.trim().trim_end_matches('.');
    if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("empty or with spaces".into());
    }
    let mut name = Name::from_ascii(text).map_err(|e| e.to_string())?;
    name.set_fqdn(true);
    Ok(name)
}

/// The TSIG algorithm a config names, if supported.
fn parse_algorithm(text: &str) -> Option<TsigAlgorithm> {
    match text
        .trim()
        .trim_end_matches('.')
        .to_ascii_lowercase()
        .as_str()
    {
        "hmac-sha256" => Some(TsigAlgorithm::HmacSha256),
        "hmac-sha384" => Some(TsigAlgorithm::HmacSha384),
        "hmac-sha512" => Some(TsigAlgorithm::HmacSha512),
        _ => None,
    }
}

/// `host:port` from `host`, `host:port`, `[v6]:port`, or a bare IPv6
/// address; port 53 by default.
pub(super) fn parse_server(text: &str) -> Result<String, String> {
    let fix = "write host or host:port, such as \"ns1.example.com:53\" or \"[2001:db8::53]:53\"";
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?} has no closing ']': {fix}"))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("{text:?} has text after ']': {fix}"))?,
                ),
            ),
        }
    } else if text.matches(':').count() == 1 {
        let (h, p) = text.split_once(':').unwrap_or((text, ""));
        (h, Some(p))
    } else {
        (text, None)
    };
    if host.is_empty()
        || host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(format!("{text:?} has no host: {fix}"));
    }
    if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(format!("{text:?} is not a host: {fix}"));
    }
    let port = match port {
        None => 53,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{text:?} has no valid port: {fix}"))?,
    };
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// The secret in `path`: the file must be private (0600) and hold the
/// base64 secret, alone or in a `key { secret "..."; }` clause.
fn read_secret(path: &Path) -> Result<TsigSecret, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| {
        format!("{shown} cannot be read ({e}): give the file holding the TSIG key's secret")
    })?;
    if !meta.is_file() {
        return Err(format!(
            "{shown} is not a file: give the file holding the TSIG key's secret"
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{shown} may be read by other users (mode {mode:04o}): run `chmod 600 {shown}`"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!("{shown} cannot be read ({e}): give the file holding the TSIG key's secret")
    })?;
    let encoded = secret_text(&text);
    match B64.decode(encoded) {
        Ok(bytes) if !bytes.is_empty() => Ok(TsigSecret::new(bytes)),
        // The decoder's message could quote the secret: not shown.
        _ => Err(format!(
            "{shown} holds no base64 secret: write the key's secret alone, or the key clause `tsig-keygen NAME` prints"
        )),
    }
}

/// The base64 text of a secret file: the quoted value after `secret` in
/// a BIND key clause, or the whole text.
fn secret_text(text: &str) -> &str {
    if let Some(at) = text.find("secret") {
        let rest = &text[at + "secret".len()..];
        if let Some(open) = rest.find('"') {
            let value = &rest[open + 1..];
            if let Some(close) = value.find('"') {
                return value[..close].trim();
            }
        }
    }
    text.trim()
}
