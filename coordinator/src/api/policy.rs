//! The cluster's container policy: what it refuses by default and what
//! admins allowed per stack. Reading it is open to every API token;
//! changing it is for admins only.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use skiff_api_types::policy::PolicySetting;
use skiff_api_types::*;
use tracing::info;

use super::{Api, ApiError, ApiResult, json_body, rfc3339_ms};
use crate::now_ms;
use crate::store::AllowanceRow;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/policy", get(get_policy))
        .route("/policy/allow", post(allow))
        .route("/policy/revoke", post(revoke))
}

fn allowance_view(a: AllowanceRow) -> PolicyAllowanceView {
    PolicyAllowanceView {
        stack: a.stack,
        setting: a.setting,
        created_at: rfc3339_ms(a.created_at),
    }
}

/// The stack and the settings of a change, checked and normalized.
fn checked(change: &PolicyChange) -> Result<Vec<String>, ApiError> {
    crate::deploy::check_stack_name(&change.stack)
        .map_err(|e| ApiError::bad_request("invalid_name", e.to_string()))?;
    if change.settings.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_setting",
            format!(
                "no settings given; name one or more of {}",
                skiff_api_types::policy::SETTINGS_HELP
            ),
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for s in &change.settings {
        let setting = s
            .parse::<PolicySetting>()
            .map_err(|m| ApiError::bad_request("invalid_setting", m))?
            .to_string();
        if !out.contains(&setting) {
            out.push(setting);
        }
    }
    Ok(out)
}

async fn stack_view(api: &Api, stack: &str) -> ApiResult<Vec<PolicyAllowanceView>> {
    Ok(Json(
        api.store
            .stack_allowances(stack)
            .await?
            .into_iter()
            .map(allowance_view)
            .collect(),
    ))
}

/// The policy: what it refuses by default, and every stack's allowances.
/// Any API token may read it.
#[utoipa::path(get, path = "/api/v1/policy", responses((status = 200, body = PolicyView)))]
pub(super) async fn get_policy(State(api): State<Api>) -> ApiResult<PolicyView> {
    Ok(Json(PolicyView {
        refused_by_default: crate::policy::rules(),
        allowances: api
            .store
            .allowances()
            .await?
            .into_iter()
            .map(allowance_view)
            .collect(),
    }))
}

/// Allows settings for a stack's containers; answers the stack's
/// allowances. Admins only: it changes what every container of the stack
/// may do on its server. Takes effect at the stack's next deploy,
/// rollback or scale.
#[utoipa::path(post, path = "/api/v1/policy/allow", request_body = PolicyChange,
    responses((status = 200, body = [PolicyAllowanceView]), (status = 400, body = ApiErrorBody)))]
pub(super) async fn allow(
    State(api): State<Api>,
    body: Result<Json<PolicyChange>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Vec<PolicyAllowanceView>> {
    let change = json_body(body)?;
    let settings = checked(&change)?;
    api.store.allow(&change.stack, &settings, now_ms()).await?;
    let list = settings.join(", ");
    info!(stack = %change.stack, settings = %list, "Container policy settings allowed.");
    api.events.emit(
        EventKind::Policy,
        Some(&change.stack),
        None,
        format!("allowed {list}"),
    );
    stack_view(&api, &change.stack).await
}

/// Revokes settings for a stack, all or none; answers the stack's
/// allowances. Admins only. Running containers keep running; the stack's
/// next deploy, rollback or scale is checked without them.
#[utoipa::path(post, path = "/api/v1/policy/revoke", request_body = PolicyChange,
    responses((status = 200, body = [PolicyAllowanceView]), (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody)))]
pub(super) async fn revoke(
    State(api): State<Api>,
    body: Result<Json<PolicyChange>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Vec<PolicyAllowanceView>> {
    let change = json_body(body)?;
    let settings = checked(&change)?;
    let missing = api.store.revoke(&change.stack, &settings).await?;
    if !missing.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "stack {} is not allowed {}, so nothing was revoked; see `skiff policy show {}`",
                change.stack,
                missing.join(", "),
                change.stack
            ),
        ));
    }
    let list = settings.join(", ");
    info!(stack = %change.stack, settings = %list, "Container policy settings revoked.");
    api.events.emit(
        EventKind::Policy,
        Some(&change.stack),
        None,
        format!("revoked {list}"),
    );
    stack_view(&api, &change.stack).await
}
