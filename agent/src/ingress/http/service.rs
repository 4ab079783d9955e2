//! One request: ACME challenges, routing, redirects, then forwarding to an
//! endpoint (with one retry where that is safe), upgrades, counters and
//! the access log.

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::HttpProxy;
use super::activity::{Activity, Busy};
use super::body::{Guarded, Limited, ProxyBody, empty, owned_text, text};
use super::headers::{add_forwarded, strip_hop_by_hop, upgrade_of};
use super::table::{Entry, Table, normalize_host};
use super::upstream::{Endpoint, Lease, UpstreamError};

const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// The client connection a request came on.
#[derive(Debug, Clone)]
pub(super) struct ConnInfo {
    /// The client's IP address (the PROXY header's when there is one), as
    /// text for X-Forwarded-For.
    pub client_ip: HeaderValue,
    pub tls: bool,
    pub activity: Arc<Activity>,
    pub cancel: CancellationToken,
    /// How long the connection (or its upgraded tunnel) may stay idle.
    pub idle: Duration,
}

/// How a forwarded request ended, for counters and the log.
struct Forwarded {
    response: Response<ProxyBody>,
    upstream: Option<SocketAddrV4>,
    /// Made by the proxy because of a missing or failing endpoint.
    failed: bool,
}

/// Why forwarding failed before an answer's head.
enum Fail {
    NoEndpoint,
    Upstream(Option<SocketAddrV4>, SendError),
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("the endpoint left and its drain time is over")]
    Drained,
}

/// Sends `req` to `endpoint`, unless the endpoint's drain time ends first.
async fn send_to(
    endpoint: Arc<Endpoint>,
    req: Request<ProxyBody>,
    leaving: &CancellationToken,
) -> Result<(Response<Incoming>, Lease), SendError> {
    tokio::select! {
        r = endpoint.send(req) => r.map_err(SendError::from),
        () = leaving.cancelled() => Err(SendError::Drained),
    }
}

fn retryable(e: &SendError) -> bool {
    matches!(e, SendError::Upstream(u) if u.before_any_answer())
}

