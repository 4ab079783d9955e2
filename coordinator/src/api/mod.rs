//! The HTTP API under `/api/v1`: JSON in and out, a bearer token on every
//! route except `/healthz`, errors as [`skiff_api_types::ApiErrorBody`], and the
//! OpenAPI document at `/api/v1/openapi.json`.

use skiff_api_types::EventKind;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use skiff_api_types::*;
use skiff_shared::join::{JoinToken, names};
use skiff_shared::workload::ContainerState;
use tracing::{info, warn};
use utoipa::OpenApi;

use crate::auth::{ApiTokenSecret, same_digest};
use crate::state::{AppState, now_ms};
use crate::store::{JoinTokenRow, NodeRow, StoreError};

/// An API error: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} {id:?}"),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        warn!(error = %e, "API request failed on the store.");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "coordinator store is unavailable; retry",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ApiErrorBody {
                code: self.code.to_owned(),
                message: self.message,
            }),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

#[derive(OpenApi)]
#[openapi(
    info(title = "Skiff coordinator API", description = "Cluster state, join tokens and nodes."),
    paths(cluster, list_nodes, get_node, remove_node, label_node, node_containers,
        events, list_secrets, set_secret, remove_secret, list_stacks, get_stack, remove_stack, deploy_stack, stack_tasks, stack_releases, rollback_stack, scale_service, create_join_token, list_join_tokens, revoke_join_token,
        list_registries, set_registry, remove_registry),
    components(schemas(ApiErrorBody, NodeView, NodeStatus, HostView, DiskView, CreateJoinToken, CreatedJoinToken,
        JoinTokenView, JoinTokenStatus, LabelChange, ClusterView, ContainerView, NodeContainersView,
        DeployRequest, DeployView, StepView, StackView, ReleaseView, TaskView, RolloutView, RollbackRequest, ScaleRequest, Event, SetSecret, SecretView,
        SetRegistry, RegistryView)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .route("/cluster", get(cluster))
        .route("/nodes", get(list_nodes))
        .route("/nodes/{id}", get(get_node).delete(remove_node))
        .route("/nodes/{id}/labels", patch(label_node))
        .route("/nodes/{id}/containers", get(node_containers))
        .route(
            "/tokens/join",
            get(list_join_tokens).post(create_join_token),
        )
        .route("/tokens/join/{id}", delete(revoke_join_token))
        .route("/events", get(events))
        .route("/stacks", get(list_stacks))
        .route("/stacks/{name}/secrets", get(list_secrets))
        .route(
            "/stacks/{name}/secrets/{secret}",
            axum::routing::put(set_secret).delete(remove_secret),
        )
        .route("/stacks/{name}", get(get_stack).delete(remove_stack))
        .route("/stacks/{name}/rollback", post(rollback_stack))
        .route(
            "/stacks/{name}/services/{service}/scale",
            post(scale_service),
        )
        .route("/stacks/{name}/deploy", post(deploy_stack))
        .route("/stacks/{name}/tasks", get(stack_tasks))
        .route("/stacks/{name}/releases", get(stack_releases))
        .route("/registries", get(list_registries))
        .route(
            "/registries/{host}",
            axum::routing::put(set_registry).delete(remove_registry),
        )
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API route")
        })
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .nest("/api/v1", api)
        .with_state(state)
}

