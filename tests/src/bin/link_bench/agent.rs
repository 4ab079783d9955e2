//! One simulated agent's link, held exactly as the agent holds it: TLS with
//! its certificate, hello and welcome, heartbeats, plans answered with
//! acks, and reconnection with the agent's backoff.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use futures_util::{SinkExt, StreamExt};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use skiff_agent::link::{Backoff, LinkOptions, is_revoked, ws_config};
use skiff_shared::protocol::SectionMessage;
use skiff_shared::protocol::{
    self, Ack, AgentMessage, CAP_CERT_RENEWAL, CLOSE_REMOVED, CoordinatorMessage, Heartbeat, Hello,
    HostFacts, MISSED_HEARTBEATS, PROTOCOL_VERSION,
};
use skiff_shared::sections::SectionKind;
use skiff_shared::sections::containers::Containers;
use skiff_shared::sections::networks::Networks;
use skiff_shared::workload::ObservedState;
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

/// The agent resets its backoff after a link that was up this long
/// (agent/src/link.rs `run`).
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);
/// Distinct error texts kept for the report.
const MAX_ERROR_KINDS: usize = 32;

/// What one simulated agent keeps between connections.
pub(crate) struct SimAgent {
    pub(crate) node_id: String,
    pub(crate) name: String,
    pub(crate) config: Arc<ClientConfig>,
}

/// State all agents share with the measuring loop.
pub(crate) struct Shared {
    pub(crate) addr: String,
    pub(crate) url: String,
    pub(crate) server_name: ServerName<'static>,
    pub(crate) plan_key: VerifyingKey,
    /// The production agent's link timings.
    pub(crate) link: LinkOptions,
    pub(crate) facts: HostFacts,
    pub(crate) ramp: Semaphore,
    pub(crate) shutdown: CancellationToken,
    /// Links up now.
    pub(crate) up: AtomicUsize,
    /// Agents that have connected at least once.
    pub(crate) ever: AtomicUsize,
    pub(crate) connects: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) drops: AtomicU64,
    pub(crate) removed: AtomicUsize,
    pub(crate) heartbeats: AtomicU64,
    pub(crate) plans: AtomicU64,
    /// Set when the restart measurement starts.
    pub(crate) armed: AtomicBool,
    pub(crate) first_drop: OnceLock<Instant>,
    /// Agents back after a drop while armed, and how long after the first drop.
    pub(crate) reconnected: AtomicUsize,
    pub(crate) reconnect_ms: Mutex<Vec<u64>>,
    /// Failed attempts and unexpected drops, counted by kind.
    pub(crate) errors: Mutex<BTreeMap<String, u64>>,
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
        failures: Vec::new(),
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
pub(crate) async fn run_agent(agent: SimAgent, shared: Arc<Shared>) {
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
