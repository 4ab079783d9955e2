//! The proxy's test harness: upstreams that report what they received,
//! a proxy on loopback, clients and certificates.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use skiff_shared::sections::ingress::{
    Backend, Balance, Endpoint, IngressSection, ProxySettings, Route, Tls,
};
use skiff_shared::tasks::TaskTree;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::super::HttpProxy;
use crate::ingress::balance::Pools;

/// What an upstream received.
#[derive(Debug)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body_len: usize,
}

/// A tiny upstream on `ip:port` (port 0: any).
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: mpsc::UnboundedReceiver<Seen>,
    /// Releases requests to `/slow`.
    pub release: Arc<Notify>,
    /// How many connections to it are open.
    pub open: tokio::sync::watch::Receiver<usize>,
}

impl Upstream {
    pub async fn start(name: &'static str, ip: Ipv4Addr, port: u16) -> Self {
        let listener = TcpListener::bind((ip, port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, seen) = mpsc::unbounded_channel();
        let release = Arc::new(Notify::new());
        let rel = release.clone();
        let (open_tx, open) = tokio::sync::watch::channel(0usize);
        let open_tx = Arc::new(open_tx);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                let rel = rel.clone();
                let open_tx = open_tx.clone();
                open_tx.send_modify(|n| *n += 1);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| serve(name, req, tx.clone(), rel.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                    open_tx.send_modify(|n| *n -= 1);
                });
            }
        });
        Self {
            addr,
            seen,
            release,
            open,
        }
    }

    /// The next request it received.
    pub async fn next(&mut self) -> Seen {
        tokio::time::timeout(std::time::Duration::from_secs(10), self.seen.recv())
            .await
            .expect("the upstream received a request in time")
            .expect("the upstream runs")
    }
}

async fn serve(
    name: &'static str,
    mut req: Request<Incoming>,
    tx: mpsc::UnboundedSender<Seen>,
    release: Arc<Notify>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let headers = req.headers().clone();
    if path == "/ws" {
        use futures_util::{SinkExt, StreamExt};
        let key = headers
            .get("sec-websocket-key")
            .map(|k| tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes()))
            .unwrap_or_default();
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(up),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            }
        });
        let _ = tx.send(Seen {
            path,
            headers,
            body_len: 0,
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", key)
            .body(Full::default())
            .unwrap());
    }
    if path == "/upgrade" {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let _ = tx.send(Seen {
            path,
            headers,
            body_len: 0,
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(Full::default())
            .unwrap());
    }
    let mut body = req.into_body();
    let mut body_len = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_len += f.data_ref().map_or(0, Bytes::len),
            Err(_) => return Ok(Response::new(Full::default())),
        }
    }
    let _ = tx.send(Seen {
        path: path.clone(),
        headers,
        body_len,
    });
    if path == "/slow" {
        release.notified().await;
    }
    if path == "/big" {
        return Ok(Response::new(Full::new(Bytes::from(vec![b'b'; 6 << 20]))));
    }
    if path == "/hang" {
        std::future::pending::<()>().await;
    }
    Ok(Response::builder()
        .header("connection", "x-up-private")
        .header("x-up-private", "1")
        .header("keep-alive", "timeout=5")
        .header("x-up-kept", "1")
        .body(Full::new(Bytes::from(name)))
        .unwrap())
}

pub fn route(domain: &str, path: &str, service: &str, port: u16) -> Route {
    Route {
        stack: "shop".into(),
        service: service.into(),
        domain: domain.into(),
        path: path.into(),
        port,
        tls: Tls::Auto,
        balance: Balance::RoundRobin,
        local_first: false,
    }
}

pub fn backend(service: &str, ips: &[Ipv4Addr]) -> Backend {
    Backend {
        stack: "shop".into(),
        service: service.into(),
        endpoints: ips
            .iter()
            .enumerate()
            .map(|(i, ip)| Endpoint {
                ip: *ip,
                node: "n1".into(),
                slot: i as u32 + 1,
            })
            .collect(),
    }
}

pub fn section(generation: u64, routes: Vec<Route>, backends: Vec<Backend>) -> IngressSection {
    IngressSection {
        generation,
        node: "n1".into(),
        edge: true,
        settings: ProxySettings {
            request_timeout_ms: 10_000,
            max_body_bytes: 1 << 30,
            ..ProxySettings::default()
        },
        routes,
        backends,
        ..IngressSection::default()
    }
}

/// A proxy listening in clear and with TLS on loopback.
pub struct Proxy {
    pub proxy: Arc<HttpProxy>,
    pub http: SocketAddr,
    pub https: SocketAddr,
    cancel: CancellationToken,
    tree: TaskTree,
    /// The pools of the last section (rebuilt from at each update, as the
    /// controller does).
    pools: std::sync::Mutex<Pools>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.tree.cancel();
    }
}

pub type Certs = Vec<(Vec<String>, Arc<rustls::sign::CertifiedKey>)>;

impl Proxy {
    pub async fn start(section: &IngressSection, certs: Certs) -> Self {
        Self::start_capped(section, certs, super::super::MAX_CONNECTIONS).await
    }

    /// A proxy whose listeners serve at most `cap` connections each.
    pub async fn start_capped(section: &IngressSection, certs: Certs, cap: usize) -> Self {
        let tree = TaskTree::root();
        let proxy = HttpProxy::new(tree.clone());
        proxy.set_max_connections(cap);
        let pools = Pools::default().rebuild(section, &tree);
        proxy.update(section, &pools, certs);
        let cancel = CancellationToken::new();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (h, s) = (http.local_addr().unwrap(), https.local_addr().unwrap());
        tokio::spawn(proxy.clone().serve(http, false, cancel.clone()));
        tokio::spawn(proxy.clone().serve(https, true, cancel.clone()));
        Self {
            proxy,
            http: h,
            https: s,
            cancel,
            tree,
            pools: std::sync::Mutex::new(pools),
        }
    }

    pub fn update(&self, section: &IngressSection) {
        let mut pools = self.pools.lock().unwrap();
        *pools = pools.rebuild(section, &self.tree);
        self.proxy.update(section, &pools, Vec::new());
    }
}

/// An answer, its body read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// Sends one request on a new HTTP/1.1 connection.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    read(sender.send_request(req).await.unwrap()).await
}

pub async fn read(resp: Response<Incoming>) -> Answer {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", host)
        .body(Full::default())
        .unwrap()
}

/// A self-signed certificate for `names`: the proxy's key, and the
/// certificate for clients to trust.
pub fn certificate(
    names: &[&str],
) -> (
    Arc<rustls::sign::CertifiedKey>,
    rustls::pki_types::CertificateDer<'static>,
) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    let der = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
    (
        Arc::new(rustls::sign::CertifiedKey::new(vec![der.clone()], signing)),
        der,
    )
}

/// A TLS client trusting `roots`, offering `alpn`.
pub fn tls_client(
    roots: &[rustls::pki_types::CertificateDer<'static>],
    alpn: &[&[u8]],
) -> tokio_rustls::TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}
