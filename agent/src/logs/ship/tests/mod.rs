//! The buffer and the encoders alone; `rsyslog` and `http` ship through
//! real receivers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use skiff_shared::sections::logs::{FileSettings, FullPolicy, LogsSection, SinkFormat, SinkSpec};
use tokio::time::Instant;

use super::buffer::{Appended, Buffer};
use super::{encode, frame};
use crate::logs::record::{Record, Source, Stream};

mod http;
mod rsyslog;

pub fn source(stack: &str, service: &str, slot: u32) -> Arc<Source> {
    Arc::new(Source {
        host: "host-1".into(),
        stack: stack.into(),
        service: service.into(),
        slot,
        release: 7,
        container: format!("{stack}.{service}.{slot}"),
        container_id: format!("{stack}{service}{slot}id"),
    })
}

/// Lines `seq=<from>..seq=<from+n>`, alternating stdout and stderr.
pub fn records(source: &Arc<Source>, from: u64, n: u64) -> Vec<Record> {
    (from..from + n)
        .map(|i| Record {
            ts_ns: 1_764_504_000_123_456_789 + i64::try_from(i).unwrap(),
            stream: if i.is_multiple_of(2) {
                Stream::Stdout
            } else {
                Stream::Stderr
            },
            line: format!("seq={i} {}", "x".repeat(40)),
            source: source.clone(),
        })
        .collect()
}

pub fn spec(name: &str, url: &str, format: SinkFormat) -> SinkSpec {
    SinkSpec {
        name: name.into(),
        url: url.into(),
        format,
        ca_pem: None,
        buffer_bytes: 1 << 20,
        when_full: FullPolicy::Block,
    }
}

pub fn section(sinks: Vec<SinkSpec>) -> LogsSection {
    LogsSection {
        host: "host-1".into(),
        files: FileSettings::default(),
        sinks,
        stack_sinks: BTreeMap::new(),
    }
}

/// Waits until `done` holds, polling, failing with `what` after `secs`.
pub async fn until(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn frames(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        frame::encode(r, &mut out);
    }
    out
}

#[test]
fn frames_keep_every_field_and_share_a_source() {
    let src = source("web", "api", 2);
    let recs = records(&src, 0, 3);
    let bytes = frames(&recs);
    let mut at = 0;
    let mut previous: Option<Arc<Source>> = None;
    for want in &recs {
        let len = frame::payload_len(bytes[at..at + 4].try_into().unwrap()).unwrap();
        let got = frame::decode(&bytes[at + 4..at + 4 + len], previous.as_ref()).unwrap();
        assert_eq!(&got, want);
        if let Some(p) = &previous {
            assert!(
                Arc::ptr_eq(p, &got.source),
                "one container's lines share their source"
            );
        }
        previous = Some(got.source.clone());
        at += 4 + len;
    }
    assert_eq!(at, bytes.len());
    assert!(
        frame::decode(&bytes[4..20], None).is_none(),
        "a short payload is refused"
    );
}

#[test]
fn the_buffer_resumes_at_its_checkpoint_after_a_crash_and_cuts_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b");
    let src = source("web", "api", 1);
    {
        let b = Buffer::open(&path, 1 << 20, FullPolicy::Block).unwrap();
        assert_eq!(
            b.append(&frames(&records(&src, 0, 10)), 10).unwrap(),
            Appended::Stored
        );
        let batch = b.read(4, 1 << 20).unwrap().unwrap();
        assert_eq!(batch.records.len(), 4);
        b.ack(&batch).unwrap();
        b.checkpoint().unwrap();
        // Acknowledged after the checkpoint: sent again after a crash.
        let batch = b.read(2, 1 << 20).unwrap().unwrap();
        b.ack(&batch).unwrap();
        let c = b.counts();
        assert_eq!((c.delivered, c.buffered_lines), (6, 4));
        // Dropped without a checkpoint, as a SIGKILL would.
    }
    // A torn write at the end of the newest segment.
    let newest = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .unwrap();
    let mut torn = frames(&records(&src, 10, 1));
    torn.truncate(torn.len() / 2);
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes.extend_from_slice(&torn);
    std::fs::write(&newest, bytes).unwrap();

    let b = Buffer::open(&path, 1 << 20, FullPolicy::Block).unwrap();
    assert_eq!(
        b.counts().buffered_lines,
        6,
        "resumes at the checkpoint (4 taken)"
    );
    let mut seen = Vec::new();
    while let Some(batch) = b.read(100, 1 << 20).unwrap() {
        seen.extend(batch.records.iter().map(|r| r.line.clone()));
        b.ack(&batch).unwrap();
    }
    let want: Vec<String> = records(&src, 4, 6).into_iter().map(|r| r.line).collect();
    assert_eq!(
        seen, want,
        "everything after the checkpoint, the torn frame cut"
    );
    assert_eq!(b.counts().buffered_lines, 0);
    let mode = std::fs::metadata(&path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o700);
}

