//! Nodes: the cluster's identity, the node inventory, removal and labels,
//! and each node's containers as its agent reported them.

use axum::Router;
use axum::routing::{get, patch};
use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use skiff_api_types::EventKind;
use skiff_api_types::*;
use skiff_shared::join::names;
use tracing::info;

use super::{Api, ApiError, ApiResult, Caller, json_body, rfc3339_ms};
use crate::now_ms;
use crate::store::NodeRow;

pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/cluster", get(cluster))
        .route("/nodes", get(list_nodes))
        .route("/nodes/{id}", get(get_node).delete(remove_node))
        .route("/nodes/{id}/labels", patch(label_node))
        .route("/nodes/{id}/containers", get(node_containers))
}

#[utoipa::path(get, path = "/api/v1/cluster", responses((status = 200, body = ClusterView)))]
pub(super) async fn cluster(State(api): State<Api>) -> ApiResult<ClusterView> {
    Ok(Json(ClusterView {
        cluster_id: api.identity.cluster_id.clone(),
        ca_fingerprint: hex::encode(api.identity.ca.fingerprint()),
        version: skiff_shared::VERSION.to_owned(),
        nodes_connected: api.sessions.len(),
        link: LinkCounters {
            malformed_total: api.metrics.malformed.get(),
            oversized_total: api.metrics.oversized.get(),
            tls_refused_total: api.metrics.tls_refused.get(),
            joins_refused_total: api.metrics.joins_refused.get(),
            renewals_refused_total: api.metrics.renewals_refused.get(),
        },
    }))
}

fn node_view(api: &Api, n: NodeRow) -> NodeView {
    let session = api.sessions.get(&n.id);
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
pub(super) async fn find_node(api: &Api, key: &str) -> Result<NodeRow, ApiError> {
    if let Some(n) = api.store.node(key).await?
        && n.removed_at.is_none()
    {
        return Ok(n);
    }
    api.store
        .nodes(false)
        .await?
        .into_iter()
        .find(|n| n.name == key)
        .ok_or_else(|| ApiError::not_found("node", key))
}

#[utoipa::path(get, path = "/api/v1/nodes", responses((status = 200, body = [NodeView])))]
pub(super) async fn list_nodes(State(api): State<Api>) -> ApiResult<Vec<NodeView>> {
    let nodes = api.store.nodes(false).await?;
    Ok(Json(
        nodes.into_iter().map(|n| node_view(&api, n)).collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}", params(("id" = String, Path, description = "node id or name")),
    responses((status = 200, body = NodeView), (status = 404, body = ApiErrorBody)))]
pub(super) async fn get_node(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> ApiResult<NodeView> {
    let node = find_node(&api, &id).await?;
    Ok(Json(node_view(&api, node)))
}

#[utoipa::path(delete, path = "/api/v1/nodes/{id}", params(("id" = String, Path, description = "node id or name")),
    responses((status = 200, body = NodeView), (status = 404, body = ApiErrorBody)))]
pub(super) async fn remove_node(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> ApiResult<NodeView> {
    let node = find_node(&api, &id).await?;
    // Deny and close first: a reconnect racing the removal is refused at TLS.
    api.sessions.revoke(&node.id);
    api.store.remove_node(&node.id, now_ms()).await?;
    api.logs.forget(&node.id);
    info!(node = %node.id, name = %node.name, "Node removed; its certificate is revoked.");
    // It leaves every other host's mesh.
    if let Some(network) = &api.deployer.network {
        network.poke();
    }
    api.events.emit(
        EventKind::NodeRemoved,
        None,
        Some(&node.id),
        format!("{} removed; its certificate is revoked", node.name),
    );
    let mut view = node_view(&api, node);
    view.status = NodeStatus::Disconnected;
    view.connected_since = None;
    Ok(Json(view))
}

#[utoipa::path(patch, path = "/api/v1/nodes/{id}/labels", request_body = LabelChange,
    params(("id" = String, Path, description = "node id or name")),
    responses((status = 200, body = NodeView), (status = 400, body = ApiErrorBody), (status = 404, body = ApiErrorBody)))]
pub(super) async fn label_node(
    State(api): State<Api>,
    Path(id): Path<String>,
    body: Result<Json<LabelChange>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<NodeView> {
    let change = json_body(body)?;
    for (k, v) in &change.set {
        names::check_label(k, v).map_err(|m| ApiError::bad_request("invalid_label", m))?;
    }
    for k in &change.remove {
        names::check_label(k, "").map_err(|m| ApiError::bad_request("invalid_label", m))?;
    }
    let mut node = find_node(&api, &id).await?;
    let mut labels: BTreeMap<String, String> = node.labels.clone();
    for k in &change.remove {
        labels.remove(k);
    }
    labels.extend(change.set);
    if !api.store.set_node_labels(&node.id, &labels).await? {
        return Err(ApiError::not_found("node", &id));
    }
    node.labels = labels;
    Ok(Json(node_view(&api, node)))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}/containers", params(("id" = String, Path, description = "node id or name")),
    responses((status = 200, body = NodeContainersView), (status = 404, body = ApiErrorBody)))]
pub(super) async fn node_containers(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<NodeContainersView> {
    let node = find_node(&api, &id).await?;
    let report = api.observed.get(&node.id);
    let (reported_at, plan_generation, error, containers) = match report {
        Some((at, o)) => (
            Some(rfc3339_ms(i64::try_from(at).unwrap_or(0))),
            Some(o.plan_generation),
            o.error.clone(),
            o.containers
                .iter()
                // A token limited to stacks sees only their containers.
                .filter(|c| {
                    caller.stacks.is_empty()
                        || c.name
                            .split_once('.')
                            .is_some_and(|(stack, _)| caller.covers(stack))
                })
                .map(|c| ContainerView {
                    name: c.name.clone(),
                    id: c.id.clone(),
                    state: c.state.to_string(),
                    health: c.health.map(|h| h.to_string()),
                    restart_count: c.restart_count,
                    started_at: c.started_at.clone(),
                    exit_code: c.exit_code,
                    ips: c.ips.clone(),
                    addresses: super::network::address_views(&c.addresses),
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
