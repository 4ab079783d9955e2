//! One connection to the coordinator: hello and welcome, heartbeats both
//! ways, plans and deliveries handed to the controllers through the
//! [`Router`], their reports sent back, and certificate renewal.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use skiff_shared::protocol::{
    self, Ack, AgentMessage, CAP_CERT_RENEWAL, CoordinatorMessage, Heartbeat, Hello,
    MISSED_HEARTBEATS, PROTOCOL_VERSION, SectionMessage,
};
use skiff_shared::tasks::TaskTree;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{ConnectError, Ended, closed};
use crate::identity::Identity;
use crate::supervisor::Router;

pub(crate) struct Session<'a> {
    identity: &'a Identity,
    router: &'a Router,
    next_id: u64,
    renewal_pending: Option<u64>,
    /// Capabilities both sides have, from the welcome.
    accepted: Vec<String>,
    mesh_endpoint: Option<String>,
    /// The queries being answered, by query id.
    queries: HashMap<u64, CancellationToken>,
    /// Every query's chunks, on their way to the coordinator: `None` says
    /// a query's answer ended.
    answers: (mpsc::Sender<AnswerPart>, mpsc::Receiver<AnswerPart>),
    /// Parent of every query's token: cancelled when the session ends.
    queries_root: CancellationToken,
}

/// A chunk of query `.0`'s answer from section `.1`; `None` when it ended.
type AnswerPart = (u64, String, Option<serde_json::Value>);

/// Most queries answered at once on one link.
const MAX_QUERIES: usize = 64;
/// Chunks of one answer waiting to be sent.
const QUERY_BUFFER: usize = 4;
/// Chunks of all answers waiting for the session loop.
const ANSWERS_BUFFER: usize = 16;

impl<'a> Session<'a> {
    pub(crate) fn new(
        identity: &'a Identity,
        router: &'a Router,
        mesh_endpoint: Option<String>,
    ) -> Self {
        Self {
            identity,
            router,
            next_id: 0,
            renewal_pending: None,
            accepted: Vec::new(),
            mesh_endpoint,
            queries: HashMap::new(),
            answers: mpsc::channel(ANSWERS_BUFFER),
            queries_root: CancellationToken::new(),
        }
    }

