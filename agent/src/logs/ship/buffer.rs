//! A sink's on-disk buffer: append-only segment files of framed records
//! (`<seq>.seg`, 0600, in a 0700 directory) and a checkpoint (`ack`) of
//! what the receiver took, replaced by fsync and rename.
//!
//! Appends are fsynced once per call (one call per batch the follower
//! hands over): when [`Buffer::append`] returns, the batch survives a
//! crash, so the follower may checkpoint its read position. Acknowledged
//! segments are deleted. After a restart reading resumes at the
//! checkpoint: lines acknowledged after the last checkpoint are sent again
//! (at least once; the checkpoint is written at most every
//! [`CHECKPOINT_EVERY`] while lines flow, and whenever the shipper is idle).
//!
//! The bound counts the segment files on disk. Under `block` an append
//! that does not fit is refused ([`Appended::Full`]) and the caller waits
//! for [`Buffer::room`]; under `drop_oldest` the oldest segments are
//! deleted and their unacknowledged lines counted as dropped.
//!
//! Blocking I/O: call these from `spawn_blocking`.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use skiff_shared::files;
use skiff_shared::sections::logs::FullPolicy;
use tokio::sync::Notify;
use tracing::warn;

use super::frame;
use crate::logs::record::{Record, Source};

/// How often the checkpoint is written while lines flow.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// A position in the buffer: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub seq: u64,
    pub offset: u64,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    bytes: u64,
    lines: u64,
}

/// What an append did.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    Stored,
    /// No room under `block`: wait for [`Buffer::room`] and try again.
    Full,
}

/// Records read from the buffer, not yet acknowledged.
#[derive(Debug)]
pub struct Batch {
    pub records: Vec<Record>,
    pub start: Pos,
    pub end: Pos,
}

/// Counters and sizes, for the sink's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub delivered: u64,
    pub buffered_lines: u64,
    pub buffered_bytes: u64,
    pub dropped: u64,
}

/// A sink's buffer.
#[derive(Debug)]
pub struct Buffer {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Fired when acknowledgements or drops made room.
    room: Notify,
    /// Fired when records were appended.
    data: Notify,
}

#[derive(Debug)]
struct Inner {
    /// Oldest first; the last is the one appended to.
    segments: VecDeque<Segment>,
    writer: Option<File>,
    ack: Pos,
    /// Lines of the segment `ack` is in that are acknowledged.
    acked_lines: u64,
    limit: u64,
    policy: FullPolicy,
    segment_bytes: u64,
    delivered: u64,
    dropped: u64,
    checkpointed: Pos,
    checkpoint_at: Instant,
}

/// Most bytes of one segment: a sixteenth of the bound, so `drop_oldest`
/// drops in small steps, between 64 KiB and 16 MiB.
fn segment_bytes(limit: u64) -> u64 {
    (limit / 16).clamp(64 << 10, 16 << 20)
}

fn seg_name(seq: u64) -> String {
    format!("{seq:016}.seg")
}

