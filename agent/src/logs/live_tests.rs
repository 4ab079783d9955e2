//! Checks against the real Docker Engine, ignored by default (they need
//! root's engine and the `skiff-test/busybox:1` image the tests crate
//! imports): run them with
//! `cargo test -p skiff-agent --lib logs::live -- --ignored --test-threads 1`.
//! Each skips, saying why, when the engine or the image is missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_shared::sections::logs::{FileSettings, LogChunk, LogsSection, SinkStatus, Stream};
use skiff_shared::tasks::TaskTree;
use tokio::sync::{mpsc, watch};

use super::record::{BoxFuture, Record, Sinks};
use super::{Controller, files};
use crate::controller::{Context, Controller as _, Reporter, Reports, Versioned};
use crate::engine::EngineHandle;

const IMAGE: &str = "skiff-test/busybox:1";

fn docker_cli(args: &[&str]) -> (bool, String) {
    match Command::new("docker").args(args).output() {
        Ok(out) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        ),
        Err(e) => (false, e.to_string()),
    }
}

/// The engine, or why the test skips.
async fn engine() -> Option<bollard::Docker> {
    let docker = match bollard::Docker::connect_with_local_defaults() {
        Ok(d) => d.negotiate_version().await.ok(),
        Err(_) => None,
    };
    if docker.is_none() {
        eprintln!("skipped: no Docker Engine");
        return None;
    }
    if !docker_cli(&["image", "inspect", IMAGE]).0 {
        eprintln!("skipped: no {IMAGE} image (the tests crate's harness imports it)");
        return None;
    }
    docker
}

/// Sinks that keep every line, and can hold pushes (a full buffer under
/// the `block` policy).
#[derive(Default)]
struct Collect {
    lines: Mutex<Vec<String>>,
    open: Option<watch::Receiver<bool>>,
}

impl Sinks for Collect {
    fn configure<'a>(&'a self, _section: &'a LogsSection) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    fn push(&self, records: Vec<Record>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(open) = &self.open {
                let mut open = open.clone();
                let _ = open.wait_for(|o| *o).await;
            }
            let mut lines = self.lines.lock().unwrap();
            lines.extend(records.into_iter().map(|r| r.line));
        })
    }

    fn statuses(&self) -> Vec<SinkStatus> {
        Vec::new()
    }
}

struct Node {
    id: String,
    data: tempfile::TempDir,
    containers: Vec<String>,
}

impl Node {
    fn new(tag: &str) -> Self {
        Self {
            id: format!("logs{tag}{}", std::process::id()),
            data: tempfile::tempdir().unwrap(),
            containers: Vec::new(),
        }
    }

    fn section(&self, files: FileSettings) -> LogsSection {
        LogsSection {
            host: "h1".into(),
            files,
            sinks: Vec::new(),
            stack_sinks: BTreeMap::new(),
        }
    }

    fn settings(&self) -> FileSettings {
        FileSettings {
            path_template: format!(
                "{}/files/{{stack}}/{{service}}/{{container}}.log",
                self.data.path().display()
            ),
            ..FileSettings::default()
        }
    }

    fn file(&self, slot: u32) -> PathBuf {
        self.data.path().join(format!("files/t/w/t.w.{slot}.log"))
    }

    /// Starts the controller; cancel the tree to stop it.
    fn start(
        &self,
        docker: &bollard::Docker,
        sinks: Arc<dyn Sinks>,
        files: FileSettings,
    ) -> (Arc<Controller>, TaskTree) {
        let controller = Arc::new(Controller::from_parts(
            &self.id,
            EngineHandle::ready(docker.clone()),
            self.data.path(),
            sinks,
        ));
        let tree = TaskTree::root();
        let (_tx, desired) = watch::channel(Some(Versioned {
            generation: 1,
            value: Arc::new(self.section(files)),
        }));
        let cx = Context {
            desired,
            reports: Reporter::new(Arc::new(Reports::default())),
            tree: tree.child(),
        };
        tree.spawn("logs-test", {
            let c = controller.clone();
            async move {
                let _keep = _tx;
                c.run(cx).await;
            }
        });
        (controller, tree)
    }