/// Refuses any request without a valid, unrevoked API token.
async fn require_token(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let unauthorized = |message: &str| {
        let mut r =
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        r
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(ApiTokenSecret::parse);
    let Some(presented) = presented else {
        return unauthorized("missing or malformed API token; pass --token or set SKIFF_TOKEN");
    };
    match state.store.api_token(&presented.id).await {
        Ok(Some(t)) if t.revoked_at.is_none() && same_digest(&t.secret_hash, &presented.hash()) => {
            next.run(req).await
        }
        Ok(_) => unauthorized("API token is unknown or revoked"),
        Err(e) => ApiError::from(e).into_response(),
    }
}

pub fn rfc3339_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn node_view(state: &AppState, n: NodeRow) -> NodeView {
    let session = state.sessions.get(&n.id);
    let status = if session.is_some() {
        NodeStatus::Connected
    } else {
        NodeStatus::Disconnected
    };
    let last_seen_at = if session.is_some() {
        Some(now_ms())
    } else {
        n.last_seen_at
    };
    let f = n.facts;
    NodeView {
        connected_since: session.map(|s| rfc3339_ms(i64::try_from(s.connected_at_ms).unwrap_or(0))),
        last_seen_at: last_seen_at.map(rfc3339_ms),
        joined_at: rfc3339_ms(n.joined_at),
        status,
        id: n.id,
        name: n.name,
        labels: n.labels,
        agent_version: n.agent_version,
        docker_version: f.docker_version,
        docker_api_version: f.docker_api_version,
        addresses: f.addresses,
        remote_addr: n.remote_addr,
        host: HostView {
            hostname: f.hostname,
            os: f.os,
            kernel: f.kernel,
            arch: f.arch,
            cpus: f.cpus,
            memory_bytes: f.memory_bytes,
            disks: f
                .disks
                .into_iter()
                .map(|d| DiskView {
                    mount: d.mount,
                    filesystem: d.filesystem,
                    total_bytes: d.total_bytes,
                    available_bytes: d.available_bytes,
                })
                .collect(),
        },
        certificate_expires_at: rfc3339_ms(n.cert_not_after),
        plan_generation: n.plan_generation,
        plan_error: n.plan_error,
    }
}

/// Finds a live node by id or by name.
async fn find_node(state: &AppState, key: &str) -> Result<NodeRow, ApiError> {
    if let Some(n) = state.store.node(key).await?
        && n.removed_at.is_none()
    {
        return Ok(n);
    }
    state
        .store
        .nodes(false)
        .await?
        .into_iter()
        .find(|n| n.name == key)
        .ok_or_else(|| ApiError::not_found("node", key))
}

#[utoipa::path(get, path = "/api/v1/cluster", responses((status = 200, body = ClusterView)))]
async fn cluster(State(state): State<Arc<AppState>>) -> ApiResult<ClusterView> {
    Ok(Json(ClusterView {
        cluster_id: state.identity.cluster_id.clone(),
        ca_fingerprint: hex::encode(state.identity.ca.fingerprint()),
        version: skiff_shared::VERSION.to_owned(),
        nodes_connected: state.sessions.len(),
    }))
}

#[utoipa::path(get, path = "/api/v1/nodes", responses((status = 200, body = [NodeView])))]
async fn list_nodes(State(state): State<Arc<AppState>>) -> ApiResult<Vec<NodeView>> {
    let nodes = state.store.nodes(false).await?;
    Ok(Json(
        nodes.into_iter().map(|n| node_view(&state, n)).collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}", params(("id" = String, Path, description = "node id or name")),
    responses((status = 200, body = NodeView), (status = 404, body = ApiErrorBody)))]
async fn get_node(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<NodeView> {
    let node = find_node(&state, &id).await?;
    Ok(Json(node_view(&state, node)))
}

#[utoipa::path(delete, path = "/api/v1/nodes/{id}", params(("id" = String, Path, description = "node id or name")),
    responses((status = 200, body = NodeView), (status = 404, body = ApiErrorBody)))]
async fn remove_node(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<NodeView> {
    let node = find_node(&state, &id).await?;
    // Deny first, then close: a reconnect racing the removal is refused at TLS.
    if let Ok(mut revoked) = state.revoked.write() {
        revoked.insert(node.id.clone());
    }
    state.store.remove_node(&node.id, now_ms()).await?;
    state.sessions.close(&node.id);
    info!(node = %node.id, name = %node.name, "Node removed; its certificate is revoked.");
    state.events.emit(
        EventKind::NodeRemoved,
        None,
        Some(&node.id),
        format!("{} removed; its certificate is revoked", node.name),
    );
    let mut view = node_view(&state, node);
    view.status = NodeStatus::Disconnected;
    view.connected_since = None;
    Ok(Json(view))
}

#[utoipa::path(patch, path = "/api/v1/nodes/{id}/labels", request_body = LabelChange,
    params(("id" = String, Path, description = "node id or name")),
    responses((status = 200, body = NodeView), (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody)))]
