//! The SQLite store: one file in the data dir, WAL mode. The secrets
//! part is in [`secrets`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use skiff_shared::protocol::HostFacts;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::{Row, SqlStr, SqlitePool};

mod certs;
mod network;
mod policy;

use super::prelude::*;
use super::{
    ApiToken, JoinRefusal, JoinTokenRow, NodePlanRow, NodeRow, RegistryRow, ReleaseRow,
    ReleaseStatus, Result, StackRow, StoreError,
};

mod secrets;

/// Versioned migrations, embedded in the binary. Append only.
fn migrator() -> Migrator {
    let m = |version, name, sql| {
        Migration::new(
            version,
            Cow::Borrowed(name),
            MigrationType::Simple,
            SqlStr::from_static(sql),
            false,
        )
    };
    Migrator::with_migrations(vec![
        m(1, "init", include_str!("../../migrations/0001_init.sql")),
        m(
            2,
            "node plans",
            include_str!("../../migrations/0002_node_plans.sql"),
        ),
        m(
            3,
            "stacks",
            include_str!("../../migrations/0003_stacks.sql"),
        ),
        m(
            4,
            "release status",
            include_str!("../../migrations/0004_release_status.sql"),
        ),
        m(
            5,
            "secrets",
            include_str!("../../migrations/0005_secrets.sql"),
        ),
        m(
            6,
            "registries",
            include_str!("../../migrations/0006_registries.sql"),
        ),
        m(
            7,
            "plan sections",
            include_str!("../../migrations/0007_plan_sections.sql"),
        ),
        m(
            8,
            "api token roles",
            include_str!("../../migrations/0008_api_token_roles.sql"),
        ),
        m(
            9,
            "container policy",
            include_str!("../../migrations/0009_policy.sql"),
        ),
        m(
            10,
            "secret ids",
            include_str!("../../migrations/0010_secret_ids.sql"),
        ),
        m(
            11,
            "join token labels",
            include_str!("../../migrations/0011_join_token_labels.sql"),
        ),
        m(
            12,
            "cluster network",
            include_str!("../../migrations/0012_cluster_network.sql"),
        ),
        m(
            13,
            "certificates",
            include_str!("../../migrations/0013_certificates.sql"),
        ),
    ])
}

pub struct SqliteStore {
    pool: SqlitePool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    /// The file is 0600 whatever the umask; SQLite gives its `-wal` and
    /// `-shm` files the database's mode.
    pub async fn open(path: &Path) -> Result<Self> {
        skiff_shared::files::create_private_file(path).map_err(|e| StoreError::File {
            path: path.to_owned(),
            source: e,
        })?;
        for sidecar in ["-wal", "-shm"] {
            // Kept from a start under an earlier release, with the umask's mode.
            let mut name = path.as_os_str().to_owned();
            name.push(sidecar);
            let sidecar = std::path::PathBuf::from(name);
            skiff_shared::files::restrict(&sidecar, skiff_shared::files::PRIVATE).map_err(|e| {
                StoreError::File {
                    path: sidecar.clone(),
                    source: e,
                }
            })?;
        }
        let opts = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        migrator().run(&pool).await?;
        Ok(Self { pool })
    }

    /// A transaction that writes. IMMEDIATE takes the write lock up front:
    /// a deferred transaction that reads first fails to upgrade to a writer
    /// with SQLITE_BUSY, without waiting for the busy timeout, whenever
    /// another writer committed in between (concurrent joins, or a deploy
    /// recording its release while agents report in, were refused with
    /// "database is locked").
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(StoreError::Encode)
}

fn api_token_from_row(r: &SqliteRow) -> Result<ApiToken> {
    let role: String = r.try_get("role")?;
    let stacks: String = r.try_get("stacks")?;
    Ok(ApiToken {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        secret_hash: r.try_get("secret_hash")?,
        role: role
            .parse()
            .map_err(|e: String| StoreError::Corrupt(format!("API token role: {e}")))?,
        stacks: serde_json::from_str(&stacks)
            .map_err(|e| StoreError::Corrupt(format!("API token stacks: {e}")))?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        last_used_at: r.try_get("last_used_at")?,
    })
}

