//! The host's log sinks ([`Shipping`], the [`Sinks`] the follower pushes
//! into): one shipper task per sink, the cluster's sinks and each stack's
//! own, each with an on-disk buffer in `<data_dir>/logs/buffers/<key>/`.
//!
//! - [`frame`]: how records are kept in a buffer.
//! - [`buffer`]: segments, the checkpoint, the bound and its policy.
//! - [`encode`]: RFC 5424 syslog, JSON lines, OTLP/HTTP JSON.
//! - [`transport`]: UDP, TCP, TLS, HTTP(S), with deadlines.
//! - [`shipper`]: the per-sink loop: read, send, acknowledge, back off.
//!
//! Probation: a sink whose settings changed is connected to first (and
//! handshaken, TLS and HTTP) within a deadline; only then does the new
//! setting replace the old, whose buffer it keeps. When that fails the old
//! setting stays in force and the status's `refused` says why. A new sink
//! that fails is not started (its lines are not buffered) and is tried
//! again at the next configuration and every [`RETRY_REFUSED`]. After an
//! agent restart a sink whose stored settings (`spec.json` in its buffer)
//! are the same starts at once, whether or not its receiver answers, so
//! what was buffered is shipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use skiff_shared::files;
use skiff_shared::sections::logs::{LogsSection, SinkSpec, SinkStatus};
use skiff_shared::tasks::TaskTree;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::record::{BoxFuture, Record, Sinks};

pub mod buffer;
pub mod encode;
pub mod frame;
pub mod shipper;
pub mod transport;

#[cfg(test)]
mod tests;

use buffer::{Appended, Buffer};
use shipper::{Health, Target};
use transport::Conn;

/// How often refused settings are tried again.
pub const RETRY_REFUSED: Duration = Duration::from_secs(30);

/// Which sink: a cluster sink (no stack) or a stack's own.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub stack: Option<String>,
    pub name: String,
}

impl Key {
    /// The buffer directory's name.
    fn dir_name(&self) -> String {
        match &self.stack {
            None => format!("cluster.{}", safe(&self.name)),
            Some(stack) => format!("stack.{}.{}", safe(stack), safe(&self.name)),
        }
    }
}

/// A name as a path component: `[a-z0-9-]` kept, anything else hex.
fn safe(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// The host's sinks. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shipping {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    buffers: PathBuf,
    tree: TaskTree,
    state: Mutex<State>,
    /// One configuration at a time.
    configuring: tokio::sync::Mutex<()>,
    /// Fired when a configuration refused something.
    retry: tokio::sync::Notify,
    retry_started: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    sinks: BTreeMap<Key, Arc<Sink>>,
    /// New sinks whose probe failed: not started.
    refused_new: BTreeMap<Key, String>,
    /// Stacks with their own list of sinks.
    own: BTreeSet<String>,
    last: Option<Arc<LogsSection>>,
}

#[derive(Debug)]
struct Sink {
    buffer: Arc<Buffer>,
    health: Arc<Mutex<Health>>,
    running: Mutex<Running>,
    refused: Mutex<Option<String>>,
}

