//! Connections to receivers: UDP, TCP, TLS (tokio-rustls, ring) and
//! HTTP/1.1 over either (hyper 1). Every step has a deadline, and every
//! failure is a sentence naming the URL and the fix.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use skiff_shared::sections::logs::{Endpoint, SinkSpec, Transport};
use skiff_shared::tasks::TaskTree;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

/// Deadline to connect (name lookup included) and to finish a TLS handshake.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// Deadline to write a batch, or to get an HTTP answer.
pub const SEND_DEADLINE: Duration = Duration::from_secs(30);

/// A failure to reach or deliver to a receiver, with the fix.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ShipError(pub String);

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open connection.
pub enum Conn {
    Udp(UdpSocket),
    Stream(Box<dyn Io>),
    Http(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Udp(_) => "Conn::Udp",
            Self::Stream(_) => "Conn::Stream",
            Self::Http(_) => "Conn::Http",
        })
    }
}

/// The TLS settings of a sink: its `ca_pem`, or the host's roots.
///
/// # Errors
/// The CA cannot be read, or the host has no roots.
pub fn tls_config(spec: &SinkSpec) -> Result<Arc<ClientConfig>, ShipError> {
    let mut roots = RootCertStore::empty();
    match &spec.ca_pem {
        Some(pem) => {
            let certs = skiff_shared::tls::certs_from_pem(pem, "the sink's CA")
                .map_err(|e| ShipError(format!("sink {:?}: {e}: give the CA as PEM", spec.name)))?;
            for c in certs {
                roots.add(c).map_err(|e| {
                    ShipError(format!(
                        "sink {:?}: the CA certificate cannot be used: {e}: give the CA that signed the receiver's certificate",
                        spec.name
                    ))
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(ShipError(format!(
                    "sink {:?}: this host has no trusted root certificates: install ca-certificates, or give the receiver's CA with --ca",
                    spec.name
                )));
            }
        }
    }
    let config = ClientConfig::builder_with_provider(skiff_shared::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ShipError(format!("TLS cannot be set up: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The URL as shown in errors.
pub fn shown(e: &Endpoint) -> String {
    let scheme = match e.transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
        Transport::Tls => "tls",
        Transport::Http => "http",
        Transport::Https => "https",
    };
    format!("{scheme}://{}", e.authority())
}

/// Connects (and handshakes TLS, and HTTP/1.1) within [`CONNECT_DEADLINE`].
/// The HTTP connection's driver runs on `tree`.
///
/// # Errors
/// What failed, with the fix.
pub async fn connect(
    e: &Endpoint,
    tls: Option<&Arc<ClientConfig>>,
    tree: &TaskTree,
) -> Result<Conn, ShipError> {
    let url = shown(e);
    let addr = (e.host.as_str(), e.port);
    if e.transport == Transport::Udp {
        let target = timeout(CONNECT_DEADLINE, tokio::net::lookup_host(addr))
            .await
            .map_err(|_| {
                ShipError(format!(
                    "{url}: the name lookup took over 10 s: check the host's resolver"
                ))
            })?
            .map_err(|err| {
                ShipError(format!(
                    "{url}: the name does not resolve ({err}): check the host name"
                ))
            })?
            .next()
            .ok_or_else(|| {
                ShipError(format!(
                    "{url}: the name has no address: check the host name"
                ))
            })?;
        let bind = if target.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let socket = UdpSocket::bind(bind)
            .await
            .map_err(|err| ShipError(format!("{url}: no UDP socket: {err}")))?;
        socket
            .connect(target)
            .await
            .map_err(|err| ShipError(format!("{url}: {err}: check the address")))?;
        return Ok(Conn::Udp(socket));
    }
    let tcp = match timeout(CONNECT_DEADLINE, TcpStream::connect(addr)).await {
        Err(_) => {
            return Err(ShipError(format!(
                "{url}: no answer within 10 s: check the address, and that a firewall lets the host through"
            )));
        }
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(ShipError(format!(
                "{url}: connection refused: is the receiver listening on port {}?",
                e.port
            )));
        }
        Ok(Err(err)) => {
            return Err(ShipError(format!(
                "{url}: cannot connect: {err}: check the address"
            )));
        }
        Ok(Ok(tcp)) => tcp,
    };
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = match tls {
        Some(config) if e.is_tls() => {
            let name = ServerName::try_from(e.host.clone())
                .map_err(|_| ShipError(format!("{url}: {:?} is not a TLS server name", e.host)))?;
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            match timeout(CONNECT_DEADLINE, connector.connect(name, tcp)).await {
                Err(_) => {
                    return Err(ShipError(format!(
                        "{url}: the TLS handshake took over 10 s: is the receiver speaking TLS on port {}?",
                        e.port
                    )));
                }
                Ok(Err(err)) => return Err(ShipError(tls_failure(&url, &e.host, &err))),
                Ok(Ok(s)) => Box::new(s),
            }
        }
        _ => Box::new(tcp),
    };
    if matches!(e.transport, Transport::Http | Transport::Https) {
        let (sender, conn) = timeout(
            CONNECT_DEADLINE,
            hyper::client::conn::http1::handshake(TokioIo::new(io)),
        )
        .await
        .map_err(|_| ShipError(format!("{url}: the HTTP handshake took over 10 s")))?
        .map_err(|err| ShipError(format!("{url}: HTTP failed: {err}")))?;
        let stop = tree.clone();
        tree.spawn("logs-sink-http-conn", async move {
            tokio::select! {
                _ = conn => {}
                () = stop.cancelled() => {}
            }
        });
        return Ok(Conn::Http(sender));
    }
    Ok(Conn::Stream(io))
}

/// Why a TLS handshake failed, and the fix.
fn tls_failure(url: &str, host: &str, err: &std::io::Error) -> String {
    use rustls::CertificateError as C;
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(C::UnknownIssuer)) => {
            format!("{url}: the certificate did not verify: unknown issuer; give the CA with --ca")
        }
        Some(rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        )) => format!(
            "{url}: the certificate is not valid for {host}: use the name the certificate carries in the URL"
        ),
        Some(rustls::Error::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        )) => format!(
            "{url}: the certificate is expired or not valid yet: renew the receiver's certificate (or check this host's clock)"
        ),
        Some(rustls::Error::InvalidCertificate(other)) => format!(
            "{url}: the certificate did not verify: {other:?}; check the receiver's certificate, or give its CA with --ca"
        ),
        Some(other) => format!("{url}: the TLS handshake failed: {other}"),
        None => format!("{url}: the TLS handshake failed: {err}: is the receiver speaking TLS?"),
    }
}

