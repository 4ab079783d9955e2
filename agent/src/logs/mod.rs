//! The logs controller (`logs` section): follows every Skiff container's
//! output, writes it to per-container files, ships it to sinks through
//! on-disk buffers, and answers `skiff logs` queries.
//!
//! - `diff` (pure): which containers to follow, followers to reap, gone
//!   containers to forget, settings to put in force.
//! - `follow`: one task per container, reading the Docker API from its
//!   checkpoint, in bounded batches: file, sinks, live queries, checkpoint.
//! - `files`: the path template, the line format, rotation and retention.
//! - `checkpoint`: where each container was read up to.
//! - `query`: `skiff logs` answered from the files, then live.
//! - `record`: the line as the pipeline carries it, and the [`Sinks`]
//!   seam to the shipping side.
//!
//! Without a `logs` section (an older coordinator) the agent still
//! follows its containers and writes their files with the default
//! [`FileSettings`], shipping nowhere: `skiff logs` keeps working.
//! The agent's own logs go to stderr (the journal under systemd) and
//! never through this pipeline: it follows labelled containers only.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::ListContainersOptions;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use skiff_shared::sections::logs::{
    FileSettings, Logs, LogsReport, LogsSection, MAX_REPORT_ERRORS,
};
use skiff_shared::tasks::TaskTree;
use skiff_shared::workload::{LABEL_KEY, LABEL_NAME, LABEL_SERVICE, LABEL_SLOT, LABEL_STACK};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::controller::Context;
use crate::engine::{EngineHandle, node_filter};
use record::{Record, Sinks, Source};

pub mod checkpoint;
pub mod diff;
pub mod files;
pub mod follow;
pub mod jsonfile;
pub mod query;
pub mod record;
pub mod ship;

#[cfg(test)]
mod live_tests;

/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(600);
/// How often the report is refreshed (sent only when it changed).
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// How long a problem stays in the report after it was last seen.
const ERRORS_KEPT: Duration = Duration::from_secs(600);
/// Live batches a slow query may fall behind before it loses some.
const LIVE_BATCHES: usize = 1024;

/// The sinks of this host: buffers under its data dir, shippers under
/// `tree`.
pub fn sinks(host: &crate::supervisor::Host, tree: &TaskTree) -> Arc<dyn Sinks> {
    Arc::new(ship::Shipping::new(&host.data_dir, tree))
}

/// A batch of one container's lines, for live queries.
#[derive(Debug)]
pub struct LiveBatch {
    /// The first line's number in its follower's output (a gap means a
    /// query lagged and lost lines).
    pub first_seq: u64,
    pub records: Vec<Record>,
}

/// Counters for the report.
#[derive(Debug, Default)]
pub struct Counters {
    pub lines_read: AtomicU64,
    pub duplicates: AtomicU64,
}

/// A container file, remembered for queries and retention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub stack: String,
    pub service: String,
    pub slot: u32,
    /// The newest release that wrote to it.
    pub release: u64,
    pub path: PathBuf,
}

/// The container files this host has, by container name
/// (`<stack>.<service>.<slot>`), kept in `<data_dir>/logs/files.json`.
#[derive(Debug)]
pub struct Index {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, IndexEntry>>,
}

impl Index {
    fn load(data_dir: &Path) -> Self {
        let path = data_dir.join("logs").join("files.json");
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            path,
            entries: Mutex::new(entries),
        }
    }

    /// Remembers that `source` writes to `path`.
    pub fn note(&self, source: &Source, path: &Path) {
        let entry = IndexEntry {
            stack: source.stack.clone(),
            service: source.service.clone(),
            slot: source.slot,
            release: source.release,
            path: path.to_owned(),
        };
        let mut map = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if map
            .get(&source.container)
            .is_some_and(|e| *e == entry || (e.path == entry.path && e.release > entry.release))
        {
            return;
        }
        map.insert(source.container.clone(), entry);
        self.save(&map);
    }

    fn save(&self, map: &BTreeMap<String, IndexEntry>) {
        let result = (|| {
            if let Some(dir) = self.path.parent() {
                skiff_shared::files::create_private_dir(dir)?;
            }
            let body = serde_json::to_vec(map).map_err(std::io::Error::other)?;
            skiff_shared::files::write_atomic(&self.path, &body, skiff_shared::files::PRIVATE)
        })();
        if let Err(error) = result {
            warn!(path = %self.path.display(), error = %error, "Cannot save the index of container log files.");
        }
    }

    /// The files of a stack, optionally one service and slot.
    pub fn matching(
        &self,
        stack: &str,
        service: Option<&str>,
        slot: Option<u32>,
    ) -> Vec<IndexEntry> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|e| {
                e.stack == stack
                    && service.is_none_or(|s| e.service == s)
                    && slot.is_none_or(|s| e.slot == s)
            })
            .cloned()
            .collect()
    }

    fn paths(&self) -> Vec<PathBuf> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|e| e.path.clone())
            .collect()
    }

    fn forget(&self, gone: &[PathBuf]) {
        if gone.is_empty() {
            return;
        }
        let mut map = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, e| !gone.contains(&e.path));
        self.save(&map);
    }
}