    async fn send<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        re: Option<u64>,
        body: &AgentMessage,
    ) -> Result<u64, WsError> {
        self.next_id += 1;
        let text = protocol::encode(self.next_id, re, body)
            .map_err(|e| WsError::Io(std::io::Error::other(e)))?;
        ws.send(Message::text(text)).await?;
        Ok(self.next_id)
    }

    pub(crate) async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        ws: &mut WebSocketStream<S>,
        tree: &TaskTree,
    ) -> Result<Ended, ConnectError> {
        let mut facts = crate::facts::collect().await;
        facts.mesh_endpoint.clone_from(&self.mesh_endpoint);
        let mut capabilities = vec![CAP_CERT_RENEWAL.to_owned()];
        capabilities.extend(self.router.capabilities());
        let hello = AgentMessage::Hello(Box::new(Hello {
            protocol_versions: vec![PROTOCOL_VERSION],
            agent_version: skiff_shared::VERSION.to_owned(),
            capabilities,
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
        self.accepted = welcome.capabilities.clone();
        self.router.reports().resend_all();
        info!(node = %welcome.node_id, coordinator_version = %welcome.coordinator_version, "Connected to the coordinator.");
        let started = Instant::now();
        let interval = Duration::from_millis(welcome.heartbeat_interval_ms.max(100));
        let silence_limit = interval * MISSED_HEARTBEATS;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_rx = Instant::now();
        let mut renew_at = self.renew_deadline();
        // A closed link stops every query it carried.
        let _queries = self.queries_root.clone().drop_guard();
        loop {
            let renew_sleep = tokio::time::sleep_until(renew_at.into());
            tokio::select! {
                () = tree.cancelled() => {
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
                () = self.router.reports().changed() => {
                    if let Err(e) = self.send_reports(ws).await {
                        return Ok(Ended::Lost(started.elapsed(), format!("sending a report failed: {e}")));
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
                Some((re, section, body)) = self.answers.1.recv() => {
                    match body {
                        Some(body) => {
                            let msg = AgentMessage::Answer(SectionMessage { section, body });
                            if let Err(e) = self.send(ws, Some(re), &msg).await {
                                return Ok(Ended::Lost(started.elapsed(), format!("sending an answer failed: {e}")));
                            }
                        }
                        None => {
                            self.queries.remove(&re);
                        }
                    }
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
                            if self.handle(ws, env, tree).await? {
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

    /// Sends the controllers' changed reports, for the sections the
    /// coordinator takes.
    async fn send_reports<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ws: &mut WebSocketStream<S>,
    ) -> Result<(), WsError> {
        let router = self.router;
        let accepted = &self.accepted;
        let reports = router.reports().take(|section| {
            router
                .capability_of(section)
                .is_some_and(|c| accepted.iter().any(|a| a == c))
        });
        for (section, body) in reports {
            let msg = AgentMessage::Report(SectionMessage {
                section: section.to_owned(),
                body,
            });
            self.send(ws, None, &msg).await?;
        }
        Ok(())
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

    /// Starts answering query `id`: its controller writes chunks into a
    /// bounded channel of its own, a task moves them to the session loop,
    /// which sends them between heartbeats and plans.
    fn start_query(
        &mut self,
        id: u64,
        query: SectionMessage,
        tree: &TaskTree,
    ) -> Result<(), String> {
        if self.queries.len() >= MAX_QUERIES {
            return Err(format!(
                "this agent already answers {MAX_QUERIES} queries: try again when one ended"
            ));
        }
        if self.queries.contains_key(&id) {
            return Err(format!("query {id} is already being answered"));
        }
        let token = self.queries_root.child_token();
        let (tx, mut rx) = mpsc::channel(QUERY_BUFFER);
        self.router
            .query(&query.section, query.body, tx, token.clone())?;
        self.queries.insert(id, token.clone());
        let answers = self.answers.0.clone();
        let section = query.section;
        tree.spawn("link-answer", async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    chunk = rx.recv() => {
                        let Some(chunk) = chunk else { break };
                        if answers.send((id, section.clone(), Some(chunk))).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = answers.send((id, section, None)).await;
        });
        Ok(())
    }

    /// Handles one message; returns true when the certificate was replaced.
    async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        env: protocol::Envelope<CoordinatorMessage>,
        tree: &TaskTree,
    ) -> Result<bool, ConnectError> {
        match env.body {
            CoordinatorMessage::Heartbeat(_) | CoordinatorMessage::Welcome(_) => Ok(false),
            CoordinatorMessage::Query(query) => {
                if let Err(error) = self.start_query(env.id, query, tree) {
                    warn!(error = %error, "Query refused.");
                    self.send(ws, Some(env.id), &AgentMessage::Ack(Ack::err(error)))
                        .await?;
                }
                Ok(false)
            }
            CoordinatorMessage::Cancel { query } => {
                if let Some(token) = self.queries.remove(&query) {
                    token.cancel();
                }
                Ok(false)
            }
            CoordinatorMessage::Deliver(delivery) => {
                let section = delivery.section.clone();
                match self.router.deliver(delivery) {
                    Ok(()) => debug!(section = %section, "Delivery taken."),
                    Err(error) => warn!(section = %section, error = %error, "Delivery refused."),
                }
                Ok(false)
            }
            CoordinatorMessage::Plan(signed) => {
                let ack = match crate::plan::accept(self.identity, self.router, &signed) {
                    Ok(accepted) => {
                        let plan = accepted.publish();
                        debug!(generation = plan.generation, "Plan accepted.");
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use skiff_shared::protocol::Welcome;
    use skiff_shared::sections::logs::{LogChunk, Logs};
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;
    use crate::controller::Context;

    /// Answers a query with `n` chunks (`n` = 0: chunks until cancelled).
    struct Counter;

    impl crate::controller::Controller for Counter {
        type Kind = Logs;

        fn query(
            &self,
            body: serde_json::Value,
            out: mpsc::Sender<serde_json::Value>,
            cancel: CancellationToken,
        ) -> Result<(), String> {
            let n = body["n"].as_u64().unwrap_or(0);
            tokio::spawn(async move {
                for i in 1.. {
                    let chunk = LogChunk {
                        dropped: i,
                        end: i == n,
                        ..LogChunk::default()
                    };
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        sent = out.send(serde_json::to_value(&chunk).unwrap()) => if sent.is_err() { return },
                    }
                    if chunk.end {
                        return;
                    }
                }
            });
            Ok(())
        }

        async fn run(self: Arc<Self>, cx: Context<Logs>) {
            cx.tree.cancelled().await;
        }
    }

    fn identity(dir: &std::path::Path) -> Identity {
        Identity {
            dir: dir.to_owned(),
            node: crate::identity::NodeFile {
                node_id: "n1".into(),
                name: "n1".into(),
                coordinator: "127.0.0.1:1".into(),
                cluster_id: None,
            },
            key_pem: String::new(),
            ca: rustls::pki_types::CertificateDer::from(vec![0u8]),
            plan_key: ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key(),
        }
    }

    async fn next(
        ws: &mut WebSocketStream<tokio::io::DuplexStream>,
    ) -> protocol::Envelope<AgentMessage> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("the agent said nothing for 10 s");
            match msg {
                Some(Ok(Message::Text(t))) => return protocol::decode(t.as_str()).unwrap(),
                Some(Ok(_)) => {}
                other => panic!("link ended: {other:?}"),
            }
        }
    }

    async fn send(
        ws: &mut WebSocketStream<tokio::io::DuplexStream>,
        id: u64,
        m: &CoordinatorMessage,
    ) {
        let text = protocol::encode(id, None, m).unwrap();
        ws.send(Message::text(text)).await.unwrap();
    }

    #[tokio::test]
    async fn queries_are_answered_under_their_id_and_cancel_stops_them() {
        let dir = tempfile::tempdir().unwrap();
        let identity = identity(dir.path());
        let tree = TaskTree::root();
        let mut s = crate::supervisor::Supervisor::new(tree.child());
        s.add(Counter);
        let router = s.router();
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut coord = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        let agent_tree = tree.child();
        let agent = tokio::spawn(async move {
            let mut ws = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
            Session::new(&identity, &router, None)
                .run(&mut ws, &agent_tree)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        assert!(matches!(
            next(&mut coord).await.body,
            AgentMessage::Hello(_)
        ));
        let welcome = Welcome {
            protocol_version: PROTOCOL_VERSION,
            node_id: "n1".into(),
            capabilities: vec!["logs.v1".into()],
            heartbeat_interval_ms: 100,
            coordinator_version: "test".into(),
        };
        send(&mut coord, 1, &CoordinatorMessage::Welcome(welcome)).await;
        let query = |n: u64| {
            CoordinatorMessage::Query(SectionMessage {
                section: "logs".into(),
                body: serde_json::json!({ "n": n }),
            })
        };
        // A query of 3 chunks, one that runs until cancelled, one for a
        // section no controller runs.
        send(&mut coord, 10, &query(3)).await;
        send(&mut coord, 11, &query(0)).await;
        send(
            &mut coord,
            12,
            &CoordinatorMessage::Query(SectionMessage {
                section: "nope".into(),
                body: serde_json::json!({}),
            }),
        )
        .await;
        let (mut ten, mut eleven, mut refused, mut heartbeats) = (Vec::new(), 0, false, 0);
        while ten.len() < 3 || eleven < 50 || !refused || heartbeats == 0 {
            let env = next(&mut coord).await;
            match env.body {
                AgentMessage::Answer(a) => {
                    assert_eq!(a.section, "logs");
                    let chunk: LogChunk = serde_json::from_value(a.body).unwrap();
                    match env.re {
                        Some(10) => ten.push(chunk.dropped),
                        Some(11) => eleven += 1,
                        other => panic!("an answer to {other:?}"),
                    }
                }
                AgentMessage::Ack(ack) => {
                    assert_eq!(env.re, Some(12));
                    assert!(ack.error.unwrap().contains("\"nope\""));
                    refused = true;
                }
                AgentMessage::Heartbeat(_) => heartbeats += 1,
                _ => {}
            }
        }
        assert_eq!(ten, [1, 2, 3]);
        send(&mut coord, 13, &CoordinatorMessage::Cancel { query: 11 }).await;
        // After the cancel, what was already on its way arrives, then
        // heartbeats only.
        let mut quiet = 0;
        let mut late = 0;
        while quiet < 3 {
            late += 1;
            assert!(late < 10_000, "answers go on after the cancel");
            let env = next(&mut coord).await;
            match env.body {
                AgentMessage::Answer(_) => quiet = 0,
                AgentMessage::Heartbeat(_) => {
                    quiet += 1;
                    send(
                        &mut coord,
                        14,
                        &CoordinatorMessage::Heartbeat(Heartbeat { sent_at_ms: 0 }),
                    )
                    .await;
                }
                _ => {}
            }
        }
        tree.cancel();
        agent.await.unwrap().unwrap();
    }
}