#[test]
fn a_full_buffer_drops_the_oldest_and_counts_them_or_refuses_under_block() {
    let dir = tempfile::tempdir().unwrap();
    let src = source("web", "api", 1);
    let drop = Buffer::open(&dir.path().join("drop"), 1 << 20, FullPolicy::DropOldest).unwrap();
    let block = Buffer::open(&dir.path().join("block"), 1 << 20, FullPolicy::Block).unwrap();
    let mut pushed = 0;
    let mut refused = false;
    for i in 0..100 {
        let recs = records(&src, i * 100, 100);
        let bytes = frames(&recs);
        assert_eq!(drop.append(&bytes, 100).unwrap(), Appended::Stored);
        if !refused {
            match block.append(&bytes, 100).unwrap() {
                Appended::Stored => pushed += 100,
                Appended::Full => refused = true,
            }
        }
    }
    let c = drop.counts();
    assert!(c.dropped > 0, "the oldest lines were dropped");
    assert_eq!(
        c.dropped + c.buffered_lines,
        10_000,
        "every line buffered or counted"
    );
    assert!(c.buffered_bytes <= 1 << 20);
    // The oldest kept line follows the newest dropped one.
    let first = drop.read(1, 1 << 20).unwrap().unwrap();
    assert_eq!(first.records[0].line, records(&src, c.dropped, 1)[0].line);

    assert!(refused, "block refuses what does not fit");
    assert_eq!(block.counts().buffered_lines, pushed);
    assert_eq!(block.counts().dropped, 0);
    let bytes = frames(&records(&src, 0, 100));
    assert_eq!(block.append(&bytes, 100).unwrap(), Appended::Full);
    // Taking the oldest segment makes room.
    let mut taken = 0;
    while block.append(&bytes, 100).unwrap() == Appended::Full {
        let batch = block.read(100, 1 << 20).unwrap().unwrap();
        taken += batch.records.len();
        block.ack(&batch).unwrap();
    }
    assert!(taken > 0 && taken < 1000, "{taken} lines taken made room");
}

#[test]
fn syslog_messages_follow_rfc_5424_with_escaped_structured_data() {
    let src = Arc::new(Source {
        host: "host-1".into(),
        stack: "web".into(),
        service: "a\"p]i\\".into(),
        slot: 3,
        release: 12,
        container: "web.api.3".into(),
        container_id: "abc".into(),
    });
    let r = Record {
        ts_ns: 1_764_504_000_123_456_789,
        stream: Stream::Stderr,
        line: "héllo wörld".into(),
        source: src,
    };
    let mut out = Vec::new();
    encode::syslog(&r, &mut out);
    assert_eq!(
        String::from_utf8(out.clone()).unwrap(),
        "<11>1 2025-11-30T12:00:00.123456Z host-1 web.a\"p]i\\ 3 stderr \
         [skiff@32473 host=\"host-1\" stack=\"web\" service=\"a\\\"p\\]i\\\\\" replica=\"3\" release=\"12\" stream=\"stderr\"] héllo wörld"
    );
    let mut framed = Vec::new();
    let mut scratch = Vec::new();
    encode::syslog_framed(&r, &mut framed, &mut scratch);
    assert_eq!(
        framed,
        [format!("{} ", out.len()).into_bytes(), out].concat()
    );

    let long = Record {
        line: "é".repeat(10_000),
        ..r
    };
    let mut datagram = Vec::new();
    encode::syslog_datagram(&long, &mut datagram);
    assert!(datagram.len() <= encode::MAX_DATAGRAM);
    assert!(
        std::str::from_utf8(&datagram).is_ok(),
        "cut at a character boundary"
    );
}