async fn label_node(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Result<Json<LabelChange>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<NodeView> {
    let Json(change) = body.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    for (k, v) in &change.set {
        names::check_label(k, v).map_err(|m| ApiError::bad_request("invalid_label", m))?;
    }
    for k in &change.remove {
        names::check_label(k, "").map_err(|m| ApiError::bad_request("invalid_label", m))?;
    }
    let mut node = find_node(&state, &id).await?;
    let mut labels: BTreeMap<String, String> = node.labels.clone();
    for k in &change.remove {
        labels.remove(k);
    }
    labels.extend(change.set);
    if !state.store.set_node_labels(&node.id, &labels).await? {
        return Err(ApiError::not_found("node", &id));
    }
    node.labels = labels;
    Ok(Json(node_view(&state, node)))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}/containers", params(("id" = String, Path, description = "node id or name")),
    responses((status = 200, body = NodeContainersView), (status = 404, body = ApiErrorBody)))]
async fn node_containers(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<NodeContainersView> {
    let node = find_node(&state, &id).await?;
    let report = state.observed.get(&node.id);
    let (reported_at, plan_generation, error, containers) = match report {
        Some((at, o)) => (
            Some(rfc3339_ms(i64::try_from(at).unwrap_or(0))),
            Some(o.plan_generation),
            o.error.clone(),
            o.containers
                .iter()
                .map(|c| ContainerView {
                    name: c.name.clone(),
                    id: c.id.clone(),
                    state: c.state.to_string(),
                    health: c.health.map(|h| h.to_string()),
                    restart_count: c.restart_count,
                    started_at: c.started_at.clone(),
                    exit_code: c.exit_code,
                    ips: c.ips.clone(),
                    image_id: c.image_id.clone(),
                })
                .collect(),
        ),
        None => (None, None, None, Vec::new()),
    };
    Ok(Json(NodeContainersView {
        node_id: node.id,
        reported_at,
        plan_generation,
        error,
        containers,
    }))
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
    }
}

#[utoipa::path(post, path = "/api/v1/tokens/join", request_body = CreateJoinToken,
    responses((status = 200, body = CreatedJoinToken), (status = 400, body = ApiErrorBody)))]
async fn create_join_token(
    State(state): State<Arc<AppState>>,
    body: Result<Json<CreateJoinToken>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<CreatedJoinToken> {
    let Json(req) = body.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let ttl = match &req.ttl {
        None => state.config.join_token_ttl,
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
    let token = JoinToken::generate(state.identity.ca.fingerprint()).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "random source failed",
        )
    })?;
    let now = now_ms();
    let expires_at = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    state
        .store
        .insert_join_token(&JoinTokenRow {
            id: token.id.clone(),
            secret_hash: JoinToken::secret_hash(&token.secret),
            created_at: now,
            expires_at,
            uses_allowed: i64::from(uses),
            uses: 0,
            revoked_at: None,
        })
        .await?;
    info!(token = %token.id, uses, ttl = ?ttl, "Join token created.");
    Ok(Json(CreatedJoinToken {
        id: token.id.clone(),
        token: token.to_string(),
        expires_at: rfc3339_ms(expires_at),
        uses_allowed: i64::from(uses),
    }))
}

