//! The agent's side of the link: connect, hello, heartbeats, plans,
//! certificate renewal, and reconnecting with jittered exponential backoff
//! for as long as the agent runs.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use skiff_shared::protocol::{
    self, Ack, AgentMessage, CAP_CERT_RENEWAL, CAP_OBSERVED, CAP_PLANS, CAP_REGISTRY_AUTH,
    CLOSE_REMOVED, CoordinatorMessage, Heartbeat, Hello, LINK_PATH, MAX_FRAME_BYTES,
    MAX_MESSAGE_BYTES, MISSED_HEARTBEATS, PROTOCOL_VERSION,
};
use skiff_shared::signing::Plan;
use skiff_shared::tls::{link_client_config, server_name_of};
use skiff_shared::workload::ObservedState;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::identity::Identity;

/// Tunables of the link loop; [`LinkOptions::default`] is what runs in production.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
}

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            backoff_min: Duration::from_millis(500),
            // Short enough that agents are back within 10 s of a
            // coordinator's return, however long it was away.
            backoff_max: Duration::from_secs(8),
            connect_timeout: Duration::from_secs(15),
        }
    }
}

/// Why the link loop stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(
        "this node was removed from the cluster and its certificate revoked; join again with a new token"
    )]
    Removed,
    #[error("{0}")]
    Identity(#[from] crate::identity::IdentityError),
}

/// How one connection ended.
enum Ended {
    Shutdown,
    Removed,
    /// Lost after being up this long.
    Lost(Duration, String),
}

/// Exponential backoff with jitter: each delay is drawn from the upper half
/// of the current step so a fleet reconnecting at once spreads out.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            step: min,
        }
    }

    pub fn reset(&mut self) {
        self.step = self.min;
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let jitter = f64::from(
            skiff_shared::random_bytes::<2>()
                .map(u16::from_le_bytes)
                .unwrap_or(0),
        ) / 65535.0;
        step.mul_f64(0.5 + 0.5 * jitter)
    }
}

