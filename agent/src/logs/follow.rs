//! Following one container: its output from the engine's json-file log
//! (`jsonfile`, the cheaper way), or through the Docker API
//! (`GET /containers/{id}/logs?follow=1&timestamps=1&since=<checkpoint>`)
//! when the container has another log driver; in batches of at most [`MAX_BATCH_LINES`] lines or [`MAX_BATCH_WAIT`],
//! each written to the container's file, pushed to the sinks, offered to
//! live queries and then checkpointed.
//!
//! While the sinks make a push wait (a full buffer under the `block`
//! policy) the follower reads nothing more: the engine keeps the output in
//! its own log, and the container never waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::{InspectContainerOptions, LogsOptions};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use skiff_shared::sections::logs::Stream;
use skiff_shared::tasks::TaskTree;
use tokio::time::Instant;

use super::checkpoint::Position;
use super::files;
use super::jsonfile::{Frame, JsonFile};
use super::record::{Record, Source};
use super::{LiveBatch, Shared};

/// Most lines in one batch.
pub const MAX_BATCH_LINES: usize = 1000;
/// Most bytes of lines in one batch.
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// Longest a line waits in a batch.
pub const MAX_BATCH_WAIT: Duration = Duration::from_millis(200);
/// A line Docker split (over 16 KiB) is put back together up to this
/// size, then cut.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Entries read from a json-file log at a time.
const READ_ENTRIES: usize = 2048;
/// How often the end of a json-file log is looked at again.
const POLL: Duration = Duration::from_millis(100);

/// Why following stopped before the container's output ended.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(
        "cannot read the output of {container}: {error} (the engine must keep it readable: use the json-file or local log driver, or leave Docker's dual logging on)"
    )]
    Engine {
        container: String,
        error: bollard::errors::Error,
    },
    #[error(
        "cannot write {path}: {error} (check the disk's free space and the directory's permissions, or change logs.path_template)"
    )]
    File { path: String, error: std::io::Error },
    #[error("cannot save the checkpoint of {container}: {error} (check the agent's data dir)")]
    Checkpoint {
        container: String,
        error: std::io::Error,
    },
}

/// The lines read and not yet written.
struct Batch {
    records: Vec<Record>,
    bytes: usize,
    /// When the first line came.
    since: Option<Instant>,
    /// The checkpoint once this batch is in: after its last whole line.
    position: Position,
}

