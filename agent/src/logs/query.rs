//! `skiff logs` on one host: a [`LogQuery`] answered from the container
//! files (rotated ones included) in time order, at most
//! [`MAX_QUERY_LINES`] lines, in chunks of at most [`MAX_CHUNK_BYTES`];
//! then `history_done`; then, with `follow`, the lines the followers read
//! from now on. A query that falls behind the followers loses lines,
//! counted in `dropped`; the followers never wait for it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::BufRead;
use std::sync::Arc;

use skiff_shared::join::names::check_name;
use skiff_shared::sections::logs::{LogChunk, LogLine, LogQuery, MAX_CHUNK_BYTES, MAX_QUERY_LINES};
use skiff_shared::tasks::TaskTree;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::record::Record;
use super::{IndexEntry, LiveBatch, Shared, files};

/// What a line costs in a chunk besides its text (its JSON fields).
const LINE_OVERHEAD: usize = 96;
/// The fields a query may have.
const FIELDS: [&str; 6] = ["stack", "service", "slot", "since_ns", "tail", "follow"];

/// Parses and checks a query.
///
/// # Errors
/// What is wrong with it, and the fix.
pub fn parse(body: serde_json::Value) -> Result<LogQuery, String> {
    if let Some(map) = body.as_object()
        && let Some(unknown) = map.keys().find(|k| !FIELDS.contains(&k.as_str()))
    {
        return Err(format!(
            "the logs query has an unknown field {unknown:?}: it knows {}",
            FIELDS.join(", ")
        ));
    }
    let q: LogQuery =
        serde_json::from_value(body).map_err(|e| format!("the logs query is invalid: {e}"))?;
    check_name("stack", &q.stack)?;
    if let Some(service) = &q.service {
        check_name("service", service)?;
    }
    Ok(q)
}

/// Starts answering a query on `tree`; `out` gets [`LogChunk`]s, the last
/// with `end`. `cancel` (the reader left, the link closed) stops it.
pub fn start(
    shared: Arc<Shared>,
    tree: &TaskTree,
    body: serde_json::Value,
    out: mpsc::Sender<serde_json::Value>,
    cancel: CancellationToken,
) {
    // Subscribed before the history is read: no line falls between.
    let live = shared.live.subscribe();
    let t = tree.clone();
    tree.spawn("logs-query", async move {
        tokio::select! {
            () = cancel.cancelled() => {}
            () = t.cancelled() => {}
            () = answer(shared, body, &out, live) => {}
        }
    });
}

async fn send(out: &mpsc::Sender<serde_json::Value>, chunk: &LogChunk) -> bool {
    match serde_json::to_value(chunk) {
        Ok(v) => out.send(v).await.is_ok(),
        Err(_) => false,
    }
}

async fn answer(
    shared: Arc<Shared>,
    body: serde_json::Value,
    out: &mpsc::Sender<serde_json::Value>,
    mut live: tokio::sync::broadcast::Receiver<Arc<LiveBatch>>,
) {
    let q = match parse(body) {
        Ok(q) => q,
        Err(error) => {
            send(
                out,
                &LogChunk {
                    end: true,
                    error: Some(error),
                    ..LogChunk::default()
                },
            )
            .await;
            return;
        }
    };
    let entries = shared
        .index
        .matching(&q.stack, q.service.as_deref(), q.slot);
    let keep = shared.settings().keep_files;
    let (since, tail) = (q.since_ns, q.tail);
    let history =
        tokio::task::spawn_blocking(move || read_history(&entries, keep, since, tail)).await;
    let history = match history {
        Ok(h) => h,
        Err(e) => {
            send(
                out,
                &LogChunk {
                    end: true,
                    error: Some(format!("reading the files failed: {e}")),
                    ..LogChunk::default()
                },
            )
            .await;
            return;
        }
    };
    let mut chunk = LogChunk {
        dropped: history.dropped,
        ..LogChunk::default()
    };
    let mut bytes = 0;
    for line in history.lines {
        bytes += line.line.len() + LINE_OVERHEAD;
        chunk.lines.push(line);
        if bytes >= MAX_CHUNK_BYTES - 64 * 1024 {
            if !send(out, &std::mem::take(&mut chunk)).await {
                return;
            }
            bytes = 0;
        }
    }
    chunk.history_done = true;
    chunk.end = !q.follow;
    if !send(out, &chunk).await || !q.follow {
        return;
    }
    // Live: every batch of a matching container, past what the history had.
    let mut next_seq: HashMap<String, u64> = HashMap::new();
    loop {
        let mut chunk = LogChunk::default();
        let mut bytes = 0;
        let mut first = true;
        while bytes < MAX_CHUNK_BYTES / 2 {
            let batch = if first {
                first = false;
                live.recv().await
            } else {
                match live.try_recv() {
                    Err(tokio::sync::broadcast::error::TryRecvError::Empty) => break,
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::TryRecvError::Closed) => {
                        Err(RecvError::Closed)
                    }
                    Ok(b) => Ok(b),
                }
            };
            let batch = match batch {
                Ok(b) => b,
                // The gap shows in the next batch's numbers.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => {
                    chunk.end = true;
                    break;
                }
            };
            let Some(source) = batch.records.first().map(|r| r.source.clone()) else {
                continue;
            };
            if source.stack != q.stack
                || q.service.as_ref().is_some_and(|s| *s != source.service)
                || q.slot.is_some_and(|s| s != source.slot)
            {
                continue;
            }
            let n = batch.records.len() as u64;
            let next = next_seq
                .entry(source.container_id.clone())
                .or_insert(batch.first_seq);
            if batch.first_seq > *next {
                chunk.dropped += batch.first_seq - *next;
            }
            *next = batch.first_seq + n;
            for r in &batch.records {
                if q.since_ns.is_some_and(|s| r.ts_ns < s)
                    || history
                        .last
                        .get(&source.container)
                        .is_some_and(|l| r.ts_ns <= *l)
                {
                    continue;
                }
                bytes += r.line.len() + LINE_OVERHEAD;
                chunk.lines.push(line_of(r));
            }
        }
        if (!chunk.lines.is_empty() || chunk.dropped > 0 || chunk.end) && !send(out, &chunk).await {
            return;
        }
        if chunk.end {
            return;
        }
    }
}

