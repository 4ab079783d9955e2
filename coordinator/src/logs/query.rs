//! `skiff logs` through the coordinator: each host of a stack is asked
//! for its lines over the link ([`crate::sessions::Sessions::query`]),
//! the history of all hosts is merged in time order (each host waited for
//! until its `history_done`, or until a deadline: a host late gets an
//! error notice and its lines follow as they come), then live lines are
//! passed on as they arrive. Each host's notices (lines it left out, its
//! errors, a query cut) go out as entries of their own.

use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::{self, Stream, StreamExt};
use skiff_api_types::LogEntry;
use skiff_shared::sections::logs::{LogChunk, LogLine, MAX_QUERY_LINES};
use tokio::sync::mpsc;

/// How long the history waits for a host.
pub const HISTORY_DEADLINE: Duration = Duration::from_secs(10);

/// One host's answer, as the link hands it over.
pub type Answers = mpsc::Receiver<Result<serde_json::Value, String>>;

/// What a host said, or that it is done.
#[derive(Debug)]
enum Event {
    Part(Result<serde_json::Value, String>),
    /// The link closed the answer: cut, or ended after its last part.
    Closed,
}

type Tagged = Pin<Box<dyn Stream<Item = (usize, Event)> + Send>>;

fn tagged(i: usize, rx: Answers) -> Tagged {
    let parts = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|part| (Event::Part(part), rx))
    });
    Box::pin(
        parts
            .chain(stream::once(async { Event::Closed }))
            .map(move |e| (i, e)),
    )
}

/// One host's state in a merge.
#[derive(Debug, Default)]
struct Host {
    name: String,
    history_done: bool,
    ended: bool,
}

/// A line with the host that sent it.
pub type HostLine = (usize, LogLine);

/// The history of every host in time order (ties: host order, then the
/// order each host sent): at most `limit` lines, the newest; returns the
/// lines left out per host.
pub fn merge(mut lines: Vec<HostLine>, limit: usize, hosts: usize) -> (Vec<HostLine>, Vec<u64>) {
    lines.sort_by_key(|(host, l)| (l.ts_ns, *host));
    let mut dropped = vec![0; hosts];
    if lines.len() > limit {
        let cut = lines.len() - limit;
        for (host, _) in lines.drain(..cut) {
            if let Some(d) = dropped.get_mut(host) {
                *d += 1;
            }
        }
    }
    (lines, dropped)
}

/// The entry of one line.
pub fn line_entry(host: &str, l: LogLine) -> LogEntry {
    let ts = u64::try_from(l.ts_ns).unwrap_or(0);
    LogEntry {
        host: host.to_owned(),
        ts: Some(
            humantime::format_rfc3339_nanos(std::time::UNIX_EPOCH + Duration::from_nanos(ts))
                .to_string(),
        ),
        service: Some(l.service),
        slot: Some(l.slot),
        release: Some(l.release),
        stream: Some(l.stream.as_str().to_owned()),
        line: Some(l.line),
        ..LogEntry::default()
    }
}

fn notice(host: &str, dropped: Option<u64>, error: Option<String>) -> LogEntry {
    LogEntry {
        host: host.to_owned(),
        dropped,
        error,
        ..LogEntry::default()
    }
}

