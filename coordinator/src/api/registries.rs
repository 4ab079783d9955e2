//! Registry credentials: passwords go in and are sealed; they never come out.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use skiff_api_types::EventKind;
use skiff_api_types::*;
use tracing::info;

use super::{Api, ApiError, ApiResult, json_body, rfc3339_ms};
use crate::now_ms;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/registries", get(list_registries))
        .route(
            "/registries/{host}",
            put(set_registry).delete(remove_registry),
        )
}

fn registry_view(r: crate::store::RegistryRow) -> RegistryView {
    RegistryView {
        host: r.host,
        username: r.username,
        created_at: rfc3339_ms(r.created_at),
    }
}

/// The host in a registry route, checked and normalized.
fn registry_host(host: &str) -> Result<String, ApiError> {
    skiff_shared::registry::check_host(host).map_err(|m| ApiError::bad_request("invalid_host", m))
}

#[utoipa::path(put, path = "/api/v1/registries/{host}", request_body = SetRegistry,
    params(("host" = String, Path, description = "registry host: hostname[:port], Docker Hub as docker.io")),
    responses((status = 200, body = RegistryView), (status = 400, body = ApiErrorBody)))]
pub(super) async fn set_registry(
    State(api): State<Api>,
    Path(host): Path<String>,
    body: Result<Json<SetRegistry>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<RegistryView> {
    use crate::registries::RegistryError;
    let req = json_body(body)?;
    let host = registry_host(&host)?;
    let row = crate::registries::set(
        api.store.as_ref(),
        &api.secret_key,
        &host,
        &req.username,
        &req.password,
        now_ms(),
    )
    .await
    .map_err(|e| match e {
        RegistryError::Invalid(m) => ApiError::bad_request("invalid_credentials", m),
        RegistryError::Seal => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "sealing the registry password failed",
        ),
        RegistryError::Store(e) => e.into(),
    })?;
    api.sections.deliveries_changed();
    info!(registry = %row.host, username = %row.username, "Registry credentials set.");
    api.events.emit(
        EventKind::RegistryLogin,
        None,
        None,
        format!("credentials for {} set (user {})", row.host, row.username),
    );
    Ok(Json(registry_view(row)))
}

#[utoipa::path(get, path = "/api/v1/registries", responses((status = 200, body = [RegistryView])))]
pub(super) async fn list_registries(State(api): State<Api>) -> ApiResult<Vec<RegistryView>> {
    Ok(Json(
        api.store
            .registries()
            .await?
            .into_iter()
            .map(registry_view)
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/api/v1/registries/{host}",
    params(("host" = String, Path, description = "registry host")),
    responses((status = 200, body = RegistryView), (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody)))]
pub(super) async fn remove_registry(
    State(api): State<Api>,
    Path(host): Path<String>,
) -> ApiResult<RegistryView> {
    let host = registry_host(&host)?;
    let row = api
        .store
        .remove_registry(&host)
        .await?
        .ok_or_else(|| ApiError::not_found("registry credentials for", &host))?;
    api.sections.deliveries_changed();
    info!(registry = %row.host, "Registry credentials removed.");
    api.events.emit(
        EventKind::RegistryLogout,
        None,
        None,
        format!("credentials for {} removed", row.host),
    );
    Ok(Json(registry_view(row)))
}