#[utoipa::path(get, path = "/api/v1/tokens/join", responses((status = 200, body = [JoinTokenView])))]
async fn list_join_tokens(State(state): State<Arc<AppState>>) -> ApiResult<Vec<JoinTokenView>> {
    let now = now_ms();
    Ok(Json(
        state
            .store
            .join_tokens()
            .await?
            .into_iter()
            .map(|t| token_view(t, now))
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/api/v1/tokens/join/{id}", params(("id" = String, Path, description = "token id")),
    responses((status = 200, body = JoinTokenView), (status = 404, body = ApiErrorBody)))]
async fn revoke_join_token(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<JoinTokenView> {
    let now = now_ms();
    if !state.store.revoke_join_token(&id, now).await? {
        return Err(ApiError::not_found("join token", &id));
    }
    info!(token = %id, "Join token revoked.");
    let t = state
        .store
        .join_tokens()
        .await?
        .into_iter()
        .find(|t| t.id == id);
    t.map(|t| Json(token_view(t, now)))
        .ok_or_else(|| ApiError::not_found("join token", &id))
}

impl From<crate::deploy::DeployError> for ApiError {
    fn from(e: crate::deploy::DeployError) -> Self {
        use crate::deploy::DeployError as E;
        match e {
            E::Name(_) => Self::bad_request("invalid_name", e.to_string()),
            E::Invalid(_) => Self::bad_request("invalid_stack", e.to_string()),
            E::Placement(_) => Self::new(StatusCode::CONFLICT, "unplaceable", e.to_string()),
            E::NoStack(ref name) => Self::not_found("stack", name),
            E::Store(s) => s.into(),
            E::Encode(_) => {
                warn!(error = %e, "A deploy failed to encode its plans.");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }
}

#[utoipa::path(post, path = "/api/v1/stacks/{name}/deploy", request_body = DeployRequest,
    params(("name" = String, Path, description = "stack name")),
    responses((status = 200, body = DeployView), (status = 400, body = ApiErrorBody), (status = 409, body = ApiErrorBody)))]
async fn deploy_stack(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Result<Json<DeployRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<DeployView> {
    let Json(req) = body.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let stack: skiff_compose::stack::Stack = serde_json::from_value(req.stack).map_err(|e| {
        ApiError::bad_request("invalid_stack", format!("the stack model is invalid: {e}"))
    })?;
    let outcome = crate::deploy::deploy(&state, &name, &stack, &req.compose, req.dry_run).await?;
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
        ips: o.map(|o| o.ips).unwrap_or_default(),
        up_to_date: t.up_to_date,
        error: t.error,
    }
}

#[utoipa::path(get, path = "/api/v1/stacks/{name}/tasks", params(("name" = String, Path, description = "stack name")),
    responses((status = 200, body = [TaskView]), (status = 404, body = ApiErrorBody)))]
