//! The agent port's public endpoints, served over TLS without a client
//! certificate: what a server needs before it belongs to the cluster.
//!
//! - `POST /v1/join`: join with a token and a CSR; answers with the node's
//!   certificate, the CA and the plan-signing public key. The token is
//!   checked first: for a token that cannot be redeemed (and for a bad
//!   name) the CSR is not even parsed. The node gets the labels its token
//!   grants, and may ask for no other.
//! - `GET /install.sh`: the bootstrap script, with this coordinator's
//!   address filled in.
//! - `GET /download/skiff-agent-linux-<arch>` and `.sha256`: the agent binary.
//! - `GET /v1/ca.crt`: the CA certificate (clients check it against the
//!   fingerprint in their token).
//! - `GET /healthz`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use skiff_shared::join::{ErrorBody, JOIN_PATH, JoinRequest, JoinResponse, JoinToken, names};
use skiff_shared::tasks::TaskTree;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

use super::Link;
use crate::listener::HttpLimits;
use crate::listener::sources::Source;
use crate::now_ms;
use crate::store::NodeRow;

/// The bootstrap script; `__SKIFF_COORDINATOR__` is replaced by the address
/// the client used to reach us.
const BOOTSTRAP: &str = include_str!("../../../scripts/bootstrap.sh");

/// Largest join request accepted.
pub(crate) const MAX_JOIN_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

pub fn router(link: Arc<Link>) -> Router {
    let throttle = middleware::from_fn_with_state(link.clone(), throttle_joins);
    Router::new()
        .route(JOIN_PATH, post(join).route_layer(throttle))
        .route("/install.sh", get(install_script))
        .route("/download/{file}", get(download))
        .route("/v1/ca.crt", get(ca_cert))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_JOIN_BYTES))
        .with_state(link)
}

/// Serves HTTP/1.1 on one TLS connection, under the agent port's limits.
pub async fn serve_connection<S>(
    app: Router,
    stream: S,
    peer: SocketAddr,
    limits: &HttpLimits,
    tree: &TaskTree,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    crate::listener::serve_http(stream, app.layer(Extension(Peer(peer))), limits, tree).await;
}

/// Answers 429 to joins from a source past its allowance of refused
/// joins, without reading them; they count as refused.
async fn throttle_joins(State(link): State<Arc<Link>>, req: Request, next: Next) -> Response {
    let Some(Peer(peer)) = req.extensions().get::<Peer>().copied() else {
        return next.run(req).await;
    };
    let source = Source::from(peer.ip());
    let Some(wait) = link.refused.joins.throttled(source) else {
        return next.run(req).await;
    };
    link.metrics.joins_refused.inc();
    link.refused.joins.refused(source);
    let secs = wait.as_secs().max(1);
    let mut resp = error(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_refusals",
        format!("too many refused joins from {source}; check the join token and retry in {secs} s"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            code: code.to_owned(),
            message: message.into(),
        }),
    )
        .into_response()
}

async fn join(
    State(link): State<Arc<Link>>,
    Extension(Peer(peer)): Extension<Peer>,
    body: Bytes,
) -> Response {
    let refuse = |status, code: &str, message: String| {
        link.metrics.joins_refused.inc();
        if link.refused.joins.refused(Source::from(peer.ip())) {
            warn!(%peer, reason = %message, "Join refused.");
        }
        error(status, code, message)
    };
    let req: JoinRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("invalid join request: {e}"),
            );
        }
    };
    if let Err(message) = names::check_node_name(&req.name) {
        return refuse(StatusCode::BAD_REQUEST, "invalid_name", message);
    }
    for (k, v) in &req.labels {
        if let Err(message) = names::check_label(k, v) {
            return refuse(StatusCode::BAD_REQUEST, "invalid_label", message);
        }
    }
    let now = now_ms();
    let secret_hash = JoinToken::secret_hash(&req.secret);
    // The token before anything else: for one that cannot be redeemed,
    // nothing more of the request is read and nothing is signed.
    let token = match link
        .store
        .check_join_token(&req.token_id, &secret_hash, &req.name, now)
        .await
    {
        Ok(Ok(token)) => token,
        Ok(Err(refusal)) => {
            return refuse(StatusCode::FORBIDDEN, "join_refused", refusal.to_string());
        }
        Err(e) => return store_unavailable(&e),
    };
    if let Err(message) = check_asked_labels(&token.labels, &req.labels, &req.name) {
        return refuse(StatusCode::FORBIDDEN, "label_not_granted", message);
    }
    if let Err(message) = req.facts.check() {
        return refuse(StatusCode::BAD_REQUEST, "invalid_facts", message);
    }
    let node_id = match skiff_shared::random_bytes::<10>() {
        Ok(b) => hex::encode(b),
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "random source failed",
            );
        }
    };
    let issued = match link
        .identity
        .ca
        .issue_client(&req.csr_pem, &node_id, link.cert_ttl)
    {
        Ok(i) => i,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "invalid_csr", e.to_string()),
    };
    let not_after = issued
        .not_after
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let node = NodeRow {
        id: node_id.clone(),
        name: req.name.clone(),
        labels: token.labels,
        facts: req.facts.clone(),
        agent_version: String::new(),
        remote_addr: Some(peer.ip().to_string()),
        joined_at: now,
        last_seen_at: Some(now),
        cert_serial: issued.serial_hex.clone(),
        cert_not_after: not_after,
        plan_generation: None,
        plan_error: None,
        removed_at: None,
    };
    // The same checks again, atomically with the use and the insertion.
    match link
        .store
        .redeem_join_token(&req.token_id, &secret_hash, now, &node)
        .await
    {
        Ok(Ok(())) => {
            info!(node = %node_id, name = %req.name, token = %req.token_id, %peer, "Node joined.");
            Json(JoinResponse {
                node_id,
                cluster_id: link.identity.cluster_id.clone(),
                cert_pem: issued.cert_pem,
                ca_pem: link.identity.ca.cert_pem.clone(),
                plan_public_key: skiff_shared::signing::encode_public_key(
                    &link.identity.plan_key.verifying_key(),
                ),
            })
            .into_response()
        }
        Ok(Err(refusal)) => refuse(StatusCode::FORBIDDEN, "join_refused", refusal.to_string()),
        Err(e) => store_unavailable(&e),
    }
}

