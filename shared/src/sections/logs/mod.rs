//! The `logs` section: where a host keeps and ships its containers' output.
//!
//! Every host follows the stdout and stderr of the containers it runs and
//! writes each line, with its timestamp and stream, to one file per
//! container ([`FileSettings`]). Lines are also shipped to the sinks of
//! the container's stack ([`LogsSection::sinks_for`]): the cluster's sinks,
//! unless the stack names its own. Each sink has a bounded on-disk buffer
//! with checkpoints (at least once); when it is full, the sink's
//! [`FullPolicy`] applies and every dropped line is counted in the report.
//!
//! `skiff logs` reads through the link: the coordinator sends a
//! [`LogQuery`] to each host (a [`crate::protocol::CoordinatorMessage::Query`])
//! and the host answers with a stream of [`LogChunk`]s.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Nothing, SectionKind};

mod sink;

pub use sink::{
    DEFAULT_BUFFER_BYTES, Endpoint, MAX_BUFFER_BYTES, MIN_BUFFER_BYTES, SinkError, Transport,
};

/// The `logs` section.
#[derive(Debug, Clone, Copy)]
pub struct Logs;

impl SectionKind for Logs {
    const NAME: &'static str = "logs";
    const CAPABILITY: &'static str = "logs.v1";
    type Desired = LogsSection;
    type Report = LogsReport;
    type Delivery = Nothing;

    fn check_report(report: &LogsReport) -> Result<(), String> {
        report.check()
    }
}

/// What a host does with its containers' output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsSection {
    /// This host's node name, carried by every record it ships.
    pub host: String,
    pub files: FileSettings,
    /// The cluster's sinks: every stack without its own ships to these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<SinkSpec>,
    /// Stacks that name their own sinks (`x-skiff.logs.sinks`), by stack
    /// name; an empty list ships that stack nowhere.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stack_sinks: BTreeMap<String, Vec<SinkSpec>>,
}

impl LogsSection {
    /// The sinks a stack's lines go to.
    pub fn sinks_for(&self, stack: &str) -> &[SinkSpec] {
        self.stack_sinks
            .get(stack)
            .map_or(&self.sinks, Vec::as_slice)
    }

    /// Checks every sink and the file settings.
    ///
    /// # Errors
    /// The first problem, naming the sink or setting and the fix.
    pub fn check(&self) -> Result<(), SinkError> {
        self.files.check()?;
        check_sinks(&self.sinks)?;
        for sinks in self.stack_sinks.values() {
            check_sinks(sinks)?;
        }
        Ok(())
    }
}

/// Checks a list of sinks: each valid, names unique.
///
/// # Errors
/// The first problem, naming the sink and the fix.
pub fn check_sinks(sinks: &[SinkSpec]) -> Result<(), SinkError> {
    let mut names = std::collections::BTreeSet::new();
    for sink in sinks {
        sink.check()?;
        if !names.insert(sink.name.as_str()) {
            return Err(SinkError::new(
                &sink.name,
                "is named twice: give each sink its own name",
            ));
        }
    }
    Ok(())
}

/// The per-container files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSettings {
    /// Where each container's file is: `{stack}`, `{service}`,
    /// `{container}` (`<stack>.<service>.<slot>`), `{slot}` and
    /// `{host}` are replaced. Absolute, ends in a file name.
    pub path_template: String,
    /// A file is rotated when it reaches this size...
    pub max_file_bytes: u64,
    /// ...or this age (0: never by age).
    pub max_file_age_s: u64,
    /// Rotated files kept per container (the oldest are removed).
    pub keep_files: u32,
    /// Rotated files, and the files of containers gone for this long, are
    /// removed (0: no age limit).
    pub retain_days: u32,
}

/// The default path template.
pub const DEFAULT_PATH_TEMPLATE: &str = "/var/log/skiff/{stack}/{service}/{container}.log";

impl Default for FileSettings {
    fn default() -> Self {
        Self {
            path_template: DEFAULT_PATH_TEMPLATE.to_owned(),
            max_file_bytes: 64 << 20,
            max_file_age_s: 86_400,
            keep_files: 5,
            retain_days: 7,
        }
    }
}

impl FileSettings {
    /// Checks the template and the limits.
    ///
    /// # Errors
    /// What is wrong and the fix.
    pub fn check(&self) -> Result<(), SinkError> {
        let t = &self.path_template;
        let bad = |why: &str| Err(SinkError::new("logs.path_template", why));
        if !t.starts_with('/') {
            return bad(
                "must be an absolute path, like /var/log/skiff/{stack}/{service}/{container}.log",
            );
        }
        if t.ends_with('/') {
            return bad("must end in a file name, like {container}.log");
        }
        if t.split('/').any(|part| part == "..") {
            return bad("must not contain `..`");
        }
        let mut rest = t.as_str();
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                return bad("has a `{` that is not closed");
            };
            let key = &rest[open + 1..open + close];
            if !matches!(key, "stack" | "service" | "container" | "slot" | "host") {
                return bad("knows only {stack}, {service}, {container}, {slot} and {host}");
            }
            rest = &rest[open + close + 1..];
        }
        if !t.contains("{container}") {
            return bad("must contain {container}, or two containers would share a file");
        }
        if self.max_file_bytes < 4096 {
            return Err(SinkError::new(
                "logs.max_file_size",
                "is below 4 KiB: give each file room for some lines",
            ));
        }
        if self.keep_files == 0 {
            return Err(SinkError::new(
                "logs.keep_files",
                "is 0: keep at least one rotated file",
            ));
        }
        Ok(())
    }
}