    /// Runs a labelled container (slot, release) with a shell script.
    fn run(&mut self, slot: u32, release: u64, script: &str) -> String {
        self.run_with(slot, release, &[], script)
    }

    /// The same with more `docker run` options.
    fn run_with(&mut self, slot: u32, release: u64, options: &[&str], script: &str) -> String {
        let labels = [
            format!("skiff.node={}", self.id),
            "skiff.stack=t".to_owned(),
            "skiff.service=w".to_owned(),
            format!("skiff.slot={slot}"),
            format!("skiff.name=t.w.{slot}"),
            format!("skiff.key=t.w.{slot}@{release}"),
        ];
        let mut args = vec!["run", "-d"];
        for l in &labels {
            args.extend(["--label", l.as_str()]);
        }
        args.extend(options);
        args.extend([IMAGE, "sh", "-c", script]);
        let (ok, id) = docker_cli(&args);
        assert!(ok, "docker run failed: {id}");
        self.containers.push(id.clone());
        id
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker_cli(&["rm", "-f", c]);
        }
    }
}

/// The file's lines (rotations first), decoded.
fn read_all(path: &Path) -> Vec<(i64, Stream, String)> {
    let mut paths = files::rotated(path, 64);
    paths.reverse();
    paths.push(path.to_owned());
    paths
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| files::decode(l).map(|(ts, s, x)| (ts, s, x.to_owned())))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The sequence numbers of `out N` lines.
fn seqs(lines: &[(i64, Stream, String)]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|(_, _, l)| l.strip_prefix("out ")?.parse().ok())
        .collect()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const COUNT_TO: &str = "i=0; while [ $i -lt $N ]; do echo \"out $i\"; if [ $((i % 10)) = 0 ]; then echo \"err $i\" >&2; fi; i=$((i+1)); done; sleep 600";
const STEADY: &str = "i=0; while :; do echo \"out $i\"; i=$((i+1)); if [ $((i % 20)) = 0 ]; then sleep 0.1; fi; done";

#[tokio::test]
#[ignore = "needs a Docker Engine; runs containers"]
async fn live_lines_arrive_in_the_file_with_time_and_stream() {
    let Some(docker) = engine().await else { return };
    let mut node = Node::new("a");
    let (_c, tree) = node.start(&docker, Arc::new(Collect::default()), node.settings());
    node.run(1, 3, &COUNT_TO.replace("$N", "2000"));
    let path = node.file(1);
    wait_for("2000 lines in the file", || {
        seqs(&read_all(&path)).len() >= 2000
    })
    .await;
    let lines = read_all(&path);
    assert_eq!(seqs(&lines), (0..2000).collect::<Vec<_>>());
    let errs: Vec<_> = lines.iter().filter(|l| l.1 == Stream::Stderr).collect();
    assert_eq!(errs.len(), 200);
    assert!(errs.iter().all(|l| l.2.starts_with("err ")));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    assert!(
        lines
            .iter()
            .all(|l| l.0 > now - 600_000_000_000 && l.0 <= now)
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o640
    );
    tree.cancel();
    tree.wait().await;
}

#[tokio::test]
#[ignore = "needs a Docker Engine; runs containers"]
async fn live_a_restarted_follower_resumes_with_nothing_missing_and_counts_duplicates() {
    let Some(docker) = engine().await else { return };
    let mut node = Node::new("b");
    let id = node.run(1, 1, STEADY);
    let path = node.file(1);
    let (_c, tree) = node.start(&docker, Arc::new(Collect::default()), node.settings());
    wait_for("300 lines", || seqs(&read_all(&path)).len() >= 300).await;
    tree.cancel();
    tree.wait().await;
    // As if the agent died after writing its last 40 lines but before
    // their checkpoint: the checkpoint goes back to the 40th-last line.
    let lines = read_all(&path);
    let back = &lines[lines.len() - 41];
    let same = lines[..lines.len() - 40]
        .iter()
        .filter(|l| l.0 == back.0)
        .count();
    let checkpoints = super::checkpoint::Checkpoints::new(node.data.path());
    checkpoints
        .save(
            &id,
            super::checkpoint::Position {
                ts_ns: back.0,
                at_ts: u32::try_from(same).unwrap(),
            },
        )
        .unwrap();
    let written = seqs(&lines).len();
    // The container goes on writing while no agent reads.
    wait_for("the container wrote on", || {
        let (_, out) = docker_cli(&["logs", &id]);
        out.lines().count() > written + 200
    })
    .await;
    let (c, tree) = node.start(&docker, Arc::new(Collect::default()), node.settings());
    let target = written as u64 + 400;
    wait_for("the new lines", || {
        seqs(&read_all(&path))
            .iter()
            .max()
            .is_some_and(|m| *m >= target)
    })
    .await;
    tree.cancel();
    tree.wait().await;
    let got = seqs(&read_all(&path));
    let max = *got.iter().max().unwrap();
    let distinct: std::collections::BTreeSet<u64> = got.iter().copied().collect();
    assert_eq!(
        distinct.len() as u64,
        max + 1,
        "a sequence number is missing"
    );
    let dups = got.len() - distinct.len();
    assert_eq!(dups, 40);
    assert_eq!(c.shared().counters.duplicates.load(Ordering::Relaxed), 40);
}