/// What the followers, the queries and the controller share.
pub struct Shared {
    settings: RwLock<FileSettings>,
    pub files: files::Files,
    pub checkpoints: checkpoint::Checkpoints,
    pub index: Index,
    pub sinks: Arc<dyn Sinks>,
    pub live: broadcast::Sender<Arc<LiveBatch>>,
    pub counters: Counters,
    /// Recent problems, with when each was last seen.
    errors: Mutex<VecDeque<(std::time::Instant, String)>>,
    /// Fires when a follower ends.
    ended: Notify,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// The state of a host's logs kept under `data_dir`.
    pub fn new(data_dir: &Path, sinks: Arc<dyn Sinks>) -> Self {
        Self {
            settings: RwLock::new(FileSettings::default()),
            files: files::Files::default(),
            checkpoints: checkpoint::Checkpoints::new(data_dir),
            index: Index::load(data_dir),
            sinks,
            live: broadcast::channel(LIVE_BATCHES).0,
            counters: Counters::default(),
            errors: Mutex::default(),
            ended: Notify::new(),
        }
    }

    pub fn settings(&self) -> FileSettings {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn error(&self, error: String) {
        let mut error = error;
        error.truncate(1000);
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        errors.retain(|(_, e)| *e != error);
        if errors.len() >= MAX_REPORT_ERRORS {
            errors.pop_front();
        }
        errors.push_back((std::time::Instant::now(), error));
    }
}

/// The logs controller.
pub struct Controller {
    node_id: String,
    engine: EngineHandle,
    shared: Arc<Shared>,
    /// The controller's tree, once running: queries run on it.
    tree: OnceLock<TaskTree>,
}

impl Controller {
    /// The controller of `host`, its sinks' shippers under `tree`.
    pub fn new(host: &crate::supervisor::Host, tree: &TaskTree) -> Self {
        Self::with_sinks(host, sinks(host, tree))
    }

    /// With other sinks.
    pub fn with_sinks(host: &crate::supervisor::Host, sinks: Arc<dyn Sinks>) -> Self {
        Self::from_parts(&host.node_id, host.engine.clone(), &host.data_dir, sinks)
    }

    /// The controller of node `node_id`, keeping its state in `data_dir`.
    pub fn from_parts(
        node_id: &str,
        engine: EngineHandle,
        data_dir: &Path,
        sinks: Arc<dyn Sinks>,
    ) -> Self {
        Self {
            node_id: node_id.to_owned(),
            engine,
            shared: Arc::new(Shared::new(data_dir, sinks)),
            tree: OnceLock::new(),
        }
    }

    /// The state followers and queries share.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl crate::controller::Controller for Controller {
    type Kind = Logs;

    fn check(&self, desired: &LogsSection) -> Result<(), String> {
        desired.check().map_err(|e| e.to_string())
    }

    fn query(
        &self,
        body: serde_json::Value,
        out: tokio::sync::mpsc::Sender<serde_json::Value>,
        cancel: CancellationToken,
    ) -> Result<(), String> {
        let tree = self
            .tree
            .get()
            .ok_or_else(|| "the logs controller is not running yet".to_owned())?;
        query::start(self.shared.clone(), tree, body, out, cancel);
        Ok(())
    }