fn answer(status: StatusCode, body: ProxyBody) -> Response<ProxyBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl HttpProxy {
    /// Answers one request.
    pub(super) async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let busy = conn.activity.busy();
        let table = self.table();
        // The URI's parts share the request's buffer: no copy.
        let uri = req.uri().clone();
        let host_header = req.headers().get(header::HOST).cloned();
        let raw_host = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| host_header.as_ref().and_then(|v| v.to_str().ok()))
            .unwrap_or_default();
        let host = normalize_host(raw_host);
        let host = host.as_ref();
        let method = req.method().clone();
        let path = uri.path();

        let (response, upstream, entry) = if let Some(token) = path
            .strip_prefix(ACME_PREFIX)
            .filter(|_| !conn.tls && (method == Method::GET || method == Method::HEAD))
        {
            let r = match table.challenges.get(token) {
                Some(k) => answer(StatusCode::OK, owned_text(k.clone())),
                None => answer(StatusCode::NOT_FOUND, text("No such ACME challenge.\n")),
            };
            (r, None, None)
        } else {
            match table.find(host, path, conn.tls) {
                None => (
                    answer(
                        StatusCode::NOT_FOUND,
                        text("No route for this host and path.\n"),
                    ),
                    None,
                    None,
                ),
                Some(entry)
                    if !conn.tls
                        && entry.route.tls == skiff_shared::sections::ingress::Tls::Redirect =>
                {
                    let port = table.settings.https_port;
                    let port = if port == 443 {
                        String::new()
                    } else {
                        format!(":{port}")
                    };
                    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
                    let mut r = answer(StatusCode::PERMANENT_REDIRECT, empty());
                    if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{port}{pq}")) {
                        r.headers_mut().insert(header::LOCATION, v);
                    }
                    entry.stats.record(308, false, start.elapsed());
                    (r, None, None)
                }
                Some(entry) => {
                    let f = self.forward(req, entry, &table, &conn, busy).await;
                    entry
                        .stats
                        .record(f.response.status().as_u16(), f.failed, start.elapsed());
                    (f.response, f.upstream, Some(entry))
                }
            }
        };
        debug!(
            target: "skiff::access",
            method = %method,
            host = %host,
            path = %path,
            status = response.status().as_u16(),
            upstream = %upstream.map_or_else(|| "-".to_owned(), |u| u.to_string()),
            route = %entry.map_or_else(|| "-".to_owned(), |e| format!("{}{}", e.route.domain, e.route.path)),
            duration_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            "Request answered."
        );
        response
    }

    /// Sends a routed request to one of its endpoints and streams the
    /// answer back.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        entry: &Entry,
        table: &Table,
        conn: &ConnInfo,
        busy: Busy,
    ) -> Forwarded {
        let proxy_made = |status: StatusCode, msg: &'static str, failed: bool| Forwarded {
            response: answer(status, text(msg)),
            upstream: None,
            failed,
        };
        let settings = &table.settings;
        let max = settings.max_body_bytes;
        if content_length(req.headers()).is_some_and(|l| l > max) {
            return proxy_made(
                StatusCode::PAYLOAD_TOO_LARGE,
                "The request body is too large.\n",
                false,
            );
        }
        if req.method() == Method::CONNECT {
            // Routes lead to applications, not to tunnels anywhere.
            return proxy_made(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not served.\n",
                false,
            );
        }
        let Some(pool) = entry.pool.clone() else {
            return proxy_made(
                StatusCode::SERVICE_UNAVAILABLE,
                "No endpoint is available.\n",
                true,
            );
        };
        let upgrade = if req.version() == Version::HTTP_11 {
            upgrade_of(req.headers())
        } else {
            None
        };
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let empty_body = body.is_end_stream();
        let host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        strip_hop_by_hop(&mut parts.headers, upgrade.clone());
        add_forwarded(&mut parts.headers, &conn.client_ip, conn.tls, host.as_ref());
        if let Some(h) = host {
            parts.headers.insert(header::HOST, h);
        }
        // Endpoints get the origin form (`/path?query`).
        let uri = match parts.uri.path_and_query() {
            Some(_) if parts.uri.authority().is_none() => parts.uri.clone(),
            Some(pq) => Uri::from(pq.clone()),
            None => Uri::from_static("/"),
        };
        let idempotent = matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
        );
        let retry = (idempotent && empty_body && upgrade.is_none())
            .then(|| (parts.method.clone(), parts.headers.clone()));
        let over = Arc::new(AtomicBool::new(false));
        let body: ProxyBody = if empty_body {
            empty()
        } else {
            Limited::new(body, max, over.clone()).boxed_unsync()
        };

        // The answer goes back in the client's version whatever the
        // endpoint's: an HTTP/1.0 answer would end a keep-alive client
        // connection.
        let client_version = parts.version;
        let route = &entry.route;
        let pick_one = |skip: &[std::net::Ipv4Addr]| {
            pool.pick(route.balance, route.local_first, &table.node, skip)
        };
        let request_to = |method: Method, headers: HeaderMap, body: ProxyBody| {
            let mut r = Request::new(body);
            *r.method_mut() = method;
            *r.headers_mut() = headers;
            *r.version_mut() = Version::HTTP_11;
            *r.uri_mut() = uri.clone();
            r
        };
        let attempt = async {
            let first = pick_one(&[]).ok_or(Fail::NoEndpoint)?;
            let addr = SocketAddrV4::new(first.ip, route.port);
            let r = request_to(parts.method, parts.headers, body);
            let leaving = first.leaving();
            match send_to(self.upstreams.endpoint(addr), r, &leaving).await {
                Ok((resp, lease)) => {
                    pool.succeeded(first.ip);
                    Ok((resp, lease, first, addr, leaving))
                }
                Err(e) if retryable(&e) => {
                    pool.failed(first.ip);
                    debug!(endpoint = %addr, error = %e, "An endpoint failed before answering.");
                    let Some((method, headers)) = retry else {
                        return Err(Fail::Upstream(Some(addr), e));
                    };
                    let Some(second) = pick_one(&[first.ip]) else {
                        return Err(Fail::Upstream(Some(addr), e));
                    };
                    drop(first);
                    let addr = SocketAddrV4::new(second.ip, route.port);
                    let r = request_to(method, headers, empty());
                    let leaving = second.leaving();
                    match send_to(self.upstreams.endpoint(addr), r, &leaving).await {
                        Ok((resp, lease)) => {
                            pool.succeeded(second.ip);
                            Ok((resp, lease, second, addr, leaving))
                        }
                        Err(e) => {
                            if retryable(&e) {
                                pool.failed(second.ip);
                            }
                            Err(Fail::Upstream(Some(addr), e))
                        }
                    }
                }
                Err(e) => Err(Fail::Upstream(Some(addr), e)),
            }
        };
        let timeout = Duration::from_millis(settings.request_timeout_ms);
        let (mut resp, lease, pick, addr, leaving) =
            match tokio::time::timeout(timeout, attempt).await {
                Err(_) => {
                    return proxy_made(
                        StatusCode::GATEWAY_TIMEOUT,
                        "The endpoint did not answer in time.\n",
                        true,
                    );
                }
                Ok(Err(Fail::NoEndpoint)) => {
                    return proxy_made(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "No endpoint is available.\n",
                        true,
                    );
                }
                Ok(Err(Fail::Upstream(addr, e))) => {
                    if over.load(Ordering::Relaxed) {
                        return proxy_made(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "The request body is too large.\n",
                            false,
                        );
                    }
                    debug!(endpoint = ?addr, error = %e, "An endpoint failed.");
                    let mut f = proxy_made(StatusCode::BAD_GATEWAY, "The endpoint failed.\n", true);
                    f.upstream = addr;
                    return f;
                }
                Ok(Ok(answered)) => answered,
            };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let cancel = conn.cancel.clone();
            let activity = conn.activity.clone();
            let idle = conn.idle;
            self.tree.spawn("http upgrade", async move {
                let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok(both) => both,
                    Err(error) => {
                        debug!(error = %error, "An upgrade did not complete.");
                        return;
                    }
                };
                let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                // The client's bytes still pass through its tracked
                // stream: the tunnel ends after `idle` with none either way.
                drop(busy);
                let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
                tokio::pin!(copy);
                loop {
                    let at = activity.idle_deadline(idle).unwrap_or_else(|| Instant::now() + idle);
                    tokio::select! {
                        r = copy.as_mut() => {
                            if let Err(error) = r {
                                debug!(error = %error, "An upgraded connection ended with an error.");
                            }
                            break;
                        }
                        () = tokio::time::sleep_until(at) => {
                            if activity.idle_deadline(idle).is_some_and(|at| at <= Instant::now()) {
                                debug!("An upgraded connection was idle too long; closing it.");
                                break;
                            }
                        }
                        () = leaving.cancelled() => break,
                        () = cancel.cancelled() => break,
                    }
                }
                drop((pick, lease));
            });
            let (mut parts, body) = resp.into_parts();
            parts.version = client_version;
            let up = upgrade_of(&parts.headers);
            strip_hop_by_hop(&mut parts.headers, up);
            return Forwarded {
                response: Response::from_parts(parts, body.map_err(Into::into).boxed_unsync()),
                upstream: Some(addr),
                failed: false,
            };
        }
        let (mut parts, body) = resp.into_parts();
        parts.version = client_version;
        strip_hop_by_hop(&mut parts.headers, None);
        let body = Guarded::new(body, (pick, busy), lease, leaving);
        Forwarded {
            response: Response::from_parts(parts, body.boxed_unsync()),
            upstream: Some(addr),
            failed: false,
        }
    }
}
