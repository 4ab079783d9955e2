//! Who may call what. Every request is authenticated (a valid, unexpired,
//! unrevoked API token) before any route runs; every matched route then
//! needs a level ([`need`], one table for the whole API) and, under
//! `/stacks/{name}`, a token that covers the stack. Lists a stack-limited
//! token reads are filtered by the handlers with [`Caller::covers`].

use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use skiff_api_types::ApiRole;
use tracing::warn;

use super::{Api, ApiError};
use crate::auth::{ApiTokenSecret, same_digest};
use crate::now_ms;

/// How often a token's last use is written.
const LAST_USED_EVERY_MS: i64 = 60_000;

/// The token behind a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub name: String,
    pub role: ApiRole,
    /// Empty: every stack.
    pub stacks: Vec<String>,
}

impl Caller {
    /// Whether the token may see and (with the role for it) change `stack`.
    pub fn covers(&self, stack: &str) -> bool {
        self.stacks.is_empty() || self.stacks.iter().any(|s| s == stack)
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any valid token (`/openapi.json`, `/login`).
    Token,
    /// A viewer (reads; never a secret).
    Read,
    /// A deployer (changes stacks and their secrets).
    Deploy,
    /// An admin (nodes, tokens, registries, the policy).
    Admin,
}

impl Need {
    fn role(self) -> Option<ApiRole> {
        match self {
            Self::Token => None,
            Self::Read => Some(ApiRole::Viewer),
            Self::Deploy => Some(ApiRole::Deployer),
            Self::Admin => Some(ApiRole::Admin),
        }
    }
}

/// What each route needs, by method and route (as registered, without
/// `/api/v1`). A route missing here needs an admin; a unit test checks
/// that every route of the OpenAPI document is listed.
pub fn need(method: &Method, route: &str) -> Need {
    let read = method == Method::GET;
    match route {
        "/openapi.json" | "/login" => Need::Token,
        "/cluster"
        | "/nodes"
        | "/nodes/{id}"
        | "/nodes/{id}/containers"
        | "/events"
        | "/stacks"
        | "/registries"
        | "/certificates"
        | "/policy"
        | "/network"
        | "/dns"
        | "/dns/query"
        | "/routes"
        | "/logs/sinks"
            if read =>
        {
            Need::Read
        }
        "/stacks/{name}"
        | "/stacks/{name}/tasks"
        | "/stacks/{name}/releases"
        | "/stacks/{name}/secrets"
        | "/stacks/{name}/logs"
            if read =>
        {
            Need::Read
        }
        "/stacks/{name}"
        | "/stacks/{name}/deploy"
        | "/stacks/{name}/rollback"
        | "/stacks/{name}/services/{service}/scale"
        | "/stacks/{name}/secrets/{secret}" => Need::Deploy,
        _ => Need::Admin,
    }
}

/// Refuses any request without a valid token; records who called.
pub(super) async fn authenticate(State(api): State<Api>, mut req: Request, next: Next) -> Response {
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
    let token = match api.store.api_token(&presented.id).await {
        Ok(Some(t)) if t.revoked_at.is_none() && same_digest(&t.secret_hash, &presented.hash()) => {
            t
        }
        Ok(_) => return unauthorized("API token is unknown or revoked"),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let now = now_ms();
    if token.expires_at.is_some_and(|at| at <= now) {
        return unauthorized(
            "API token has expired; ask an admin for a new one (`skiff api-token create`)",
        );
    }
    if token
        .last_used_at
        .is_none_or(|at| now.saturating_sub(at) >= LAST_USED_EVERY_MS)
        && let Err(error) = api.store.api_token_used(&token.id, now).await
    {
        warn!(error = %error, "Recording an API token's use failed.");
    }
    req.extensions_mut().insert(Caller {
        token_id: token.id,
        name: token.name,
        role: token.role,
        stacks: token.stacks,
    });
    next.run(req).await
}

/// Refuses a matched route the caller's role or stacks do not cover.
pub(super) async fn authorize(
    matched: MatchedPath,
    params: RawPathParams,
    req: Request,
    next: Next,
) -> Response {
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "no API token")
            .into_response();
    };
    let route = matched.as_str();
    let route = route.strip_prefix("/api/v1").unwrap_or(route);
    let need = need(req.method(), route);
    if let Some(role) = need.role()
        && caller.role < role
    {
        let what = match need {
            Need::Admin => "needs an admin token",
            Need::Deploy => "changes a stack: it needs a deployer or admin token",
            _ => "needs a viewer, deployer or admin token",
        };
        return forbidden(format!(
            "{} {route} {what}; this token ({}) is a {}",
            req.method(),
            caller.name,
            caller.role
        ));
    }
    if route.starts_with("/stacks/{name}")
        && let Some((_, stack)) = params.iter().find(|(k, _)| *k == "name")
        && !caller.covers(stack)
    {
        return forbidden(format!(
            "this token ({}) is limited to the stacks {}; stack {stack:?} is not one of them",
            caller.name,
            caller.stacks.join(", ")
        ));
    }
    next.run(req).await
}