#[test]
fn json_lines_and_otlp_carry_every_field() {
    let src = source("web", "api", 2);
    let recs = records(&src, 0, 2);
    let mut out = Vec::new();
    for r in &recs {
        encode::json_line(r, &mut out);
    }
    let text = String::from_utf8(out).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(
        first,
        serde_json::json!({"ts": "2025-11-30T12:00:00.123456789Z", "host": "host-1", "stack": "web",
            "service": "api", "replica": 2, "release": 7, "stream": "stdout", "container": "web.api.2",
            "line": recs[0].line})
    );
    let otlp: serde_json::Value = serde_json::from_slice(&encode::otlp(&recs)).unwrap();
    let rl = &otlp["resourceLogs"][0];
    assert_eq!(
        rl["resource"]["attributes"][0],
        serde_json::json!({"key": "host.name", "value": {"stringValue": "host-1"}})
    );
    let log = &rl["scopeLogs"][0]["logRecords"][1];
    assert_eq!(log["timeUnixNano"], "1764504000123456790");
    assert_eq!(log["severityNumber"], 17);
    assert_eq!(log["severityText"], "ERROR");
    assert_eq!(log["body"]["stringValue"], recs[1].line.as_str());
    let attrs = log["attributes"].as_array().unwrap();
    assert!(attrs.contains(&serde_json::json!({"key": "replica", "value": {"intValue": "2"}})));
    assert!(
        attrs.contains(&serde_json::json!({"key": "stream", "value": {"stringValue": "stderr"}}))
    );
}

#[tokio::test]
async fn a_new_sink_that_cannot_be_reached_is_refused_and_not_started() {
    use crate::logs::record::Sinks as _;
    let tree = skiff_shared::tasks::TaskTree::root();
    let dir = tempfile::tempdir().unwrap();
    let shipping = super::Shipping::new(dir.path(), &tree);
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    shipping
        .configure(&section(vec![spec("away", &url, SinkFormat::Syslog)]))
        .await;
    let s = shipping.statuses();
    assert_eq!(s.len(), 1);
    assert_eq!(
        s[0].refused.as_deref().unwrap(),
        format!("{url}: connection refused: is the receiver listening on port {port}?")
    );
    shipping.push(records(&source("web", "api", 1), 0, 5)).await;
    assert_eq!(
        shipping.statuses()[0].buffered_lines,
        0,
        "not started: nothing buffered"
    );
    assert!(
        !dir.path().join("logs/buffers/cluster.away").exists(),
        "no buffer for a refused new sink"
    );
    tree.cancel();
    tree.wait().await;
}

/// A rough figure, not a benchmark (debug build, one machine): lines per
/// second from `push` to a TCP receiver that reads and discards.
/// `cargo test -p skiff-agent --lib ship_rate -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints a rate; run by hand"]
async fn ship_rate() {
    use crate::logs::record::Sinks as _;
    use tokio::io::AsyncReadExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let r = received.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let r = r.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    r.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    let tree = skiff_shared::tasks::TaskTree::root();
    let dir = tempfile::tempdir().unwrap();
    let shipping = super::Shipping::new(dir.path(), &tree);
    let mut sink = spec(
        "rate",
        &format!("tcp://127.0.0.1:{port}"),
        SinkFormat::Syslog,
    );
    sink.buffer_bytes = 256 << 20;
    shipping.configure(&section(vec![sink])).await;
    let src = source("web", "api", 1);
    let lines = 200_000u64;
    let started = std::time::Instant::now();
    for i in 0..lines / 1000 {
        shipping.push(records(&src, i * 1000, 1000)).await;
    }
    until(120, "every line is delivered", || {
        shipping.statuses()[0].delivered == lines
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    let bytes = received.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{lines} lines, {:.1} MiB sent in {secs:.2} s: {:.0} lines/s, {:.1} MiB/s",
        bytes as f64 / f64::from(1 << 20),
        lines as f64 / secs,
        bytes as f64 / f64::from(1 << 20) / secs
    );
    tree.cancel();
    tree.wait().await;
}