/// One place lines are shipped to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkSpec {
    /// Unique among the sinks it is listed with: `[a-z0-9-]`, 1-40.
    pub name: String,
    /// `udp://host:port`, `tcp://host:port` or `tls://host:port` for
    /// syslog; `http://` or `https://` URLs for JSON lines and OTLP.
    pub url: String,
    pub format: SinkFormat,
    /// PEM certificates to trust for `tls://` and `https://`, instead of
    /// the host's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// The on-disk buffer's bound.
    pub buffer_bytes: u64,
    /// What happens when the buffer is full.
    pub when_full: FullPolicy,
}

/// How lines are written for a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkFormat {
    /// RFC 5424 syslog: over UDP, over TCP with octet counting
    /// (RFC 6587), or over TLS (RFC 5425).
    Syslog,
    /// HTTP POST of JSON objects, one per line.
    JsonLines,
    /// OpenTelemetry logs over OTLP/HTTP, JSON encoding.
    Otlp,
}

impl SinkFormat {
    pub const ALL: [Self; 3] = [Self::Syslog, Self::JsonLines, Self::Otlp];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Syslog => "syslog",
            Self::JsonLines => "json_lines",
            Self::Otlp => "otlp",
        }
    }
}

impl std::str::FromStr for SinkFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str() == s.replace('-', "_"))
            .ok_or_else(|| format!("unknown log format {s:?}: use syslog, json_lines or otlp"))
    }
}

/// What a full buffer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Stop reading containers' output until there is room (the engine
    /// keeps it meanwhile; containers never wait).
    #[default]
    Block,
    /// Drop the oldest buffered lines, counting them.
    DropOldest,
}

impl FullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::DropOldest => "drop_oldest",
        }
    }
}

impl std::str::FromStr for FullPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.replace('-', "_").as_str() {
            "block" => Ok(Self::Block),
            "drop_oldest" => Ok(Self::DropOldest),
            _ => Err(format!(
                "unknown full-buffer policy {s:?}: use block or drop_oldest"
            )),
        }
    }
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// What a host says about its logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsReport {
    /// Containers followed now.
    pub followed: u32,
    /// Lines read from containers since the agent started.
    pub lines_read: u64,
    /// Lines read twice after an agent restart (at least once: at most
    /// the lines after the last checkpoint).
    pub duplicates: u64,
    /// Problems following or writing files, with the fix (the newest few).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<SinkStatus>,
}

/// Most errors a report carries.
pub const MAX_REPORT_ERRORS: usize = 16;
/// Most sinks a report carries.
pub const MAX_REPORT_SINKS: usize = 256;

impl LogsReport {
    /// Bounds the coordinator holds reports to.
    ///
    /// # Errors
    /// What is over which bound.
    pub fn check(&self) -> Result<(), String> {
        if self.errors.len() > MAX_REPORT_ERRORS || self.errors.iter().any(|e| e.len() > 1024) {
            return Err("logs report: too many or too long errors".into());
        }
        if self.sinks.len() > MAX_REPORT_SINKS {
            return Err("logs report: too many sinks".into());
        }
        for s in &self.sinks {
            if s.name.len() > 64
                || s.stack.as_ref().is_some_and(|x| x.len() > 256)
                || s.error.as_ref().is_some_and(|e| e.len() > 1024)
                || s.refused.as_ref().is_some_and(|e| e.len() > 1024)
            {
                return Err("logs report: a sink's status is over its bounds".into());
            }
        }
        Ok(())
    }
}

/// One sink on one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkStatus {
    pub name: String,
    /// The stack whose own sink this is; none for a cluster sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// Whether the receiver took the last batch.
    pub healthy: bool,
    /// Lines the receiver took.
    pub delivered: u64,
    /// Lines and bytes waiting in the buffer.
    pub buffered_lines: u64,
    pub buffered_bytes: u64,
    /// Lines dropped because the buffer was full (`drop_oldest`).
    pub dropped: u64,
    /// The last delivery error, with the fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A newer configuration of this sink that was refused (the receiver
    /// could not be reached, its certificate did not verify): the old one
    /// stays in force. Says why and the fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// What `skiff logs` asks a host for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogQuery {
    pub stack: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// Only lines at or after this time (Unix nanoseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ns: Option<i64>,
    /// Only the last this many lines of each container (before following).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u32>,
    /// Go on with new lines after the history.
    #[serde(default)]
    pub follow: bool,
}

/// Most lines a host sends for one query without following.
pub const MAX_QUERY_LINES: usize = 100_000;
/// Most bytes of lines in one chunk.
pub const MAX_CHUNK_BYTES: usize = 256 << 10;

/// Part of a host's answer to a [`LogQuery`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// In time order within the chunk and across the chunks of one
    /// container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<LogLine>,
    /// The history is complete: what follows is live.
    #[serde(default)]
    pub history_done: bool,
    /// Lines left out since the previous chunk (the reader was too slow,
    /// or the history was over [`MAX_QUERY_LINES`]).
    #[serde(default)]
    pub dropped: u64,
    /// The answer ends here (with `error` when it failed).
    #[serde(default)]
    pub end: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One line of a container's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When the engine read it (Unix nanoseconds).
    pub ts_ns: i64,
    pub stream: Stream,
    pub service: String,
    pub slot: u32,
    /// The release that made the container.
    pub release: u64,
    /// Without its line end.
    pub line: String,
}

#[cfg(test)]
mod tests;