fn forbidden(message: String) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_of_the_api_is_listed() {
        let doc = super::super::openapi();
        for (path, item) in &doc.paths.paths {
            let route = path.strip_prefix("/api/v1").unwrap_or(path);
            let methods = [
                (Method::GET, item.get.is_some()),
                (Method::POST, item.post.is_some()),
                (Method::PUT, item.put.is_some()),
                (Method::PATCH, item.patch.is_some()),
                (Method::DELETE, item.delete.is_some()),
            ];
            for (method, present) in methods {
                if !present {
                    continue;
                }
                let n = need(&method, route);
                let is_admin_route = route.starts_with("/tokens")
                    || route == "/nodes/{id}" && method != Method::GET
                    || route == "/nodes/{id}/labels"
                    || route.starts_with("/registries") && method != Method::GET
                    || route.starts_with("/certificates") && method != Method::GET
                    || route.starts_with("/logs/sinks") && method != Method::GET
                    || route.starts_with("/policy") && method != Method::GET;
                assert!(
                    is_admin_route || n != Need::Admin,
                    "{method} {route} falls to the admin default: list it in `need`"
                );
            }
        }
    }

    #[test]
    fn reads_changes_and_administration_need_rising_roles() {
        assert_eq!(need(&Method::GET, "/stacks/{name}"), Need::Read);
        assert_eq!(need(&Method::DELETE, "/stacks/{name}"), Need::Deploy);
        assert_eq!(
            need(&Method::PUT, "/stacks/{name}/secrets/{secret}"),
            Need::Deploy
        );
        assert_eq!(need(&Method::POST, "/tokens/join"), Need::Admin);
        assert_eq!(need(&Method::GET, "/tokens/api"), Need::Admin);
        assert_eq!(need(&Method::PATCH, "/nodes/{id}/labels"), Need::Admin);
        assert_eq!(need(&Method::POST, "/certificates/renew"), Need::Admin);
        assert_eq!(need(&Method::GET, "/certificates"), Need::Read);
        assert_eq!(need(&Method::GET, "/logs/sinks"), Need::Read);
        assert_eq!(need(&Method::PUT, "/logs/sinks/{name}"), Need::Admin);
        assert_eq!(need(&Method::DELETE, "/logs/sinks/{name}"), Need::Admin);
        assert_eq!(need(&Method::GET, "/stacks/{name}/logs"), Need::Read);
        assert_eq!(need(&Method::POST, "/login"), Need::Token);
        assert_eq!(need(&Method::GET, "/something/new"), Need::Admin);
        assert!(ApiRole::Admin > ApiRole::Deployer && ApiRole::Deployer > ApiRole::Viewer);
    }
}
