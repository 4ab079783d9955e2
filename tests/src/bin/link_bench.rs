//! `skiff-link-bench`: the agent-link load tool.
//!
//! It joins N simulated agents to one coordinator through the real join
//! endpoint (one join token with N uses, a fresh key and a real client
//! certificate per agent), then holds N links exactly as the agent does:
//! TLS 1.3 with the agent's certificate, a WebSocket on `/v1/link`, `Hello`,
//! `Welcome`, signed `Plan` answered with `Ack`, and a `Heartbeat` every
//! `heartbeat_interval_ms`. It samples the coordinator's memory and CPU from
//! `/proc`, and, with `--wait-reconnect`, measures how long the agents take
//! to come back after the coordinator restarts, each reconnecting with the
//! agent's own jittered exponential backoff.
//!
//! Results go to stdout as JSON lines (`{"event": ...}`); progress and a
//! human summary go to stderr. `scripts/bench/link.sh` drives a whole run.
//!
//! Exit codes: 0 the run completed (whether or not the goals were met),
//! 1 the run failed, 2 invalid flags or environment.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::Parser;
use ed25519_dalek::VerifyingKey;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair};
use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};
use serde_json::json;
use skiff_agent::link::{Backoff, LinkOptions};
use skiff_api_types::{ClusterView, CreateJoinToken, CreatedJoinToken, NodeView};
use skiff_cli::client::Client;
use skiff_shared::files::{PRIVATE, create_private_dir, write_atomic};
use skiff_shared::join::{ErrorBody, JOIN_PATH, JoinRequest, JoinResponse, JoinToken};
use skiff_shared::protocol::SectionMessage;
use skiff_shared::protocol::{
    self, Ack, AgentMessage, CAP_CERT_RENEWAL, CLOSE_REMOVED, CoordinatorMessage, Heartbeat, Hello,
    HostFacts, LINK_PATH, MAX_FRAME_BYTES, MAX_MESSAGE_BYTES, MISSED_HEARTBEATS, PROTOCOL_VERSION,
};
use skiff_shared::sections::SectionKind;
use skiff_shared::sections::containers::Containers;
use skiff_shared::sections::networks::Networks;
use skiff_shared::tls::{
    certs_from_pem, fingerprint, join_client_config, key_from_pem, link_client_config,
    server_name_of,
};
use skiff_shared::workload::ObservedState;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

/// Time for each step of a join.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// The agent resets its backoff after a link that was up this long
/// (agent/src/link.rs `run`).
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);
/// Cached certificates closer than this to expiry are not reused.
const CERT_MARGIN: Duration = Duration::from_secs(3600);
/// /proc reports CPU times in USER_HZ, which the kernel fixes at 100 on
/// every architecture Linux exposes to user space through /proc.
const USER_HZ: f64 = 100.0;
/// Distinct error texts kept for the report.
const MAX_ERROR_KINDS: usize = 32;

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "skiff-link-bench",
    about = "Connects many simulated agents with real certificates to one coordinator and measures it."
)]
struct Cli {
    /// Coordinator HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    api: String,
    /// Admin API token (the coordinator writes one to DATA_DIR/initial-admin-token).
    #[arg(long, env = "SKIFF_TOKEN", hide_env_values = true)]
    token: String,
    /// The coordinator's agent port, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:7443")]
    agent_addr: String,
    /// Number of simulated agents.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Seconds to hold all links at steady state; CPU is averaged over this window.
    #[arg(long, default_value_t = 60)]
    hold: u64,
    /// Seconds to wait after the ramp-up before the steady-state window opens.
    #[arg(long, default_value_t = 15)]
    settle: u64,
    /// PID of the coordinator, to sample VmRSS and CPU time from /proc.
    #[arg(long)]
    coordinator_pid: Option<u32>,
    /// File holding the coordinator's PID, read at every sample (follows a restart).
    #[arg(long)]
    coordinator_pid_file: Option<PathBuf>,
    /// Directory to keep the issued identities in, so a later run against
    /// the same coordinator reuses them instead of joining again.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Concurrent join requests.
    #[arg(long, default_value_t = 32)]
    join_concurrency: usize,
    /// Concurrent link handshakes during the ramp-up (reconnects are not
    /// limited, as real agents are independent).
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Seconds to wait for the ramp-up to finish.
    #[arg(long, default_value_t = 600)]
    ramp_timeout: u64,
    /// After the steady-state window, wait for the coordinator to restart
    /// and measure the time until every agent has reconnected.
    #[arg(long)]
    wait_reconnect: bool,
    /// File created when the tool is ready for the coordinator to be restarted.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Seconds to wait for the first link to drop in --wait-reconnect mode.
    #[arg(long, default_value_t = 300)]
    restart_timeout: u64,
    /// Seconds, from the first drop, to wait for every agent to reconnect.
    #[arg(long, default_value_t = 300)]
    reconnect_timeout: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.agents == 0 || cli.join_concurrency == 0 || cli.connect_concurrency == 0 {
        eprintln!("skiff-link-bench: --agents and the concurrency flags must be at least 1");
        return ExitCode::from(EXIT_USAGE);
    }
    if let Err(message) = check_fd_limit(cli.agents) {
        eprintln!("skiff-link-bench: {message}");
        return ExitCode::from(EXIT_USAGE);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("skiff-link-bench: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff-link-bench: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Refuses to start when the soft limit on open files cannot hold N links.
fn check_fd_limit(agents: usize) -> Result<(), String> {
    let limits = std::fs::read_to_string("/proc/self/limits")
        .map_err(|e| format!("cannot read /proc/self/limits: {e}"))?;
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    match soft {
        Some(soft) if soft < agents + 64 => Err(format!(
            "the open-file limit is {soft}, too low for {agents} links; raise it first \
             (`ulimit -n $(ulimit -Hn)`), or use fewer --agents"
        )),
        _ => Ok(()),
    }
}

fn emit(value: &serde_json::Value) {
    println!("{value}");
}

// ---------------------------------------------------------------------------
// /proc sampling

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    rss_kib: Option<u64>,
    cpu_ticks: Option<u64>,
}

/// Where to find the coordinator's process.
#[derive(Debug, Clone)]
struct Target {
    pid: Option<u32>,
    pid_file: Option<PathBuf>,
}

impl Target {
    fn pid(&self) -> Option<u32> {
        if let Some(file) = &self.pid_file
            && let Ok(text) = std::fs::read_to_string(file)
            && let Ok(pid) = text.trim().parse()
        {
            return Some(pid);
        }
        self.pid
    }

    fn sample(&self) -> Sample {
        match self.pid() {
            Some(pid) => sample_proc(&pid.to_string()),
            None => Sample {
                at: Instant::now(),
                rss_kib: None,
                cpu_ticks: None,
            },
        }
    }
}

/// VmRSS and utime+stime of `/proc/<pid>`.
fn sample_proc(pid: &str) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
    let rss_kib = status.as_deref().and_then(|s| status_kib(s, "VmRSS:"));
    let cpu_ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| stat_cpu_ticks(&s));
    Sample {
        at: Instant::now(),
        rss_kib,
        cpu_ticks,
    }
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime from a /proc/PID/stat line. The command name (field 2) may
/// hold spaces, so fields are counted after its closing parenthesis.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU used between two samples, as a percentage of one core.
fn cpu_percent(a: &Sample, b: &Sample) -> Option<f64> {
    let ticks = b.cpu_ticks?.checked_sub(a.cpu_ticks?)?;
    let wall = b.at.duration_since(a.at).as_secs_f64();
    (wall > 0.0).then(|| ticks as f64 / USER_HZ / wall * 100.0)
}

fn cpu_seconds(a: &Sample, b: &Sample) -> Option<f64> {
    Some(b.cpu_ticks?.checked_sub(a.cpu_ticks?)? as f64 / USER_HZ)
}

// ---------------------------------------------------------------------------
// Identities: join, cache

/// One simulated agent's identity, as cached.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CachedIdentity {
    name: String,
    node_id: String,
    key_pem: String,
    cert_pem: String,
}

