//! The HTTP API under `/api/v1`: JSON in and out, a bearer token on every
//! route except `/healthz`, errors as [`skiff_api_types::ApiErrorBody`],
//! and the OpenAPI document at `/api/v1/openapi.json`.
//!
//! One module per area, each with its routes: [`nodes`], [`tokens`],
//! [`stacks`], [`secrets`], [`registries`], [`policy`], [`events`],
//! [`network`], [`certs`], [`logs`] (and [`log_stream`]). Handlers take the
//! [`Api`] handles they need; the request and answer types are
//! `skiff-api-types`, shared with the CLI.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::get;
use axum::{Json, Router};
use skiff_api_types::*;
use skiff_shared::tasks::TaskTree;
use utoipa::OpenApi;

use crate::deploy::Deployer;
use crate::events::EventLog;
use crate::identity::Identity;
use crate::link::LinkMetrics;
use crate::observed::ObservedBook;
use crate::secrets::SecretKey;
use crate::sections::Sections;
use crate::sessions::Sessions;
use crate::store::Store;

mod access;
mod api_tokens;
mod certs;
#[cfg(test)]
mod certs_tests;
mod dns;
mod error;
mod events;
mod log_stream;
mod logs;
#[cfg(test)]
mod logs_tests;
mod network;
mod nodes;
mod policy;
mod registries;
mod routes;
mod secrets;
mod stacks;
mod tokens;

pub use access::{Caller, Need, need};
pub use error::ApiError;

/// What the API's handlers work with.
#[derive(Debug, Clone)]
pub struct Api {
    pub store: Arc<dyn Store>,
    pub sessions: Arc<Sessions>,
    pub observed: Arc<ObservedBook>,
    pub events: Arc<EventLog>,
    pub deployer: Deployer,
    pub sections: Arc<Sections>,
    pub identity: Arc<Identity>,
    pub secret_key: Arc<SecretKey>,
    pub certs: Arc<crate::certs::CertBook>,
    /// The cluster's sinks and the hosts' log reports.
    pub logs: Arc<crate::logs::LogBook>,
    pub metrics: Arc<LinkMetrics>,
    /// Default lifetime of join tokens.
    pub join_token_ttl: Duration,
    /// Followers of the event stream end when it is cancelled.
    pub tree: TaskTree,
    /// Where the initial admin token was written; removed when `skiff
    /// login` replaces that token.
    pub initial_token_file: std::path::PathBuf,
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The JSON body; a 413 when it is over the body limit, a 400 saying what
/// is wrong with it otherwise.
fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(t)| t).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "{}; the coordinator's api_limits.max_body_bytes sets the limit",
                    e.body_text()
                ),
            )
        } else {
            ApiError::bad_request("invalid_request", e.body_text())
        }
    })
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Skiff coordinator API", description = "Cluster state, join tokens and nodes."),
    paths(nodes::cluster, nodes::list_nodes, nodes::get_node, nodes::remove_node, nodes::label_node,
        nodes::node_containers, events::events, secrets::list_secrets, secrets::set_secret,
        secrets::remove_secret, stacks::list_stacks, stacks::get_stack, stacks::remove_stack,
        stacks::deploy_stack, stacks::stack_tasks, stacks::stack_releases, stacks::rollback_stack,
        stacks::scale_service, tokens::create_join_token, tokens::list_join_tokens,
        tokens::revoke_join_token, api_tokens::create_api_token, api_tokens::list_api_tokens,
        api_tokens::revoke_api_token, api_tokens::login, registries::list_registries,
        registries::set_registry, registries::remove_registry, policy::get_policy, policy::allow,
        policy::revoke, network::network, dns::dns, dns::query, routes::list,
        certs::add_certificate, certs::list_certificates, certs::remove_certificate,
        certs::renew_certificate, logs::list_sinks, logs::put_sink, logs::remove_sink,
        log_stream::stack_logs),
    components(schemas(ApiErrorBody, NodeView, NodeStatus, HostView, DiskView, CreateJoinToken, CreatedJoinToken,
        JoinTokenView, JoinTokenStatus, LabelChange, ClusterView, ContainerView, NodeContainersView,
        DeployRequest, ComposeInputs, DeployView, StepView, StackView, ReleaseView, TaskView, RolloutView, RollbackRequest, ScaleRequest, Event, EventKind, SetSecret, SecretView,
        SetRegistry, RegistryView, LinkCounters, ApiRole, CreateApiToken, CreatedApiToken,
        ApiTokenView, ApiTokenStatus, LoginView, PolicyView, PolicyRuleView, PolicyAllowanceView,
        PolicyChange, NetworkView, StackNetworkView, LeaseView, NetworkProblemView, MeshHostView,
        PeerView, AddressView, DnsView, DnsHostView, DnsQueryView, DnsRecordView, IngressView, PublishedPortView, RouteView, EdgeView,
        AddCertificate, CertificateView, CertificateSource, RenewCertificate, CertificateRenewal,
        PutSink, SinkView, SinkHostView, LogEntry)),
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

pub fn router(api: Api) -> Router {
    let routes = Router::new()
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .merge(nodes::routes())
        .merge(tokens::routes())
        .merge(api_tokens::routes())
        .merge(stacks::routes())
        .merge(secrets::routes())
        .merge(registries::routes())
        .merge(policy::routes())
        .merge(events::routes())
        .merge(network::routes())
        .merge(dns::routes())
        .merge(routes::routes())
        .merge(certs::routes())
        .merge(logs::routes())
        .route_layer(middleware::from_fn(access::authorize))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API route")
        })
        .layer(middleware::from_fn_with_state(
            api.clone(),
            access::authenticate,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .nest("/api/v1", routes)
        .with_state(api)
}

pub fn rfc3339_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}