#[derive(Debug)]
struct Running {
    spec: SinkSpec,
    tree: TaskTree,
    task: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shipping {
    /// Sinks with their buffers under `<data_dir>/logs/buffers/`, their
    /// tasks under `tree`. Nothing runs until [`Sinks::configure`].
    pub fn new(data_dir: &Path, tree: &TaskTree) -> Self {
        Self {
            inner: Arc::new(Inner {
                buffers: data_dir.join("logs").join("buffers"),
                tree: tree.child(),
                state: Mutex::new(State::default()),
                configuring: tokio::sync::Mutex::new(()),
                retry: tokio::sync::Notify::new(),
                retry_started: AtomicBool::new(false),
            }),
        }
    }

    async fn apply(&self, section: &LogsSection) {
        let inner = &self.inner;
        let _one = inner.configuring.lock().await;
        let mut desired: BTreeMap<Key, &SinkSpec> = BTreeMap::new();
        for spec in &section.sinks {
            desired.insert(
                Key {
                    stack: None,
                    name: spec.name.clone(),
                },
                spec,
            );
        }
        for (stack, specs) in &section.stack_sinks {
            for spec in specs {
                desired.insert(
                    Key {
                        stack: Some(stack.clone()),
                        name: spec.name.clone(),
                    },
                    spec,
                );
            }
        }
        // Sinks no longer listed: stop them and remove their buffers.
        let gone: Vec<(Key, Arc<Sink>)> = {
            let mut state = lock(&inner.state);
            state.refused_new.retain(|k, _| desired.contains_key(k));
            let keys: Vec<Key> = state
                .sinks
                .keys()
                .filter(|k| !desired.contains_key(*k))
                .cloned()
                .collect();
            keys.into_iter()
                .filter_map(|k| state.sinks.remove(&k).map(|s| (k, s)))
                .collect()
        };
        for (key, sink) in gone {
            stop(&sink).await;
            info!(sink = %key.name, stack = ?key.stack, "A sink was removed with its buffer.");
        }
        self.remove_other_buffers(&desired).await;
        {
            let mut state = lock(&inner.state);
            state.own = section.stack_sinks.keys().cloned().collect();
            state.last = Some(Arc::new(section.clone()));
        }
        // Settings to try: new or changed ones, probed side by side.
        let mut probes = Vec::new();
        for (key, spec) in &desired {
            let existing = lock(&inner.state).sinks.get(key).cloned();
            if let Some(sink) = &existing
                && lock(&sink.running).spec == **spec
            {
                *lock(&sink.refused) = None;
                continue;
            }
            let dir = inner.buffers.join(key.dir_name());
            if existing.is_none()
                && let Some(stored) = stored_spec(&dir)
                && stored == **spec
            {
                // The agent restarted: these settings were in force.
                match Target::new(spec) {
                    Ok(target) => {
                        self.start(key, target, None, None).await;
                        continue;
                    }
                    Err(e) => warn!(sink = %spec.name, error = %e, "A stored sink cannot be used."),
                }
            }
            let tree = inner.tree.child();
            probes.push(async move {
                let probe = match Target::new(spec) {
                    Ok(target) => match target.connect(&tree).await {
                        Ok(conn) => Ok((target, conn)),
                        Err(e) => Err(e.0),
                    },
                    Err(e) => Err(e.0),
                };
                (key, spec, existing, dir, tree, probe)
            });
        }
        let mut refused_any = false;
        for (key, spec, existing, dir, tree, probe) in futures_util::future::join_all(probes).await
        {
            match (existing, probe) {
                (_, Ok((target, conn))) => {
                    self.start(key, target, Some(conn), Some(tree)).await;
                }
                (Some(sink), Err(why)) => {
                    tree.cancel();
                    warn!(sink = %spec.name, error = %why, "A sink's new settings were refused; the old ones stay in force.");
                    *lock(&sink.refused) = Some(why);
                    refused_any = true;
                }
                (None, Err(why)) => {
                    tree.cancel();
                    refused_any = true;
                    // A sink in force before a restart keeps its old settings.
                    if let Some(old) = stored_spec(&dir)
                        && let Ok(target) = Target::new(&old)
                    {
                        warn!(sink = %spec.name, error = %why, "A sink's new settings were refused; the old ones stay in force.");
                        self.start(key, target, None, None).await;
                        if let Some(sink) = lock(&inner.state).sinks.get(key) {
                            *lock(&sink.refused) = Some(why);
                        }
                        continue;
                    }
                    warn!(sink = %spec.name, error = %why, "A new sink was refused; it is tried again in 30 s.");
                    lock(&inner.state).refused_new.insert(key.clone(), why);
                }
            }
        }
        if refused_any {
            inner.retry.notify_one();
        }
    }

    /// Runs the task that configures again, [`RETRY_REFUSED`] after a
    /// configuration refused something (once).
    fn start_retries(&self) {
        if self.inner.retry_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = self.clone();
        self.inner.tree.spawn("logs-sinks-retry", async move {
            let tree = this.inner.tree.clone();
            loop {
                tokio::select! {
                    () = this.inner.retry.notified() => {}
                    () = tree.cancelled() => return,
                }
                tokio::select! {
                    () = tokio::time::sleep(RETRY_REFUSED) => {}
                    () = tree.cancelled() => return,
                }
                let last = lock(&this.inner.state).last.clone();
                if let Some(section) = last {
                    this.apply(&section).await;
                }
            }
        });
    }

    /// Starts (or restarts with new settings) a sink's shipper.
    async fn start(&self, key: &Key, target: Target, conn: Option<Conn>, tree: Option<TaskTree>) {
        let inner = &self.inner;
        let tree = tree.unwrap_or_else(|| inner.tree.child());
        let dir = inner.buffers.join(key.dir_name());
        let spec = target.spec.clone();
        let existing = lock(&inner.state).sinks.get(key).cloned();
        let sink = match existing {
            Some(sink) => {
                stop_shipper(&sink).await;
                sink.buffer.set_limits(spec.buffer_bytes, spec.when_full);
                *lock(&sink.refused) = None;
                sink
            }
            None => {
                let opened = {
                    let dir = dir.clone();
                    tokio::task::spawn_blocking(move || {
                        Buffer::open(&dir, spec.buffer_bytes, spec.when_full)
                    })
                    .await
                };
                let buffer = match opened {
                    Ok(Ok(b)) => b,
                    Ok(Err(e)) => {
                        let why = format!(
                            "sink {:?}: its buffer {} cannot be opened: {e}: check the agent's data dir",
                            key.name,
                            dir.display()
                        );
                        warn!(error = %why, "A sink cannot start.");
                        tree.cancel();
                        lock(&inner.state).refused_new.insert(key.clone(), why);
                        return;
                    }
                    Err(_) => return,
                };
                let sink = Arc::new(Sink {
                    buffer,
                    health: Arc::new(Mutex::new(Health::default())),
                    running: Mutex::new(Running {
                        spec: target.spec.clone(),
                        tree: tree.clone(),
                        task: None,
                    }),
                    refused: Mutex::new(None),
                });
                let mut state = lock(&inner.state);
                state.refused_new.remove(key);
                state.sinks.insert(key.clone(), sink.clone());
                sink
            }
        };
        let stored = serde_json::to_vec_pretty(&target.spec).unwrap_or_default();
        let spec_path = dir.join("spec.json");
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = files::write_atomic(&spec_path, &stored, files::PRIVATE) {
                warn!(error = %e, "A sink's settings could not be stored beside its buffer.");
            }
        })
        .await;
        info!(sink = %key.name, stack = ?key.stack, url = %target.spec.url, "A sink is in force.");
        let task = tree.spawn(
            "logs-sink",
            shipper::run(
                tree.clone(),
                target.clone(),
                sink.buffer.clone(),
                sink.health.clone(),
                conn,
            ),
        );
        let mut running = lock(&sink.running);
        running.spec = target.spec;
        running.tree = tree;
        running.task = Some(task);
    }

    /// Removes buffer directories of sinks that are not listed.
    async fn remove_other_buffers(&self, desired: &BTreeMap<Key, &SinkSpec>) {
        let keep: BTreeSet<String> = desired.keys().map(Key::dir_name).collect();
        let root = self.inner.buffers.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&root) else {
                return;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name)
                    && let Err(e) = std::fs::remove_dir_all(entry.path())
                {
                    warn!(dir = %entry.path().display(), error = %e, "An old sink's buffer could not be removed.");
                }
            }
        })
        .await;
    }

    fn targets(&self, stack: &str) -> Vec<Arc<Sink>> {
        let state = lock(&self.inner.state);
        let own = state.own.contains(stack);
        state
            .sinks
            .iter()
            .filter(|(k, _)| {
                if own {
                    k.stack.as_deref() == Some(stack)
                } else {
                    k.stack.is_none()
                }
            })
            .map(|(_, s)| s.clone())
            .collect()
    }

    async fn store(&self, records: Vec<Record>) {
        let mut groups: Vec<(String, Vec<u8>, u64)> = Vec::new();
        for r in &records {
            let i = match groups.iter().position(|(s, _, _)| *s == r.source.stack) {
                Some(i) => i,
                None => {
                    groups.push((r.source.stack.clone(), Vec::new(), 0));
                    groups.len() - 1
                }
            };
            frame::encode(r, &mut groups[i].1);
            groups[i].2 += 1;
        }
        for (stack, frames, lines) in groups {
            let frames = Arc::new(frames);
            for sink in self.targets(&stack) {
                self.store_in(&sink, frames.clone(), lines).await;
            }
        }
    }

    /// Appends to one sink's buffer, waiting for room under `block`. Only
    /// a shutdown (the tree cancelled) ends the wait without storing; the
    /// follower, cancelled with it, must not checkpoint past those lines.
    async fn store_in(&self, sink: &Sink, frames: Arc<Vec<u8>>, lines: u64) {
        loop {
            let room = sink.buffer.room().notified();
            let buffer = sink.buffer.clone();
            let f = frames.clone();
            let appended = tokio::task::spawn_blocking(move || buffer.append(&f, lines)).await;
            match appended {
                Ok(Ok(Appended::Stored)) => return,
                Ok(Ok(Appended::Full)) => {
                    tokio::select! {
                        () = room => {}
                        () = self.inner.tree.cancelled() => return,
                    }
                }
                Ok(Err(e)) => {
                    let why = format!(
                        "the buffer cannot be written: {e}: check the disk of the agent's data dir"
                    );
                    warn!(error = %why, lines, "Lines could not be buffered for a sink and were dropped.");
                    sink.buffer.count_dropped(lines);
                    lock(&sink.health).error = Some(why);
                    return;
                }
                Err(_) => return,
            }
        }
    }

    fn status_list(&self) -> Vec<SinkStatus> {
        let state = lock(&self.inner.state);
        let mut out: Vec<SinkStatus> = state
            .sinks
            .iter()
            .map(|(key, sink)| {
                let counts = sink.buffer.counts();
                let health = lock(&sink.health).clone();
                SinkStatus {
                    name: key.name.clone(),
                    stack: key.stack.clone(),
                    healthy: health.healthy,
                    delivered: counts.delivered,
                    buffered_lines: counts.buffered_lines,
                    buffered_bytes: counts.buffered_bytes,
                    dropped: counts.dropped,
                    error: health.error.map(bounded),
                    refused: lock(&sink.refused).clone().map(bounded),
                }
            })
            .collect();
        out.extend(state.refused_new.iter().map(|(key, why)| SinkStatus {
            name: key.name.clone(),
            stack: key.stack.clone(),
            refused: Some(bounded(why.clone())),
            ..SinkStatus::default()
        }));
        out.sort_by(|a, b| (&a.stack, &a.name).cmp(&(&b.stack, &b.name)));
        out
    }
}

/// Stops a sink's shipper and waits for it to end.
async fn stop_shipper(sink: &Sink) {
    let task = {
        let mut running = lock(&sink.running);
        running.tree.cancel();
        running.task.take()
    };
    if let Some(task) = task {
        let _ = task.await;
    }
}

/// Stops a sink and removes its buffer.
async fn stop(sink: &Sink) {
    stop_shipper(sink).await;
    let dir = sink.buffer.dir().to_owned();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
}

/// A message cut to the report's bound (1024 bytes) at a character.
fn bounded(mut text: String) -> String {
    const MAX: usize = 1000;
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

fn stored_spec(dir: &Path) -> Option<SinkSpec> {
    let bytes = std::fs::read(dir.join("spec.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl Sinks for Shipping {
    fn configure<'a>(&'a self, section: &'a LogsSection) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.start_retries();
            self.apply(section).await;
        })
    }

    fn push(&self, records: Vec<Record>) -> BoxFuture<'_, ()> {
        Box::pin(self.store(records))
    }

    fn statuses(&self) -> Vec<SinkStatus> {
        self.status_list()
    }
}