fn line_of(r: &Record) -> LogLine {
    LogLine {
        ts_ns: r.ts_ns,
        stream: r.stream,
        service: r.source.service.clone(),
        slot: r.source.slot,
        release: r.source.release,
        line: r.line.clone(),
    }
}

/// The lines a query asks for from the files.
#[derive(Debug, Default)]
pub struct History {
    /// In time order.
    pub lines: Vec<LogLine>,
    /// Left out past [`MAX_QUERY_LINES`].
    pub dropped: u64,
    /// The time of each container's last line in its file.
    pub last: BTreeMap<String, i64>,
}

/// Reads each file (oldest rotation first) keeping the last `tail` lines
/// at or after `since` per container, then merges them in time order,
/// keeping the newest [`MAX_QUERY_LINES`].
pub fn read_history(
    entries: &[IndexEntry],
    keep_files: u32,
    since: Option<i64>,
    tail: Option<u32>,
) -> History {
    let mut h = History::default();
    let cap = tail.map_or(MAX_QUERY_LINES, |t| (t as usize).min(MAX_QUERY_LINES));
    let mut all = Vec::new();
    for e in entries {
        let mut kept: VecDeque<LogLine> = VecDeque::new();
        let mut paths = files::rotated(&e.path, keep_files.max(64));
        paths.reverse();
        paths.push(e.path.clone());
        let container = format!("{}.{}.{}", e.stack, e.service, e.slot);
        for path in paths {
            let Ok(file) = std::fs::File::open(&path) else {
                continue;
            };
            for line in std::io::BufReader::new(file).lines() {
                let Ok(line) = line else { break };
                let Some((ts_ns, stream, text)) = files::decode(&line) else {
                    continue;
                };
                h.last.insert(container.clone(), ts_ns);
                if since.is_some_and(|s| ts_ns < s) || cap == 0 {
                    continue;
                }
                if kept.len() == cap {
                    kept.pop_front();
                    if tail.is_none() {
                        h.dropped += 1;
                    }
                }
                kept.push_back(LogLine {
                    ts_ns,
                    stream,
                    service: e.service.clone(),
                    slot: e.slot,
                    release: e.release,
                    line: text.to_owned(),
                });
            }
        }
        all.extend(kept);
    }
    // Stable: each container's lines keep their file order.
    all.sort_by_key(|l| l.ts_ns);
    if all.len() > MAX_QUERY_LINES {
        let over = all.len() - MAX_QUERY_LINES;
        h.dropped += over as u64;
        all.drain(..over);
    }
    h.lines = all;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_queries_are_refused_naming_the_field() {
        let e = parse(serde_json::json!({"stack": "shop", "tial": 5})).unwrap_err();
        assert!(e.contains("\"tial\""), "{e}");
        let e = parse(serde_json::json!({"stack": "../etc"})).unwrap_err();
        assert!(e.contains("stack name"), "{e}");
        let q = parse(serde_json::json!({"stack": "shop", "tail": 5, "follow": true})).unwrap();
        assert_eq!(q.tail, Some(5));
    }

    #[test]
    fn history_is_tail_and_since_per_container_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |slot: u32| IndexEntry {
            stack: "s".into(),
            service: "web".into(),
            slot,
            release: 1,
            path: dir.path().join(format!("s.web.{slot}.log")),
        };
        let (a, b) = (entry(1), entry(2));
        // a: lines 0..10 at even times, the first five in a rotated file.
        let line = |t: i64, i: i64| format!("{} stdout line {i}\n", files::format_ts(t));
        let old: String = (0..5).map(|i| line(i * 2, i)).collect();
        let new: String = (5..10).map(|i| line(i * 2, i)).collect();
        std::fs::write(dir.path().join("s.web.1.log.1"), old).unwrap();
        std::fs::write(&a.path, new).unwrap();
        let bs: String = (0..10).map(|i| line(i * 2 + 1, 100 + i)).collect();
        std::fs::write(&b.path, bs).unwrap();
        let h = read_history(&[a.clone(), b.clone()], 5, None, Some(3));
        let got: Vec<&str> = h.lines.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(
            got,
            [
                "line 7", "line 107", "line 8", "line 108", "line 9", "line 109"
            ]
        );
        assert_eq!(h.last.get("s.web.1"), Some(&18));
        let h = read_history(&[a], 5, Some(15), None);
        let got: Vec<&str> = h.lines.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(got, ["line 8", "line 9"]);
        assert_eq!(h.dropped, 0);
    }
}