#[tokio::test]
#[ignore = "needs a Docker Engine; runs containers"]
async fn live_small_files_rotate_keeping_every_line_in_order() {
    let Some(docker) = engine().await else { return };
    let mut node = Node::new("c");
    let settings = FileSettings {
        max_file_bytes: 16 << 10,
        keep_files: 50,
        ..node.settings()
    };
    let (_c, tree) = node.start(&docker, Arc::new(Collect::default()), settings);
    node.run(1, 1, &COUNT_TO.replace("$N", "3000"));
    let path = node.file(1);
    wait_for("3000 lines", || seqs(&read_all(&path)).len() >= 3000).await;
    assert!(files::rotated(&path, 64).len() > 3);
    for p in files::rotated(&path, 64).iter().chain([&path]) {
        assert!(std::fs::metadata(p).unwrap().len() <= 16 << 10);
    }
    assert_eq!(seqs(&read_all(&path)), (0..3000).collect::<Vec<_>>());
    tree.cancel();
    tree.wait().await;
}

#[tokio::test]
#[ignore = "needs a Docker Engine; runs containers"]
async fn live_a_query_answers_tail_and_since_then_follows() {
    let Some(docker) = engine().await else { return };
    let mut node = Node::new("d");
    let (c, tree) = node.start(&docker, Arc::new(Collect::default()), node.settings());
    node.run(1, 4, STEADY);
    let path = node.file(1);
    wait_for("100 lines", || seqs(&read_all(&path)).len() >= 100).await;
    let (tx, mut rx) = mpsc::channel(4);
    let cancel = tokio_util::sync::CancellationToken::new();
    c.query(
        serde_json::json!({"stack": "t", "service": "w", "tail": 5, "follow": true}),
        tx,
        cancel.clone(),
    )
    .unwrap();
    let mut history = Vec::new();
    loop {
        let chunk: LogChunk = serde_json::from_value(rx.recv().await.unwrap()).unwrap();
        assert!(chunk.error.is_none());
        history.extend(chunk.lines);
        if chunk.history_done {
            assert!(!chunk.end);
            break;
        }
    }
    assert_eq!(history.len(), 5);
    assert!(history.iter().all(|l| l.release == 4 && l.slot == 1));
    let last: u64 = history[4]
        .line
        .strip_prefix("out ")
        .unwrap()
        .parse()
        .unwrap();
    // Live lines follow on from the history, with none in between lost.
    let mut next = last + 1;
    while next < last + 200 {
        let chunk: LogChunk = serde_json::from_value(rx.recv().await.unwrap()).unwrap();
        assert_eq!(chunk.dropped, 0);
        for l in chunk.lines {
            assert_eq!(l.line, format!("out {next}"));
            next += 1;
        }
    }
    cancel.cancel();
    // Since: only lines at or after a time.
    let since = history[2].ts_ns;
    let (tx, mut rx) = mpsc::channel(4);
    c.query(
        serde_json::json!({"stack": "t", "since_ns": since}),
        tx,
        tokio_util::sync::CancellationToken::new(),
    )
    .unwrap();
    let mut lines = Vec::new();
    while let Some(v) = rx.recv().await {
        let chunk: LogChunk = serde_json::from_value(v).unwrap();
        lines.extend(chunk.lines);
        if chunk.end {
            break;
        }
    }
    assert!(lines.iter().all(|l| l.ts_ns >= since));
    assert_eq!(lines[0].line, history[2].line);
    // A bad query ends at once with the reason.
    let (tx, mut rx) = mpsc::channel(4);
    c.query(
        serde_json::json!({"stack": "t", "lines": 3}),
        tx,
        tokio_util::sync::CancellationToken::new(),
    )
    .unwrap();
    let chunk: LogChunk = serde_json::from_value(rx.recv().await.unwrap()).unwrap();
    assert!(chunk.end && chunk.error.unwrap().contains("\"lines\""));
    tree.cancel();
    tree.wait().await;
}

