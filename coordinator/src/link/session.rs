//! One agent's WebSocket session: hello and welcome, heartbeats both ways,
//! the node's signed plan, certificate renewal, and a clean close with a
//! logged reason when the agent misbehaves. A hello over
//! [`MAX_HELLO_BYTES`] or outside the bounds of [`skiff_shared::bounds`]
//! closes the link before anything of it is stored.

use skiff_api_types::EventKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use skiff_shared::bounds::MAX_HELLO_BYTES;
use skiff_shared::protocol::{
    self, Ack, AgentMessage, CAP_CERT_RENEWAL, CLOSE_REMOVED, CoordinatorMessage, Heartbeat, Hello,
    LINK_PATH, MAX_FRAME_BYTES, MAX_MESSAGE_BYTES, MISSED_HEARTBEATS, PROTOCOL_VERSION,
    SectionMessage, Welcome,
};
use skiff_shared::signing;
use skiff_shared::tasks::TaskTree;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::Link;
use super::renewal::{Decision, Renewals};
use crate::now_ms;
use crate::plans::NodePlan;
use crate::sessions::QueryRequest;
use crate::sessions::SessionInfo;
use queries::next_query;
use std::collections::HashMap;
use tokio::sync::{mpsc, watch};

/// Queries handed to a session and not yet sent.
const QUERY_QUEUE: usize = 16;

/// Time an agent has to send its hello after the WebSocket opens.
const HELLO_TIMEOUT: Duration = Duration::from_secs(15);

mod queries;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// The WebSocket limits of the link. Small buffers: a coordinator holds
/// thousands of mostly idle links.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Takes a TLS connection whose client certificate already verified and
/// runs it as a session.
// The upgrade callback's error type is tungstenite's, fixed by its trait.
#[allow(clippy::result_large_err)]
pub async fn accept(
    link: Arc<Link>,
    stream: TlsStream<tokio::net::TcpStream>,
    peer: SocketAddr,
    tree: TaskTree,
) {
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned();
    let Some((node_id, _not_after)) = cert.as_deref().and_then(crate::pki::cert_subject) else {
        warn!("Agent certificate names no node; closing.");
        return;
    };
    // Renewals on this connection are for this key only.
    let Some(key) = cert.as_deref().and_then(crate::pki::cert_public_key) else {
        warn!(node = %node_id, "Agent certificate has no readable public key; closing.");
        return;
    };
    // Why the node behind this certificate may not open a session, if it may not.
    let refusal = match link.store.node(&node_id).await {
        Ok(Some(node)) if node.removed_at.is_none() => {
            if let Some(logs) = &link.logs {
                logs.set_name(&node.id, &node.name);
            }
            None
        }
        Ok(Some(_)) => Some("node has been removed from the cluster"),
        Ok(None) => Some("node is not known to this coordinator"),
        Err(error) => {
            warn!(error = %error, "Store lookup failed during agent connect.");
            Some("coordinator store is unavailable; retry")
        }
    };
    let callback =
        |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
         resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
            let status = if req.uri().path() != LINK_PATH {
                Some((404, "unknown path"))
            } else {
                refusal.map(|why| (403, why))
            };
            match status {
                None => Ok(resp),
                Some((code, why)) => {
                    let mut r =
                        tokio_tungstenite::tungstenite::handshake::server::ErrorResponse::new(
                            Some(why.to_owned()),
                        );
                    *r.status_mut() =
                        tokio_tungstenite::tungstenite::http::StatusCode::from_u16(code)
                            .unwrap_or(tokio_tungstenite::tungstenite::http::StatusCode::FORBIDDEN);
                    Err(r)
                }
            }
        };
    let ws = match tokio::time::timeout(
        HELLO_TIMEOUT,
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config())),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(error)) => {
            warn!(node = %node_id, error = %error, "Agent link upgrade refused.");
            return;
        }
        Err(_) => return,
    };
    if refusal.is_some() {
        return;
    }
    let span = info_span!("session", node = %node_id);
    let renewals = Renewals::new(key, link.cert_ttl);
    Session::new(link, node_id, peer, tree, renewals)
        .run(ws)
        .instrument(span)
        .await;
}