fn store_unavailable(e: &crate::store::StoreError) -> Response {
    warn!(error = %e, "Join failed on the store.");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "coordinator store is unavailable; retry",
    )
}

/// Checks that every label a joining host asks for is granted by its
/// token, with the same value; the message names the first one that is
/// not, and the two ways to get it.
fn check_asked_labels(
    granted: &BTreeMap<String, String>,
    asked: &BTreeMap<String, String>,
    name: &str,
) -> Result<(), String> {
    for (k, v) in asked {
        if granted.get(k) == Some(v) {
            continue;
        }
        let grants = match granted.get(k) {
            Some(g) => format!(" (it grants {k}={g})"),
            None => String::new(),
        };
        return Err(format!(
            "label {k}={v} is not granted by this join token{grants}: join with a token made by \
             `skiff token create --label {k}={v}`, or join without --label {k}={v} and have an \
             admin run `skiff node label {name} {k}={v}`"
        ));
    }
    Ok(())
}

/// Accepts only what a host[:port] can look like, so nothing else reaches the script.
fn safe_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

async fn install_script(headers: HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !safe_host(host) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_host",
            "the Host header is missing or invalid",
        );
    }
    let script = BOOTSTRAP.replace("__SKIFF_COORDINATOR__", host);
    (
        [(header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8")],
        script,
    )
        .into_response()
}

async fn ca_cert(State(link): State<Arc<Link>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        link.identity.ca.cert_pem.clone(),
    )
        .into_response()
}

/// The file name the agent binary is served under on this coordinator.
pub fn agent_file_name() -> String {
    format!("skiff-agent-linux-{}", std::env::consts::ARCH)
}

async fn download(
    State(link): State<Arc<Link>>,
    axum::extract::Path(file): axum::extract::Path<String>,
) -> Response {
    let Some(bin) = &link.agent_binary else {
        return error(
            StatusCode::NOT_FOUND,
            "no_agent_binary",
            "this coordinator has no agent binary to serve; set agent_binary in its config",
        );
    };
    let name = agent_file_name();
    if file == format!("{name}.sha256") {
        return format!("{}  {name}\n", bin.sha256_hex).into_response();
    }
    if file != name {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such download {file:?}; this coordinator serves {name}"),
        );
    }
    match tokio::fs::File::open(&bin.path).await {
        Ok(f) => {
            let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
            let body = Body::from_stream(tokio_util::io::ReaderStream::new(f));
            (
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                    (header::CONTENT_LENGTH, len.to_string()),
                ],
                body,
            )
                .into_response()
        }
        Err(e) => {
            warn!(error = %e, path = %bin.path.display(), "Agent binary cannot be read.");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "agent binary cannot be read",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_may_ask_only_for_labels_its_token_grants() {
        let granted = BTreeMap::from([("zone".to_owned(), "eu".to_owned())]);
        let ask = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(check_asked_labels(&granted, &ask(&[]), "n"), Ok(()));
        assert_eq!(
            check_asked_labels(&granted, &ask(&[("zone", "eu")]), "n"),
            Ok(())
        );
        let m = check_asked_labels(&granted, &ask(&[("zone", "us")]), "web-1").unwrap_err();
        assert!(m.starts_with("label zone=us is not granted"), "{m}");
        assert!(m.contains("(it grants zone=eu)"), "{m}");
        assert!(m.contains("skiff token create --label zone=us"), "{m}");
        assert!(m.contains("skiff node label web-1 zone=us"), "{m}");
        let m = check_asked_labels(&BTreeMap::new(), &ask(&[("role", "edge")]), "n").unwrap_err();
        assert!(!m.contains("it grants"), "{m}");
    }
}
