//! How a record is kept in a sink's buffer: a little-endian `u32` length,
//! then the record (timestamp, stream, slot, release, then the source's
//! strings and the line, each length-prefixed).

use std::sync::Arc;

use crate::logs::record::{Record, Source, Stream};

/// Bytes of the length prefix.
pub const HEADER: usize = 4;
/// The smallest payload: the fixed fields and six empty strings.
const MIN_PAYLOAD: usize = 8 + 1 + 4 + 8 + 6 * 4;
/// The largest payload read back (a larger length is a torn or corrupt
/// frame).
pub const MAX_PAYLOAD: usize = 64 << 20;

/// Appends `record`'s frame to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let s = &record.source;
    let len = MIN_PAYLOAD
        + s.host.len()
        + s.stack.len()
        + s.service.len()
        + s.container.len()
        + s.container_id.len()
        + record.line.len();
    out.reserve(HEADER + len);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&record.ts_ns.to_le_bytes());
    out.push(match record.stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    });
    out.extend_from_slice(&s.slot.to_le_bytes());
    out.extend_from_slice(&s.release.to_le_bytes());
    for text in [
        &s.host,
        &s.stack,
        &s.service,
        &s.container,
        &s.container_id,
        &record.line,
    ] {
        out.extend_from_slice(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
}

/// The payload length a frame header announces, if it is plausible.
pub fn payload_len(header: [u8; HEADER]) -> Option<usize> {
    let len = u32::from_le_bytes(header) as usize;
    (MIN_PAYLOAD..=MAX_PAYLOAD).contains(&len).then_some(len)
}

/// Decodes one payload. `previous` is reused when the source is the same,
/// so the records of one container share it.
pub fn decode(payload: &[u8], previous: Option<&Arc<Source>>) -> Option<Record> {
    let mut r = Reader(payload);
    let ts_ns = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let stream = match r.take(1)?[0] {
        0 => Stream::Stdout,
        1 => Stream::Stderr,
        _ => return None,
    };
    let slot = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
    let release = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let host = r.text()?;
    let stack = r.text()?;
    let service = r.text()?;
    let container = r.text()?;
    let container_id = r.text()?;
    let line = r.text()?;
    if !r.0.is_empty() {
        return None;
    }
    let source = match previous {
        Some(p)
            if p.slot == slot
                && p.release == release
                && p.container_id == container_id
                && p.host == host
                && p.stack == stack
                && p.service == service
                && p.container == container =>
        {
            p.clone()
        }
        _ => Arc::new(Source {
            host: host.to_owned(),
            stack: stack.to_owned(),
            service: service.to_owned(),
            slot,
            release,
            container: container.to_owned(),
            container_id: container_id.to_owned(),
        }),
    };
    Some(Record {
        ts_ns,
        stream,
        line: line.to_owned(),
        source,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn text(&mut self) -> Option<&'a str> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        std::str::from_utf8(self.take(len)?).ok()
    }
}