#[tokio::test]
#[ignore = "needs a Docker Engine; runs containers"]
async fn live_a_blocked_sink_stops_reading_and_loses_nothing() {
    let Some(docker) = engine().await else { return };
    let mut node = Node::new("e");
    let (open_tx, open) = watch::channel(false);
    let sinks = Arc::new(Collect {
        lines: Mutex::default(),
        open: Some(open),
    });
    let (c, tree) = node.start(&docker, sinks.clone(), node.settings());
    let id = node.run(1, 1, &COUNT_TO.replace("$N", "5000"));
    // The container writes everything although nothing is taken.
    wait_for("the container wrote all", || {
        docker_cli(&["logs", &id]).1.lines().count() >= 5000
    })
    .await;
    let path = node.file(1);
    // One batch was read and written; its push waits; nothing more is read.
    wait_for("the first batch", || !read_all(&path).is_empty()).await;
    let held = read_all(&path).len();
    assert!(held <= super::follow::MAX_BATCH_LINES, "{held}");
    assert_eq!(c.shared().counters.lines_read.load(Ordering::Relaxed), 0);
    open_tx.send_replace(true);
    wait_for("every line in the sink", || {
        sinks.lines.lock().unwrap().len() >= 5500
    })
    .await;
    let got = sinks.lines.lock().unwrap().clone();
    let outs: Vec<u64> = got
        .iter()
        .filter_map(|l| l.strip_prefix("out ")?.parse().ok())
        .collect();
    assert_eq!(outs, (0..5000).collect::<Vec<_>>());
    assert_eq!(seqs(&read_all(&path)).len(), 5000);
    tree.cancel();
    tree.wait().await;
}

#[tokio::test]
#[ignore = "needs a Docker Engine; runs containers"]
async fn live_docker_rotations_other_drivers_and_restarts_lose_nothing() {
    let Some(docker) = engine().await else { return };
    let mut node = Node::new("f");
    let (_c, tree) = node.start(&docker, Arc::new(Collect::default()), node.settings());
    // json-file rotated by the engine every 20 KB while it is read.
    node.run_with(
        1,
        1,
        &["--log-opt", "max-size=20k", "--log-opt", "max-file=100"],
        &COUNT_TO.replace("$N", "4000"),
    );
    // The local driver: read through the API.
    let local = node.run_with(
        2,
        1,
        &["--log-driver", "local"],
        &COUNT_TO.replace("$N", "3000").replace("sleep 600", "true"),
    );
    wait_for("4000 lines", || {
        seqs(&read_all(&node.file(1))).len() >= 4000
    })
    .await;
    assert_eq!(
        seqs(&read_all(&node.file(1))),
        (0..4000).collect::<Vec<_>>()
    );
    wait_for("3000 lines", || {
        seqs(&read_all(&node.file(2))).len() >= 3000
    })
    .await;
    // Started again, it is followed again: its output comes once more
    // (the script starts from 0), after the first run's.
    assert!(docker_cli(&["start", &local]).0);
    wait_for("6000 lines", || {
        seqs(&read_all(&node.file(2))).len() >= 6000
    })
    .await;
    let mut expected: Vec<u64> = (0..3000).collect();
    expected.extend(0..3000);
    assert_eq!(seqs(&read_all(&node.file(2))), expected);
    tree.cancel();
    tree.wait().await;
}
