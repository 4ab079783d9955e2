//! The two halves of the logs shipping benchmark that
//! `scripts/bench/logs.sh` runs (issue 12, "Benchmark"); not a test.
//!
//! - `ship <node-id> <port> <data-dir>`: the agent's logs controller alone,
//!   as the supervisor runs it, against the real Docker Engine: it follows
//!   the containers labelled for `<node-id>`, writes their files under
//!   `<data-dir>/files/` and ships every line to one sink,
//!   `tcp://127.0.0.1:<port>` in the syslog format (RFC 5424, octet
//!   counting), through its on-disk buffer under `<data-dir>`. Runs until
//!   killed.
//! - `receive <port> <lines>`: a receiver on `127.0.0.1:<port>` that takes
//!   octet-counted syslog (RFC 6587) on any number of connections, counts
//!   messages and bytes, and exits printing `<messages> <bytes>` once it
//!   has `<lines>` messages.
//!
//! `cargo build --release -p skiff-agent --example logs_ship_bench`

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use skiff_agent::controller::{Context, Controller as _, Reporter, Reports, Versioned};
use skiff_agent::engine::EngineHandle;
use skiff_agent::logs::Controller;
use skiff_agent::logs::ship::Shipping;
use skiff_shared::sections::logs::{
    DEFAULT_BUFFER_BYTES, FileSettings, FullPolicy, LogsSection, SinkFormat, SinkSpec,
};
use skiff_shared::tasks::TaskTree;

const USAGE: &str =
    "usage: logs_ship_bench ship <node-id> <port> <data-dir> | receive <port> <lines>";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["ship", node, port, dir] => ship(node, port.parse()?, dir),
        ["receive", port, lines] => receive(port.parse()?, lines.parse()?),
        _ => Err(USAGE.into()),
    }
}

fn ship(node: &str, port: u16, dir: &str) -> Result<(), Box<dyn std::error::Error>> {
    let data_dir = std::path::Path::new(dir);
    let section = LogsSection {
        host: "bench".into(),
        files: FileSettings {
            path_template: format!("{dir}/files/{{stack}}/{{service}}/{{container}}.log"),
            ..FileSettings::default()
        },
        sinks: vec![SinkSpec {
            name: "bench".into(),
            url: format!("tcp://127.0.0.1:{port}"),
            format: SinkFormat::Syslog,
            ca_pem: None,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            when_full: FullPolicy::Block,
        }],
        stack_sinks: BTreeMap::new(),
    };
    section.check()?;
    // The agent's runtime: a worker thread per core.
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let docker = bollard::Docker::connect_with_local_defaults()?
            .negotiate_version()
            .await?;
        let tree = TaskTree::root();
        let controller = Arc::new(Controller::from_parts(
            node,
            EngineHandle::ready(docker),
            data_dir,
            Arc::new(Shipping::new(data_dir, &tree)),
        ));
        let (tx, desired) = tokio::sync::watch::channel(Some(Versioned {
            generation: 1,
            value: Arc::new(section),
        }));
        let cx = Context {
            desired,
            reports: Reporter::new(Arc::new(Reports::default())),
            tree: tree.child(),
        };
        controller.run(cx).await;
        drop(tx);
        Ok(())
    })
}

/// Where an octet-counted stream is: in a frame's length, or in its body
/// with this many bytes left.
enum Framing {
    Length(usize),
    Body(usize),
}

fn receive(port: u16, lines: u64) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let messages = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    // The connection that brings the last line says so; main then returns.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    {
        let (messages, bytes) = (messages.clone(), bytes.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (messages, bytes, done) = (messages.clone(), bytes.clone(), done_tx.clone());
                std::thread::spawn(move || count(conn, lines, &messages, &bytes, &done));
            }
        });
    }
    done_rx.recv()?;
    println!(
        "{} {}",
        messages.load(Ordering::Acquire),
        bytes.load(Ordering::Acquire)
    );
    Ok(())
}

/// Counts one connection's octet-counted messages into the totals.
fn count(
    mut conn: std::net::TcpStream,
    lines: u64,
    messages: &AtomicU64,
    bytes: &AtomicU64,
    done: &std::sync::mpsc::Sender<()>,
) {
    let mut buf = vec![0u8; 1 << 20];
    let mut state = Framing::Length(0);
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut whole = 0u64;
        let mut i = 0;
        while i < n {
            match state {
                Framing::Body(left) => {
                    let take = left.min(n - i);
                    i += take;
                    state = if take == left {
                        whole += 1;
                        Framing::Length(0)
                    } else {
                        Framing::Body(left - take)
                    };
                }
                Framing::Length(len) => {
                    let b = buf[i];
                    i += 1;
                    state = match b {
                        b'0'..=b'9' => Framing::Length(len * 10 + usize::from(b - b'0')),
                        b' ' if len > 0 => Framing::Body(len),
                        // Stray line ends between frames.
                        _ => Framing::Length(len),
                    };
                }
            }
        }
        bytes.fetch_add(n as u64, Ordering::AcqRel);
        if messages.fetch_add(whole, Ordering::AcqRel) + whole >= lines {
            let _ = done.send(());
        }
    }
}
