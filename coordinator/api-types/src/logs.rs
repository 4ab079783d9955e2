//! Logs as the API shows them: the cluster's sinks
//! (`GET /api/v1/logs/sinks`, `PUT` and `DELETE /api/v1/logs/sinks/{name}`)
//! with each host's status, and the lines of `skiff logs`
//! (`GET /api/v1/stacks/{stack}/logs`, newline-delimited JSON).

use serde::{Deserialize, Serialize};

/// The largest CA PEM a sink may carry.
pub const MAX_SINK_CA_BYTES: usize = 256 * 1024;

/// A sink to add or replace (its name is in the path).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PutSink {
    /// `udp://`, `tcp://` or `tls://host:port` for syslog; an `http://` or
    /// `https://` URL for JSON lines and OTLP.
    pub url: String,
    /// `syslog` (the default), `json_lines` or `otlp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// PEM certificates to trust instead of the host's roots (TLS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// The on-disk buffer per host, in bytes (default 256 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_bytes: Option<u64>,
    /// `block` (the default) or `drop_oldest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_full: Option<String>,
}

/// A sink: the cluster's, or a stack's own (`stack`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SinkView {
    pub name: String,
    /// The stack whose own sink this is (`x-skiff.logs`); none for the
    /// cluster's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    pub url: String,
    pub format: String,
    /// Whether it trusts its own CA (never shown).
    pub has_ca: bool,
    pub buffer_bytes: u64,
    pub when_full: String,
    /// How it does on each host that reported it.
    #[serde(default)]
    pub hosts: Vec<SinkHostView>,
}

/// A sink on one host, from the host's last report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SinkHostView {
    pub host: String,
    /// Whether the receiver took the last batch.
    pub healthy: bool,
    /// Lines the receiver took.
    pub delivered: u64,
    /// Lines and bytes waiting in the host's buffer.
    pub buffered_lines: u64,
    pub buffered_bytes: u64,
    /// Lines dropped because the buffer was full.
    pub dropped: u64,
    /// The last delivery error, with the fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A newer configuration the host refused (the old one stays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// One object of a `GET /stacks/{stack}/logs` stream: a line, or a
/// notice (`dropped` lines, or an `error`) from one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogEntry {
    /// The node that sent it.
    pub host: String,
    /// When the engine read the line (RFC 3339, nanoseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<u64>,
    /// `stdout` or `stderr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    /// Lines this host left out (a slow reader, a history over its bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    /// This host's answer failed or was cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
