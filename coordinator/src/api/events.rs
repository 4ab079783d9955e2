//! The event log, listed or followed as server-sent events.

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json};
use skiff_api_types::*;

use super::{Api, ApiError, Caller};

pub(super) fn routes() -> Router<Api> {
    Router::new().route("/events", get(events))
}

/// Query of `GET /events`.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Keep the connection open and send new events as they happen (server-sent events).
    #[serde(default)]
    pub follow: bool,
    /// Only events of this stack.
    pub stack: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/events", params(EventsQuery),
    responses((status = 200, body = [Event], description = "JSON, or with follow=true a text/event-stream whose data lines are events")))]
pub(super) async fn events(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    query: Result<axum::extract::Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let (past, rx) = api.events.subscribe();
    // A token limited to stacks sees only their events.
    let wanted = move |e: &Event| {
        q.stack.as_ref().is_none_or(|s| e.stack.as_ref() == Some(s))
            && (caller.stacks.is_empty() || e.stack.as_ref().is_some_and(|s| caller.covers(s)))
    };
    let past: Vec<Event> = past.into_iter().filter(|e| wanted(e)).collect();
    if !q.follow {
        return Ok(Json(past).into_response());
    }
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    use futures_util::StreamExt;
    let to_sse = |e: &Event| SseEvent::default().json_data(e);
    let history = futures_util::stream::iter(past.iter().map(to_sse).collect::<Vec<_>>());
    let shutdown = api.tree.clone();
    let live = futures_util::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) => return Some((e, rx)),
                // A slow follower skips what it missed and goes on.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .filter(move |e| std::future::ready(wanted(e)))
    .map(move |e| to_sse(&e))
    .take_until(async move { shutdown.cancelled().await });
    let stream = history.chain(live);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
