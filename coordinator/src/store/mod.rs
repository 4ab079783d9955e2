//! The coordinator's state, behind one trait so the backing database can
//! change without touching callers. [`sqlite::SqliteStore`] is the default;
//! the schema and queries stay portable SQL so a PostgreSQL store can share
//! the migrations.
//!
//! Times are Unix milliseconds. Token secrets are stored as SHA-256 only;
//! stack secrets, registry passwords, certificates' private keys
//! and the ACME account only sealed (see [`crate::secrets`]).
//! A secret version is known by a random id, never by a plain hash of
//! its value.

use std::collections::BTreeMap;

use async_trait::async_trait;
use skiff_shared::protocol::HostFacts;

mod certs;
pub use certs::*;
pub mod memory;
mod network;
pub use network::*;
pub mod sqlite;

/// A store failure. Callers map it to an internal error; it never carries secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create or restrict the database file {path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
    #[error("a value cannot be encoded for the store: {0}")]
    Encode(serde_json::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub secret_hash: String,
    pub role: skiff_api_types::ApiRole,
    /// Empty: every stack.
    pub stacks: Vec<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct JoinTokenRow {
    pub id: String,
    pub secret_hash: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub uses_allowed: i64,
    pub uses: i64,
    pub revoked_at: Option<i64>,
    /// The node labels the token grants: a node that joins with it gets
    /// them, and may ask for no other.
    pub labels: BTreeMap<String, String>,
}

impl JoinTokenRow {
    /// Why this token cannot be redeemed at `now` with a secret hashing to
    /// `secret_hash`, if it cannot.
    pub fn refusal(&self, secret_hash: &str, now: i64) -> Option<JoinRefusal> {
        if !crate::auth::same_digest(&self.secret_hash, secret_hash) {
            return Some(JoinRefusal::Unknown);
        }
        if self.revoked_at.is_some() {
            return Some(JoinRefusal::Revoked);
        }
        if self.expires_at <= now {
            return Some(JoinRefusal::Expired);
        }
        if self.uses >= self.uses_allowed {
            return Some(JoinRefusal::UsedUp);
        }
        None
    }
}

#[derive(Debug, Clone)]
pub struct NodeRow {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub facts: HostFacts,
    pub agent_version: String,
    pub remote_addr: Option<String>,
    pub joined_at: i64,
    pub last_seen_at: Option<i64>,
    pub cert_serial: String,
    pub cert_not_after: i64,
    pub plan_generation: Option<i64>,
    pub plan_error: Option<String>,
    pub removed_at: Option<i64>,
}

/// A node's plan: its containers and the sections built from them. Nodes
/// without a row have generation 1 and no containers (the plan every node
/// gets when it first connects).
#[derive(Debug, Clone)]
pub struct NodePlanRow {
    pub node_id: String,
    pub generation: i64,
    pub containers: Vec<skiff_shared::workload::ContainerSpec>,
    pub sections: std::collections::BTreeMap<String, skiff_shared::plan::Section>,
}

#[derive(Debug, Clone)]
pub struct StackRow {
    pub name: String,
    pub current_release: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone)]
pub struct ReleaseRow {
    pub stack: String,
    pub number: i64,
    pub created_at: i64,
    pub compose: String,
    /// The resolved services, JSON.
    pub services: String,
    pub status: ReleaseStatus,
    pub message: Option<String>,
}

/// Where a release is: `deploying` until its rollout ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseStatus {
    Deploying,
    Deployed,
    RolledBack,
    Paused,
    Failed,
}

impl ReleaseStatus {
    /// As stored, and as the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deploying => "deploying",
            Self::Deployed => "deployed",
            Self::RolledBack => "rolled_back",
            Self::Paused => "paused",
            Self::Failed => "failed",
        }
    }

    /// From the stored text.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "deploying" => Self::Deploying,
            "deployed" => Self::Deployed,
            "rolled_back" => Self::RolledBack,
            "paused" => Self::Paused,
            "failed" => Self::Failed,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "unknown release status {other:?}"
                )));
            }
        })
    }
}

/// A version of a secret (never its value). `Debug` leaves the check
/// value out: with the id beside it, it would let a reader test guesses.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretRow {
    pub name: String,
    pub version: i64,
    /// Random, 32 hex digits: what hosts and plans know it by.
    pub id: String,
    /// [`skiff_shared::workload::secret_check`] of the value, once known:
    /// versions stored before ids get theirs at the first start that can
    /// open them ([`crate::secrets::complete_versions`]).
    pub check: Option<String>,
    pub created_at: i64,
}

impl std::fmt::Debug for SecretRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRow")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// A new secret version as stored: made by [`crate::secrets::SecretKey::new_version`].
#[derive(Clone)]
pub struct NewSecretVersion {
    /// Random, 32 hex digits.
    pub id: String,
    /// The value's check value, keyed with `id`.
    pub check: String,
    /// The value, sealed.
    pub sealed: String,
}