/// Whether a stream's peer closed it (or it failed): syslog receivers
/// never send, so anything readable now is an end. Checked before each
/// write, so a receiver that went away is noticed before a batch is
/// counted delivered.
pub fn peer_closed(io: &mut Box<dyn Io>) -> bool {
    let mut buf = [0u8; 256];
    match io.read(&mut buf).now_or_never() {
        None => false,
        Some(Ok(0) | Err(_)) => true,
        Some(Ok(_)) => false,
    }
}

/// Writes and flushes `bytes` within [`SEND_DEADLINE`].
///
/// # Errors
/// The write failed or took too long.
pub async fn write_stream(io: &mut Box<dyn Io>, bytes: &[u8], url: &str) -> Result<(), ShipError> {
    let write = async {
        io.write_all(bytes).await?;
        io.flush().await
    };
    match timeout(SEND_DEADLINE, write).await {
        Err(_) => Err(ShipError(format!(
            "{url}: the receiver took over 30 s to take a batch: is it overloaded?"
        ))),
        Ok(Err(err)) => Err(ShipError(format!("{url}: the connection failed: {err}"))),
        Ok(Ok(())) => Ok(()),
    }
}

/// POSTs `body`; a 2xx answer within [`SEND_DEADLINE`] acknowledges it.
///
/// # Errors
/// The request failed, timed out, or was answered with another status
/// (what it means and the fix).
pub async fn post(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    e: &Endpoint,
    content_type: &str,
    body: Vec<u8>,
) -> Result<(), ShipError> {
    let url = format!("{}{}", shown(e), e.path);
    let request = hyper::Request::post(e.path.as_str())
        .header(hyper::header::HOST, e.authority())
        .header(hyper::header::CONTENT_TYPE, content_type)
        .header(hyper::header::USER_AGENT, "skiff-agent")
        .body(Full::new(Bytes::from(body)))
        .map_err(|err| ShipError(format!("{url}: the request cannot be made: {err}")))?;
    let exchange = async {
        sender
            .ready()
            .await
            .map_err(|err| ShipError(format!("{url}: the connection failed: {err}")))?;
        let answer = sender
            .send_request(request)
            .await
            .map_err(|err| ShipError(format!("{url}: the request failed: {err}")))?;
        let status = answer.status();
        // Read the answer's body (bounded) so the connection can be reused.
        let body = http_body_util::Limited::new(answer.into_body(), 4096)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok::<_, ShipError>((status, body))
    };
    let (status, body) = timeout(SEND_DEADLINE, exchange).await.map_err(|_| {
        ShipError(format!(
            "{url}: no answer within 30 s: is the receiver overloaded?"
        ))
    })??;
    if status.is_success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&body);
    let said: String = said.chars().take(200).collect();
    let fix = match status.as_u16() {
        401 | 403 => {
            "the receiver wants credentials this sink does not send: allow this host, or put a proxy that adds them in front"
        }
        404 | 405 => "check the URL's path",
        408 | 429 | 503 => "the receiver is busy; retrying",
        413 => "the receiver refuses 1 MiB batches: raise its request size limit",
        400..=499 => "the receiver refused the lines; check its format settings",
        _ => "the receiver failed; retrying",
    };
    Err(ShipError(format!(
        "{url}: the receiver answered {status}{}{}: {fix}",
        if said.trim().is_empty() { "" } else { " " },
        said.trim()
    )))
}