struct Session {
    link: Arc<Link>,
    /// The connection's subtree: cancelled at shutdown.
    tree: TaskTree,
    node_id: String,
    peer: SocketAddr,
    conn_id: u64,
    next_id: u64,
    /// The id of the plan message awaiting an ack, with its generation.
    pending_plan: Option<(u64, u64)>,
    /// Capabilities both sides have.
    capabilities: Vec<String>,
    /// The deliveries last sent on this connection, by section: sent again
    /// only when they change.
    sent: std::collections::HashMap<&'static str, Vec<serde_json::Value>>,
    /// Certificate renewals on this connection.
    renewals: Renewals,
    /// Queries waiting to be sent (taken from the `Sessions` handle).
    query_rx: Option<mpsc::Receiver<QueryRequest>>,
    /// Open queries by the id they were sent with: their section and
    /// where their answers go.
    open_queries: queries::OpenQueries,
}

/// How a session ended, for the log.
enum End {
    Closed(CloseCode, String),
    Quiet(String),
}

impl Session {
    fn new(
        link: Arc<Link>,
        node_id: String,
        peer: SocketAddr,
        tree: TaskTree,
        renewals: Renewals,
    ) -> Self {
        Self {
            link,
            tree,
            node_id,
            peer,
            conn_id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
            next_id: 0,
            pending_plan: None,
            capabilities: Vec::new(),
            sent: std::collections::HashMap::new(),
            renewals,
            query_rx: None,
            open_queries: HashMap::new(),
        }
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    async fn send<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        re: Option<u64>,
        body: &CoordinatorMessage,
    ) -> Result<u64, WsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let id = self.next_id();
        let text =
            protocol::encode(id, re, body).map_err(|e| WsError::Io(std::io::Error::other(e)))?;
        ws.send(Message::text(text)).await?;
        Ok(id)
    }

    async fn run<S>(mut self, mut ws: WebSocketStream<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                if text.len() > MAX_HELLO_BYTES {
                    self.link.metrics.malformed.inc();
                    let why = format!(
                        "hello is {} bytes, over the {MAX_HELLO_BYTES} allowed",
                        text.len()
                    );
                    self.finish(&mut ws, End::Closed(CloseCode::Size, why))
                        .await;
                    return;
                }
                match protocol::decode::<AgentMessage>(text.as_str()) {
                    Ok(env) => match env.body {
                        AgentMessage::Hello(h) => Some((env.id, h)),
                        _ => None,
                    },
                    Err(error) => {
                        self.link.metrics.malformed.inc();
                        self.finish(&mut ws, End::Closed(CloseCode::Invalid, error.to_string()))
                            .await;
                        return;
                    }
                }
            }
            Ok(Some(Err(WsError::Capacity(error)))) => {
                self.link.metrics.oversized.inc();
                let why = format!("hello too large: {error}");
                self.finish(&mut ws, End::Closed(CloseCode::Size, why))
                    .await;
                return;
            }
            _ => None,
        };
        let Some((hello_id, hello)) = hello else {
            self.finish(
                &mut ws,
                End::Closed(CloseCode::Protocol, "first message must be hello".into()),
            )
            .await;
            return;
        };
        if let Err(why) = hello.check() {
            self.link.metrics.malformed.inc();
            self.finish(
                &mut ws,
                End::Closed(
                    CloseCode::Invalid,
                    format!("hello is over its bounds: {why}"),
                ),
            )
            .await;
            return;
        }
        if !hello.protocol_versions.contains(&PROTOCOL_VERSION) {
            let why = format!(
                "no common protocol version: agent speaks {:?}, coordinator {PROTOCOL_VERSION}; upgrade the agent",
                hello.protocol_versions
            );
            self.finish(&mut ws, End::Closed(CloseCode::Protocol, why))
                .await;
            return;
        }
        let close = CancellationToken::new();
        if let Err(error) = self.register(&hello, close.clone()).await {
            warn!(error = %error, "Recording the agent's connection failed.");
            self.finish(
                &mut ws,
                End::Closed(CloseCode::Again, "coordinator store unavailable".into()),
            )
            .await;
            return;
        }
        let sections = self.link.plans.sections().clone();
        let capabilities: Vec<String> = hello
            .capabilities
            .iter()
            .filter(|c| {
                c.as_str() == CAP_CERT_RENEWAL || sections.iter().any(|s| s.capability() == *c)
            })
            .cloned()
            .collect();
        self.capabilities = capabilities.clone();
        let interval = self.link.heartbeat_interval;
        let welcome = CoordinatorMessage::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            node_id: self.node_id.clone(),
            capabilities: capabilities.clone(),
            heartbeat_interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            coordinator_version: skiff_shared::VERSION.to_owned(),
        });
        let end = match self.send(&mut ws, Some(hello_id), &welcome).await {
            Ok(_) => {
                // Agents that run no section get no plans.
                let plans = sections
                    .iter()
                    .any(|s| self.has(s.capability()))
                    .then(|| self.link.plans.subscribe(&self.node_id));
                self.serve(&mut ws, &close, interval, plans).await
            }
            Err(error) => End::Quiet(format!("sending welcome failed: {error}")),
        };
        self.finish(&mut ws, end).await;
    }

    async fn register(
        &mut self,
        hello: &Hello,
        close: CancellationToken,
    ) -> Result<(), crate::store::StoreError> {
        self.link
            .store
            .node_connected(
                &self.node_id,
                &hello.facts,
                &hello.agent_version,
                &self.peer.ip().to_string(),
                now_ms(),
            )
            .await?;
        let (queries, query_rx) = mpsc::channel(QUERY_QUEUE);
        self.query_rx = Some(query_rx);
        self.link.sessions.insert(
            &self.node_id,
            SessionInfo {
                conn_id: self.conn_id,
                connected_at_ms: skiff_shared::unix_millis(),
                remote_addr: self.peer.to_string(),
                close,
                capabilities: hello.capabilities.clone(),
                queries: Some(queries),
            },
        );
        info!(agent_version = %hello.agent_version, remote = %self.peer, "Agent connected.");
        if let Some(network) = &self.link.network {
            network.poke();
        }
        self.link.events.emit(
            EventKind::NodeConnected,
            None,
            Some(&self.node_id),
            format!("from {}", self.peer),
        );
        Ok(())
    }

    /// Whether the agent announced `capability` (and this side has it).
    fn has(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }

    /// Sends the deliveries the plan's sections need, then the plan with
    /// the sections the agent runs, signed over its exact bytes.
    async fn send_plan<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        plan: &NodePlan,
    ) -> Result<(), SendError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if !self
            .link
            .plans
            .record_send(&self.node_id, plan.generation, &self.capabilities)
        {
            // This generation went to the node for other capabilities (the
            // agent was upgraded): the same generation must be the same
            // bytes, so it gets a new one, which comes back here.
            let plans = &self.link.plans;
            let _edit = plans.edit().await;
            let renewed = plans.renewed(&self.node_id);
            self.link
                .store
                .put_node_plan(&crate::plans::row(&self.node_id, &renewed), now_ms())
                .await?;
            plans.publish(&self.node_id, renewed);
            return Ok(());
        }
        self.send_deliveries(ws, plan).await?;
        let wire = plan.for_agent(
            &self.node_id,
            &self.link.stamp,
            self.link.plans.sections(),
            &self.capabilities,
        );
        let bytes = serde_json::to_vec(&wire)?;
        let signed = signing::sign(&self.link.identity.plan_key, &bytes);
        let id = self
            .send(ws, None, &CoordinatorMessage::Plan(signed))
            .await?;
        self.pending_plan = Some((id, plan.generation));
        Ok(())
    }

    /// Sends each section's deliveries for `plan`, to agents that run the
    /// section, when they differ from what was last sent on this connection.
    async fn send_deliveries<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        plan: &NodePlan,
    ) -> Result<(), SendError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let sections = self.link.plans.sections().clone();
        for section in sections.iter() {
            if !self.has(section.capability()) || !plan.sections.contains_key(section.name()) {
                continue;
            }
            let deliveries = section.deliveries(&self.node_id, &plan.containers).await?;
            if self.sent.get(section.name()) == Some(&deliveries) {
                continue;
            }
            for body in &deliveries {
                let msg = CoordinatorMessage::Deliver(SectionMessage {
                    section: section.name().to_owned(),
                    body: body.clone(),
                });
                self.send(ws, None, &msg).await?;
            }
            debug!(section = section.name(), "Deliveries sent.");
            self.sent.insert(section.name(), deliveries);
        }
        Ok(())
    }

    async fn serve<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        close: &CancellationToken,
        interval: Duration,
        mut plans: Option<watch::Receiver<Arc<NodePlan>>>,
    ) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // Subscribed before the first plan goes out, so that no change of
        // deliveries falls between the two.
        let mut delivery_changes = self.link.plans.sections().watch_deliveries();
        if let Some(rx) = plans.as_mut() {
            let plan = rx.borrow_and_update().clone();
            if let Err(error) = self.send_plan(ws, &plan).await {
                return End::Quiet(format!("sending the plan failed: {error}"));
            }
        }
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let silence_limit = interval * MISSED_HEARTBEATS;
        let mut last_rx = Instant::now();
        loop {
            tokio::select! {
                () = close.cancelled() => {
                    let removed = self.link.sessions.is_revoked(&self.node_id);
                    return if removed {
                        End::Closed(CloseCode::from(CLOSE_REMOVED), "node removed from the cluster".into())
                    } else {
                        End::Closed(CloseCode::Policy, "replaced by a newer connection of this node".into())
                    };
                }
                changed = plan_changed(plans.as_mut()) => {
                    if changed.is_err() {
                        return End::Closed(CloseCode::Away, "coordinator shutting down".into());
                    }
                    let plan = plans.as_mut().map(|rx| rx.borrow_and_update().clone());
                    if let Some(plan) = plan
                        && let Err(error) = self.send_plan(ws, &plan).await
                    {
                        return End::Quiet(format!("sending the plan failed: {error}"));
                    }
                }
                () = self.tree.cancelled() => {
                    return End::Closed(CloseCode::Away, "coordinator shutting down".into());
                }
                changed = delivery_changes.changed(), if plans.is_some() => {
                    if changed.is_err() {
                        return End::Closed(CloseCode::Away, "coordinator shutting down".into());
                    }
                    let plan = self.link.plans.get(&self.node_id);
                    if let Err(error) = self.send_deliveries(ws, &plan).await {
                        return End::Quiet(format!("sending deliveries failed: {error}"));
                    }
                }
                Some(query) = next_query(self.query_rx.as_mut()) => {
                    if let Err(error) = self.ask(ws, query).await {
                        return End::Quiet(format!("sending a query failed: {error}"));
                    }
                }
                _ = tick.tick() => {
                    if let Err(error) = self.cancel_abandoned(ws).await {
                        return End::Quiet(format!("cancelling a query failed: {error}"));
                    }
                    if last_rx.elapsed() > silence_limit {
                        return End::Quiet(format!("no message from the agent for {silence_limit:?}"));
                    }
                    let hb = CoordinatorMessage::Heartbeat(Heartbeat { sent_at_ms: skiff_shared::unix_millis() });
                    if let Err(error) = self.send(ws, None, &hb).await {
                        return End::Quiet(format!("sending a heartbeat failed: {error}"));
                    }
                }
                msg = ws.next() => {
                    last_rx = Instant::now();
                    match msg {
                        None => return End::Quiet("agent closed the connection".into()),
                        Some(Err(WsError::Capacity(error))) => {
                            self.link.metrics.oversized.inc();
                            return End::Closed(CloseCode::Size, format!("message too large: {error}"));
                        }
                        Some(Err(error)) => {
                            return End::Quiet(format!("connection error: {error}"));
                        }
                        Some(Ok(Message::Text(text))) => {
                            match protocol::decode::<AgentMessage>(text.as_str()) {
                                Ok(env) => {
                                    if let Err(end) = self.handle(ws, env).await {
                                        return end;
                                    }
                                }
                                Err(error) => {
                                    self.link.metrics.malformed.inc();
                                    return End::Closed(CloseCode::Invalid, error.to_string());
                                }
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            self.link.metrics.malformed.inc();
                            return End::Closed(CloseCode::Unsupported, "binary frames are not part of the protocol".into());
                        }
                        Some(Ok(Message::Close(_))) => return End::Quiet("agent closed the link".into()),
                        Some(Ok(_)) => {}
                    }
                }
            }
        }
    }

    async fn handle<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        env: protocol::Envelope<AgentMessage>,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match env.body {
            AgentMessage::Heartbeat(_) => Ok(()),
            AgentMessage::Answer(answer) => self.answer(ws, env.re, answer).await,
            AgentMessage::Hello(_) => {
                Err(End::Closed(CloseCode::Protocol, "hello sent twice".into()))
            }
            AgentMessage::Ack(ack) => {
                if let Some((plan_id, generation)) = self.pending_plan
                    && env.re == Some(plan_id)
                {
                    self.pending_plan = None;
                    self.plan_acked(generation, &ack).await;
                }
                Ok(())
            }
            AgentMessage::Report(report) => {
                let section = self
                    .link
                    .plans
                    .sections()
                    .get(&report.section)
                    .filter(|s| self.has(s.capability()))
                    .cloned();
                let Some(section) = section else {
                    self.link.metrics.malformed.inc();
                    return Err(End::Closed(
                        CloseCode::Protocol,
                        format!(
                            "a report for section {:?}, which this link does not carry",
                            report.section
                        ),
                    ));
                };
                section.report(&self.node_id, report.body).map_err(|why| {
                    self.link.metrics.malformed.inc();
                    End::Closed(CloseCode::Invalid, why)
                })
            }
            AgentMessage::RenewCertificate { csr_pem } => {
                let reply = self.renew(&csr_pem).await?;
                self.send(ws, Some(env.id), &reply)
                    .await
                    .map(|_| ())
                    .map_err(|e| End::Quiet(format!("sending a certificate failed: {e}")))
            }
        }
    }

    async fn plan_acked(&self, generation: u64, ack: &Ack) {
        let generation = i64::try_from(generation).unwrap_or(i64::MAX);
        let error = if ack.ok {
            None
        } else {
            ack.error.as_deref().or(Some("refused"))
        };
        if let Some(error) = error {
            warn!(error = %error, generation, "Agent refused its plan.");
        } else {
            debug!(generation, "Agent accepted its plan.");
        }
        if let Err(store_error) = self
            .link
            .store
            .set_node_plan(&self.node_id, generation, error)
            .await
        {
            warn!(error = %store_error, "Recording the plan status failed.");
        }
    }

    /// Answers a renewal request: a certificate for the node's own key, or
    /// a refusal that is logged and counted; too many refusals close the link.
    async fn renew(&mut self, csr_pem: &str) -> Result<CoordinatorMessage, End> {
        let ttl = self.link.cert_ttl;
        let decision = self.renewals.decide(
            &self.link.identity.ca,
            &self.node_id,
            csr_pem,
            ttl,
            tokio::time::Instant::now(),
        );
        match decision {
            Decision::Issue(issued) => {
                let not_after_ms = issued
                    .not_after
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    .unwrap_or(0);
                if let Err(error) = self
                    .link
                    .store
                    .set_node_cert(
                        &self.node_id,
                        &issued.serial_hex,
                        i64::try_from(not_after_ms).unwrap_or(i64::MAX),
                    )
                    .await
                {
                    warn!(error = %error, "Recording the renewed certificate failed.");
                }
                info!(serial = %issued.serial_hex, "Agent certificate renewed.");
                Ok(CoordinatorMessage::Certificate {
                    cert_pem: issued.cert_pem,
                    not_after_ms,
                })
            }
            Decision::Refuse(why) => {
                self.link.metrics.renewals_refused.inc();
                warn!(reason = %why, "Certificate renewal refused.");
                Ok(CoordinatorMessage::Ack(Ack::err(why)))
            }
            Decision::Close(why) => {
                self.link.metrics.renewals_refused.inc();
                warn!(reason = %why, "Certificate renewal refused.");
                Err(End::Closed(CloseCode::Policy, why))
            }
        }
    }

    async fn finish<S>(&self, ws: &mut WebSocketStream<S>, end: End)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match end {
            End::Closed(code, reason) => {
                if matches!(
                    code,
                    CloseCode::Invalid
                        | CloseCode::Size
                        | CloseCode::Protocol
                        | CloseCode::Unsupported
                ) {
                    warn!(reason = %reason, "Closing agent link: the agent sent something invalid.");
                } else {
                    info!(reason = %reason, "Closing agent link.");
                }
                // Close reasons are limited to 123 bytes by the protocol.
                let mut short = reason;
                while short.len() > 120 {
                    short.pop();
                }
                let frame = CloseFrame {
                    code,
                    reason: short.into(),
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
            }
            End::Quiet(reason) => {
                info!(reason = %reason, "Agent link ended.");
            }
        }
        if self
            .link
            .sessions
            .get(&self.node_id)
            .is_some_and(|s| s.conn_id == self.conn_id)
        {
            self.link.events.emit(
                EventKind::NodeDisconnected,
                None,
                Some(&self.node_id),
                "link closed",
            );
        }
        self.link.sessions.remove(&self.node_id, self.conn_id);
        if let Err(error) = self
            .link
            .store
            .node_seen(std::slice::from_ref(&self.node_id), now_ms())
            .await
        {
            debug!(error = %error, "Recording last-seen failed.");
        }
    }
}

/// Why a plan or delivery could not be sent.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("{0}")]
    Ws(#[from] WsError),
    #[error("encoding it failed: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

/// Waits for the node's plan to change; never, for agents without plans.
async fn plan_changed(
    rx: Option<&mut watch::Receiver<Arc<NodePlan>>>,
) -> Result<(), watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}