/// What every identity in the cache shares.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheMeta {
    ca_pem: String,
    plan_public_key: String,
}

const CACHE_META: &str = "cluster.json";
const CACHE_IDS: &str = "identities.jsonl";

fn load_cache(dir: &Path) -> anyhow::Result<Option<(CacheMeta, Vec<CachedIdentity>)>> {
    let meta_path = dir.join(CACHE_META);
    let meta = match std::fs::read_to_string(&meta_path) {
        Ok(text) => serde_json::from_str::<CacheMeta>(&text)
            .with_context(|| format!("{} is not a cache file", meta_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context(format!("reading {}", meta_path.display())),
    };
    let ids_path = dir.join(CACHE_IDS);
    let text = std::fs::read_to_string(&ids_path)
        .with_context(|| format!("reading {}", ids_path.display()))?;
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        ids.push(
            serde_json::from_str::<CachedIdentity>(line)
                .with_context(|| format!("{} line {}", ids_path.display(), n + 1))?,
        );
    }
    Ok(Some((meta, ids)))
}

fn store_cache(dir: &Path, meta: &CacheMeta, ids: &[CachedIdentity]) -> anyhow::Result<()> {
    create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut lines = String::new();
    for id in ids {
        lines.push_str(&serde_json::to_string(id)?);
        lines.push('\n');
    }
    let ids_path = dir.join(CACHE_IDS);
    write_atomic(&ids_path, lines.as_bytes(), PRIVATE)
        .with_context(|| format!("writing {}", ids_path.display()))?;
    let meta_path = dir.join(CACHE_META);
    write_atomic(&meta_path, serde_json::to_string(meta)?.as_bytes(), PRIVATE)
        .with_context(|| format!("writing {}", meta_path.display()))?;
    Ok(())
}

/// Keeps the cached identities this coordinator still accepts: same CA, node
/// not removed, certificate valid for a while yet.
fn usable_cached(
    meta: &CacheMeta,
    ids: Vec<CachedIdentity>,
    ca_fingerprint_hex: &str,
    live: &HashSet<String>,
) -> (Vec<CachedIdentity>, String) {
    let same_ca = certs_from_pem(&meta.ca_pem, "cached CA")
        .ok()
        .and_then(|c| c.into_iter().next())
        .is_some_and(|ca| hex::encode(fingerprint(&ca)) == ca_fingerprint_hex);
    if !same_ca {
        return (Vec::new(), "the cache belongs to another cluster CA".into());
    }
    let deadline = SystemTime::now() + CERT_MARGIN;
    let (known, gone): (Vec<_>, Vec<_>) =
        ids.into_iter().partition(|id| live.contains(&id.node_id));
    let (kept, expiring): (Vec<_>, Vec<_>) = known.into_iter().partition(|id| {
        certs_from_pem(&id.cert_pem, "cached certificate")
            .ok()
            .and_then(|c| c.into_iter().next())
            .and_then(|der| skiff_agent::identity::validity(&der))
            .is_some_and(|(_, not_after)| not_after > deadline)
    });
    let why = format!(
        "{} removed or unknown to the coordinator, {} with a certificate expiring within {} min",
        gone.len(),
        expiring.len(),
        CERT_MARGIN.as_secs() / 60
    );
    (kept, why)
}

/// A typical server's facts; each simulated agent reports them under its
/// own host name, so the coordinator stores a realistic row per node.
fn facts_template() -> HostFacts {
    HostFacts {
        hostname: String::new(),
        os: "Debian GNU/Linux 12 (bookworm)".into(),
        kernel: "6.1.0-bench".into(),
        arch: std::env::consts::ARCH.into(),
        cpus: 2,
        memory_bytes: 24 << 30,
        disks: vec![skiff_shared::protocol::Disk {
            mount: "/".into(),
            filesystem: "ext4".into(),
            total_bytes: 250 << 30,
            available_bytes: 80 << 30,
        }],
        addresses: vec!["10.0.0.2".into(), "fe80::1".into()],
        docker_version: Some("26.1.5".into()),
        docker_api_version: Some("1.45".into()),
        extra: BTreeMap::new(),
    }
}

struct Joined {
    identity: CachedIdentity,
    meta: CacheMeta,
}

/// Joins one simulated agent exactly as `skiff-agent join` does: pin the
/// CA from the token, then POST a CSR for a fresh key.
async fn join_one(
    addr: &str,
    token: &JoinToken,
    name: String,
    facts: HostFacts,
) -> anyhow::Result<Joined> {
    let server_name = server_name_of(addr).map_err(anyhow::Error::msg)?;
    let key = KeyPair::generate().context("generating a key")?;
    let csr_pem = CertificateParams::default()
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .context("making a CSR")?;
    let (mut config, verifier) = join_client_config(token.ca_fingerprint)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timed out")?
        .context("connect")?;
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(server_name, tcp),
    )
    .await
    .context("TLS handshake timed out")?
    .context("TLS handshake")?;
    let ca = verifier
        .ca()
        .context("the TLS handshake did not pin the CA")?;
    let request = JoinRequest {
        token_id: token.id.clone(),
        secret: token.secret.clone(),
        csr_pem,
        name: name.clone(),
        labels: BTreeMap::from([("bench".to_owned(), "link".to_owned())]),
        facts,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .context("HTTP handshake")?;
    tokio::spawn(conn);
    let req = hyper::Request::post(JOIN_PATH)
        .header(hyper::header::HOST, addr)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&request)?)))?;
    let resp = tokio::time::timeout(Duration::from_secs(60), sender.send_request(req))
        .await
        .context("join request timed out")?
        .context("join request")?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.message)
            .unwrap_or_else(|_| format!("HTTP {status}"));
        bail!("join refused: {message}");
    }
    let resp: JoinResponse = serde_json::from_slice(&body).context("join answer")?;
    let answered_ca = certs_from_pem(&resp.ca_pem, "CA")?;
    if answered_ca.first().map(|c| fingerprint(c)) != Some(fingerprint(&ca)) {
        bail!("the CA in the join answer is not the pinned CA");
    }
    Ok(Joined {
        identity: CachedIdentity {
            name,
            node_id: resp.node_id,
            key_pem: key.serialize_pem(),
            cert_pem: resp.cert_pem,
        },
        meta: CacheMeta {
            ca_pem: resp.ca_pem,
            plan_public_key: resp.plan_public_key,
        },
    })
}