/// Runs the link until `shutdown`, reconnecting as needed.
/// Accepted plans are published on `plans` for the reconciler.
pub async fn run(
    identity: Identity,
    opts: LinkOptions,
    plans: watch::Sender<Option<Plan>>,
    observed: watch::Receiver<Option<Arc<ObservedState>>>,
    shutdown: CancellationToken,
) -> Result<(), LinkError> {
    let mut backoff = Backoff::new(opts.backoff_min, opts.backoff_max);
    let mut last_error = String::new();
    loop {
        match connect_once(&identity, &opts, &plans, observed.clone(), &shutdown).await {
            Ok(Ended::Shutdown) => return Ok(()),
            Ok(Ended::Removed) => return Err(LinkError::Removed),
            Ok(Ended::Lost(up, why)) => {
                warn!(reason = %why, "Link to the coordinator lost; reconnecting.");
                if up > Duration::from_secs(30) {
                    backoff.reset();
                }
                last_error.clear();
            }
            Err(error) => {
                let text = error.to_string();
                // Say it once, not every retry.
                if text != last_error {
                    warn!(coordinator = %identity.node.coordinator, error = %text, "Cannot reach the coordinator; retrying.");
                    last_error = text;
                } else {
                    debug!(error = %last_error, "Still cannot reach the coordinator.");
                }
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// A failed connection attempt.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("{0}")]
    Identity(#[from] crate::identity::IdentityError),
    #[error("connect: {0}")]
    Io(String),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("WebSocket: {0}")]
    Ws(#[from] WsError),
    #[error("handshake: {0}")]
    Handshake(String),
}

fn ws_config() -> WebSocketConfig {
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

async fn connect_once(
    identity: &Identity,
    opts: &LinkOptions,
    plans: &watch::Sender<Option<Plan>>,
    observed: watch::Receiver<Option<Arc<ObservedState>>>,
    shutdown: &CancellationToken,
) -> Result<Ended, ConnectError> {
    let addr = &identity.node.coordinator;
    let server_name = server_name_of(addr).map_err(ConnectError::Handshake)?;
    let (chain, key) = identity.client_cert()?;
    let config = link_client_config(identity.ca.clone(), chain, key)
        .map_err(|e| ConnectError::Handshake(e.to_string()))?;
    let tcp = tokio::select! {
        () = shutdown.cancelled() => return Ok(Ended::Shutdown),
        r = tokio::time::timeout(opts.connect_timeout, tokio::net::TcpStream::connect(addr)) => {
            r.map_err(|_| ConnectError::Io("timed out".into()))?.map_err(|e| ConnectError::Io(e.to_string()))?
        }
    };
    let _ = tcp.set_nodelay(true);
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = tokio::time::timeout(opts.connect_timeout, tls.connect(server_name, tcp))
        .await
        .map_err(|_| ConnectError::Io("TLS handshake timed out".into()))?
        .map_err(ConnectError::Tls)?;
    let url = format!("wss://{addr}{LINK_PATH}");
    let upgrade = tokio::time::timeout(
        opts.connect_timeout,
        tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config())),
    )
    .await
    .map_err(|_| ConnectError::Io("WebSocket upgrade timed out".into()))?;
    let mut ws = match upgrade {
        Ok((ws, _)) => ws,
        // TLS 1.3 reports a refused client certificate on the first read.
        Err(WsError::Io(e)) if is_revoked(&e) => return Ok(Ended::Removed),
        Err(WsError::Http(resp)) if resp.status() == 403 => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            warn!(reason = %body, "The coordinator refused this node.");
            if body.contains("removed") {
                return Ok(Ended::Removed);
            }
            return Err(ConnectError::Handshake(format!("refused: {body}")));
        }
        Err(e) => return Err(e.into()),
    };
    Session::new(identity, plans, observed)
        .run(&mut ws, shutdown)
        .await
}

struct Session<'a> {
    identity: &'a Identity,
    plans: &'a watch::Sender<Option<Plan>>,
    observed: watch::Receiver<Option<Arc<ObservedState>>>,
    next_id: u64,
    renewal_pending: Option<u64>,
}

impl<'a> Session<'a> {
    fn new(
        identity: &'a Identity,
        plans: &'a watch::Sender<Option<Plan>>,
        observed: watch::Receiver<Option<Arc<ObservedState>>>,
    ) -> Self {
        Self {
            identity,
            plans,
            observed,
            next_id: 0,
            renewal_pending: None,
        }
    }

    async fn send<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        re: Option<u64>,
        body: &AgentMessage,
    ) -> Result<u64, WsError> {
        self.next_id += 1;
        ws.send(Message::text(protocol::encode(self.next_id, re, body)))
            .await?;
        Ok(self.next_id)
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        ws: &mut WebSocketStream<S>,
        shutdown: &CancellationToken,
    ) -> Result<Ended, ConnectError> {
        let facts = crate::facts::collect().await;
        let hello = AgentMessage::Hello(Box::new(Hello {
            protocol_versions: vec![PROTOCOL_VERSION],
            agent_version: skiff_shared::VERSION.to_owned(),
            capabilities: vec![
                CAP_PLANS.to_owned(),
                CAP_CERT_RENEWAL.to_owned(),
                CAP_OBSERVED.to_owned(),
                CAP_REGISTRY_AUTH.to_owned(),
            ],
            facts,
            plan_generation: crate::plan::stored_generation(&self.identity.dir),
        }));
        let hello_id = self.send(ws, None, &hello).await?;
        let welcome = match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => protocol::decode::<CoordinatorMessage>(t.as_str())
                .map_err(|e| ConnectError::Handshake(e.to_string()))?,
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Ok(closed(
                    frame
                        .as_ref()
                        .map(|f| (u16::from(f.code), f.reason.as_str())),
                ));
            }
            other => {
                return Err(ConnectError::Handshake(format!(
                    "no welcome from the coordinator: {other:?}"
                )));
            }
        };
        let CoordinatorMessage::Welcome(welcome) = welcome.body else {
            return Err(ConnectError::Handshake(
                "first message was not a welcome".into(),
            ));
        };
        if welcome.protocol_version != PROTOCOL_VERSION
            || welcome.node_id != self.identity.node.node_id
        {
            return Err(ConnectError::Handshake(format!(
                "coordinator answered protocol {} for node {}",
                welcome.protocol_version, welcome.node_id
            )));
        }
        let _ = hello_id;
        let renewal = welcome.capabilities.iter().any(|c| c == CAP_CERT_RENEWAL);
        let report = welcome.capabilities.iter().any(|c| c == CAP_OBSERVED);
        if report {
            self.observed.mark_changed();
        }
        info!(node = %welcome.node_id, coordinator_version = %welcome.coordinator_version, "Connected to the coordinator.");
        let started = Instant::now();
        let interval = Duration::from_millis(welcome.heartbeat_interval_ms.max(100));
        let silence_limit = interval * MISSED_HEARTBEATS;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_rx = Instant::now();
        let mut renew_at = self.renew_deadline();
        loop {
            let renew_sleep = tokio::time::sleep_until(renew_at.into());
            tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    return Ok(Ended::Shutdown);
                }
                _ = tick.tick() => {
                    if last_rx.elapsed() > silence_limit {
                        return Ok(Ended::Lost(started.elapsed(), format!("no message from the coordinator for {silence_limit:?}")));
                    }
                    let hb = AgentMessage::Heartbeat(Heartbeat { sent_at_ms: skiff_shared::unix_millis() });
                    if let Err(e) = self.send(ws, None, &hb).await {
                        return Ok(Ended::Lost(started.elapsed(), format!("sending a heartbeat failed: {e}")));
                    }
                }
                changed = self.observed.changed(), if report => {
                    if changed.is_err() {
                        // The reconciler is gone: only at shutdown.
                        return Ok(Ended::Shutdown);
                    }
                    let state = self.observed.borrow_and_update().clone();
                    if let Some(state) = state {
                        let msg = AgentMessage::Observed(Box::new((*state).clone()));
                        if let Err(e) = self.send(ws, None, &msg).await {
                            return Ok(Ended::Lost(started.elapsed(), format!("sending observed state failed: {e}")));
                        }
                    }
                }
                () = renew_sleep, if renewal && self.renewal_pending.is_none() => {
                    match self.identity.csr() {
                        Ok(csr_pem) => {
                            info!("Renewing the node certificate.");
                            let id = self.send(ws, None, &AgentMessage::RenewCertificate { csr_pem }).await?;
                            self.renewal_pending = Some(id);
                        }
                        Err(error) => warn!(error = %error, "Cannot make a renewal request."),
                    }
                    renew_at = Instant::now() + Duration::from_secs(60);
                }
                msg = ws.next() => {
                    last_rx = Instant::now();
                    let msg = match msg {
                        None => return Ok(Ended::Lost(started.elapsed(), "connection closed".into())),
                        Some(Err(e)) => return Ok(Ended::Lost(started.elapsed(), e.to_string())),
                        Some(Ok(m)) => m,
                    };
                    match msg {
                        Message::Text(text) => {
                            let env = match protocol::decode::<CoordinatorMessage>(text.as_str()) {
                                Ok(env) => env,
                                Err(error) => {
                                    warn!(error = %error, "The coordinator sent an invalid message; reconnecting.");
                                    let _ = ws.close(None).await;
                                    return Ok(Ended::Lost(started.elapsed(), error.to_string()));
                                }
                            };
                            if self.handle(ws, env).await? {
                                renew_at = self.renew_deadline();
                            }
                        }
                        Message::Close(frame) => {
                            let how = closed(frame.as_ref().map(|f| (u16::from(f.code), f.reason.as_str())));
                            return Ok(match how {
                                Ended::Lost(_, why) => Ended::Lost(started.elapsed(), why),
                                other => other,
                            });
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// When to ask for a new certificate: 40-60% into its lifetime, so a
    /// fleet's renewals spread out.
    fn renew_deadline(&self) -> Instant {
        let now = Instant::now();
        match self.identity.cert_validity() {
            Ok((not_before, not_after)) => {
                let life = not_after.duration_since(not_before).unwrap_or_default();
                let jitter =
                    f64::from(skiff_shared::random_bytes::<1>().map(|b| b[0]).unwrap_or(0)) / 255.0;
                let at = not_before + life.mul_f64(0.4 + 0.2 * jitter);
                let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
                now + wait
            }
            Err(error) => {
                warn!(error = %error, "Cannot read the node certificate's validity.");
                now + Duration::from_secs(3600)
            }
        }
    }

    /// Handles one message; returns true when the certificate was replaced.
    async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        env: protocol::Envelope<CoordinatorMessage>,
    ) -> Result<bool, ConnectError> {
        match env.body {
            CoordinatorMessage::Heartbeat(_) | CoordinatorMessage::Welcome(_) => Ok(false),
            CoordinatorMessage::Secrets { values } => {
                match crate::secrets::store(&self.identity.dir, &values) {
                    Ok(n) => debug!(stored = n, "Secrets delivered."),
                    Err(error) => warn!(error = %error, "Delivered secrets refused."),
                }
                Ok(false)
            }
            CoordinatorMessage::RegistryAuth { registries } => {
                match crate::registries::store(&self.identity.dir, &registries) {
                    Ok(()) => debug!(
                        registries = registries.len(),
                        "Registry credentials delivered."
                    ),
                    Err(error) => warn!(error = %error, "Storing registry credentials failed."),
                }
                Ok(false)
            }
            CoordinatorMessage::Plan(signed) => {
                let ack = match crate::plan::accept(self.identity, &signed) {
                    Ok(plan) => {
                        debug!(generation = plan.generation, "Plan accepted.");
                        self.plans.send_replace(Some(plan));
                        Ack::ok()
                    }
                    Err(error) => {
                        warn!(error = %error, "Plan refused.");
                        Ack::err(error.to_string())
                    }
                };
                self.send(ws, Some(env.id), &AgentMessage::Ack(ack)).await?;
                Ok(false)
            }
            CoordinatorMessage::Certificate { cert_pem, .. } => {
                if env.re.is_none() || env.re != self.renewal_pending {
                    warn!("Ignoring a certificate that answers no renewal request.");
                    return Ok(false);
                }
                self.renewal_pending = None;
                match self.identity.store_cert(&cert_pem) {
                    Ok(()) => {
                        info!("Node certificate renewed.");
                        Ok(true)
                    }
                    Err(error) => {
                        warn!(error = %error, "Renewed certificate refused.");
                        Ok(false)
                    }
                }
            }
            CoordinatorMessage::Ack(ack) => {
                if env.re.is_some() && env.re == self.renewal_pending {
                    self.renewal_pending = None;
                    warn!(error = ?ack.error, "The coordinator refused the certificate renewal.");
                }
                Ok(false)
            }
        }
    }
}

fn closed(frame: Option<(u16, &str)>) -> Ended {
    match frame {
        Some((CLOSE_REMOVED, _)) => Ended::Removed,
        Some((code, reason)) => {
            let known = CloseCode::from(code);
            Ended::Lost(
                Duration::ZERO,
                format!("coordinator closed the link ({known}): {reason}"),
            )
        }
        None => Ended::Lost(Duration::ZERO, "coordinator closed the link".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(
            delays[9] >= Duration::from_secs(1),
            "capped step is 2 s, drawn from its upper half"
        );
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
