//! Stack secrets: values go in (base64) and are sealed; they never come out.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use skiff_api_types::*;
use tracing::info;

use super::{Api, ApiError, ApiResult, json_body, rfc3339_ms};
use crate::now_ms;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/stacks/{name}/secrets", get(list_secrets))
        .route(
            "/stacks/{name}/secrets/{secret}",
            put(set_secret).delete(remove_secret),
        )
}

fn secret_view(s: crate::store::SecretRow) -> SecretView {
    SecretView {
        name: s.name,
        version: s.version,
        created_at: rfc3339_ms(s.created_at),
    }
}

#[utoipa::path(put, path = "/api/v1/stacks/{name}/secrets/{secret}", request_body = SetSecret,
    params(("name" = String, Path, description = "stack name"), ("secret" = String, Path, description = "secret name")),
    responses((status = 200, body = SecretView), (status = 400, body = ApiErrorBody)))]
pub(super) async fn set_secret(
    State(api): State<Api>,
    Path((name, secret)): Path<(String, String)>,
    body: Result<Json<SetSecret>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<SecretView> {
    use base64::Engine as _;
    let req = json_body(body)?;
    crate::deploy::check_stack_name(&name)
        .map_err(|e| ApiError::bad_request("invalid_name", e.to_string()))?;
    crate::secrets::check_name(&secret).map_err(|m| ApiError::bad_request("invalid_name", m))?;
    let value = base64::engine::general_purpose::STANDARD
        .decode(req.value.trim())
        .map_err(|_| ApiError::bad_request("invalid_value", "the secret value must be base64"))?;
    if value.len() > crate::secrets::MAX_SECRET_BYTES {
        return Err(ApiError::bad_request(
            "invalid_value",
            "a secret may hold at most 512 KiB",
        ));
    }
    let key = &api.secret_key;
    let seal = |version: i64| {
        key.new_version(&crate::secrets::context(&name, &secret, version), &value)
            .ok()
    };
    let row = api
        .store
        .put_secret(&name, &secret, &key.mac(&value), &seal, now_ms())
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "sealing the secret failed",
            )
        })?;
    info!(stack = %name, secret = %secret, version = row.version, "Secret set.");
    Ok(Json(secret_view(row)))
}

#[utoipa::path(get, path = "/api/v1/stacks/{name}/secrets", params(("name" = String, Path, description = "stack name")),
    responses((status = 200, body = [SecretView])))]
pub(super) async fn list_secrets(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> ApiResult<Vec<SecretView>> {
    Ok(Json(
        api.store
            .secrets(&name)
            .await?
            .into_iter()
            .map(secret_view)
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/api/v1/stacks/{name}/secrets/{secret}",
    params(("name" = String, Path, description = "stack name"), ("secret" = String, Path, description = "secret name")),
    responses((status = 200, body = SecretView), (status = 404, body = ApiErrorBody)))]
pub(super) async fn remove_secret(
    State(api): State<Api>,
    Path((name, secret)): Path<(String, String)>,
) -> ApiResult<SecretView> {
    let row = api
        .store
        .secrets(&name)
        .await?
        .into_iter()
        .find(|s| s.name == secret)
        .ok_or_else(|| ApiError::not_found("secret", &secret))?;
    api.store.remove_secret(&name, &secret, now_ms()).await?;
    info!(stack = %name, secret = %secret, "Secret removed.");
    Ok(Json(secret_view(row)))
}