/// Joins `count` agents with one token, `concurrency` at a time, retrying
/// connection failures a few times.
async fn join_many(
    addr: &str,
    token: JoinToken,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<(CacheMeta, Vec<CachedIdentity>)> {
    let run_id = hex::encode(
        skiff_shared::random_bytes::<3>()
            .map_err(|_| anyhow::anyhow!("the system random source failed"))?,
    );
    let sem = Arc::new(Semaphore::new(concurrency));
    let token = Arc::new(token);
    let mut set = JoinSet::new();
    for i in 0..count {
        let sem = sem.clone();
        let token = token.clone();
        let addr = addr.to_owned();
        let name = format!("bench-{run_id}-{i:05}");
        set.spawn(async move {
            // The semaphore is never closed, so acquiring cannot fail.
            let _permit = sem.acquire().await;
            let mut facts = facts_template();
            facts.hostname = name.clone();
            let mut last = None;
            for attempt in 0..4u32 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                }
                match join_one(&addr, &token, name.clone(), facts.clone()).await {
                    Ok(j) => return Ok(j),
                    // A refusal will not change on retry.
                    Err(e) if e.to_string().starts_with("join refused") => return Err(e),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| anyhow::anyhow!("join failed")))
        });
    }
    let started = Instant::now();
    let mut meta: Option<CacheMeta> = None;
    let mut ids = Vec::with_capacity(count);
    let mut errors = 0usize;
    let mut first_error = None;
    let mut last_report = Instant::now();
    while let Some(done) = set.join_next().await {
        match done {
            Ok(Ok(j)) => {
                if let Some(m) = &meta {
                    if m.ca_pem != j.meta.ca_pem {
                        bail!("two join answers named different CAs");
                    }
                } else {
                    meta = Some(j.meta);
                }
                ids.push(j.identity);
            }
            Ok(Err(e)) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("join task failed: {e}"));
            }
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "  joined {}/{count} ({errors} failed) after {:.0} s",
                ids.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    if errors > 0 {
        bail!(
            "{errors} of {count} joins failed; first error: {}",
            first_error.unwrap_or_default()
        );
    }
    let meta = meta.context("no join answered")?;
    Ok((meta, ids))
}

// ---------------------------------------------------------------------------
// The simulated agent

/// What one simulated agent keeps between connections.
struct SimAgent {
    node_id: String,
    name: String,
    config: Arc<ClientConfig>,
}