impl Buffer {
    /// Opens (or creates) the buffer in `dir`, resuming at its checkpoint.
    ///
    /// # Errors
    /// The directory or its files cannot be read or created.
    pub fn open(dir: &Path, limit: u64, policy: FullPolicy) -> io::Result<Arc<Self>> {
        files::create_private_dir(dir)?;
        let mut seqs: Vec<u64> = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name.strip_suffix(".seg").and_then(|s| s.parse().ok()) {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut ack = read_checkpoint(dir).unwrap_or(Pos { seq: 0, offset: 0 });
        let mut segments = VecDeque::new();
        let mut acked_lines = 0;
        for seq in seqs {
            let path = dir.join(seg_name(seq));
            if seq < ack.seq {
                fs::remove_file(&path)?;
                continue;
            }
            let (bytes, lines, lines_before) = scan(&path, (seq == ack.seq).then_some(ack.offset))?;
            if seq == ack.seq {
                acked_lines = lines_before.0;
                ack.offset = lines_before.1;
            }
            segments.push_back(Segment { seq, bytes, lines });
        }
        if segments.front().is_none_or(|s| s.seq != ack.seq) {
            ack = Pos {
                seq: segments.front().map_or(ack.seq, |s| s.seq),
                offset: 0,
            };
            acked_lines = 0;
        }
        let next = segments.back().map_or(ack.seq.max(1), |s| s.seq + 1);
        let buffer = Self {
            dir: dir.to_owned(),
            inner: Mutex::new(Inner {
                segments,
                writer: None,
                ack,
                acked_lines,
                limit,
                policy,
                segment_bytes: segment_bytes(limit),
                delivered: 0,
                dropped: 0,
                checkpointed: ack,
                checkpoint_at: Instant::now(),
            }),
            room: Notify::new(),
            data: Notify::new(),
        };
        {
            let mut inner = buffer.lock();
            buffer.start_segment(&mut inner, next)?;
            if let Some(first) = inner.segments.front()
                && first.seq != inner.ack.seq
            {
                inner.ack = Pos {
                    seq: first.seq,
                    offset: 0,
                };
                inner.acked_lines = 0;
            }
            buffer.settle(&mut inner)?;
        }
        Ok(Arc::new(buffer))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Counts lines that could not be buffered as dropped.
    pub fn count_dropped(&self, lines: u64) {
        self.lock().dropped += lines;
    }

    /// Changes the bound and the policy (a sink's settings changed).
    pub fn set_limits(&self, limit: u64, policy: FullPolicy) {
        let mut inner = self.lock();
        inner.limit = limit;
        inner.policy = policy;
        inner.segment_bytes = segment_bytes(limit);
        drop(inner);
        self.room.notify_waiters();
    }

    /// Resolves when acknowledgements or drops made room; create the
    /// future before the append that came back [`Appended::Full`].
    pub fn room(&self) -> &Notify {
        &self.room
    }

    /// Resolves when records were appended.
    pub fn data(&self) -> &Notify {
        &self.data
    }

    /// Appends frames (`lines` records), fsynced before it returns.
    ///
    /// # Errors
    /// Writing or syncing failed.
    pub fn append(&self, frames: &[u8], lines: u64) -> io::Result<Appended> {
        if lines == 0 {
            return Ok(Appended::Stored);
        }
        let len = frames.len() as u64;
        let mut inner = self.lock();
        if inner.used() + len > inner.limit {
            match inner.policy {
                FullPolicy::Block if inner.buffered_bytes() > 0 => return Ok(Appended::Full),
                FullPolicy::Block => {}
                FullPolicy::DropOldest => self.drop_oldest(&mut inner, len)?,
            }
        }
        let Some(writer) = inner.writer.as_mut() else {
            return Err(io::Error::other("the buffer has no open segment"));
        };
        writer.write_all(frames)?;
        writer.sync_data()?;
        if let Some(last) = inner.segments.back_mut() {
            last.bytes += len;
            last.lines += lines;
        }
        if inner
            .segments
            .back()
            .is_some_and(|s| s.bytes >= inner.segment_bytes)
        {
            let next = inner.segments.back().map_or(1, |s| s.seq + 1);
            self.start_segment(&mut inner, next)?;
        }
        drop(inner);
        self.data.notify_one();
        Ok(Appended::Stored)
    }

    /// Deletes the oldest segments until `len` more bytes fit (the one
    /// being written too, if it must), counting their unacknowledged lines.
    fn drop_oldest(&self, inner: &mut Inner, len: u64) -> io::Result<()> {
        while inner.used() + len > inner.limit && inner.used() > 0 {
            if inner.segments.len() == 1 {
                let next = inner.segments.back().map_or(1, |s| s.seq + 1);
                self.start_segment(inner, next)?;
            }
            let Some(first) = inner.segments.pop_front() else {
                break;
            };
            let lost = if first.seq == inner.ack.seq {
                first.lines - inner.acked_lines
            } else {
                first.lines
            };
            inner.dropped += lost;
            fs::remove_file(self.dir.join(seg_name(first.seq)))?;
            inner.ack = Pos {
                seq: inner.segments.front().map_or(first.seq + 1, |s| s.seq),
                offset: 0,
            };
            inner.acked_lines = 0;
            if lost > 0 {
                warn!(
                    dir = %self.dir.display(),
                    lines = lost,
                    "A sink's buffer is full: its oldest lines were dropped."
                );
            }
        }
        Ok(())
    }

    fn start_segment(&self, inner: &mut Inner, seq: u64) -> io::Result<()> {
        let path = self.dir.join(seg_name(seq));
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .truncate(false)
            .mode(files::PRIVATE)
            .open(&path)?;
        files::restrict(&path, files::PRIVATE)?;
        File::open(&self.dir)?.sync_all()?;
        if let Some(w) = inner.writer.take() {
            w.sync_data()?;
        }
        inner.writer = Some(file);
        inner.segments.push_back(Segment {
            seq,
            bytes: 0,
            lines: 0,
        });
        Ok(())
    }

    /// Deletes the segments before the acknowledged position that are
    /// complete.
    fn settle(&self, inner: &mut Inner) -> io::Result<()> {
        while inner.segments.len() > 1 {
            let Some(first) = inner.segments.front() else {
                break;
            };
            if first.seq != inner.ack.seq || inner.ack.offset < first.bytes {
                break;
            }
            let seq = first.seq;
            inner.segments.pop_front();
            fs::remove_file(self.dir.join(seg_name(seq)))?;
            inner.ack = Pos {
                seq: inner.segments.front().map_or(seq + 1, |s| s.seq),
                offset: 0,
            };
            inner.acked_lines = 0;
        }
        Ok(())
    }

    /// Reads up to `max_lines` records (and about `max_bytes`) from the
    /// acknowledged position, within one segment. None when everything is
    /// acknowledged.
    ///
    /// # Errors
    /// Reading failed. A corrupt frame drops the rest of its segment
    /// (counted) and is reported as an error.
    pub fn read(&self, max_lines: usize, max_bytes: usize) -> io::Result<Option<Batch>> {
        // A segment dropped (`drop_oldest`) between choosing it and
        // opening it: read again from the new position.
        for _ in 0..8 {
            match self.read_once(max_lines, max_bytes) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                other => return other,
            }
        }
        self.read_once(max_lines, max_bytes)
    }

    fn read_once(&self, max_lines: usize, max_bytes: usize) -> io::Result<Option<Batch>> {
        let (start, end_of_segment) = {
            let mut inner = self.lock();
            self.settle(&mut inner)?;
            let ack = inner.ack;
            let Some(seg) = inner.segments.iter().find(|s| s.seq == ack.seq) else {
                return Ok(None);
            };
            if ack.offset >= seg.bytes {
                return Ok(None);
            }
            (ack, seg.bytes)
        };
        let path = self.dir.join(seg_name(start.seq));
        let file = File::open(&path)?;
        let want = (end_of_segment - start.offset).min(max_bytes as u64);
        let mut buf = vec![0; usize::try_from(want).unwrap_or(max_bytes)];
        file.read_exact_at(&mut buf, start.offset)?;
        let mut records = Vec::new();
        let mut at = 0usize;
        let mut previous: Option<Arc<Source>> = None;
        while records.len() < max_lines {
            let Some(header) = buf.get(at..at + frame::HEADER) else {
                break;
            };
            let mut h = [0u8; frame::HEADER];
            h.copy_from_slice(header);
            let Some(len) = frame::payload_len(h) else {
                return Err(self.corrupt(
                    start,
                    Pos {
                        seq: start.seq,
                        offset: start.offset + at as u64,
                    },
                ));
            };
            let from = at + frame::HEADER;
            let payload = match buf.get(from..from + len) {
                Some(p) => p,
                None if records.is_empty() => {
                    // One frame larger than max_bytes: read it alone.
                    let offset = start.offset + from as u64;
                    if offset + len as u64 > end_of_segment {
                        return Err(self.corrupt(
                            start,
                            Pos {
                                seq: start.seq,
                                offset,
                            },
                        ));
                    }
                    buf = vec![0; len];
                    file.read_exact_at(&mut buf, offset)?;
                    let Some(record) = frame::decode(&buf, None) else {
                        return Err(self.corrupt(
                            start,
                            Pos {
                                seq: start.seq,
                                offset,
                            },
                        ));
                    };
                    return Ok(Some(Batch {
                        records: vec![record],
                        start,
                        end: Pos {
                            seq: start.seq,
                            offset: offset + len as u64,
                        },
                    }));
                }
                None => break,
            };
            let Some(record) = frame::decode(payload, previous.as_ref()) else {
                return Err(self.corrupt(
                    start,
                    Pos {
                        seq: start.seq,
                        offset: start.offset + at as u64,
                    },
                ));
            };
            previous = Some(record.source.clone());
            records.push(record);
            at = from + len;
        }
        Ok(Some(Batch {
            records,
            start,
            end: Pos {
                seq: start.seq,
                offset: start.offset + at as u64,
            },
        }))
    }

    /// Gives up the rest of a segment whose frame at `at` is corrupt.
    fn corrupt(&self, start: Pos, at: Pos) -> io::Error {
        let mut inner = self.lock();
        if inner.ack == start {
            if let Some(seg) = inner.segments.iter().find(|s| s.seq == start.seq) {
                let (bytes, lines) = (seg.bytes, seg.lines);
                // Lines before `at` in this read were not counted yet: count
                // the rest of the segment as dropped.
                inner.dropped += lines.saturating_sub(inner.acked_lines);
                inner.acked_lines = lines;
                inner.ack.offset = bytes;
            }
            if inner.segments.back().is_some_and(|s| s.seq == start.seq) {
                let next = start.seq + 1;
                if let Err(e) = self.start_segment(&mut inner, next) {
                    return e;
                }
            }
        }
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "buffer segment {} is corrupt at byte {}: the rest of it was dropped",
                self.dir.join(seg_name(at.seq)).display(),
                at.offset
            ),
        )
    }

    /// Records that the receiver took `batch`: moves the acknowledged
    /// position, deletes finished segments, writes the checkpoint when it
    /// is due (or `force`).
    ///
    /// # Errors
    /// Deleting a segment or writing the checkpoint failed.
    pub fn ack(&self, batch: &Batch) -> io::Result<()> {
        let mut inner = self.lock();
        let lines = batch.records.len() as u64;
        inner.delivered += lines;
        if inner.ack == batch.start {
            inner.ack = batch.end;
            inner.acked_lines += lines;
        } else if inner
            .segments
            .front()
            .is_none_or(|s| batch.start.seq < s.seq)
        {
            // Its segment was dropped while it was on its way, and its
            // lines counted as dropped: they were delivered after all.
            inner.dropped = inner.dropped.saturating_sub(lines);
        }
        self.settle(&mut inner)?;
        if inner.checkpoint_at.elapsed() >= CHECKPOINT_EVERY {
            self.write_checkpoint(&mut inner)?;
        }
        drop(inner);
        self.room.notify_waiters();
        Ok(())
    }

    /// Writes the checkpoint if it is behind.
    ///
    /// # Errors
    /// Writing it failed.
    pub fn checkpoint(&self) -> io::Result<()> {
        let mut inner = self.lock();
        self.write_checkpoint(&mut inner)
    }

    fn write_checkpoint(&self, inner: &mut Inner) -> io::Result<()> {
        inner.checkpoint_at = Instant::now();
        if inner.checkpointed == inner.ack {
            return Ok(());
        }
        let text = format!("{} {}\n", inner.ack.seq, inner.ack.offset);
        files::write_atomic(&self.dir.join("ack"), text.as_bytes(), files::PRIVATE)?;
        inner.checkpointed = inner.ack;
        Ok(())
    }

    pub fn counts(&self) -> Counts {
        let inner = self.lock();
        let lines: u64 = inner.segments.iter().map(|s| s.lines).sum();
        Counts {
            delivered: inner.delivered,
            buffered_lines: lines - inner.acked_lines,
            buffered_bytes: inner.buffered_bytes(),
            dropped: inner.dropped,
        }
    }
}

