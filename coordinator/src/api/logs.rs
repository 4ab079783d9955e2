//! Logs: the cluster's sinks (`/logs/sinks`), with each host's status
//! from its last report, and the lines of a stack (`/stacks/{name}/logs`,
//! served by [`super::log_stream`]). Changing sinks needs an admin
//! token; reading them, any.

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::routing::{get, put};
use axum::{Extension, Json};
use skiff_api_types::logs::MAX_SINK_CA_BYTES;
use skiff_api_types::*;
use skiff_shared::sections::logs::{
    DEFAULT_BUFFER_BYTES, FullPolicy, LogsReport, SinkError, SinkFormat, SinkSpec,
};

use super::{Api, ApiError, ApiResult, Caller, json_body};
use crate::logs::LogsError;

/// The largest body of `PUT /logs/sinks/{name}`: a CA of the largest
/// size, JSON-escaped, and the rest.
const MAX_BODY_BYTES: usize = 2 * MAX_SINK_CA_BYTES + 16 * 1024;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/logs/sinks", get(list_sinks))
        .route(
            "/logs/sinks/{name}",
            put(put_sink)
                .delete(remove_sink)
                .layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .route("/stacks/{name}/logs", get(super::log_stream::stack_logs))
}

/// A sink as the API shows it, with its status on every host that
/// reported it.
fn view(
    sink: &SinkSpec,
    stack: Option<&str>,
    reports: &std::collections::BTreeMap<String, LogsReport>,
) -> SinkView {
    let hosts = reports
        .iter()
        .flat_map(|(host, r)| {
            r.sinks
                .iter()
                .filter(|s| s.name == sink.name && s.stack.as_deref() == stack)
                .map(move |s| SinkHostView {
                    host: host.clone(),
                    healthy: s.healthy,
                    delivered: s.delivered,
                    buffered_lines: s.buffered_lines,
                    buffered_bytes: s.buffered_bytes,
                    dropped: s.dropped,
                    error: s.error.clone(),
                    refused: s.refused.clone(),
                })
        })
        .collect();
    SinkView {
        name: sink.name.clone(),
        stack: stack.map(str::to_owned),
        url: sink.url.clone(),
        format: sink.format.as_str().to_owned(),
        has_ca: sink.ca_pem.is_some(),
        buffer_bytes: sink.buffer_bytes,
        when_full: sink.when_full.as_str().to_owned(),
        hosts,
    }
}

/// The stable code of a refused sink, by the field at fault.
fn sink_error(e: &SinkError) -> ApiError {
    let code = if e.field.starts_with("sink name") {
        "invalid_sink_name"
    } else if e.field.ends_with(": ca") {
        "invalid_sink_ca"
    } else if e.field.ends_with(": buffer") {
        "invalid_sink_buffer"
    } else if e.field.contains(": url") {
        "invalid_sink_url"
    } else {
        "invalid_sink"
    };
    ApiError::bad_request(code, e.to_string())
}

/// The sink a request asks for, checked as hosts will check it.
///
/// # Errors
/// A 400 naming the field and the fix.
pub fn sink_of(name: &str, req: PutSink) -> Result<SinkSpec, ApiError> {
    let format = match req.format.as_deref() {
        None => SinkFormat::Syslog,
        Some(f) => f
            .parse()
            .map_err(|why: String| ApiError::bad_request("invalid_sink_format", why))?,
    };
    let when_full = match req.when_full.as_deref() {
        None => FullPolicy::default(),
        Some(p) => p
            .parse()
            .map_err(|why: String| ApiError::bad_request("invalid_sink_when_full", why))?,
    };
    if req
        .ca_pem
        .as_ref()
        .is_some_and(|c| c.len() > MAX_SINK_CA_BYTES)
    {
        return Err(ApiError::bad_request(
            "invalid_sink_ca",
            format!(
                "sink {name:?}: ca is over {} KiB: give only the CA that signed the receiver's certificate",
                MAX_SINK_CA_BYTES / 1024
            ),
        ));
    }
    let sink = SinkSpec {
        name: name.to_owned(),
        url: req.url.trim().to_owned(),
        format,
        ca_pem: req.ca_pem.filter(|c| !c.trim().is_empty()),
        buffer_bytes: req.buffer_bytes.unwrap_or(DEFAULT_BUFFER_BYTES),
        when_full,
    };
    sink.check().map_err(|e| sink_error(&e))?;
    Ok(sink)
}

#[utoipa::path(get, path = "/api/v1/logs/sinks",
    responses((status = 200, body = [SinkView], description = "the cluster's sinks, then the own sinks of the stacks the token covers")))]
pub(super) async fn list_sinks(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Vec<SinkView>> {
    let reports = api.logs.reports();
    let mut out: Vec<SinkView> = api
        .logs
        .sinks()
        .iter()
        .map(|s| view(s, None, &reports))
        .collect();
    // A token limited to stacks sees only their own sinks.
    for (stack, sinks) in api
        .logs
        .stack_sinks()
        .into_iter()
        .filter(|(stack, _)| caller.covers(stack))
    {
        out.extend(sinks.iter().map(|s| view(s, Some(&stack), &reports)));
    }
    Ok(Json(out))
}

#[utoipa::path(put, path = "/api/v1/logs/sinks/{name}", request_body = PutSink,
    params(("name" = String, Path, description = "sink name")),
    responses((status = 200, body = SinkView), (status = 400, body = ApiErrorBody),
        (status = 409, body = ApiErrorBody), (status = 413, body = ApiErrorBody)))]
pub(super) async fn put_sink(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Result<Json<PutSink>, JsonRejection>,
) -> ApiResult<SinkView> {
    let sink = sink_of(&name, json_body(body)?)?;
    match api.logs.put(sink.clone()).await {
        Ok(_) => Ok(Json(view(&sink, None, &api.logs.reports()))),
        Err(LogsError::Invalid(e)) => Err(sink_error(&e)),
        Err(e @ LogsError::TooMany) => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "too_many_sinks",
            e.to_string(),
        )),
        Err(LogsError::Store(e)) => Err(e.into()),
    }
}

#[utoipa::path(delete, path = "/api/v1/logs/sinks/{name}",
    params(("name" = String, Path, description = "sink name")),
    responses((status = 200, body = SinkView), (status = 404, body = ApiErrorBody)))]
pub(super) async fn remove_sink(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> ApiResult<SinkView> {
    match api.logs.remove(&name).await {
        Ok(Some(old)) => Ok(Json(view(&old, None, &Default::default()))),
        Ok(None) => Err(ApiError::not_found("sink", &name)),
        Err(LogsError::Store(e)) => Err(e.into()),
        Err(e) => Err(ApiError::bad_request("invalid_sink", e.to_string())),
    }
}
