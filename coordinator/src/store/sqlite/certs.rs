//! Certificates and ACME accounts in SQLite (`certificates`,
//! `acme_accounts`).

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::SqliteStore;
use crate::store::{CertRow, CertSource, CertStore, Result, StoreError};

fn cert_from_row(r: &SqliteRow) -> Result<CertRow> {
    let domains: String = r.try_get("domains")?;
    let source: String = r.try_get("source")?;
    Ok(CertRow {
        id: r.try_get("id")?,
        domains: serde_json::from_str(&domains)
            .map_err(|e| StoreError::Corrupt(format!("certificate domains: {e}")))?,
        chain_pem: r.try_get("chain_pem")?,
        issuer: r.try_get("issuer")?,
        not_before: r.try_get("not_before")?,
        not_after: r.try_get("not_after")?,
        source: CertSource::parse(&source)?,
        created_at: r.try_get("created_at")?,
    })
}

#[async_trait]
impl CertStore for SqliteStore {
    async fn certificates(&self) -> Result<Vec<CertRow>> {
        let rows = sqlx::query(
            "SELECT id, domains, chain_pem, issuer, not_before, not_after, source, created_at \
             FROM certificates ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(cert_from_row).collect()
    }

    async fn insert_certificate(&self, row: &CertRow, key_sealed: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO certificates (id, domains, chain_pem, key_sealed, issuer, not_before, \
             not_after, source, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&row.id)
        .bind(super::json(&row.domains)?)
        .bind(&row.chain_pem)
        .bind(key_sealed)
        .bind(&row.issuer)
        .bind(row.not_before)
        .bind(row.not_after)
        .bind(row.source.as_str())
        .bind(row.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn sealed_certificate_key(&self, id: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT key_sealed FROM certificates WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn remove_certificate(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM certificates WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn acme_account(&self, directory: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT sealed FROM acme_accounts WHERE directory = ?")
                .bind(directory)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn put_acme_account(&self, directory: &str, sealed: &str, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO acme_accounts (directory, sealed, created_at) VALUES (?, ?, ?) \
             ON CONFLICT (directory) DO UPDATE SET sealed = excluded.sealed",
        )
        .bind(directory)
        .bind(sealed)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