impl Inner {
    /// Bytes of the segment files.
    fn used(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    fn buffered_bytes(&self) -> u64 {
        self.used() - self.ack_offset_in_first()
    }

    fn ack_offset_in_first(&self) -> u64 {
        match self.segments.front() {
            Some(s) if s.seq == self.ack.seq => self.ack.offset.min(s.bytes),
            _ => 0,
        }
    }
}

fn read_checkpoint(dir: &Path) -> Option<Pos> {
    let text = fs::read_to_string(dir.join("ack")).ok()?;
    let (seq, offset) = text.trim().split_once(' ')?;
    Some(Pos {
        seq: seq.parse().ok()?,
        offset: offset.parse().ok()?,
    })
}

/// Reads a segment's frame headers: its valid length and line count, and
/// for the acknowledged segment the lines and bytes before `ack` (rounded
/// down to a frame). A torn or corrupt tail is cut off.
fn scan(path: &Path, ack: Option<u64>) -> io::Result<(u64, u64, (u64, u64))> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let size = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(256 << 10, &mut file);
    let (mut at, mut lines, mut before) = (0u64, 0u64, (0u64, 0u64));
    loop {
        if let Some(a) = ack
            && at <= a
        {
            before = (lines, at);
        }
        let mut h = [0u8; frame::HEADER];
        if at + frame::HEADER as u64 > size || reader.read_exact(&mut h).is_err() {
            break;
        }
        let Some(len) = frame::payload_len(h) else {
            break;
        };
        let end = at + (frame::HEADER + len) as u64;
        if end > size {
            break;
        }
        reader.seek_relative(i64::try_from(len).unwrap_or(i64::MAX))?;
        at = end;
        lines += 1;
    }
    drop(reader);
    if at < size {
        warn!(
            file = %path.display(),
            kept = at,
            size,
            "A buffer segment ends in a torn or corrupt frame; it was cut there."
        );
        file.set_len(at)?;
        file.seek(SeekFrom::End(0))?;
        file.sync_all()?;
    }
    Ok((at, lines, before))
}
