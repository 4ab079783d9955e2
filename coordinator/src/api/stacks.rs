//! Stacks: deploys, their replicas, releases, rollbacks, scaling, removal.

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Extension, Json};
use skiff_api_types::*;
use skiff_shared::workload::ContainerState;

use super::{Api, ApiError, ApiResult, Caller, json_body, rfc3339_ms};

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/stacks", get(list_stacks))
        .route("/stacks/{name}", get(get_stack).delete(remove_stack))
        .route("/stacks/{name}/rollback", post(rollback_stack))
        .route(
            "/stacks/{name}/services/{service}/scale",
            post(scale_service),
        )
        .route("/stacks/{name}/deploy", post(deploy_stack))
        .route("/stacks/{name}/tasks", get(stack_tasks))
        .route("/stacks/{name}/releases", get(stack_releases))
}

/// Parses the request's Compose file here, checks it, and records and rolls
/// out a new release (or, with `dry_run`, only says what would change).
#[utoipa::path(post, path = "/api/v1/stacks/{name}/deploy", request_body = DeployRequest,
    params(("name" = String, Path, description = "stack name")),
    responses((status = 200, body = DeployView), (status = 400, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub(super) async fn deploy_stack(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Result<Json<DeployRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<DeployView> {
    let req = json_body(body)?;
    if req.stack.is_some() {
        return Err(ApiError::bad_request(
            "outdated_client",
            format!(
                "this request carries a parsed stack, which the coordinator no longer accepts: it parses and checks the Compose file itself; upgrade skiff to {} and deploy again",
                env!("CARGO_PKG_VERSION")
            ),
        ));
    }
    let stack = crate::compose::parse(&req.compose, &req.inputs)
        .map_err(|errors| ApiError::bad_request("invalid_stack", errors.join("\n")))?;
    let outcome =
        crate::deploy::deploy(&api.deployer, &name, &stack, &req.compose, req.dry_run).await?;
    Ok(Json(deploy_view(outcome)))
}

fn task_view(t: crate::deploy::Task) -> TaskView {
    let o = t.observed;
    TaskView {
        name: t.container,
        service: t.service,
        slot: t.slot,
        node: t.node,
        node_id: t.node_id,
        image: t.image,
        state: o
            .as_ref()
            .map_or_else(|| "pending".to_owned(), |o| o.state.to_string()),
        health: o.as_ref().and_then(|o| o.health.map(|h| h.to_string())),
        restart_count: o.as_ref().map_or(0, |o| o.restart_count),
        exit_code: o.as_ref().and_then(|o| o.exit_code),
        addresses: o
            .as_ref()
            .map(|o| super::network::address_views(&o.addresses))
            .unwrap_or_default(),
        ips: o.map(|o| o.ips).unwrap_or_default(),
        up_to_date: t.up_to_date,
        error: t.error,
        serving: t.serving,
    }
}

#[utoipa::path(get, path = "/api/v1/stacks/{name}/tasks", params(("name" = String, Path, description = "stack name")),
    responses((status = 200, body = [TaskView]), (status = 404, body = ApiErrorBody)))]
pub(super) async fn stack_tasks(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> ApiResult<Vec<TaskView>> {
    Ok(Json(
        crate::deploy::tasks(&api.deployer, &name)
            .await?
            .into_iter()
            .map(task_view)
            .collect(),
    ))
}

pub(super) async fn stack_view(
    api: &Api,
    s: crate::store::StackRow,
) -> Result<StackView, ApiError> {
    let tasks = match crate::deploy::tasks(&api.deployer, &s.name).await {
        Ok(tasks) => tasks,
        // Removed since it was listed.
        Err(crate::deploy::DeployError::NoStack(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let rollout = api.deployer.rollouts.get(&s.name).map(|r| RolloutView {
        release: r.release,
        state: r.state.as_str().to_owned(),
        message: r.message,
        replaced: r.replaced,
        total: r.total,
    });
    let slots: std::collections::BTreeSet<(String, u32, String)> = tasks
        .iter()
        .map(|t| (t.service.clone(), t.slot, t.node_id.clone()))
        .collect();
    Ok(StackView {
        desired: slots.len(),
        running: tasks
            .iter()
            .filter(|t| {
                t.up_to_date
                    && t.observed
                        .as_ref()
                        .is_some_and(|o| o.state == ContainerState::Running)
            })
            .count(),
        name: s.name,
        release: s.current_release,
        created_at: rfc3339_ms(s.created_at),
        updated_at: rfc3339_ms(s.updated_at),
        rollout,
    })
}

#[utoipa::path(get, path = "/api/v1/stacks", responses((status = 200, body = [StackView])))]
pub(super) async fn list_stacks(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Vec<StackView>> {
    let mut out = Vec::new();
    for s in api.store.stacks().await? {
        if caller.covers(&s.name) {
            out.push(stack_view(&api, s).await?);
        }
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/api/v1/stacks/{name}", params(("name" = String, Path, description = "stack name")),
    responses((status = 200, body = StackView), (status = 404, body = ApiErrorBody)))]
pub(super) async fn get_stack(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> ApiResult<StackView> {
    let s = crate::deploy::find_stack(&api.deployer, &name).await?;
    Ok(Json(stack_view(&api, s).await?))
}

fn deploy_view(outcome: crate::deploy::Outcome) -> DeployView {
    let steps = outcome
        .steps
        .into_iter()
        .map(|s| match s {
            crate::deploy::Step::Start { container, node } => StepView {
                action: "start".into(),
                container,
                node,
                reason: None,
            },
            crate::deploy::Step::Replace { container, node } => StepView {
                action: "replace".into(),
                container,
                node,
                reason: None,
            },
            crate::deploy::Step::Stop {
                container,
                node,
                reason,
            } => StepView {
                action: "stop".into(),
                container,
                node,
                reason: Some(reason),
            },
        })
        .collect();
    DeployView {
        release: outcome.release,
        steps,
        warnings: outcome.warnings,
    }
}

#[utoipa::path(post, path = "/api/v1/stacks/{name}/rollback", request_body = RollbackRequest,
    params(("name" = String, Path, description = "stack name")),
    responses((status = 200, body = DeployView), (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub(super) async fn rollback_stack(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Result<Json<RollbackRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<DeployView> {
    let req = json_body(body)?;
    Ok(Json(deploy_view(
        crate::deploy::rollback(&api.deployer, &name, req.to).await?,
    )))
}

#[utoipa::path(post, path = "/api/v1/stacks/{name}/services/{service}/scale", request_body = ScaleRequest,
    params(("name" = String, Path, description = "stack name"), ("service" = String, Path, description = "service name")),
    responses((status = 200, body = DeployView), (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
pub(super) async fn scale_service(
    State(api): State<Api>,
    Path((name, service)): Path<(String, String)>,
    body: Result<Json<ScaleRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<DeployView> {
    let req = json_body(body)?;
    Ok(Json(deploy_view(
        crate::deploy::scale(&api.deployer, &name, &service, req.replicas).await?,
    )))
}

#[utoipa::path(delete, path = "/api/v1/stacks/{name}", params(("name" = String, Path, description = "stack name")),
    responses((status = 200, body = StackView), (status = 404, body = ApiErrorBody)))]
pub(super) async fn remove_stack(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> ApiResult<StackView> {
    let stack = crate::deploy::find_stack(&api.deployer, &name).await?;
    crate::deploy::remove(&api.deployer, &name).await?;
    Ok(Json(StackView {
        name: stack.name,
        release: stack.current_release,
        created_at: rfc3339_ms(stack.created_at),
        updated_at: rfc3339_ms(stack.updated_at),
        desired: 0,
        running: 0,
        rollout: None,
    }))
}

#[utoipa::path(get, path = "/api/v1/stacks/{name}/releases", params(("name" = String, Path, description = "stack name")),
    responses((status = 200, body = [ReleaseView]), (status = 404, body = ApiErrorBody)))]
pub(super) async fn stack_releases(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> ApiResult<Vec<ReleaseView>> {
    let current = api
        .store
        .stacks()
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| s.current_release);
    let releases = api.store.releases(&name).await?;
    if releases.is_empty() {
        return Err(ApiError::not_found("stack", &name));
    }
    Ok(Json(
        releases
            .into_iter()
            .map(|r| {
                let defs = crate::deploy::defs_of(&r)?;
                Ok(ReleaseView {
                    number: r.number,
                    created_at: rfc3339_ms(r.created_at),
                    current: Some(r.number) == current,
                    status: r.status.as_str().to_owned(),
                    message: r.message,
                    images: defs
                        .into_iter()
                        .map(|d| (d.name, d.template.image))
                        .collect(),
                })
            })
            .collect::<Result<_, ApiError>>()?,
    ))
}
