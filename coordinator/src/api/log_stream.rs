//! `GET /stacks/{name}/logs`: a stack's lines from every host it runs on,
//! as newline-delimited JSON ([`LogEntry`]): the history merged in time
//! order, then, with `follow`, live lines as they come. A blank line is
//! sent after a quiet [`KEEPALIVE`] so that a reader that left is noticed
//! (and its hosts told to stop).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use skiff_api_types::*;
use skiff_shared::sections::SectionKind;
use skiff_shared::sections::logs::{LogQuery, Logs, MAX_QUERY_LINES};
use tokio::sync::mpsc;

use super::{Api, ApiError};

/// How long a follow stream may be quiet before a blank line is sent.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// Query of `GET /stacks/{name}/logs`.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogsParams {
    /// Only this service's lines.
    pub service: Option<String>,
    /// Only this replica's (with `service`).
    pub slot: Option<u32>,
    /// Only lines from this time on: RFC 3339, or a duration back from now
    /// (`10m`, `2h`).
    pub since: Option<String>,
    /// Only the last this many lines of each container before following.
    pub tail: Option<u32>,
    /// Go on with new lines as they come.
    #[serde(default)]
    pub follow: bool,
    /// Only this host's lines (node name).
    pub host: Option<String>,
}

/// `since` as Unix nanoseconds: RFC 3339, or a duration before `now`.
///
/// # Errors
/// What is wrong, with the forms accepted.
pub fn parse_since(text: &str, now: SystemTime) -> Result<i64, String> {
    let t = text.trim();
    let offset = skiff_api_types::validate::split_utc_offset(t);
    let utc = offset.as_ref().and_then(|(base, east)| {
        let at = humantime::parse_rfc3339_weak(base).ok()?;
        let shift = Duration::from_secs(east.unsigned_abs());
        if *east >= 0 {
            at.checked_sub(shift)
        } else {
            at.checked_add(shift)
        }
    });
    let at = match utc.map_or_else(|| humantime::parse_rfc3339_weak(t), Ok) {
        Ok(at) => at,
        Err(_) => match humantime::parse_duration(t) {
            Ok(d) => now.checked_sub(d).unwrap_or(UNIX_EPOCH),
            Err(_) => {
                return Err(format!(
                    "since {text:?} is neither a time nor a duration: write an RFC 3339 time (2026-11-30T12:00:00Z) or a duration back from now (10m, 2h)"
                ));
            }
        },
    };
    let ns = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    Ok(i64::try_from(ns).unwrap_or(i64::MAX))
}

#[utoipa::path(get, path = "/api/v1/stacks/{name}/logs",
    params(("name" = String, Path, description = "stack name"), LogsParams),
    responses((status = 200, body = [LogEntry], description = "newline-delimited JSON: one LogEntry per line"),
        (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody),
        (status = 503, body = ApiErrorBody)))]
pub(super) async fn stack_logs(
    State(api): State<Api>,
    Path(name): Path<String>,
    params: Result<Query<LogsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    crate::deploy::find_stack(&api.deployer, &name).await?;
    let since_ns = match &p.since {
        Some(s) => Some(
            parse_since(s, SystemTime::now())
                .map_err(|why| ApiError::bad_request("invalid_since", why))?,
        ),
        None => None,
    };
    if p.tail.is_some_and(|t| t as usize > MAX_QUERY_LINES) {
        return Err(ApiError::bad_request(
            "invalid_tail",
            format!("tail is over {MAX_QUERY_LINES}: ask for fewer lines, or use since"),
        ));
    }
    if p.slot.is_some() && p.service.is_none() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "slot needs service: ask for STACK.SERVICE.N",
        ));
    }
    // The hosts the stack's containers are planned on.
    let mut hosts = Vec::new();
    for n in api.store.nodes(false).await? {
        if p.host.as_ref().is_some_and(|h| *h != n.name && *h != n.id) {
            continue;
        }
        let plan = api.deployer.plans.get(&n.id);
        let runs = plan.containers.iter().any(|c| {
            c.stack == name
                && p.service.as_ref().is_none_or(|s| c.service == *s)
                && p.slot.is_none_or(|s| c.slot == s)
        });
        if runs {
            hosts.push((n.id, n.name));
        }
    }
    if let Some(h) = &p.host
        && hosts.is_empty()
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no host {h:?} runs stack {name}{}; see `skiff ps {name}`",
                p.service
                    .as_ref()
                    .map(|s| format!(" service {s}"))
                    .unwrap_or_default()
            ),
        ));
    }
    let Some(permit) = api.logs.stream_permit() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_log_streams",
            format!(
                "the coordinator serves {} log streams already; retry when one ends",
                crate::logs::MAX_LOG_STREAMS
            ),
        ));
    };
    let query = LogQuery {
        stack: name.clone(),
        service: p.service.clone(),
        slot: p.slot,
        since_ns,
        tail: p.tail,
        follow: p.follow,
    };
    let body = serde_json::to_value(&query)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let (mut asked, mut refused) = (Vec::new(), Vec::new());
    for (id, host) in hosts {
        match api
            .sessions
            .query(&id, &host, Logs::CAPABILITY, Logs::NAME, body.clone())
        {
            Ok(rx) => asked.push((host, rx)),
            Err(e) => refused.push((host, e.to_string())),
        }
    }
    let (tx, rx) = mpsc::channel::<LogEntry>(256);
    let shutdown = api.tree.clone();
    api.tree.spawn("logs-read", async move {
        let _permit = permit;
        tokio::select! {
            () = crate::logs::query::run(asked, refused, p.follow, crate::logs::query::HISTORY_DEADLINE, tx) => {}
            () = shutdown.cancelled() => {}
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let bytes = match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
            Ok(Some(entry)) => {
                let mut line = serde_json::to_vec(&entry).unwrap_or_default();
                line.push(b'\n');
                line
            }
            Ok(None) => return None,
            Err(_) => b"\n".to_vec(),
        };
        Some((Ok::<_, std::convert::Infallible>(bytes), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_time_or_a_duration_back() {
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(parse_since("10m", now).unwrap(), 9_400 * 1_000_000_000);
        assert_eq!(
            parse_since("1970-01-01T00:00:05Z", now).unwrap(),
            5_000_000_000
        );
        assert_eq!(
            parse_since("1970-01-01T01:00:05+01:00", now).unwrap(),
            5_000_000_000
        );
        let e = parse_since("yesterday", now).unwrap_err();
        assert!(e.contains("RFC 3339") && e.contains("10m"), "{e}");
    }
}