    async fn run(self: Arc<Self>, cx: Context<Logs>) {
        let _ = self.tree.set(cx.tree.clone());
        let Some(docker) = self.engine.get(&cx.tree).await else {
            return;
        };
        let mut r = Reconciler {
            docker: docker.clone(),
            node_id: self.node_id.clone(),
            shared: self.shared.clone(),
            tree: cx.tree.clone(),
            observed: diff::Observed::default(),
            followers: HashMap::new(),
            sources: HashMap::new(),
        };
        let mut desired = cx.desired;
        let mut events = r.events();
        let mut failing = false;
        let mut retention = tokio::time::interval(RETENTION_EVERY);
        let mut report = tokio::time::interval(REPORT_EVERY);
        loop {
            let section = desired
                .borrow_and_update()
                .as_ref()
                .map(|v| (*v.value).clone())
                .unwrap_or_else(|| LogsSection {
                    host: self.node_id.clone(),
                    files: FileSettings::default(),
                    sinks: Vec::new(),
                    stack_sinks: BTreeMap::new(),
                });
            match r.round(&section).await {
                Ok(()) => failing = false,
                Err(error) => {
                    if !failing {
                        warn!(error = %error, "Following containers' output failed; retrying.");
                    }
                    self.shared.error(error);
                    failing = true;
                }
            }
            let wait = if failing {
                Duration::from_secs(2)
            } else {
                Duration::from_secs(30)
            };
            let next_round = tokio::time::Instant::now() + wait;
            // A round on what happens; the report at most every REPORT_EVERY.
            loop {
                tokio::select! {
                    () = cx.tree.cancelled() => return,
                    changed = desired.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        break;
                    }
                    () = self.shared.ended.notified() => break,
                    event = events.next() => {
                        if event.is_none() {
                            tokio::select! {
                                () = cx.tree.cancelled() => return,
                                () = tokio::time::sleep(Duration::from_secs(2)) => {}
                            }
                            events = r.events();
                        }
                        break;
                    }
                    _ = retention.tick() => r.retain(),
                    _ = report.tick() => r.report(&cx.reports),
                    () = tokio::time::sleep_until(next_round) => break,
                }
            }
        }
    }
}

struct Follower {
    cancel: CancellationToken,
    /// Set while its container is not running: a follower reading the
    /// json-file ends at the end of the output.
    stopped: Arc<AtomicBool>,
    ended: Arc<AtomicBool>,
}

struct Reconciler {
    docker: Docker,
    node_id: String,
    shared: Arc<Shared>,
    tree: TaskTree,
    observed: diff::Observed,
    followers: HashMap<String, Follower>,
    sources: HashMap<String, Arc<Source>>,
}

