//! Join tokens: created (shown once), listed, revoked.

use axum::Router;
use axum::routing::{delete, get};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use skiff_api_types::*;
use skiff_shared::join::{JoinToken, names};
use tracing::info;

use super::{Api, ApiError, ApiResult, json_body, rfc3339_ms};
use crate::now_ms;
use crate::store::JoinTokenRow;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route(
            "/tokens/join",
            get(list_join_tokens).post(create_join_token),
        )
        .route("/tokens/join/{id}", delete(revoke_join_token))
}

fn token_view(t: JoinTokenRow, now: i64) -> JoinTokenView {
    let status = if t.revoked_at.is_some() {
        JoinTokenStatus::Revoked
    } else if t.expires_at <= now {
        JoinTokenStatus::Expired
    } else if t.uses >= t.uses_allowed {
        JoinTokenStatus::UsedUp
    } else {
        JoinTokenStatus::Active
    };
    JoinTokenView {
        id: t.id,
        status,
        created_at: rfc3339_ms(t.created_at),
        expires_at: rfc3339_ms(t.expires_at),
        uses: t.uses,
        uses_allowed: t.uses_allowed,
        labels: t.labels,
    }
}

/// Most labels one join token may grant.
const MAX_GRANTED_LABELS: usize = 64;

#[utoipa::path(post, path = "/api/v1/tokens/join", request_body = CreateJoinToken,
    responses((status = 200, body = CreatedJoinToken), (status = 400, body = ApiErrorBody)))]
pub(super) async fn create_join_token(
    State(api): State<Api>,
    body: Result<Json<CreateJoinToken>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<CreatedJoinToken> {
    let req = json_body(body)?;
    let ttl = match &req.ttl {
        None => api.join_token_ttl,
        Some(s) => humantime::parse_duration(s).map_err(|e| {
            ApiError::bad_request(
                "invalid_ttl",
                format!("invalid ttl {s:?} ({e}); write e.g. \"30m\" or \"24h\""),
            )
        })?,
    };
    if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(365 * 86400) {
        return Err(ApiError::bad_request(
            "invalid_ttl",
            "ttl must be between 1s and 365d",
        ));
    }
    let uses = req.uses.unwrap_or(1);
    if uses == 0 || uses > 100_000 {
        return Err(ApiError::bad_request(
            "invalid_uses",
            "uses must be between 1 and 100000",
        ));
    }
    let labels = req.labels.unwrap_or_default();
    if labels.len() > MAX_GRANTED_LABELS {
        return Err(ApiError::bad_request(
            "invalid_label",
            format!(
                "a join token grants at most {MAX_GRANTED_LABELS} labels, not {}",
                labels.len()
            ),
        ));
    }
    for (k, v) in &labels {
        names::check_label(k, v).map_err(|m| ApiError::bad_request("invalid_label", m))?;
    }
    let token = JoinToken::generate(api.identity.ca.fingerprint()).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "random source failed",
        )
    })?;
    let now = now_ms();
    let expires_at = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    api.store
        .insert_join_token(&JoinTokenRow {
            id: token.id.clone(),
            secret_hash: JoinToken::secret_hash(&token.secret),
            created_at: now,
            expires_at,
            uses_allowed: i64::from(uses),
            uses: 0,
            revoked_at: None,
            labels: labels.clone(),
        })
        .await?;
    info!(token = %token.id, uses, ttl = ?ttl, labels = labels.len(), "Join token created.");
    Ok(Json(CreatedJoinToken {
        id: token.id.clone(),
        token: token.to_string(),
        expires_at: rfc3339_ms(expires_at),
        uses_allowed: i64::from(uses),
        labels,
    }))
}

#[utoipa::path(get, path = "/api/v1/tokens/join", responses((status = 200, body = [JoinTokenView])))]
pub(super) async fn list_join_tokens(State(api): State<Api>) -> ApiResult<Vec<JoinTokenView>> {
    let now = now_ms();
    Ok(Json(
        api.store
            .join_tokens()
            .await?
            .into_iter()
            .map(|t| token_view(t, now))
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/api/v1/tokens/join/{id}", params(("id" = String, Path, description = "token id")),
    responses((status = 200, body = JoinTokenView), (status = 404, body = ApiErrorBody)))]
pub(super) async fn revoke_join_token(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> ApiResult<JoinTokenView> {
    let now = now_ms();
    if !api.store.revoke_join_token(&id, now).await? {
        return Err(ApiError::not_found("join token", &id));
    }
    info!(token = %id, "Join token revoked.");
    let t = api
        .store
        .join_tokens()
        .await?
        .into_iter()
        .find(|t| t.id == id);
    t.map(|t| Json(token_view(t, now)))
        .ok_or_else(|| ApiError::not_found("join token", &id))
}
