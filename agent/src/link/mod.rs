//! The agent's side of the link: connect, and reconnect with jittered
//! exponential backoff for as long as the agent runs. One connection is a
//! [`session`]: hello, heartbeats, plans and deliveries routed to the
//! controllers, their reports, certificate renewal.

use std::sync::Arc;
use std::time::Duration;

use skiff_shared::protocol::{CLOSE_REMOVED, LINK_PATH, MAX_FRAME_BYTES, MAX_MESSAGE_BYTES};
use skiff_shared::tasks::TaskTree;
use skiff_shared::tls::{link_client_config, server_name_of};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::{debug, warn};

use crate::identity::Identity;
use crate::supervisor::Router;

mod session;

/// Tunables of the link loop; [`LinkOptions::default`] is what runs in production.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    /// The agent's `mesh_endpoint` setting, told to the coordinator in
    /// the host facts.
    pub mesh_endpoint: Option<String>,
}

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            backoff_min: Duration::from_millis(500),
            // Short enough that agents are back within 10 s of a
            // coordinator's return, however long it was away.
            backoff_max: Duration::from_secs(8),
            connect_timeout: Duration::from_secs(15),
            mesh_endpoint: None,
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
pub(crate) enum Ended {
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

/// Runs the link until `tree` is cancelled, reconnecting as needed.
/// Accepted plans' sections and deliveries go to the controllers through
/// `router`; their reports come back through it.
pub async fn run(
    identity: Identity,
    opts: LinkOptions,
    router: Router,
    tree: TaskTree,
) -> Result<(), LinkError> {
    let mut backoff = Backoff::new(opts.backoff_min, opts.backoff_max);
    let mut last_error = String::new();
    loop {
        match connect_once(&identity, &opts, &router, &tree).await {
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
            () = tree.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// A failed connection attempt.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
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

/// The WebSocket limits and buffers of the agent's side of the link.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Whether a TLS error says the coordinator refused this node's
/// certificate as revoked (the node was removed).
pub fn is_revoked(e: &std::io::Error) -> bool {
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
    router: &Router,
    tree: &TaskTree,
) -> Result<Ended, ConnectError> {
    let addr = &identity.node.coordinator;
    let server_name = server_name_of(addr).map_err(ConnectError::Handshake)?;
    let (chain, key) = identity.client_cert()?;
    let config = link_client_config(identity.ca.clone(), chain, key)
        .map_err(|e| ConnectError::Handshake(e.to_string()))?;
    let tcp = tokio::select! {
        () = tree.cancelled() => return Ok(Ended::Shutdown),
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
    session::Session::new(identity, router, opts.mesh_endpoint.clone())
        .run(&mut ws, tree)
        .await
}

pub(crate) fn closed(frame: Option<(u16, &str)>) -> Ended {
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
