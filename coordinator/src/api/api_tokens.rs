//! API tokens: created with a role, limited to stacks and a lifetime if
//! asked (the token is shown once), listed, revoked; and `POST /login`,
//! which says who a token is and replaces the initial admin token.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use skiff_api_types::*;
use tracing::{info, warn};

use super::{Api, ApiError, ApiResult, Caller, json_body, rfc3339_ms};
use crate::auth::{ApiTokenSecret, INITIAL_TOKEN_NAME};
use crate::now_ms;
use crate::store::ApiToken;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/tokens/api", get(list_api_tokens).post(create_api_token))
        .route("/tokens/api/{id}", delete(revoke_api_token))
        .route("/login", post(login))
}

/// The longest name a token may have.
const MAX_NAME: usize = 64;

fn view(t: ApiToken, now: i64) -> ApiTokenView {
    let status = if t.revoked_at.is_some() {
        ApiTokenStatus::Revoked
    } else if t.expires_at.is_some_and(|at| at <= now) {
        ApiTokenStatus::Expired
    } else {
        ApiTokenStatus::Active
    };
    ApiTokenView {
        id: t.id,
        name: t.name,
        role: t.role,
        stacks: t.stacks,
        status,
        created_at: rfc3339_ms(t.created_at),
        expires_at: t.expires_at.map(rfc3339_ms),
        last_used_at: t.last_used_at.map(rfc3339_ms),
    }
}

/// Makes and stores a new token; returns it with its row.
async fn issue(
    api: &Api,
    name: String,
    role: ApiRole,
    stacks: Vec<String>,
    expires_at: Option<i64>,
) -> Result<(ApiTokenSecret, ApiToken), ApiError> {
    let secret = ApiTokenSecret::generate().map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "random source failed",
        )
    })?;
    let row = ApiToken {
        id: secret.id.clone(),
        name,
        secret_hash: secret.hash(),
        role,
        stacks,
        created_at: now_ms(),
        expires_at,
        revoked_at: None,
        last_used_at: None,
    };
    api.store.insert_api_token(&row).await?;
    Ok((secret, row))
}

#[utoipa::path(post, path = "/api/v1/tokens/api", request_body = CreateApiToken,
    responses((status = 200, body = CreatedApiToken), (status = 400, body = ApiErrorBody), (status = 403, body = ApiErrorBody)))]
pub(super) async fn create_api_token(
    State(api): State<Api>,
    body: Result<Json<CreateApiToken>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<CreatedApiToken> {
    let req = json_body(body)?;
    let bad = |code, message: String| Err(ApiError::bad_request(code, message));
    let name = req.name.unwrap_or_else(|| format!("{} token", req.role));
    if name.trim().is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return bad(
            "invalid_name",
            format!("a token's name has 1-{MAX_NAME} printable characters"),
        );
    }
    if req.role == ApiRole::Admin && !req.stacks.is_empty() {
        return bad(
            "invalid_stacks",
            "an admin token covers every stack; limit a deployer or viewer token to stacks instead"
                .into(),
        );
    }
    for stack in &req.stacks {
        crate::deploy::check_stack_name(stack)
            .map_err(|e| ApiError::bad_request("invalid_stacks", e.to_string()))?;
    }
    let mut stacks = req.stacks;
    stacks.sort();
    stacks.dedup();
    let expires_at = match &req.ttl {
        None => None,
        Some(s) => {
            let ttl = humantime::parse_duration(s).map_err(|e| {
                ApiError::bad_request(
                    "invalid_ttl",
                    format!("invalid ttl {s:?} ({e}); write e.g. \"12h\" or \"90d\""),
                )
            })?;
            if ttl < Duration::from_secs(60) || ttl > Duration::from_secs(10 * 365 * 86400) {
                return bad("invalid_ttl", "ttl must be between 1m and 3650d".into());
            }
            Some(now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)))
        }
    };
    let (secret, row) = issue(&api, name, req.role, stacks, expires_at).await?;
    info!(token = %row.id, role = %row.role, stacks = ?row.stacks, "API token created.");
    Ok(Json(CreatedApiToken {
        id: row.id,
        token: secret.to_string(),
        role: row.role,
        stacks: row.stacks,
        expires_at: row.expires_at.map(rfc3339_ms),
    }))
}

#[utoipa::path(get, path = "/api/v1/tokens/api", responses((status = 200, body = [ApiTokenView])))]
pub(super) async fn list_api_tokens(State(api): State<Api>) -> ApiResult<Vec<ApiTokenView>> {
    let now = now_ms();
    Ok(Json(
        api.store
            .api_tokens()
            .await?
            .into_iter()
            .map(|t| view(t, now))
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/api/v1/tokens/api/{id}", params(("id" = String, Path, description = "token id")),
    responses((status = 200, body = ApiTokenView), (status = 404, body = ApiErrorBody)))]
pub(super) async fn revoke_api_token(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> ApiResult<ApiTokenView> {
    let now = now_ms();
    if !api.store.revoke_api_token(&id, now).await? {
        return Err(ApiError::not_found("live API token", &id));
    }
    info!(token = %id, "API token revoked.");
    let t = api.store.api_token(&id).await?;
    t.map(|t| Json(view(t, now)))
        .ok_or_else(|| ApiError::not_found("API token", &id))
}

/// Says who the token is. The coordinator's initial admin token is
/// replaced at the first login: a new admin token is made and returned,
/// the initial one revoked, and its file removed from the data dir.
#[utoipa::path(post, path = "/api/v1/login", responses((status = 200, body = LoginView)))]
pub(super) async fn login(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<LoginView> {
    let mut view = LoginView {
        cluster_id: api.identity.cluster_id.clone(),
        token_id: caller.token_id.clone(),
        role: caller.role,
        stacks: caller.stacks.clone(),
        rotated_token: None,
    };
    if caller.name != INITIAL_TOKEN_NAME {
        return Ok(Json(view));
    }
    let (secret, row) = issue(
        &api,
        "admin (replaced the initial token)".into(),
        ApiRole::Admin,
        Vec::new(),
        None,
    )
    .await?;
    api.store
        .revoke_api_token(&caller.token_id, now_ms())
        .await?;
    match std::fs::remove_file(&api.initial_token_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            warn!(path = %api.initial_token_file.display(), error = %e, "Removing the initial admin token's file failed.");
        }
        _ => {}
    }
    info!(old = %caller.token_id, new = %row.id, "The initial admin token was replaced and its file removed.");
    view.token_id = row.id;
    view.rotated_token = Some(secret.to_string());
    Ok(Json(view))
}