/// Runs one `skiff logs` read: `asked` are the hosts whose query went out
/// (name and answers), `refused` the hosts that could not be asked (name
/// and why). Entries go to `out` until every host ended (or, without
/// `follow`, the history is out), or `out` is dropped.
pub async fn run(
    asked: Vec<(String, Answers)>,
    refused: Vec<(String, String)>,
    follow: bool,
    deadline: Duration,
    out: mpsc::Sender<LogEntry>,
) {
    for (host, why) in refused {
        if out.send(notice(&host, None, Some(why))).await.is_err() {
            return;
        }
    }
    let mut hosts: Vec<Host> = Vec::new();
    let mut streams = Vec::new();
    for (i, (name, rx)) in asked.into_iter().enumerate() {
        hosts.push(Host {
            name,
            ..Host::default()
        });
        streams.push(tagged(i, rx));
    }
    let mut all = stream::select_all(streams);
    // The history: everything until each host said its history is done.
    let mut pot: Vec<HostLine> = Vec::new();
    let mut notices: Vec<LogEntry> = Vec::new();
    let mut pot_dropped = vec![0u64; hosts.len()];
    let timer = tokio::time::sleep(deadline);
    tokio::pin!(timer);
    while hosts.iter().any(|h| !h.history_done && !h.ended) {
        let next = tokio::select! {
            () = &mut timer => None,
            () = out.closed() => return,
            next = all.next() => next,
        };
        let Some((i, event)) = next else { break };
        for entry in take(&mut hosts[i], event, |l| pot.push((i, l))) {
            notices.push(entry);
        }
        // Bounded while it waits: the oldest lines go first.
        if pot.len() > 2 * MAX_QUERY_LINES {
            let (kept, dropped) = merge(std::mem::take(&mut pot), MAX_QUERY_LINES, hosts.len());
            pot = kept;
            for (d, n) in pot_dropped.iter_mut().zip(dropped) {
                *d += n;
            }
        }
    }
    for h in hosts.iter().filter(|h| !h.history_done && !h.ended) {
        notices.push(notice(
            &h.name,
            None,
            Some(format!(
                "host {} sent no history within {}s; {}",
                h.name,
                deadline.as_secs(),
                if follow {
                    "its lines follow as they come"
                } else {
                    "its lines are left out"
                }
            )),
        ));
    }
    let (lines, dropped) = merge(pot, MAX_QUERY_LINES, hosts.len());
    for (i, n) in dropped.into_iter().enumerate() {
        let n = n + pot_dropped[i];
        if n > 0 {
            notices.push(notice(&hosts[i].name, Some(n), None));
        }
    }
    for entry in notices.into_iter().chain(
        lines
            .into_iter()
            .map(|(i, l)| line_entry(&hosts[i].name, l)),
    ) {
        if out.send(entry).await.is_err() {
            return;
        }
    }
    if !follow {
        return;
    }
    // Live: as the lines come.
    while hosts.iter().any(|h| !h.ended) {
        let next = tokio::select! {
            () = out.closed() => return,
            next = all.next() => next,
        };
        let Some((i, event)) = next else {
            break;
        };
        let name = hosts[i].name.clone();
        let mut live = Vec::new();
        let entries = take(&mut hosts[i], event, |l| live.push(l));
        for entry in live
            .into_iter()
            .map(|l| line_entry(&name, l))
            .chain(entries)
        {
            if out.send(entry).await.is_err() {
                return;
            }
        }
    }
}

/// Takes one event of a host: its lines go to `line`, its notices are
/// returned.
fn take(host: &mut Host, event: Event, mut line: impl FnMut(LogLine)) -> Vec<LogEntry> {
    let mut out = Vec::new();
    if host.ended {
        return out;
    }
    match event {
        Event::Part(Ok(body)) => match serde_json::from_value::<LogChunk>(body) {
            Ok(chunk) => {
                if chunk.dropped > 0 {
                    out.push(notice(&host.name, Some(chunk.dropped), None));
                }
                for l in chunk.lines {
                    line(l);
                }
                host.history_done |= chunk.history_done;
                if let Some(e) = chunk.error {
                    out.push(notice(
                        &host.name,
                        None,
                        Some(format!("host {}: {e}", host.name)),
                    ));
                }
                if chunk.end {
                    host.ended = true;
                }
            }
            Err(e) => {
                host.ended = true;
                out.push(notice(
                    &host.name,
                    None,
                    Some(format!(
                        "host {} sent an answer that is not a log chunk: {e}",
                        host.name
                    )),
                ));
            }
        },
        Event::Part(Err(why)) => {
            host.ended = true;
            out.push(notice(
                &host.name,
                None,
                Some(format!("host {}: {why}", host.name)),
            ));
        }
        Event::Closed => {
            host.ended = true;
            out.push(notice(
                &host.name,
                None,
                Some(format!(
                    "host {}: the answer was cut (the link went away, or this reader fell behind); run the command again",
                    host.name
                )),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests;
