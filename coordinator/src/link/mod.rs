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
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::LazyConfigAcceptor;
use tracing::{Instrument, debug, info_span, warn};

use crate::config::AgentPortLimits;
use crate::events::EventLog;
use crate::identity::Identity;
use crate::listener::refusals::Refusals;
use crate::listener::sources::{Source, SourceCounts, SourceSlot};
use crate::listener::{Accepted, Acceptor as PortAcceptor, HttpLimits};
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
    /// The agent port's deadlines and caps.
    pub limits: AgentPortLimits,
    /// Refusals per source: throttling and their log lines.
    pub refused: Refused,
    /// The cluster network, when it is on: told when an agent connects
    /// (it may come from a new address, or be new to the mesh).
    pub network: Option<Arc<crate::network::ClusterNetwork>>,
    /// Told each connecting node's name, which its `logs` section carries.
    pub logs: Option<Arc<crate::logs::LogBook>>,
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

/// What the agent port refuses, counted per source: the first refusal of
/// a source's window is logged in full, the rest in one line when the
/// window ends. [`LinkMetrics`] counts every refusal all the same.
#[derive(Debug)]
pub struct Refused {
    /// Join requests refused; a source past its allowance is answered 429.
    pub joins: Arc<Refusals>,
    /// Agent link TLS handshakes refused; a source past its allowance has
    /// its link connections closed after the ClientHello.
    pub handshakes: Arc<Refusals>,
    /// Connections closed because their source held its cap.
    pub over_source_cap: Arc<Refusals>,
    /// Agent links closed because `max_links` links were open.
    pub over_link_cap: Arc<Refusals>,
}

impl Refused {
    pub fn new(limits: &AgentPortLimits) -> Self {
        let (window, allowance) = (limits.refusal_window, limits.max_refusals_per_source);
        Self {
            joins: Arc::new(Refusals::new("joins", window, Some(allowance))),
            handshakes: Arc::new(Refusals::new(
                "agent link TLS handshakes",
                window,
                Some(allowance),
            )),
            over_source_cap: Arc::new(Refusals::new(
                "connections over max_connections_per_source",
                window,
                None,
            )),
            over_link_cap: Arc::new(Refusals::new("agent links over max_links", window, None)),
        }
    }

    fn all(&self) -> Vec<Arc<Refusals>> {
        vec![
            self.joins.clone(),
            self.handshakes.clone(),
            self.over_source_cap.clone(),
            self.over_link_cap.clone(),
        ]
    }
}

/// The limits the agent port's public HTTP is served under.
fn http_limits(l: &AgentPortLimits) -> HttpLimits {
    HttpLimits {
        header_timeout: l.header_timeout,
        body_timeout: l.body_timeout,
        idle_timeout: l.idle_timeout,
        request_timeout: Some(l.request_timeout),
        max_header_bytes: l.max_header_bytes,
        max_body_bytes: public::MAX_JOIN_BYTES,
    }
}

/// What every connection of the agent port shares.
#[derive(Debug, Clone)]
struct Port {
    link: Arc<Link>,
    tls: TlsConfigs,
    app: axum::Router,
    http: HttpLimits,
    /// Permits for agent links, `max_links` of them.
    links: Arc<Semaphore>,
}

/// Accepts connections on the agent port until `tree` is cancelled; each
/// connection runs in a subtree of it. Connections that are not (yet)
/// agent links are capped in all (`max_connections`) and per source
/// (`max_connections_per_source`); links have their own cap (`max_links`).
pub async fn serve(link: Arc<Link>, listener: TcpListener, tls: TlsConfigs, tree: TaskTree) {
    let limits = link.limits.clone();
    tree.spawn(
        "refusal-log",
        crate::listener::log_refusals(link.refused.all(), tree.child()),
    );
    let port = Port {
        app: public::router(link.clone()),
        http: http_limits(&limits),
        links: Arc::new(Semaphore::new(limits.max_links)),
        link,
        tls,
    };
    let sources = SourceCounts::new(limits.max_connections_per_source);
    let mut acceptor = PortAcceptor::new(listener, "agent port", limits.max_connections);
    while let Some(Accepted { tcp, peer, permit }) = acceptor.next(&tree).await {
        let source = Source::from(peer.ip());
        let Some(slot) = sources.try_take(source) else {
            if port.link.refused.over_source_cap.refused(source) {
                warn!(
                    %source,
                    limit = limits.max_connections_per_source,
                    "Connection closed: its source holds max_connections_per_source connections that are not agent links."
                );
            }
            continue;
        };
        let port = port.clone();
        let conn = tree.child();
        tree.spawn(
            "agent-connection",
            async move { handle(port, tcp, peer, (slot, permit), conn).await }
                .instrument(info_span!("agent_conn", %peer)),
        );
    }
}

/// Serves one connection. `unauthenticated` is its place under the caps of
/// connections that are not links, given back once it becomes one.
async fn handle(
    port: Port,
    tcp: TcpStream,
    peer: SocketAddr,
    unauthenticated: (SourceSlot, OwnedSemaphorePermit),
    tree: TaskTree,
) {
    let Port {
        link,
        tls,
        app,
        http,
        links,
    } = port;
    let source = Source::from(peer.ip());
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
        if link.refused.handshakes.throttled(source).is_some() {
            // Past its allowance of refused handshakes: not worth one more.
            link.metrics.tls_refused.inc();
            link.refused.handshakes.refused(source);
            return;
        }
        let stream =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(tls.link)).await {
                Ok(Ok(s)) => s,
                Ok(Err(error)) => {
                    link.metrics.tls_refused.inc();
                    if link.refused.handshakes.refused(source) {
                        warn!(error = %error, "Agent link TLS handshake refused.");
                    }
                    return;
                }
                Err(_) => {
                    debug!("Agent link TLS handshake timed out.");
                    return;
                }
            };
        // An agent now: it leaves the caps of unauthenticated connections
        // for the links' own.
        drop(unauthenticated);
        let Ok(_link_permit) = links.try_acquire_owned() else {
            if link.refused.over_link_cap.refused(source) {
                warn!(
                    limit = link.limits.max_links,
                    "Agent link closed: max_links links are open; raise max_links for a cluster this size."
                );
            }
            return;
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
        public::serve_connection(app, stream, peer, &http, &tree).await;
        drop(unauthenticated);
    }
}