/// State all agents share with the measuring loop.
struct Shared {
    addr: String,
    url: String,
    server_name: ServerName<'static>,
    plan_key: VerifyingKey,
    /// The production agent's link timings.
    link: LinkOptions,
    facts: HostFacts,
    ramp: Semaphore,
    shutdown: CancellationToken,
    /// Links up now.
    up: AtomicUsize,
    /// Agents that have connected at least once.
    ever: AtomicUsize,
    connects: AtomicU64,
    failures: AtomicU64,
    drops: AtomicU64,
    removed: AtomicUsize,
    heartbeats: AtomicU64,
    plans: AtomicU64,
    /// Set when the restart measurement starts.
    armed: AtomicBool,
    first_drop: OnceLock<Instant>,
    /// Agents back after a drop while armed, and how long after the first drop.
    reconnected: AtomicUsize,
    reconnect_ms: Mutex<Vec<u64>>,
    /// Failed attempts and unexpected drops, counted by kind.
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn note_error(&self, text: String) {
        // Strip numbers (ports, ids, timings) so one kind of error is one key.
        let kind: String = text
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .take(160)
            .collect();
        if let Ok(mut map) = self.errors.lock() {
            if let Some(n) = map.get_mut(&kind) {
                *n += 1;
            } else if map.len() < MAX_ERROR_KINDS {
                map.insert(kind, 1);
            }
        }
    }
}

/// How one connection ended.
enum End {
    Shutdown,
    Removed,
    Lost(String),
}

/// Why a connection attempt did not produce a link.
#[derive(Debug)]
enum ConnectError {
    /// The node was removed: stop, as the agent does.
    Removed,
    Failed(String),
}

fn ws_config() -> WebSocketConfig {
    // The agent's limits and buffers (agent/src/link.rs `ws_config`).
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

fn is_revoked(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked)
            )
        })
}

type Link = WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// TCP, TLS, WebSocket upgrade, hello and welcome.
async fn connect(
    agent: &SimAgent,
    shared: &Shared,
    plan_generation: Option<u64>,
) -> Result<Welcomed, ConnectError> {
    let failed = ConnectError::Failed;
    let tcp = tokio::time::timeout(
        shared.link.connect_timeout,
        tokio::net::TcpStream::connect(&shared.addr),
    )
    .await
    .map_err(|_| failed("connect: timed out".into()))?
    .map_err(|e| failed(format!("connect: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(
        shared.link.connect_timeout,
        tokio_rustls::TlsConnector::from(agent.config.clone())
            .connect(shared.server_name.clone(), tcp),
    )
    .await
    .map_err(|_| failed("TLS handshake timed out".into()))?
    .map_err(|e| failed(format!("TLS: {e}")))?;
    let upgrade = tokio::time::timeout(
        shared.link.connect_timeout,
        tokio_tungstenite::client_async_with_config(shared.url.as_str(), tls, Some(ws_config())),
    )
    .await
    .map_err(|_| failed("WebSocket upgrade timed out".into()))?;
    let mut ws = match upgrade {
        Ok((ws, _)) => ws,
        Err(WsError::Io(e)) if is_revoked(&e) => return Err(ConnectError::Removed),
        Err(WsError::Http(resp)) if resp.status() == 403 => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            if body.contains("removed") {
                return Err(ConnectError::Removed);
            }
            return Err(failed(format!("refused: {body}")));
        }
        Err(e) => return Err(failed(format!("WebSocket: {e}"))),
    };
    let mut facts = shared.facts.clone();
    facts.hostname = agent.name.clone();
    let hello = AgentMessage::Hello(Box::new(Hello {
        protocol_versions: vec![PROTOCOL_VERSION],
        agent_version: skiff_shared::VERSION.to_owned(),
        capabilities: vec![
            CAP_CERT_RENEWAL.to_owned(),
            Containers::CAPABILITY.to_owned(),
            Networks::CAPABILITY.to_owned(),
        ],
        facts,
        plan_generation,
    }));
    ws.send(frame(1, None, &hello).map_err(failed)?)
        .await
        .map_err(|e| failed(format!("sending hello: {e}")))?;
    let welcome = match tokio::time::timeout(shared.link.connect_timeout, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => protocol::decode::<CoordinatorMessage>(t.as_str())
            .map_err(|e| failed(format!("welcome: {e}")))?,
        Ok(Some(Ok(Message::Close(frame)))) => {
            return match frame {
                Some(f) if u16::from(f.code) == CLOSE_REMOVED => Err(ConnectError::Removed),
                other => Err(failed(format!("closed before welcome: {other:?}"))),
            };
        }
        Ok(other) => return Err(failed(format!("no welcome: {other:?}"))),
        Err(_) => return Err(failed("no welcome: timed out".into())),
    };
    let CoordinatorMessage::Welcome(welcome) = welcome.body else {
        return Err(failed("first message was not a welcome".into()));
    };
    if welcome.protocol_version != PROTOCOL_VERSION || welcome.node_id != agent.node_id {
        return Err(failed(format!(
            "welcome for protocol {} node {}",
            welcome.protocol_version, welcome.node_id
        )));
    }
    Ok(Welcomed {
        ws,
        interval: Duration::from_millis(welcome.heartbeat_interval_ms.max(100)),
        report: welcome
            .capabilities
            .iter()
            .any(|c| c == Containers::CAPABILITY),
    })
}

/// An open link after the welcome.
struct Welcomed {
    ws: Link,
    /// Heartbeat interval from the welcome.
    interval: Duration,
    /// Whether the coordinator takes observed-state reports.
    report: bool,
}

/// A text frame holding one envelope.
fn frame<B: serde::Serialize>(id: u64, re: Option<u64>, body: &B) -> Result<Message, String> {
    protocol::encode(id, re, body)
        .map(Message::text)
        .map_err(|e| format!("encoding a message: {e}"))
}

/// What an empty host reports once it has converged to `plan_generation`:
/// the simulated agents run no containers.
fn observed(plan_generation: Option<u64>) -> Result<AgentMessage, String> {
    let report = ObservedState {
        plan_generation: plan_generation.unwrap_or(0),
        containers: Vec::new(),
        error: None,
        images: Vec::new(),
    };
    SectionMessage::of::<Containers, _>(&report)
        .map(AgentMessage::Report)
        .map_err(|e| format!("encoding a report: {e}"))
}

/// Holds one link as the agent does: heartbeat on every tick, answer
/// plans (and report the converged state, when the coordinator takes
/// reports), give up after MISSED_HEARTBEATS silent intervals.
async fn hold(
    link: &mut Welcomed,
    shared: &Shared,
    agent: &SimAgent,
    plan_generation: &mut Option<u64>,
) -> End {
    let ws = &mut link.ws;
    let mut next_id = 1u64;
    let silence_limit = link.interval * MISSED_HEARTBEATS;
    let mut tick = tokio::time::interval(link.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_rx = Instant::now();
    if link.report {
        // The agent reports its last observed state as soon as it is welcomed.
        next_id += 1;
        let msg = match observed(*plan_generation).and_then(|m| frame(next_id, None, &m)) {
            Ok(m) => m,
            Err(e) => return End::Lost(e),
        };
        if let Err(e) = ws.send(msg).await {
            return End::Lost(format!("sending observed state failed: {e}"));
        }
    }
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                return End::Shutdown;
            }
            _ = tick.tick() => {
                if last_rx.elapsed() > silence_limit {
                    return End::Lost(format!("no message from the coordinator for {silence_limit:?}"));
                }
                next_id += 1;
                let hb = AgentMessage::Heartbeat(Heartbeat { sent_at_ms: skiff_shared::unix_millis() });
                let hb = match frame(next_id, None, &hb) {
                    Ok(m) => m,
                    Err(e) => return End::Lost(e),
                };
                if let Err(e) = ws.send(hb).await {
                    return End::Lost(format!("sending a heartbeat failed: {e}"));
                }
                shared.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            msg = ws.next() => {
                last_rx = Instant::now();
                let text = match msg {
                    None => return End::Lost("connection closed".into()),
                    Some(Err(e)) => return End::Lost(e.to_string()),
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => {
                        return match frame {
                            Some(f) if u16::from(f.code) == CLOSE_REMOVED => End::Removed,
                            Some(f) => End::Lost(format!("coordinator closed the link ({}): {}", f.code, f.reason)),
                            None => End::Lost("coordinator closed the link".into()),
                        };
                    }
                    Some(Ok(_)) => continue,
                };
                let env = match protocol::decode::<CoordinatorMessage>(text.as_str()) {
                    Ok(env) => env,
                    Err(e) => return End::Lost(format!("invalid message: {e}")),
                };
                if let CoordinatorMessage::Plan(signed) = env.body {
                    // Verify as the agent does; storing the plan and running
                    // containers are the agent's business, not the link's.
                    let (ack, accepted) = match skiff_shared::signing::open(&shared.plan_key, &signed, &agent.node_id) {
                        Ok(plan) => {
                            *plan_generation = Some(plan.generation);
                            (Ack::ok(), true)
                        }
                        Err(e) => (Ack::err(e.to_string()), false),
                    };
                    next_id += 1;
                    let ack = match frame(next_id, Some(env.id), &AgentMessage::Ack(ack)) {
                        Ok(m) => m,
                        Err(e) => return End::Lost(e),
                    };
                    if let Err(e) = ws.send(ack).await {
                        return End::Lost(format!("sending an ack failed: {e}"));
                    }
                    shared.plans.fetch_add(1, Ordering::Relaxed);
                    if accepted && link.report {
                        // An empty host converges at once and reports it.
                        next_id += 1;
                        let msg = match observed(*plan_generation).and_then(|m| frame(next_id, None, &m)) {
                            Ok(m) => m,
                            Err(e) => return End::Lost(e),
                        };
                        if let Err(e) = ws.send(msg).await {
                            return End::Lost(format!("sending observed state failed: {e}"));
                        }
                    }
                }
            }
        }
    }
}