impl std::fmt::Debug for NewSecretVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSecretVersion")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A stored secret version that has no MAC or check value yet (stored
/// before versions had ids): what is needed to compute them.
#[derive(Debug, Clone)]
pub struct IncompleteSecret {
    pub stack: String,
    pub name: String,
    pub version: i64,
    pub id: String,
    pub sealed: String,
}

/// A registry's credentials as listed: never the password.
#[derive(Debug, Clone)]
pub struct RegistryRow {
    pub host: String,
    pub username: String,
    pub created_at: i64,
}

/// A container policy setting an admin allowed for a stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowanceRow {
    pub stack: String,
    /// Normalized (`privileged`, `bind:/etc`), as `PolicySetting` prints it.
    pub setting: String,
    pub created_at: i64,
}

/// Why a join token was not accepted. The messages are safe to show the
/// joining agent: they do not say whether a token id exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefusal {
    #[error("join token is unknown or its secret is wrong")]
    Unknown,
    #[error("join token has expired; create a new one with `skiff token create`")]
    Expired,
    #[error("join token has been used up; create a new one with `skiff token create`")]
    UsedUp,
    #[error("join token has been revoked; create a new one with `skiff token create`")]
    Revoked,
    #[error("a node with this name is already in the cluster; pass another --name")]
    NameTaken,
}

/// The store's traits, to call their methods: `use crate::store::prelude::*;`.
pub mod prelude {
    pub use super::{
        CertStore, DeployStore, MetaStore, NetworkStore, NodeStore, PlanStore, PolicyStore,
        RegistryStore, SecretStore, StackStore, Store, TokenStore,
    };
}

/// The coordinator's persistent state: every part of it, for the
/// SQLite store. Code that needs only some parts takes the smaller trait
/// ([`DeployStore`] for deploys), which tests implement in memory.
pub trait Store:
    DeployStore
    + MetaStore
    + TokenStore
    + RegistryStore
    + CertStore
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<T> Store for T where
    T: DeployStore
        + MetaStore
        + TokenStore
        + RegistryStore
        + CertStore
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// What deploys read and write: nodes, plans, stacks, secrets, the
/// container policy and the cluster network.
pub trait DeployStore:
    NodeStore
    + PlanStore
    + StackStore
    + SecretStore
    + PolicyStore
    + NetworkStore
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<T> DeployStore for T where
    T: NodeStore
        + PlanStore
        + StackStore
        + SecretStore
        + PolicyStore
        + NetworkStore
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// Small facts about the store itself.
#[async_trait]
pub trait MetaStore: Send + Sync {
    /// The coordinator's persistent state.
    async fn meta(&self, key: &str) -> Result<Option<String>>;
    async fn set_meta(&self, key: &str, value: &str) -> Result<()>;
}

/// API tokens and join tokens (stored hashed).
#[async_trait]
pub trait TokenStore: Send + Sync {
    async fn insert_api_token(&self, token: &ApiToken) -> Result<()>;
    async fn api_token(&self, id: &str) -> Result<Option<ApiToken>>;
    async fn api_token_count(&self) -> Result<i64>;
    /// Every API token, revoked ones too, oldest first.
    async fn api_tokens(&self) -> Result<Vec<ApiToken>>;
    /// Marks a token revoked; false if there is no such live token.
    async fn revoke_api_token(&self, id: &str, now: i64) -> Result<bool>;
    async fn api_token_used(&self, id: &str, now: i64) -> Result<()>;
    async fn insert_join_token(&self, token: &JoinTokenRow) -> Result<()>;
    async fn join_tokens(&self) -> Result<Vec<JoinTokenRow>>;
    /// Marks a token revoked; false if no such token.
    async fn revoke_join_token(&self, id: &str, now: i64) -> Result<bool>;
    /// Checks, without using it, that the token can be redeemed now with
    /// this secret and that no live node is called `name`: what a join
    /// checks before it looks at the CSR. Returns the token.
    async fn check_join_token(
        &self,
        id: &str,
        secret_hash: &str,
        name: &str,
        now: i64,
    ) -> Result<std::result::Result<JoinTokenRow, JoinRefusal>>;
    /// In one transaction: checks the token (secret, expiry, uses, revocation),
    /// uses it once and inserts `node`.
    async fn redeem_join_token(
        &self,
        id: &str,
        secret_hash: &str,
        now: i64,
        node: &NodeRow,
    ) -> Result<std::result::Result<(), JoinRefusal>>;
}

