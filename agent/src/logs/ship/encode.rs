//! What a receiver is sent: RFC 5424 syslog messages, JSON lines, and
//! OTLP/HTTP JSON.
//!
//! Syslog: facility `user` (1); severity `info` (6) for stdout and `err`
//! (3) for stderr, as Docker's own logging drivers do. HOSTNAME is the
//! host, APP-NAME `<stack>.<service>`, PROCID the replica, MSGID the
//! stream; structured data `[skiff@32473 host= stack= service= replica=
//! release= stream=]`. The message is the line as UTF-8 without a BOM (the
//! RFC's `MSG-ANY`): rsyslog keeps a BOM in the message text it writes,
//! and receivers read UTF-8 either way.

use std::fmt::Write as _;

use serde::Serialize;

use crate::logs::record::{Record, Stream};

/// The private enterprise number in the structured data's id.
pub const SD_ID: &str = "skiff@32473";
/// Most bytes of one syslog datagram (rsyslog's default largest message);
/// longer lines are cut at a character boundary.
pub const MAX_DATAGRAM: usize = 8192;

const FACILITY_USER: u8 = 1;

fn severity(stream: Stream) -> u8 {
    match stream {
        Stream::Stdout => 6,
        Stream::Stderr => 3,
    }
}

/// RFC 3339 in UTC with `digits` fractional digits (6 for syslog, whose
/// TIME-SECFRAC allows no more; 9 elsewhere).
pub fn rfc3339(ts_ns: i64, digits: u32) -> String {
    let mut out = Vec::with_capacity(32);
    write_rfc3339(&mut out, ts_ns, digits);
    String::from_utf8(out).unwrap_or_default()
}

fn write_rfc3339(out: &mut Vec<u8>, ts_ns: i64, digits: u32) {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts_ns))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let frac = t.nanosecond() / 10u32.pow(9 - digits);
    let _ = write!(
        Wr(out),
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:0width$}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        frac,
        width = digits as usize
    );
}

/// A header field: printable US-ASCII without spaces, at most `max`
/// bytes, `-` when empty.
fn field(out: &mut Vec<u8>, value: impl Iterator<Item = u8>, max: usize) {
    let mut n = 0;
    for b in value {
        if n == max {
            break;
        }
        out.push(if (33..=126).contains(&b) { b } else { b'_' });
        n += 1;
    }
    if n == 0 {
        out.push(b'-');
    }
}

/// A structured-data parameter value, with `"`, `\` and `]` escaped.
fn param(out: &mut Vec<u8>, value: &str) {
    for b in value.bytes() {
        if matches!(b, b'"' | b'\\' | b']') {
            out.push(b'\\');
        }
        out.push(b);
    }
}

/// One RFC 5424 message.
pub fn syslog(record: &Record, out: &mut Vec<u8>) {
    let s = &record.source;
    let pri = FACILITY_USER * 8 + severity(record.stream);
    let _ = write!(Wr(out), "<{pri}>1 ");
    write_rfc3339(out, record.ts_ns, 6);
    out.push(b' ');
    field(out, s.host.bytes(), 255);
    out.push(b' ');
    let app = s
        .stack
        .bytes()
        .chain(std::iter::once(b'.'))
        .chain(s.service.bytes());
    field(out, app, 48);
    let _ = write!(
        Wr(out),
        " {} {} [{SD_ID} host=\"",
        s.slot,
        record.stream.as_str()
    );
    param(out, &s.host);
    out.extend_from_slice(b"\" stack=\"");
    param(out, &s.stack);
    out.extend_from_slice(b"\" service=\"");
    param(out, &s.service);
    let _ = write!(
        Wr(out),
        "\" replica=\"{}\" release=\"{}\" stream=\"{}\"] ",
        s.slot,
        s.release,
        record.stream.as_str()
    );
    out.extend_from_slice(record.line.as_bytes());
}

/// One message with octet counting (RFC 6587 3.4.1, RFC 5425): `LEN SP MSG`.
pub fn syslog_framed(record: &Record, out: &mut Vec<u8>, scratch: &mut Vec<u8>) {
    scratch.clear();
    syslog(record, scratch);
    let _ = write!(Wr(out), "{} ", scratch.len());
    out.extend_from_slice(scratch);
}

/// One message for a datagram, cut to [`MAX_DATAGRAM`] bytes at a
/// character boundary.
pub fn syslog_datagram(record: &Record, out: &mut Vec<u8>) {
    out.clear();
    syslog(record, out);
    if out.len() > MAX_DATAGRAM {
        let mut cut = MAX_DATAGRAM;
        // Back up over UTF-8 continuation bytes.
        while cut > 0 && out[cut] & 0xC0 == 0x80 {
            cut -= 1;
        }
        out.truncate(cut);
    }
}

#[derive(Serialize)]
struct JsonLine<'a> {
    ts: String,
    host: &'a str,
    stack: &'a str,
    service: &'a str,
    replica: u32,
    release: u64,
    stream: &'a str,
    container: &'a str,
    line: &'a str,
}

/// One JSON object and a newline.
pub fn json_line(record: &Record, out: &mut Vec<u8>) {
    let s = &record.source;
    let line = JsonLine {
        ts: rfc3339(record.ts_ns, 9),
        host: &s.host,
        stack: &s.stack,
        service: &s.service,
        replica: s.slot,
        release: s.release,
        stream: record.stream.as_str(),
        container: &s.container,
        line: &record.line,
    };
    if serde_json::to_writer(&mut *out, &line).is_ok() {
        out.push(b'\n');
    }
}

/// An OTLP/HTTP JSON `ExportLogsServiceRequest` for `records`: one
/// resource per host (`host.name`), one scope (`skiff`), a log record per
/// line (64-bit integers as decimal strings, as the OTLP JSON encoding
/// asks).
pub fn otlp(records: &[Record]) -> Vec<u8> {
    use serde_json::{Value, json};
    let string = |k: &str, v: &str| json!({"key": k, "value": {"stringValue": v}});
    let int = |k: &str, v: u64| json!({"key": k, "value": {"intValue": v.to_string()}});
    let mut hosts: Vec<(&str, Vec<Value>)> = Vec::new();
    for r in records {
        let s = &r.source;
        let (number, text) = match r.stream {
            Stream::Stdout => (9, "INFO"),
            Stream::Stderr => (17, "ERROR"),
        };
        let log = json!({
            "timeUnixNano": r.ts_ns.to_string(),
            "observedTimeUnixNano": r.ts_ns.to_string(),
            "severityNumber": number,
            "severityText": text,
            "body": {"stringValue": r.line},
            "attributes": [
                string("stack", &s.stack),
                string("service", &s.service),
                int("replica", u64::from(s.slot)),
                int("release", s.release),
                string("stream", r.stream.as_str()),
                string("container", &s.container),
            ],
        });
        match hosts.iter_mut().find(|(h, _)| *h == s.host) {
            Some((_, logs)) => logs.push(log),
            None => hosts.push((&s.host, vec![log])),
        }
    }
    let resource_logs: Vec<Value> = hosts
        .into_iter()
        .map(|(host, logs)| {
            json!({
                "resource": {"attributes": [string("host.name", host)]},
                "scopeLogs": [{"scope": {"name": "skiff"}, "logRecords": logs}],
            })
        })
        .collect();
    serde_json::to_vec(&json!({ "resourceLogs": resource_logs })).unwrap_or_default()
}

/// `fmt::Write` into a byte vector.
struct Wr<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Wr<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}