impl Reconciler {
    fn events(&self) -> futures_util::stream::BoxStream<'static, ()> {
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("label".to_owned(), vec![node_filter(&self.node_id)]),
        ]);
        crate::engine::changes(&self.docker, filters)
    }

    async fn observe(&mut self, host: &str) -> Result<(), String> {
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([(
                    "label".to_owned(),
                    vec![node_filter(&self.node_id)],
                )])),
                ..Default::default()
            }))
            .await
            .map_err(|e| format!("cannot list containers: {e} (is the Docker Engine running?)"))?;
        self.observed.containers.clear();
        for c in list {
            let (Some(id), Some(labels)) = (c.id, c.labels) else {
                continue;
            };
            let Some(source) = source_of(host, &id, &labels) else {
                continue;
            };
            let running = c
                .state
                .is_some_and(|s| s == bollard::models::ContainerSummaryStateEnum::RUNNING);
            self.observed.containers.insert(id.clone(), running);
            self.sources.insert(id, Arc::new(source));
        }
        let containers = &self.observed.containers;
        self.sources.retain(|id, _| containers.contains_key(id));
        for (id, f) in &self.followers {
            let running = self.observed.containers.get(id).copied().unwrap_or(false);
            f.stopped.store(!running, Ordering::Release);
        }
        self.observed.following = self
            .followers
            .iter()
            .map(|(id, f)| (id.clone(), f.ended.load(Ordering::Acquire)))
            .collect();
        self.observed.checkpoints = self.shared.checkpoints.ids().into_iter().collect();
        Ok(())
    }

    async fn round(&mut self, section: &LogsSection) -> Result<(), String> {
        self.observe(&section.host).await?;
        for action in diff::diff(section, &self.observed) {
            match action {
                diff::Action::Configure => self.configure(section).await,
                diff::Action::Reap { id, drained } => {
                    self.followers.remove(&id);
                    if drained {
                        self.observed.drained.insert(id);
                    }
                }
                diff::Action::Follow(id) => self.follow(&id),
                diff::Action::Forget(id) => {
                    if let Some(f) = self.followers.remove(&id) {
                        f.cancel.cancel();
                    }
                    self.observed.drained.remove(&id);
                    self.shared.checkpoints.remove(&id);
                }
            }
        }
        self.shared.files.close_unused();
        Ok(())
    }

    async fn configure(&mut self, section: &LogsSection) {
        let old = self.observed.configured.take();
        *self
            .shared
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = section.files.clone();
        if old.as_ref().is_some_and(|o| {
            o.files.path_template != section.files.path_template || o.host != section.host
        }) {
            // Followers write to the new paths once started again.
            for f in self.followers.values() {
                f.cancel.cancel();
            }
        }
        self.shared.sinks.configure(section).await;
        self.observed.configured = Some(section.clone());
        info!(
            template = %section.files.path_template,
            sinks = section.sinks.len(),
            "Container log settings in force."
        );
    }

    fn follow(&mut self, id: &str) {
        let Some(source) = self.sources.get(id).cloned() else {
            return;
        };
        let tree = self.tree.child();
        let handle = tree.token().clone();
        let ended = Arc::new(AtomicBool::new(false));
        let stopped = Arc::new(AtomicBool::new(
            !self.observed.containers.get(id).copied().unwrap_or(false),
        ));
        let stop = stopped.clone();
        let shared = self.shared.clone();
        let docker = self.docker.clone();
        let done = ended.clone();
        tree.clone().spawn("logs-follow", async move {
            let result = follow::follow(shared.clone(), docker, source.clone(), tree.clone(), stop).await;
            if let Err(error) = result {
                warn!(container = %source.container, error = %error, "Following a container's output stopped; resuming from its checkpoint.");
                shared.error(error.to_string());
                // Not at once: the engine may be restarting.
                tokio::select! {
                    () = tree.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
            done.store(true, Ordering::Release);
            shared.ended.notify_one();
        });
        self.followers.insert(
            id.to_owned(),
            Follower {
                cancel: handle,
                stopped,
                ended,
            },
        );
    }

    fn report(&self, reports: &crate::controller::Reporter<Logs>) {
        let followed = self
            .followers
            .values()
            .filter(|f| !f.ended.load(Ordering::Acquire))
            .count();
        let errors = {
            let mut errors = self
                .shared
                .errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // A problem not seen again for a while is over.
            errors.retain(|(at, _)| at.elapsed() < ERRORS_KEPT);
            errors.iter().map(|(_, e)| e.clone()).collect()
        };
        let mut sinks = self.shared.sinks.statuses();
        sinks.truncate(skiff_shared::sections::logs::MAX_REPORT_SINKS);
        reports.send(&LogsReport {
            followed: u32::try_from(followed).unwrap_or(u32::MAX),
            lines_read: self.shared.counters.lines_read.load(Ordering::Relaxed),
            duplicates: self.shared.counters.duplicates.load(Ordering::Relaxed),
            errors,
            sinks,
        });
    }

    /// Rotated files past `retain_days`, and the files of containers gone
    /// that long, are removed.
    fn retain(&self) {
        let shared = self.shared.clone();
        self.tree.spawn("logs-retention", async move {
            let settings = shared.settings();
            let paths = shared.index.paths();
            let s = shared.clone();
            let gone =
                tokio::task::spawn_blocking(move || files::retain(&s.files, &paths, &settings))
                    .await
                    .unwrap_or_default();
            shared.index.forget(&gone);
        });
    }
}

/// Where a labelled container's lines come from; none for a container
/// without Skiff's labels.
fn source_of(host: &str, id: &str, labels: &HashMap<String, String>) -> Option<Source> {
    let release = labels
        .get(LABEL_KEY)
        .and_then(|k| k.rsplit_once('@'))
        .and_then(|(_, r)| r.parse().ok())
        .unwrap_or(0);
    Some(Source {
        host: host.to_owned(),
        stack: labels.get(LABEL_STACK)?.clone(),
        service: labels.get(LABEL_SERVICE)?.clone(),
        slot: labels.get(LABEL_SLOT)?.parse().ok()?,
        release,
        container: labels.get(LABEL_NAME)?.clone(),
        container_id: id.to_owned(),
    })
}
