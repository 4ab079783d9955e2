//! One sink's shipper: reads batches from the buffer at the acknowledged
//! position, sends them, acknowledges what the receiver took, and
//! reconnects with jittered backoff (capped at 30 s) when it cannot.
//!
//! What counts as taken: an HTTP 2xx answer; for syslog over TCP and TLS,
//! a batch written and flushed on a connection the receiver had not closed
//! just before (the protocol has no acknowledgement); for UDP, a batch
//! sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use skiff_shared::sections::logs::{Endpoint, SinkFormat, SinkSpec};
use skiff_shared::tasks::TaskTree;
use tracing::{info, warn};

use super::buffer::{Batch, Buffer};
use super::encode;
use super::transport::{self, Conn, ShipError};
use crate::link::Backoff;

/// Most lines and bytes of one batch.
pub const BATCH_LINES: usize = 1000;
pub const BATCH_BYTES: usize = 1 << 20;

/// A sink's health, as its status shows it.
#[derive(Debug, Default, Clone)]
pub struct Health {
    pub healthy: bool,
    pub error: Option<String>,
}

/// What a shipper runs with.
#[derive(Debug, Clone)]
pub struct Target {
    pub spec: SinkSpec,
    pub endpoint: Endpoint,
    pub tls: Option<Arc<ClientConfig>>,
}

impl Target {
    /// Parses a sink's settings.
    ///
    /// # Errors
    /// The URL or the CA cannot be used.
    pub fn new(spec: &SinkSpec) -> Result<Self, ShipError> {
        let endpoint = spec.endpoint().map_err(|e| ShipError(e.to_string()))?;
        let tls = if endpoint.is_tls() {
            Some(transport::tls_config(spec)?)
        } else {
            None
        };
        Ok(Self {
            spec: spec.clone(),
            endpoint,
            tls,
        })
    }

    /// Connects within the deadlines: the probe a new setting must pass.
    ///
    /// # Errors
    /// What failed, with the fix.
    pub async fn connect(&self, tree: &TaskTree) -> Result<Conn, ShipError> {
        transport::connect(&self.endpoint, self.tls.as_ref(), tree).await
    }
}

/// Ships until `tree` is cancelled. `conn` is the probe's connection, if
/// one is open.
pub async fn run(
    tree: TaskTree,
    target: Target,
    buffer: Arc<Buffer>,
    health: Arc<Mutex<Health>>,
    mut conn: Option<Conn>,
) {
    let url = transport::shown(&target.endpoint);
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    let mut failing = false;
    loop {
        if tree.is_cancelled() {
            break;
        }
        let data = buffer.data().notified();
        let b = buffer.clone();
        let batch = match tokio::task::spawn_blocking(move || b.read(BATCH_LINES, BATCH_BYTES))
            .await
        {
            Ok(Ok(batch)) => batch,
            Ok(Err(e)) => {
                warn!(sink = %target.spec.name, error = %e, "A sink's buffer could not be read.");
                set(&health, false, Some(format!("{url}: {e}")));
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    () = tree.cancelled() => break,
                }
                continue;
            }
            Err(_) => break,
        };
        let Some(batch) = batch else {
            let b = buffer.clone();
            let _ = tokio::task::spawn_blocking(move || b.checkpoint()).await;
            tokio::select! {
                () = data => {}
                () = tree.cancelled() => break,
            }
            continue;
        };
        if let Some(Conn::Stream(io)) = conn.as_mut()
            && transport::peer_closed(io)
        {
            conn = None;
        }
        let open = match conn.as_mut() {
            Some(c) => Ok(c),
            None => match target.connect(&tree).await {
                Ok(c) => Ok(conn.insert(c)),
                Err(e) => Err(e),
            },
        };
        let sent = match open {
            Ok(c) => send(c, &target, &batch).await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => {
                backoff.reset();
                if failing {
                    info!(sink = %target.spec.name, "A sink's receiver takes lines again.");
                    failing = false;
                }
                set(&health, true, None);
                let b = buffer.clone();
                match tokio::task::spawn_blocking(move || b.ack(&batch)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        warn!(sink = %target.spec.name, error = %e, "A sink's checkpoint could not be written.");
                    }
                    Err(_) => break,
                }
            }
            Err(e) => {
                conn = None;
                if !failing {
                    warn!(sink = %target.spec.name, error = %e.0, "A sink's receiver does not take lines; they stay buffered.");
                    failing = true;
                }
                set(&health, false, Some(e.0));
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    () = tree.cancelled() => break,
                }
            }
        }
    }
    let _ = tokio::task::spawn_blocking(move || buffer.checkpoint()).await;
}

fn set(health: &Mutex<Health>, healthy: bool, error: Option<String>) {
    if let Ok(mut h) = health.lock() {
        h.healthy = healthy;
        if healthy || error.is_some() {
            h.error = error;
        }
    }
}

async fn send(conn: &mut Conn, target: &Target, batch: &Batch) -> Result<(), ShipError> {
    let e = &target.endpoint;
    let url = transport::shown(e);
    match conn {
        Conn::Udp(socket) => {
            let mut datagram = Vec::with_capacity(512);
            for r in &batch.records {
                encode::syslog_datagram(r, &mut datagram);
                socket
                    .send(&datagram)
                    .await
                    .map_err(|err| ShipError(format!("{url}: sending failed: {err}")))?;
            }
            Ok(())
        }
        Conn::Stream(io) => {
            let mut out = Vec::with_capacity(batch.records.len() * 256);
            let mut scratch = Vec::with_capacity(512);
            for r in &batch.records {
                encode::syslog_framed(r, &mut out, &mut scratch);
            }
            transport::write_stream(io, &out, &url).await
        }
        Conn::Http(sender) => {
            let (content_type, body) = match target.spec.format {
                SinkFormat::Otlp => ("application/json", encode::otlp(&batch.records)),
                SinkFormat::JsonLines | SinkFormat::Syslog => {
                    let mut out = Vec::with_capacity(batch.records.len() * 256);
                    for r in &batch.records {
                        encode::json_line(r, &mut out);
                    }
                    ("application/x-ndjson", out)
                }
            };
            transport::post(sender, e, content_type, body).await
        }
    }
}
