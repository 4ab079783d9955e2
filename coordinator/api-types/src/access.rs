//! API tokens and what they may do: roles, stack scopes, and the answer to
//! `skiff login`.

use serde::{Deserialize, Serialize};

/// What a token may do.
///
/// - `viewer`: read the cluster, nodes, stacks, releases, tasks, events,
///   secret names and registry hosts (never a secret).
/// - `deployer`: a viewer that also deploys, rolls back, scales and
///   removes stacks and sets their secrets.
/// - `admin`: everything, also nodes, join and API tokens, registry
///   credentials and the container policy.
///
/// A token limited to some stacks sees and changes only those.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ApiRole {
    Viewer,
    Deployer,
    Admin,
}

impl ApiRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Deployer => "deployer",
            Self::Admin => "admin",
        }
    }
}

impl std::fmt::Display for ApiRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ApiRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Self::Viewer),
            "deployer" => Ok(Self::Deployer),
            "admin" => Ok(Self::Admin),
            other => Err(format!(
                "unknown role {other:?}: use admin, deployer or viewer"
            )),
        }
    }
}

/// Request to create an API token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateApiToken {
    /// A name to recognise it by in `skiff api-token ls`.
    #[serde(default)]
    pub name: Option<String>,
    pub role: ApiRole,
    /// Limit it to these stacks (none: every stack). Not for admins.
    #[serde(default)]
    pub stacks: Vec<String>,
    /// Lifetime, e.g. "30d" (default: no expiry).
    #[serde(default)]
    pub ttl: Option<String>,
}

/// An API token, shown in full only in this answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedApiToken {
    pub id: String,
    pub token: String,
    pub role: ApiRole,
    pub stacks: Vec<String>,
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ApiTokenStatus {
    Active,
    Expired,
    Revoked,
}

impl std::fmt::Display for ApiTokenStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        })
    }
}

/// An API token as listed (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiTokenView {
    pub id: String,
    pub name: String,
    pub role: ApiRole,
    /// Empty: every stack.
    pub stacks: Vec<String>,
    pub status: ApiTokenStatus,
    pub created_at: String,
    pub expires_at: Option<String>,
    /// Within a minute.
    pub last_used_at: Option<String>,
}

/// The answer to `POST /login`: who the token is, and its replacement
/// when it was the coordinator's initial admin token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoginView {
    pub cluster_id: String,
    pub token_id: String,
    pub role: ApiRole,
    pub stacks: Vec<String>,
    /// The new admin token that replaced the initial one (which is now
    /// revoked, and its file removed). Use it from now on.
    pub rotated_token: Option<String>,
}