/// One simulated agent for the whole run: connect, hold, reconnect with the
/// agent's backoff, until shutdown or removal.
async fn run_agent(agent: SimAgent, shared: Arc<Shared>) {
    let mut backoff = Backoff::new(shared.link.backoff_min, shared.link.backoff_max);
    let mut ever = false;
    let mut dropped_while_armed = false;
    let mut plan_generation = None;
    loop {
        // Only the first connection of each agent is paced: that is the ramp-up.
        let permit = if ever {
            None
        } else {
            tokio::select! {
                () = shared.shutdown.cancelled() => return,
                p = shared.ramp.acquire() => p.ok(),
            }
        };
        let attempt = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            r = connect(&agent, &shared, plan_generation) => r,
        };
        drop(permit);
        match attempt {
            Ok(mut link) => {
                shared.up.fetch_add(1, Ordering::Relaxed);
                shared.connects.fetch_add(1, Ordering::Relaxed);
                if !ever {
                    ever = true;
                    shared.ever.fetch_add(1, Ordering::Relaxed);
                }
                if dropped_while_armed {
                    dropped_while_armed = false;
                    let since = shared
                        .first_drop
                        .get()
                        .map(|t| t.elapsed())
                        .unwrap_or_default();
                    if let Ok(mut v) = shared.reconnect_ms.lock() {
                        v.push(u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
                    }
                    shared.reconnected.fetch_add(1, Ordering::Relaxed);
                }
                let started = Instant::now();
                let end = hold(&mut link, &shared, &agent, &mut plan_generation).await;
                shared.up.fetch_sub(1, Ordering::Relaxed);
                match end {
                    End::Shutdown => return,
                    End::Removed => {
                        shared.removed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    End::Lost(why) => {
                        shared.drops.fetch_add(1, Ordering::Relaxed);
                        if shared.armed.load(Ordering::Relaxed) {
                            shared.first_drop.get_or_init(Instant::now);
                            dropped_while_armed = true;
                        } else {
                            shared.note_error(format!("lost: {why}"));
                        }
                        if started.elapsed() > BACKOFF_RESET_AFTER {
                            backoff.reset();
                        }
                    }
                }
            }
            Err(ConnectError::Removed) => {
                shared.removed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(ConnectError::Failed(why)) => {
                shared.failures.fetch_add(1, Ordering::Relaxed);
                if shared.armed.load(Ordering::Relaxed) {
                    shared.note_error(format!("after restart: {why}"));
                } else {
                    shared.note_error(why);
                }
            }
        }
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

// ---------------------------------------------------------------------------
// The run

fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn self_sample() -> Sample {
    sample_proc("self")
}

async fn cluster_view(client: &Client) -> anyhow::Result<ClusterView> {
    Ok(client
        .call::<ClusterView>(Method::GET, "/cluster", None::<&()>)
        .await?)
}

/// Obtains `n` identities: reused from the cache where the coordinator
/// still accepts them, joined for the rest.
async fn identities(
    cli: &Cli,
    client: &Client,
) -> anyhow::Result<(CacheMeta, Vec<CachedIdentity>)> {
    let n = cli.agents;
    let cluster = cluster_view(client).await?;
    let mut have: Vec<CachedIdentity> = Vec::new();
    let mut meta: Option<CacheMeta> = None;
    if let Some(dir) = &cli.cache
        && let Some((cached_meta, ids)) = load_cache(dir)?
    {
        let nodes: Vec<NodeView> = client.call(Method::GET, "/nodes", None::<&()>).await?;
        let live: HashSet<String> = nodes.into_iter().map(|n| n.id).collect();
        let total = ids.len();
        let (kept, why) = usable_cached(&cached_meta, ids, &cluster.ca_fingerprint, &live);
        eprintln!(
            "Cache {}: {} of {total} identities usable ({why}).",
            dir.display(),
            kept.len()
        );
        emit(&json!({"event": "cache", "cached": total, "usable": kept.len()}));
        if !kept.is_empty() {
            have = kept;
            meta = Some(cached_meta);
        }
    }
    let missing = n.saturating_sub(have.len());
    if missing > 0 {
        let uses = u32::try_from(missing).context("too many agents for one join token")?;
        let created: CreatedJoinToken = client
            .call(
                Method::POST,
                "/tokens/join",
                Some(&CreateJoinToken {
                    ttl: Some("2h".into()),
                    uses: Some(uses),
                }),
            )
            .await
            .context("creating the join token")?;
        let token: JoinToken = created
            .token
            .parse()
            .map_err(|e| anyhow::anyhow!("the API returned an unusable token: {e}"))?;
        eprintln!(
            "Joining {missing} agents ({} at a time)...",
            cli.join_concurrency
        );
        let started = Instant::now();
        let (joined_meta, joined) =
            join_many(&cli.agent_addr, token, missing, cli.join_concurrency).await?;
        let secs = started.elapsed().as_secs_f64();
        emit(&json!({
            "event": "joins",
            "joined": joined.len(),
            "seconds": round2(secs),
            "per_second": round2(joined.len() as f64 / secs.max(1e-9)),
        }));
        eprintln!(
            "Joined {} agents in {secs:.1} s ({:.0}/s).",
            joined.len(),
            joined.len() as f64 / secs.max(1e-9)
        );
        if let Some(m) = &meta
            && m.ca_pem != joined_meta.ca_pem
        {
            bail!("the cached CA and the CA from the join differ");
        }
        meta.get_or_insert(joined_meta);
        have.extend(joined);
    }
    let meta = meta.context("no identities")?;
    if let Some(dir) = &cli.cache {
        store_cache(dir, &meta, &have)?;
    }
    have.truncate(n);
    Ok((meta, have))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn opt_round2(x: Option<f64>) -> Option<f64> {
    x.map(round2)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let target = Target {
        pid: cli.coordinator_pid,
        pid_file: cli.coordinator_pid_file.clone(),
    };
    let start_sample = target.sample();
    let client = Client::new(&cli.api, Some(cli.token.clone()))?;
    let server_name = server_name_of(&cli.agent_addr).map_err(anyhow::Error::msg)?;

    let (meta, ids) = identities(&cli, &client).await?;
    let n = ids.len();
    let ca: CertificateDer<'static> = certs_from_pem(&meta.ca_pem, "CA")?
        .into_iter()
        .next()
        .context("no CA certificate")?;
    let plan_key = skiff_shared::signing::decode_public_key(&meta.plan_public_key)
        .map_err(anyhow::Error::msg)?;
    let mut agents = Vec::with_capacity(n);
    for id in ids {
        let chain = certs_from_pem(&id.cert_pem, "agent certificate")?;
        let key = key_from_pem(&id.key_pem, "agent key")?;
        let mut config = link_client_config(ca.clone(), chain, key)?;
        // The agent builds a new configuration for every connection, so it
        // never resumes a session; with one configuration per simulated
        // agent, resumption must be off to behave the same (and to save
        // the 256-entry session cache each configuration would allocate).
        config.resumption = Resumption::disabled();
        agents.push(SimAgent {
            node_id: id.node_id,
            name: id.name,
            config: Arc::new(config),
        });
    }

    let shared = Arc::new(Shared {
        addr: cli.agent_addr.clone(),
        url: format!("wss://{}{LINK_PATH}", cli.agent_addr),
        server_name,
        plan_key,
        link: LinkOptions::default(),
        facts: facts_template(),
        ramp: Semaphore::new(cli.connect_concurrency),
        shutdown: CancellationToken::new(),
        up: AtomicUsize::new(0),
        ever: AtomicUsize::new(0),
        connects: AtomicU64::new(0),
        failures: AtomicU64::new(0),
        drops: AtomicU64::new(0),
        removed: AtomicUsize::new(0),
        heartbeats: AtomicU64::new(0),
        plans: AtomicU64::new(0),
        armed: AtomicBool::new(false),
        first_drop: OnceLock::new(),
        reconnected: AtomicUsize::new(0),
        reconnect_ms: Mutex::new(Vec::with_capacity(n)),
        errors: Mutex::new(BTreeMap::new()),
    });

    // Let the joins' writes and freed buffers settle before the baseline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let baseline = target.sample();
    let self_baseline = self_sample();
    let link_opts = &shared.link;
    emit(&json!({
        "event": "baseline",
        "agents": n,
        "backoff_min_ms": link_opts.backoff_min.as_millis(),
        "backoff_max_ms": link_opts.backoff_max.as_millis(),
        "coordinator_rss_kib_at_start": start_sample.rss_kib,
        "coordinator_rss_kib": baseline.rss_kib,
        "tool_rss_kib": self_baseline.rss_kib,
    }));

    // Ramp-up.
    eprintln!(
        "Connecting {n} agents ({} handshakes at a time)...",
        cli.connect_concurrency
    );
    let ramp_start = Instant::now();
    let mut tasks = JoinSet::new();
    for agent in agents {
        tasks.spawn(run_agent(agent, shared.clone()));
    }
    let ramp_deadline = ramp_start + Duration::from_secs(cli.ramp_timeout);
    let mut last_report = Instant::now();
    loop {
        let ever = shared.ever.load(Ordering::Relaxed);
        if ever + shared.removed.load(Ordering::Relaxed) >= n {
            break;
        }
        if Instant::now() > ramp_deadline {
            eprintln!("Ramp-up timed out with {ever}/{n} agents connected.");
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "  {ever}/{n} connected, {} failed attempts, {:.0} s",
                shared.failures.load(Ordering::Relaxed),
                ramp_start.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ramp_secs = ramp_start.elapsed().as_secs_f64();
    let after_ramp = target.sample();
    let ramp_connected = shared.ever.load(Ordering::Relaxed);
    emit(&json!({
        "event": "ramp",
        "connected": ramp_connected,
        "seconds": round2(ramp_secs),
        "per_second": round2(ramp_connected as f64 / ramp_secs.max(1e-9)),
        "failed_attempts": shared.failures.load(Ordering::Relaxed),
        "coordinator_cpu_seconds": opt_round2(cpu_seconds(&baseline, &after_ramp)),
        "coordinator_rss_kib": after_ramp.rss_kib,
    }));
    eprintln!("Ramp-up: {ramp_connected}/{n} connected in {ramp_secs:.1} s.");

    // Steady state.
    eprintln!(
        "Settling for {} s, then holding for {} s...",
        cli.settle, cli.hold
    );
    tokio::time::sleep(Duration::from_secs(cli.settle)).await;
    let drops_before = shared.drops.load(Ordering::Relaxed);
    let hb_before = shared.heartbeats.load(Ordering::Relaxed);
    let w0 = target.sample();
    let s0 = self_sample();
    let mut min_up = shared.up.load(Ordering::Relaxed);
    let mut max_rss = w0.rss_kib;
    let hold_end = Instant::now() + Duration::from_secs(cli.hold);
    while Instant::now() < hold_end {
        tokio::time::sleep(Duration::from_secs(1).min(hold_end - Instant::now())).await;
        min_up = min_up.min(shared.up.load(Ordering::Relaxed));
        let s = target.sample();
        max_rss = max_rss.max(s.rss_kib);
    }
    let w1 = target.sample();
    let s1 = self_sample();
    let held = shared.up.load(Ordering::Relaxed);
    let seen_by_coordinator = cluster_view(&client).await.ok().map(|c| c.nodes_connected);
    let steady_rss = w1.rss_kib;
    let per_conn_bytes = match (steady_rss, baseline.rss_kib) {
        (Some(s), Some(b)) if held > 0 => Some(s.saturating_sub(b) as f64 * 1024.0 / held as f64),
        _ => None,
    };
    let cpu = cpu_percent(&w0, &w1);
    let tool_cpu = cpu_percent(&s0, &s1);
    let heartbeats = shared.heartbeats.load(Ordering::Relaxed) - hb_before;
    let window = w1.at.duration_since(w0.at).as_secs_f64();
    emit(&json!({
        "event": "steady",
        "agents": n,
        "held": held,
        "min_held_during_window": min_up,
        "coordinator_sessions": seen_by_coordinator,
        "drops_during_window": shared.drops.load(Ordering::Relaxed) - drops_before,
        "window_seconds": round2(window),
        "heartbeats_sent_per_second": round2(heartbeats as f64 / window.max(1e-9)),
        "coordinator_rss_kib_baseline": baseline.rss_kib,
        "coordinator_rss_kib_window_start": w0.rss_kib,
        "coordinator_rss_kib_steady": steady_rss,
        "coordinator_rss_kib_max_in_window": max_rss,
        "memory_per_connection_bytes": per_conn_bytes.map(f64::round),
        "coordinator_cpu_percent_of_one_core": opt_round2(cpu),
        "tool_rss_kib": s1.rss_kib,
        "tool_cpu_percent_of_one_core": opt_round2(tool_cpu),
    }));
    eprintln!(
        "Steady state: {held}/{n} held (coordinator counts {}), coordinator RSS {} -> {} MiB, CPU {}% of one core.",
        seen_by_coordinator.map_or("?".into(), |c| c.to_string()),
        baseline
            .rss_kib
            .map_or("?".into(), |k| format!("{:.1}", mib(k))),
        steady_rss.map_or("?".into(), |k| format!("{:.1}", mib(k))),
        cpu.map_or("?".into(), |c| format!("{c:.1}")),
    );

    // Restart.
    let mut reconnect = None;
    if cli.wait_reconnect {
        shared.armed.store(true, Ordering::Relaxed);
        if let Some(path) = &cli.ready_file {
            std::fs::write(path, b"ready\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
        emit(&json!({"event": "ready_for_restart"}));
        eprintln!("Ready: restart the coordinator now.");
        let wait_deadline = Instant::now() + Duration::from_secs(cli.restart_timeout);
        while shared.first_drop.get().is_none() {
            if Instant::now() > wait_deadline {
                bail!(
                    "no link dropped within {} s; was the coordinator restarted?",
                    cli.restart_timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let Some(&t0) = shared.first_drop.get() else {
            bail!("first drop vanished");
        };
        let tool_at_drop = self_sample();
        let failures_at_drop = shared.failures.load(Ordering::Relaxed);
        eprintln!("Links dropping; waiting for every agent to reconnect...");
        let deadline = t0 + Duration::from_secs(cli.reconnect_timeout);
        let mut at_60 = None;
        let mut last_report = Instant::now();
        let mut all_back = None;
        loop {
            let back = shared.reconnected.load(Ordering::Relaxed);
            let removed = shared.removed.load(Ordering::Relaxed);
            if at_60.is_none() && t0.elapsed() >= Duration::from_secs(60) {
                at_60 = Some(back);
            }
            if back + removed >= n {
                all_back = Some(t0.elapsed());
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                last_report = Instant::now();
                eprintln!(
                    "  {back}/{n} reconnected, {} up, {:.0} s after the first drop",
                    shared.up.load(Ordering::Relaxed),
                    t0.elapsed().as_secs_f64()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let back = shared.reconnected.load(Ordering::Relaxed);
        // The restarted process did nothing but start and take the links
        // back, so its whole CPU time is the cost of the reconnection.
        let restarted = target.sample();
        let tool_done = self_sample();
        let mut lat = shared
            .reconnect_ms
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        lat.sort_unstable();
        let within_60 = lat.iter().filter(|&&ms| ms <= 60_000).count();
        let secs = all_back.map(|d| round2(d.as_secs_f64()));
        emit(&json!({
            "event": "reconnect",
            "agents": n,
            "reconnected": back,
            "reconnected_within_60s": within_60,
            "all_reconnected_seconds": secs,
            "first_reconnect_ms": lat.first(),
            "p50_ms": percentile(&lat, 50.0),
            "p90_ms": percentile(&lat, 90.0),
            "p99_ms": percentile(&lat, 99.0),
            "max_ms": lat.last(),
            "failed_attempts": shared.failures.load(Ordering::Relaxed) - failures_at_drop,
            "restarted_coordinator_cpu_seconds": restarted.cpu_ticks.map(|t| round2(t as f64 / USER_HZ)),
            "restarted_coordinator_rss_kib": restarted.rss_kib,
            "tool_cpu_seconds": opt_round2(cpu_seconds(&tool_at_drop, &tool_done)),
        }));
        eprintln!(
            "Reconnect: {back}/{n} back{}; first after {} ms.",
            secs.map_or(" (not all)".into(), |s| format!(" in {s} s")),
            lat.first().map_or("?".into(), |m| m.to_string())
        );
        // The restarted coordinator with every link back, once it settles.
        tokio::time::sleep(Duration::from_secs(cli.settle)).await;
        let after = target.sample();
        emit(&json!({
            "event": "after_restart",
            "held": shared.up.load(Ordering::Relaxed),
            "coordinator_sessions": cluster_view(&client).await.ok().map(|c| c.nodes_connected),
            "coordinator_rss_kib": after.rss_kib,
        }));
        reconnect = Some((back, within_60, secs, after.rss_kib));
    }

    // Close every link politely, then stop.
    shared.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let errors = shared.errors.lock().map(|m| m.clone()).unwrap_or_default();

    let summary = json!({
        "event": "summary",
        "agents": n,
        "connections_held": held,
        "memory_per_connection_bytes": per_conn_bytes.map(f64::round),
        "coordinator_cpu_percent_of_one_core": opt_round2(cpu),
        "reconnected": reconnect.map(|r| r.0),
        "reconnected_within_60s": reconnect.map(|r| r.1),
        "all_reconnected_seconds": reconnect.and_then(|r| r.2),
        "coordinator_rss_kib_after_restart": reconnect.and_then(|r| r.3),
        "removed": shared.removed.load(Ordering::Relaxed),
        "errors": errors,
    });
    emit(&summary);

    eprintln!();
    eprintln!(
        "Agent link benchmark, {n} simulated agents -> {}",
        cli.agent_addr
    );
    eprintln!("  connections held         {held} / {n}");
    match per_conn_bytes {
        Some(b) => eprintln!(
            "  coordinator memory       {:.1} KB per connection (goal <= 50 KB; 1 KB = 1000 bytes)",
            b / 1000.0
        ),
        None => eprintln!("  coordinator memory       not measured (give --coordinator-pid)"),
    }
    match cpu {
        Some(c) => eprintln!(
            "  coordinator CPU          {c:.1}% of one core over {window:.0} s at steady state"
        ),
        None => eprintln!("  coordinator CPU          not measured"),
    }
    if let Some((back, within_60, secs, _)) = reconnect {
        eprintln!(
            "  reconnect after restart  {back} / {n} reconnected{}, {within_60} within 60 s (goal: all within 60 s)",
            secs.map_or(String::new(), |s| format!(" in {s:.1} s"))
        );
    }
    if !errors.is_empty() {
        eprintln!("  failed attempts and lost links, by kind:");
        for (kind, count) in &errors {
            eprintln!("    {count:>6}  {kind}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_spaces_in_the_name() {
        let line = "42 (skiff coord) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        assert_eq!(stat_cpu_ticks(line), Some(300));
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
