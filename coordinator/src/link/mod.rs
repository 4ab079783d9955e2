//! The agent port: one TLS 1.3 listener that serves two kinds of client.
//!
//! The ClientHello decides. A connection offering the `skiff-link/1` ALPN is
//! an agent: it must present a client certificate from the cluster CA whose
//! node id is not revoked, or the TLS handshake fails; it then becomes a
//! WebSocket session ([`session`]). Any other connection gets the public
//! endpoints a server needs before it has a certificate ([`public`]): the
//! join request (authenticated by the join token), the install script and
//! the agent binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{Acceptor, WebPkiClientVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use skiff_shared::protocol::ALPN_LINK;
use skiff_shared::tasks::TaskTree;
use skiff_shared::tls::{certs_from_pem, key_from_pem, provider};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;
use tracing::{Instrument, debug, info_span, warn};

use crate::events::EventLog;
use crate::identity::Identity;
use crate::plans::PlanBook;
use crate::sessions::Sessions;
use crate::store::Store;

pub mod public;
pub mod renewal;
pub mod session;

/// Time a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// What the agent port works with.
#[derive(Debug)]
pub struct Link {
    pub identity: Arc<Identity>,
    pub store: Arc<dyn Store>,
    pub sessions: Arc<Sessions>,
    pub plans: Arc<PlanBook>,
    pub events: Arc<EventLog>,
    pub metrics: Arc<LinkMetrics>,
    /// The agent binary served to new servers.
    pub agent_binary: Option<AgentBinary>,
    pub heartbeat_interval: Duration,
    /// Lifetime of the client certificates issued at join and renewal.
    pub cert_ttl: Duration,
    /// The cluster and this run's epoch, carried by every plan.
    pub stamp: crate::plans::Stamp,
}

/// The agent binary the coordinator serves to new servers.
#[derive(Debug, Clone)]
pub struct AgentBinary {
    pub path: PathBuf,
    pub sha256_hex: String,
}

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts of links closed or refused for cause, shown by `GET /api/v1/cluster`.
#[derive(Debug, Default)]
pub struct LinkMetrics {
    /// Messages that were not valid envelopes or reports.
    pub malformed: Counter,
    /// Frames or messages over the size limits.
    pub oversized: Counter,
    /// TLS handshakes on the link refused (no, foreign or revoked certificate).
    pub tls_refused: Counter,
    /// Join requests refused.
    pub joins_refused: Counter,
    /// Certificate renewals refused (a CSR for another key than the
    /// node's, an unusable CSR, or renewing too often).
    pub renewals_refused: Counter,
}

/// The two TLS configurations of the agent port.
#[derive(Clone)]
pub struct TlsConfigs {
    pub link: Arc<ServerConfig>,
    pub public: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfigs")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkSetupError {
    #[error("agent endpoint TLS setup failed: {0}")]
    Tls(String),
}

/// Checks a client certificate against the cluster CA, then against the
/// set of removed nodes.
#[derive(Debug)]
struct NodeCertVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    sessions: Arc<Sessions>,
}

impl ClientCertVerifier for NodeCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let (node_id, _) = crate::pki::cert_subject(end_entity).ok_or(
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding),
        )?;
        if self.sessions.is_revoked(&node_id) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl TlsConfigs {
    /// Builds both configurations from the cluster identity.
    pub fn new(link: &Link) -> Result<Self, LinkSetupError> {
        let err = |e: &dyn std::fmt::Display| LinkSetupError::Tls(e.to_string());
        let id = &link.identity;
        let mut chain = certs_from_pem(&id.server_cert_pem, "server.crt").map_err(|e| err(&e))?;
        let ca = CertificateDer::from(id.ca.cert_der.clone());
        // The CA goes in the chain so a joining agent can match it against its token.
        chain.push(ca.clone());
        let key = key_from_pem(&id.server_key_pem, "server.key").map_err(|e| err(&e))?;

        let mut roots = RootCertStore::empty();
        roots.add(ca).map_err(|e| err(&e))?;
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| err(&e))?;
        let verifier = Arc::new(NodeCertVerifier {
            inner,
            sessions: link.sessions.clone(),
        });

        let mut link = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| err(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| err(&e))?;
        link.alpn_protocols = vec![ALPN_LINK.to_vec()];

        let mut public = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| err(&e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| err(&e))?;
        public.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            link: Arc::new(link),
            public: Arc::new(public),
        })
    }
}

/// Accepts connections on the agent port until `tree` is cancelled; each
/// connection runs in a subtree of it.
pub async fn serve(link: Arc<Link>, listener: TcpListener, tls: TlsConfigs, tree: TaskTree) {
    let public_app = public::router(link.clone());
    loop {
        let accepted = tokio::select! {
            () = tree.cancelled() => break,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(error) => {
                // Out of file descriptors and the like: back off a little, go on.
                warn!(error = %error, "Accepting an agent connection failed.");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let link = link.clone();
        let tls = tls.clone();
        let app = public_app.clone();
        let conn = tree.child();
        tree.spawn(
            "agent-connection",
            async move { handle(link, tcp, peer, tls, app, conn).await }
                .instrument(info_span!("agent_conn", %peer)),
        );
    }
}

async fn handle(
    link: Arc<Link>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: TlsConfigs,
    app: axum::Router,
    tree: TaskTree,
) {
    let _ = tcp.set_nodelay(true);
    let start = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        LazyConfigAcceptor::new(Acceptor::default(), tcp),
    )
    .await
    {
        Ok(Ok(start)) => start,
        Ok(Err(error)) => {
            debug!(error = %error, "TLS client hello was invalid.");
            return;
        }
        Err(_) => {
            debug!("TLS client hello timed out.");
            return;
        }
    };
    let is_link = start
        .client_hello()
        .alpn()
        .is_some_and(|mut protos| protos.any(|p| p == ALPN_LINK));
    if is_link {
        let stream =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(tls.link)).await {
                Ok(Ok(s)) => s,
                Ok(Err(error)) => {
                    link.metrics.tls_refused.inc();
                    warn!(error = %error, "Agent link TLS handshake refused.");
                    return;
                }
                Err(_) => {
                    debug!("Agent link TLS handshake timed out.");
                    return;
                }
            };
        session::accept(link, stream, peer, tree).await;
    } else {
        let stream =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(tls.public)).await {
                Ok(Ok(s)) => s,
                Ok(Err(error)) => {
                    debug!(error = %error, "Public endpoint TLS handshake failed.");
                    return;
                }
                Err(_) => return,
            };
        tokio::select! {
            () = tree.cancelled() => {}
            () = public::serve_connection(app, stream, peer) => {}
        }
    }
}