/// The node inventory.
#[async_trait]
pub trait NodeStore: Send + Sync {
    /// Live nodes, or all nodes with removed ones too.
    async fn nodes(&self, include_removed: bool) -> Result<Vec<NodeRow>>;
    /// A node by id (removed ones too).
    async fn node(&self, id: &str) -> Result<Option<NodeRow>>;
    /// Records what a connecting agent said about itself.
    async fn node_connected(
        &self,
        id: &str,
        facts: &HostFacts,
        agent_version: &str,
        remote_addr: &str,
        now: i64,
    ) -> Result<()>;
    async fn node_seen(&self, ids: &[String], now: i64) -> Result<()>;
    async fn set_node_labels(&self, id: &str, labels: &BTreeMap<String, String>) -> Result<bool>;
    async fn set_node_cert(&self, id: &str, serial: &str, not_after: i64) -> Result<()>;
    async fn set_node_plan(&self, id: &str, generation: i64, error: Option<&str>) -> Result<()>;
    /// Marks a node removed; false if it was not live.
    async fn remove_node(&self, id: &str, now: i64) -> Result<bool>;
}

/// Each node's plan.
#[async_trait]
pub trait PlanStore: Send + Sync {
    async fn node_plans(&self) -> Result<Vec<NodePlanRow>>;
    /// Replaces a node's plan.
    async fn put_node_plan(&self, plan: &NodePlanRow, now: i64) -> Result<()>;
}

/// Stacks and their numbered releases.
#[async_trait]
pub trait StackStore: Send + Sync {
    /// Records a new release of `stack` (creating or reviving the stack) and
    /// makes it current; returns its number.
    async fn insert_release(
        &self,
        stack: &str,
        compose: &str,
        services: &str,
        now: i64,
    ) -> Result<i64>;
    /// Live stacks, by name.
    async fn stacks(&self) -> Result<Vec<StackRow>>;
    /// A stack's releases, newest first.
    async fn releases(&self, stack: &str) -> Result<Vec<ReleaseRow>>;
    async fn set_release_status(
        &self,
        stack: &str,
        number: i64,
        status: ReleaseStatus,
        message: Option<&str>,
    ) -> Result<()>;
    async fn set_current_release(&self, stack: &str, number: i64, now: i64) -> Result<()>;
    /// Marks a stack removed; false if it was not live.
    async fn remove_stack(&self, stack: &str, now: i64) -> Result<bool>;
}

/// Stack secrets, sealed, each version with a random id.
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// Stores a new version of a secret, made by `seal(version)`, unless
    /// the latest live version has the same value: the same `mac` (an HMAC
    /// keyed with the coordinator's own key, [`crate::secrets::SecretKey::mac`]).
    /// `None` when sealing failed.
    async fn put_secret(
        &self,
        stack: &str,
        name: &str,
        mac: &str,
        seal: &(dyn Fn(i64) -> Option<NewSecretVersion> + Sync),
        now: i64,
    ) -> Result<Option<SecretRow>>;
    /// The latest version of each live secret of a stack.
    async fn secrets(&self, stack: &str) -> Result<Vec<SecretRow>>;
    /// One version of a secret, removed or not (releases keep using it).
    async fn secret_version(
        &self,
        stack: &str,
        name: &str,
        version: i64,
    ) -> Result<Option<SecretRow>>;
    async fn sealed_secret(&self, stack: &str, name: &str, version: i64) -> Result<Option<String>>;
    /// Marks a secret removed (its versions stay for releases that used them).
    async fn remove_secret(&self, stack: &str, name: &str, now: i64) -> Result<bool>;
    /// Versions stored before versions had ids, without a MAC or check value.
    async fn incomplete_secrets(&self) -> Result<Vec<IncompleteSecret>>;
    /// Records a version's MAC and check value (see [`Self::incomplete_secrets`]).
    async fn complete_secret(&self, id: &str, mac: &str, check: &str) -> Result<()>;
}

/// The container policy's allowances, per stack. A stack's allowances stay
/// when it is removed, for the next stack of that name.
#[async_trait]
pub trait PolicyStore: Send + Sync {
    /// Every allowance, by stack then setting.
    async fn allowances(&self) -> Result<Vec<AllowanceRow>>;
    /// One stack's allowances, by setting.
    async fn stack_allowances(&self, stack: &str) -> Result<Vec<AllowanceRow>>;
    /// Allows `settings` for `stack`; settings already allowed keep the
    /// time they were first allowed.
    async fn allow(&self, stack: &str, settings: &[String], now: i64) -> Result<()>;
    /// Revokes `settings` for `stack`, all or none: returns those that were
    /// not allowed, and changes nothing unless that is empty.
    async fn revoke(&self, stack: &str, settings: &[String]) -> Result<Vec<String>>;
}

/// Registry credentials, the password sealed.
#[async_trait]
pub trait RegistryStore: Send + Sync {
    /// Sets (or replaces) a registry's credentials; `sealed` is the sealed password.
    async fn put_registry(
        &self,
        host: &str,
        username: &str,
        sealed: &str,
        now: i64,
    ) -> Result<RegistryRow>;
    /// Every registry with credentials, by host.
    async fn registries(&self) -> Result<Vec<RegistryRow>>;
    /// A registry's username and sealed password.
    async fn sealed_registry(&self, host: &str) -> Result<Option<(String, String)>>;
    /// Forgets a registry's credentials; the removed row, if there was one.
    async fn remove_registry(&self, host: &str) -> Result<Option<RegistryRow>>;
}