fn node_from_row(r: &SqliteRow) -> Result<NodeRow> {
    let labels: String = r.try_get("labels")?;
    let facts: String = r.try_get("facts")?;
    Ok(NodeRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        labels: serde_json::from_str(&labels)
            .map_err(|e| StoreError::Corrupt(format!("node labels: {e}")))?,
        facts: serde_json::from_str(&facts)
            .map_err(|e| StoreError::Corrupt(format!("node facts: {e}")))?,
        agent_version: r.try_get("agent_version")?,
        remote_addr: r.try_get("remote_addr")?,
        joined_at: r.try_get("joined_at")?,
        last_seen_at: r.try_get("last_seen_at")?,
        cert_serial: r.try_get("cert_serial")?,
        cert_not_after: r.try_get("cert_not_after")?,
        plan_generation: r.try_get("plan_generation")?,
        plan_error: r.try_get("plan_error")?,
        removed_at: r.try_get("removed_at")?,
    })
}

fn join_token_from_row(r: &SqliteRow) -> Result<JoinTokenRow> {
    let labels: String = r.try_get("labels")?;
    Ok(JoinTokenRow {
        labels: serde_json::from_str(&labels)
            .map_err(|e| StoreError::Corrupt(format!("join token labels: {e}")))?,
        id: r.try_get("id")?,
        secret_hash: r.try_get("secret_hash")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        uses_allowed: r.try_get("uses_allowed")?,
        uses: r.try_get("uses")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

#[async_trait]
impl MetaStore for SqliteStore {
    async fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM cluster_meta WHERE key = ?")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO cluster_meta (key, value) VALUES (?, ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn insert_api_token(&self, t: &ApiToken) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_tokens (id, name, secret_hash, role, stacks, created_at, expires_at, revoked_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&t.id)
        .bind(&t.name)
        .bind(&t.secret_hash)
        .bind(t.role.as_str())
        .bind(json(&t.stacks)?)
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(t.revoked_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn api_token(&self, id: &str) -> Result<Option<ApiToken>> {
        let row = sqlx::query("SELECT * FROM api_tokens WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(api_token_from_row).transpose()
    }

    async fn api_tokens(&self) -> Result<Vec<ApiToken>> {
        let rows = sqlx::query("SELECT * FROM api_tokens ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(api_token_from_row).collect()
    }

    async fn revoke_api_token(&self, id: &str, now: i64) -> Result<bool> {
        let done =
            sqlx::query("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn api_token_used(&self, id: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE api_tokens SET last_used_at = ? WHERE id = ?")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn api_token_count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn insert_join_token(&self, t: &JoinTokenRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO join_tokens (id, secret_hash, created_at, expires_at, uses_allowed, uses, revoked_at, labels) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&t.id)
        .bind(&t.secret_hash)
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(t.uses_allowed)
        .bind(t.uses)
        .bind(t.revoked_at)
        .bind(json(&t.labels)?)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn join_tokens(&self) -> Result<Vec<JoinTokenRow>> {
        let rows = sqlx::query("SELECT * FROM join_tokens ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(join_token_from_row).collect()
    }

    async fn revoke_join_token(&self, id: &str, now: i64) -> Result<bool> {
        let done =
            sqlx::query("UPDATE join_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn check_join_token(
        &self,
        id: &str,
        secret_hash: &str,
        name: &str,
        now: i64,
    ) -> Result<std::result::Result<JoinTokenRow, JoinRefusal>> {
        let row = sqlx::query("SELECT * FROM join_tokens WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Ok(Err(JoinRefusal::Unknown));
        };
        let token = join_token_from_row(&row)?;
        if let Some(refusal) = token.refusal(secret_hash, now) {
            return Ok(Err(refusal));
        }
        let taken: Option<String> =
            sqlx::query_scalar("SELECT id FROM nodes WHERE name = ? AND removed_at IS NULL")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        if taken.is_some() {
            return Ok(Err(JoinRefusal::NameTaken));
        }
        Ok(Ok(token))
    }

    async fn redeem_join_token(
        &self,
        id: &str,
        secret_hash: &str,
        now: i64,
        node: &NodeRow,
    ) -> Result<std::result::Result<(), JoinRefusal>> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query("SELECT * FROM join_tokens WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(Err(JoinRefusal::Unknown));
        };
        let token = join_token_from_row(&row)?;
        if let Some(refusal) = token.refusal(secret_hash, now) {
            return Ok(Err(refusal));
        }
        let taken: Option<String> =
            sqlx::query_scalar("SELECT id FROM nodes WHERE name = ? AND removed_at IS NULL")
                .bind(&node.name)
                .fetch_optional(&mut *tx)
                .await?;
        if taken.is_some() {
            return Ok(Err(JoinRefusal::NameTaken));
        }
        sqlx::query("UPDATE join_tokens SET uses = uses + 1 WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO nodes (id, name, labels, facts, agent_version, remote_addr, joined_at, \
             last_seen_at, cert_serial, cert_not_after, plan_generation, plan_error, removed_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL)",
        )
        .bind(&node.id)
        .bind(&node.name)
        .bind(json(&node.labels)?)
        .bind(json(&node.facts)?)
        .bind(&node.agent_version)
        .bind(&node.remote_addr)
        .bind(node.joined_at)
        .bind(node.last_seen_at)
        .bind(&node.cert_serial)
        .bind(node.cert_not_after)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }
}

#[async_trait]
impl NodeStore for SqliteStore {
    async fn nodes(&self, include_removed: bool) -> Result<Vec<NodeRow>> {
        let sql = if include_removed {
            "SELECT * FROM nodes ORDER BY name, id"
        } else {
            "SELECT * FROM nodes WHERE removed_at IS NULL ORDER BY name, id"
        };
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        rows.iter().map(node_from_row).collect()
    }

    async fn node(&self, id: &str) -> Result<Option<NodeRow>> {
        let row = sqlx::query("SELECT * FROM nodes WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(node_from_row).transpose()
    }

    async fn node_connected(
        &self,
        id: &str,
        facts: &HostFacts,
        agent_version: &str,
        remote_addr: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE nodes SET facts = ?, agent_version = ?, remote_addr = ?, last_seen_at = ? \
             WHERE id = ?",
        )
        .bind(json(facts)?)
        .bind(agent_version)
        .bind(remote_addr)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn node_seen(&self, ids: &[String], now: i64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        for id in ids {
            sqlx::query("UPDATE nodes SET last_seen_at = ? WHERE id = ?")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn set_node_labels(&self, id: &str, labels: &BTreeMap<String, String>) -> Result<bool> {
        let done = sqlx::query("UPDATE nodes SET labels = ? WHERE id = ? AND removed_at IS NULL")
            .bind(json(labels)?)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn set_node_cert(&self, id: &str, serial: &str, not_after: i64) -> Result<()> {
        sqlx::query("UPDATE nodes SET cert_serial = ?, cert_not_after = ? WHERE id = ?")
            .bind(serial)
            .bind(not_after)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_node_plan(&self, id: &str, generation: i64, error: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE nodes SET plan_generation = ?, plan_error = ? WHERE id = ?")
            .bind(generation)
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn remove_node(&self, id: &str, now: i64) -> Result<bool> {
        let done =
            sqlx::query("UPDATE nodes SET removed_at = ? WHERE id = ? AND removed_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait]
impl PlanStore for SqliteStore {
    async fn node_plans(&self) -> Result<Vec<NodePlanRow>> {
        let rows = sqlx::query("SELECT node_id, generation, containers, sections FROM node_plans")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let containers: String = r.try_get("containers")?;
                let sections: String = r.try_get("sections")?;
                let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("node plan: {e}"));
                Ok(NodePlanRow {
                    node_id: r.try_get("node_id")?,
                    generation: r.try_get("generation")?,
                    containers: serde_json::from_str(&containers).map_err(corrupt)?,
                    sections: serde_json::from_str(&sections).map_err(corrupt)?,
                })
            })
            .collect()
    }

    async fn put_node_plan(&self, plan: &NodePlanRow, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO node_plans (node_id, generation, containers, sections, updated_at) \
             VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (node_id) DO UPDATE SET generation = excluded.generation, \
             containers = excluded.containers, sections = excluded.sections, \
             updated_at = excluded.updated_at",
        )
        .bind(&plan.node_id)
        .bind(plan.generation)
        .bind(json(&plan.containers)?)
        .bind(json(&plan.sections)?)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl StackStore for SqliteStore {
    async fn insert_release(
        &self,
        stack: &str,
        compose: &str,
        services: &str,
        now: i64,
    ) -> Result<i64> {
        let mut tx = self.write_tx().await?;
        let number: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(number), 0) + 1 FROM releases WHERE stack = ?")
                .bind(stack)
                .fetch_one(&mut *tx)
                .await?;
        // `deploying` until its rollout ends (see `set_release_status`).
        sqlx::query("INSERT INTO releases (stack, number, created_at, compose, services, status) VALUES (?, ?, ?, ?, ?, 'deploying')")
            .bind(stack)
            .bind(number)
            .bind(now)
            .bind(compose)
            .bind(services)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO stacks (name, current_release, created_at, updated_at, removed_at) VALUES (?, ?, ?, ?, NULL) \
             ON CONFLICT (name) DO UPDATE SET current_release = excluded.current_release, \
             updated_at = excluded.updated_at, removed_at = NULL",
        )
        .bind(stack)
        .bind(number)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(number)
    }

    async fn stacks(&self) -> Result<Vec<StackRow>> {
        let rows = sqlx::query("SELECT * FROM stacks WHERE removed_at IS NULL ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StackRow {
                    name: r.try_get("name")?,
                    current_release: r.try_get("current_release")?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    }

    async fn releases(&self, stack: &str) -> Result<Vec<ReleaseRow>> {
        let rows = sqlx::query("SELECT * FROM releases WHERE stack = ? ORDER BY number DESC")
            .bind(stack)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ReleaseRow {
                    stack: r.try_get("stack")?,
                    number: r.try_get("number")?,
                    created_at: r.try_get("created_at")?,
                    compose: r.try_get("compose")?,
                    services: r.try_get("services")?,
                    status: ReleaseStatus::parse(r.try_get("status")?)?,
                    message: r.try_get("message")?,
                })
            })
            .collect()
    }

    async fn set_release_status(
        &self,
        stack: &str,
        number: i64,
        status: ReleaseStatus,
        message: Option<&str>,
    ) -> Result<()> {
        sqlx::query("UPDATE releases SET status = ?, message = ? WHERE stack = ? AND number = ?")
            .bind(status.as_str())
            .bind(message)
            .bind(stack)
            .bind(number)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_current_release(&self, stack: &str, number: i64, now: i64) -> Result<()> {
        sqlx::query("UPDATE stacks SET current_release = ?, updated_at = ? WHERE name = ?")
            .bind(number)
            .bind(now)
            .bind(stack)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn remove_stack(&self, stack: &str, now: i64) -> Result<bool> {
        let done =
            sqlx::query("UPDATE stacks SET removed_at = ? WHERE name = ? AND removed_at IS NULL")
                .bind(now)
                .bind(stack)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait]
impl RegistryStore for SqliteStore {
    async fn put_registry(
        &self,
        host: &str,
        username: &str,
        sealed: &str,
        now: i64,
    ) -> Result<RegistryRow> {
        sqlx::query(
            "INSERT INTO registries (host, username, sealed, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (host) DO UPDATE SET username = excluded.username, \
             sealed = excluded.sealed, created_at = excluded.created_at",
        )
        .bind(host)
        .bind(username)
        .bind(sealed)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(RegistryRow {
            host: host.to_owned(),
            username: username.to_owned(),
            created_at: now,
        })
    }

    async fn registries(&self) -> Result<Vec<RegistryRow>> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT host, username, created_at FROM registries ORDER BY host")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(host, username, created_at)| RegistryRow {
                host,
                username,
                created_at,
            })
            .collect())
    }

    async fn sealed_registry(&self, host: &str) -> Result<Option<(String, String)>> {
        Ok(
            sqlx::query_as("SELECT username, sealed FROM registries WHERE host = ?")
                .bind(host)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn remove_registry(&self, host: &str) -> Result<Option<RegistryRow>> {
        let row: Option<(String, String, i64)> = sqlx::query_as(
            "DELETE FROM registries WHERE host = ? RETURNING host, username, created_at",
        )
        .bind(host)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(host, username, created_at)| RegistryRow {
            host,
            username,
            created_at,
        }))
    }
}

#[cfg(test)]
mod tests;