/// Follows `source` until its output ends (the container stopped) or
/// `cancel` fires. Every batch written and pushed is checkpointed.
///
/// # Errors
/// The engine would not give the output, or a file or checkpoint could
/// not be written; the next round starts again from the checkpoint.
pub async fn follow(
    shared: Arc<Shared>,
    docker: Docker,
    source: Arc<Source>,
    tree: TaskTree,
    stopped: Arc<AtomicBool>,
) -> Result<(), FollowError> {
    let cancel = tree.token().clone();
    let start = shared.checkpoints.load(&source.container_id);
    let path = files::render(&shared.settings().path_template, &source);
    shared.index.note(&source, &path);
    let writer = shared.files.writer(&path);
    // Lines after the checkpoint already in the file: read again, counted.
    let dup_until = start.and_then(|_| files::last_ts(&path));
    let mut output = match json_file(&docker, &source.container_id).await {
        Some(file) => from_file(file, &tree, stopped),
        None => from_api(&docker, &source, start),
    };
    let mut seen = Position {
        ts_ns: i64::MIN,
        at_ts: 0,
    };
    let mut partial: [Option<(i64, Vec<u8>)>; 2] = [None, None];
    let mut batch = Batch {
        records: Vec::new(),
        bytes: 0,
        since: None,
        position: start.unwrap_or_default(),
    };
    let mut seq = 0u64;
    let flush = |batch: &mut Batch, seq: &mut u64| {
        let records = std::mem::take(&mut batch.records);
        batch.bytes = 0;
        batch.since = None;
        let position = batch.position;
        let shared = shared.clone();
        let writer = writer.clone();
        let source = source.clone();
        let first_seq = *seq;
        *seq += records.len() as u64;
        async move {
            if records.is_empty() {
                return Ok(());
            }
            let mut text = Vec::with_capacity(records.len() * 64);
            for r in &records {
                files::encode(r, &mut text);
            }
            let settings = shared.settings();
            let written = tokio::task::spawn_blocking(move || {
                let mut w = writer
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                w.write(&text, &settings)
                    .map_err(|e| (w.path().display().to_string(), e))
            })
            .await
            .unwrap_or_else(|e| Err((String::new(), std::io::Error::other(e))));
            written.map_err(|(path, error)| FollowError::File { path, error })?;
            let n = records.len() as u64;
            if shared.live.receiver_count() > 0 {
                let _ = shared.live.send(Arc::new(LiveBatch {
                    first_seq,
                    records: records.clone(),
                }));
            }
            shared.sinks.push(records).await;
            let checkpoints = shared.checkpoints.clone();
            let id = source.container_id.clone();
            tokio::task::spawn_blocking(move || checkpoints.save(&id, position))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                .map_err(|error| FollowError::Checkpoint {
                    container: source.container.clone(),
                    error,
                })?;
            shared
                .counters
                .lines_read
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
    };
    loop {
        let deadline = batch.since.map(|s| s + MAX_BATCH_WAIT);
        let item = tokio::select! {
            biased;
            () = cancel.cancelled() => {
                // What was read is written: a restart then reads less again.
                return tokio::select! {
                    r = flush(&mut batch, &mut seq) => r,
                    () = tokio::time::sleep(Duration::from_secs(2)) => Ok(()),
                };
            }
            () = sleep_until(deadline) => {
                flush(&mut batch, &mut seq).await?;
                continue;
            }
            item = output.next() => item,
        };
        let frame = match item {
            None => return flush(&mut batch, &mut seq).await,
            Some(Err(error)) => {
                flush(&mut batch, &mut seq).await?;
                return Err(error);
            }
            Some(Ok(frame)) => frame,
        };
        let (stream, ts_ns, text) = (frame.stream, frame.ts_ns, frame.text.as_slice());
        seen.advance(ts_ns);
        if start.is_some_and(|p| p.covers(seen.ts_ns, seen.at_ts)) {
            continue;
        }
        let slot = &mut partial[usize::from(stream == Stream::Stderr)];
        let line = match text.strip_suffix(b"\n") {
            Some(end) => match slot.take() {
                Some((first_ts, mut head)) => {
                    head.extend_from_slice(end);
                    Some((first_ts, head))
                }
                None => Some((ts_ns, end.to_vec())),
            },
            // A piece of a line Docker split: kept until its end comes.
            None => {
                let (_, head) = slot.get_or_insert_with(|| (ts_ns, Vec::new()));
                head.extend_from_slice(text);
                if head.len() >= MAX_LINE_BYTES {
                    slot.take()
                } else {
                    None
                }
            }
        };
        if partial.iter().all(Option::is_none) {
            batch.position = seen;
        }
        let Some((line_ts, bytes)) = line else {
            continue;
        };
        if dup_until.is_some_and(|d| line_ts <= d) {
            shared
                .counters
                .duplicates
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        batch.bytes += bytes.len();
        batch.records.push(Record {
            ts_ns: line_ts,
            stream,
            line: String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            source: source.clone(),
        });
        batch.since.get_or_insert_with(Instant::now);
        if batch.records.len() >= MAX_BATCH_LINES || batch.bytes >= MAX_BATCH_BYTES {
            flush(&mut batch, &mut seq).await?;
        }
    }
}

/// The engine's json-file log of a container, when it has one this
/// agent can read.
async fn json_file(docker: &Docker, id: &str) -> Option<JsonFile> {
    let c = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .ok()?;
    let driver = c.host_config?.log_config?.typ?;
    let path = c.log_path.filter(|p| !p.is_empty())?;
    if driver != "json-file" {
        return None;
    }
    let path = std::path::PathBuf::from(path);
    tokio::task::spawn_blocking(move || JsonFile::open(&path).ok())
        .await
        .ok()
        .flatten()
}

/// Entries from the json-file log, read by a task of their own (so a
/// batch's deadline never interrupts a read) that stops at the end of the
/// output once `stopped` says the container stopped.
fn from_file(
    mut file: JsonFile,
    tree: &TaskTree,
    stopped: Arc<AtomicBool>,
) -> BoxStream<'static, Result<Frame, FollowError>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<Frame>, FollowError>>(4);
    let cancel = tree.token().clone();
    tree.spawn("logs-read", async move {
        // One more read after the container stopped: its last lines.
        let mut last = false;
        loop {
            let read = tokio::task::spawn_blocking(move || {
                let r = file.read(READ_ENTRIES);
                (file, r)
            })
            .await;
            let Ok((f, read)) = read else { return };
            file = f;
            let (frames, at_end) = match read {
                Ok(r) => r,
                Err(error) => {
                    let _ = tx
                        .send(Err(FollowError::File {
                            path: "the engine's log".into(),
                            error,
                        }))
                        .await;
                    return;
                }
            };
            if !frames.is_empty() {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    sent = tx.send(Ok(frames)) => if sent.is_err() { return },
                }
            }
            if at_end {
                if last {
                    return;
                }
                last = stopped.load(Ordering::Acquire);
                if !last {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(POLL) => {}
                    }
                }
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .flat_map(|item| match item {
        Ok(frames) => futures_util::stream::iter(frames.into_iter().map(Ok)).left_stream(),
        Err(e) => futures_util::stream::once(std::future::ready(Err(e))).right_stream(),
    })
    .boxed()
}

/// Entries through the Docker API, from the checkpoint's second.
fn from_api(
    docker: &Docker,
    source: &Source,
    start: Option<Position>,
) -> BoxStream<'static, Result<Frame, FollowError>> {
    let options = LogsOptions {
        follow: true,
        stdout: true,
        stderr: true,
        timestamps: true,
        since: start.map_or(0, |p| p.since_secs()),
        ..Default::default()
    };
    let container = source.container.clone();
    docker
        .logs(&source.container_id, Some(options))
        .filter_map(move |item| {
            let out = match item {
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                    Some(Ok((Stream::Stdout, message)))
                }
                Ok(LogOutput::StdErr { message }) => Some(Ok((Stream::Stderr, message))),
                Ok(LogOutput::StdIn { .. }) => None,
                Err(error) => Some(Err(FollowError::Engine {
                    container: container.clone(),
                    error,
                })),
            };
            std::future::ready(out.map(|r| {
                r.map(|(stream, message)| {
                    let (ts_ns, text) = split_ts(&message);
                    Frame {
                        stream,
                        ts_ns,
                        text: text.to_vec(),
                    }
                })
            }))
        })
        .boxed()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The engine's timestamp and the text after it. A frame without one
/// (never seen from an engine asked for timestamps) takes the time now.
pub fn split_ts(message: &[u8]) -> (i64, &[u8]) {
    if let Some(space) = message.iter().position(|b| *b == b' ')
        && let Some(ts) = std::str::from_utf8(&message[..space])
            .ok()
            .and_then(files::parse_ts)
    {
        return (ts, &message[space + 1..]);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    (now, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_timestamp_is_split_off() {
        let (ts, text) = split_ts(b"2025-11-30T13:33:47.5Z hello there\n");
        assert_eq!(ts, 1_764_509_627_500_000_000);
        assert_eq!(text, b"hello there\n");
        let (_, text) = split_ts(b"no-time here");
        assert_eq!(text, b"no-time here");
    }
}