async fn stack_tasks(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<Vec<TaskView>> {
    Ok(Json(
        crate::deploy::tasks(&state, &name)
            .await?
            .into_iter()
            .map(task_view)
            .collect(),
    ))
}

async fn stack_view(state: &AppState, s: crate::store::StackRow) -> StackView {
    let tasks = crate::deploy::tasks(state, &s.name)
        .await
        .unwrap_or_default();
    let rollout = state.rollouts.get(&s.name).map(|r| RolloutView {
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
    StackView {
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
    }
}

#[utoipa::path(get, path = "/api/v1/stacks", responses((status = 200, body = [StackView])))]
async fn list_stacks(State(state): State<Arc<AppState>>) -> ApiResult<Vec<StackView>> {
    let mut out = Vec::new();
    for s in state.store.stacks().await? {
        out.push(stack_view(&state, s).await);
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/api/v1/stacks/{name}", params(("name" = String, Path, description = "stack name")),
    responses((status = 200, body = StackView), (status = 404, body = ApiErrorBody)))]
async fn get_stack(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<StackView> {
    let s = crate::deploy::find_stack(&state, &name).await?;
    Ok(Json(stack_view(&state, s).await))
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
    responses((status = 200, body = DeployView), (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody)))]
async fn rollback_stack(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Result<Json<RollbackRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<DeployView> {
    let Json(req) = body.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    Ok(Json(deploy_view(
        crate::deploy::rollback(&state, &name, req.to).await?,
    )))
}

#[utoipa::path(post, path = "/api/v1/stacks/{name}/services/{service}/scale", request_body = ScaleRequest,
    params(("name" = String, Path, description = "stack name"), ("service" = String, Path, description = "service name")),
    responses((status = 200, body = DeployView), (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody)))]
async fn scale_service(
    State(state): State<Arc<AppState>>,
    Path((name, service)): Path<(String, String)>,
    body: Result<Json<ScaleRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<DeployView> {
    let Json(req) = body.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    Ok(Json(deploy_view(
        crate::deploy::scale(&state, &name, &service, req.replicas).await?,
    )))
}

#[utoipa::path(delete, path = "/api/v1/stacks/{name}", params(("name" = String, Path, description = "stack name")),
    responses((status = 200, body = StackView), (status = 404, body = ApiErrorBody)))]
async fn remove_stack(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<StackView> {
    let stack = crate::deploy::find_stack(&state, &name).await?;
    crate::deploy::remove(&state, &name).await?;
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
async fn stack_releases(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<Vec<ReleaseView>> {
    let current = state
        .store
        .stacks()
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| s.current_release);
    let releases = state.store.releases(&name).await?;
    if releases.is_empty() {
        return Err(ApiError::not_found("stack", &name));
    }
    Ok(Json(
        releases
            .into_iter()
            .map(|r| {
                let defs: Vec<crate::deploy::resolve::ServiceDef> =
                    serde_json::from_str(&r.services).unwrap_or_default();
                ReleaseView {
                    number: r.number,
                    created_at: rfc3339_ms(r.created_at),
                    current: Some(r.number) == current,
                    status: r.status.as_str().to_owned(),
                    message: r.message,
                    images: defs
                        .into_iter()
                        .map(|d| (d.name, d.template.image))
                        .collect(),
                }
            })
            .collect(),
    ))
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
async fn events(
    State(state): State<Arc<AppState>>,
    query: Result<axum::extract::Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let (past, rx) = state.events.subscribe();
    let wanted = move |e: &Event| q.stack.as_ref().is_none_or(|s| e.stack.as_ref() == Some(s));
    let past: Vec<Event> = past.into_iter().filter(|e| wanted(e)).collect();
    if !q.follow {
        return Ok(Json(past).into_response());
    }
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    use futures_util::StreamExt;
    let to_sse = |e: &Event| SseEvent::default().data(serde_json::to_string(e).unwrap_or_default());
    let history = futures_util::stream::iter(past.iter().map(to_sse).collect::<Vec<_>>());
    let shutdown = state.shutdown.clone();
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
    let stream = history.chain(live).map(Ok::<_, std::convert::Infallible>);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
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
async fn set_secret(
    State(state): State<Arc<AppState>>,
    Path((name, secret)): Path<(String, String)>,
    body: Result<Json<SetSecret>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<SecretView> {
    use base64::Engine as _;
    let Json(req) = body.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
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
    let digest = hex::encode(skiff_shared::sha256(&value));
    let key = &state.secret_key;
    let seal = |version: i64| {
        key.seal(&crate::secrets::context(&name, &secret, version), &value)
            .ok()
    };
    let row = state
        .store
        .put_secret(&name, &secret, &digest, &seal, now_ms())
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
async fn list_secrets(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<Vec<SecretView>> {
    Ok(Json(
        state
            .store
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
async fn remove_secret(
    State(state): State<Arc<AppState>>,
    Path((name, secret)): Path<(String, String)>,
) -> ApiResult<SecretView> {
    let row = state
        .store
        .secrets(&name)
        .await?
        .into_iter()
        .find(|s| s.name == secret)
        .ok_or_else(|| ApiError::not_found("secret", &secret))?;
    state.store.remove_secret(&name, &secret, now_ms()).await?;
    info!(stack = %name, secret = %secret, "Secret removed.");
    Ok(Json(secret_view(row)))
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
async fn set_registry(
    State(state): State<Arc<AppState>>,
    Path(host): Path<String>,
    body: Result<Json<SetRegistry>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<RegistryView> {
    use crate::registries::RegistryError;
    let Json(req) = body.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let host = registry_host(&host)?;
    let row = crate::registries::set(
        state.store.as_ref(),
        &state.secret_key,
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
    state.plans.sections().deliveries_changed();
    info!(registry = %row.host, username = %row.username, "Registry credentials set.");
    state.events.emit(
        EventKind::RegistryLogin,
        None,
        None,
        format!("credentials for {} set (user {})", row.host, row.username),
    );
    Ok(Json(registry_view(row)))
}

#[utoipa::path(get, path = "/api/v1/registries", responses((status = 200, body = [RegistryView])))]
async fn list_registries(State(state): State<Arc<AppState>>) -> ApiResult<Vec<RegistryView>> {
    Ok(Json(
        state
            .store
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
async fn remove_registry(
    State(state): State<Arc<AppState>>,
    Path(host): Path<String>,
) -> ApiResult<RegistryView> {
    let host = registry_host(&host)?;
    let row = state
        .store
        .remove_registry(&host)
        .await?
        .ok_or_else(|| ApiError::not_found("registry credentials for", &host))?;
    state.plans.sections().deliveries_changed();
    info!(registry = %row.host, "Registry credentials removed.");
    state.events.emit(
        EventKind::RegistryLogout,
        None,
        None,
        format!("credentials for {} removed", row.host),
    );
    Ok(Json(registry_view(row)))
}
