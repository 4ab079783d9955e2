//! Stack secrets in SQLite: one row per version, the value sealed, known
//! by a random id (migration 0010).

use async_trait::async_trait;

use super::SqliteStore;
use crate::store::{IncompleteSecret, NewSecretVersion, Result, SecretRow, SecretStore};

/// `(name, version, id, value_check, created_at)`, as selected below.
type Row = (String, i64, String, Option<String>, i64);

fn row((name, version, id, check, created_at): Row) -> SecretRow {
    SecretRow {
        name,
        version,
        id,
        check,
        created_at,
    }
}

#[async_trait]
impl SecretStore for SqliteStore {
    async fn put_secret(
        &self,
        stack: &str,
        name: &str,
        mac: &str,
        seal: &(dyn Fn(i64) -> Option<NewSecretVersion> + Sync),
        now: i64,
    ) -> Result<Option<SecretRow>> {
        let mut tx = self.write_tx().await?;
        let latest: Option<(i64, String, Option<String>, Option<String>, Option<i64>)> =
            sqlx::query_as(
                "SELECT version, id, value_check, value_mac, removed_at FROM secrets \
                 WHERE stack = ? AND name = ? ORDER BY version DESC LIMIT 1",
            )
            .bind(stack)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some((version, id, check, Some(have), None)) = &latest
            && crate::auth::same_digest(have, mac)
        {
            return Ok(Some(SecretRow {
                name: name.to_owned(),
                version: *version,
                id: id.clone(),
                check: check.clone(),
                created_at: now,
            }));
        }
        let version = latest.map_or(1, |(v, ..)| v + 1);
        let Some(new) = seal(version) else {
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO secrets (stack, name, version, id, value_mac, value_check, sealed, \
             created_at, removed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
        )
        .bind(stack)
        .bind(name)
        .bind(version)
        .bind(&new.id)
        .bind(mac)
        .bind(&new.check)
        .bind(&new.sealed)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(SecretRow {
            name: name.to_owned(),
            version,
            id: new.id,
            check: Some(new.check),
            created_at: now,
        }))
    }

    async fn secrets(&self, stack: &str) -> Result<Vec<SecretRow>> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT s.name, s.version, s.id, s.value_check, s.created_at FROM secrets s \
             WHERE s.stack = ? AND s.removed_at IS NULL AND s.version = \
             (SELECT MAX(version) FROM secrets t WHERE t.stack = s.stack AND t.name = s.name) ORDER BY s.name",
        )
        .bind(stack)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(row).collect())
    }

    async fn secret_version(
        &self,
        stack: &str,
        name: &str,
        version: i64,
    ) -> Result<Option<SecretRow>> {
        let found: Option<Row> = sqlx::query_as(
            "SELECT name, version, id, value_check, created_at FROM secrets \
             WHERE stack = ? AND name = ? AND version = ?",
        )
        .bind(stack)
        .bind(name)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.map(row))
    }

    async fn sealed_secret(&self, stack: &str, name: &str, version: i64) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT sealed FROM secrets WHERE stack = ? AND name = ? AND version = ?",
        )
        .bind(stack)
        .bind(name)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn remove_secret(&self, stack: &str, name: &str, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE secrets SET removed_at = ? WHERE stack = ? AND name = ? AND removed_at IS NULL",
        )
        .bind(now)
        .bind(stack)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn incomplete_secrets(&self) -> Result<Vec<IncompleteSecret>> {
        let rows: Vec<(String, String, i64, String, String)> = sqlx::query_as(
            "SELECT stack, name, version, id, sealed FROM secrets \
             WHERE value_mac IS NULL OR value_check IS NULL ORDER BY stack, name, version",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(stack, name, version, id, sealed)| IncompleteSecret {
                stack,
                name,
                version,
                id,
                sealed,
            })
            .collect())
    }

    async fn complete_secret(&self, id: &str, mac: &str, check: &str) -> Result<()> {
        sqlx::query("UPDATE secrets SET value_mac = ?, value_check = ? WHERE id = ?")
            .bind(mac)
            .bind(check)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use skiff_shared::workload::{SecretMount, secret_check};
    use sqlx::sqlite::SqliteConnectOptions;

    use super::*;
    use crate::secrets::{SecretKey, complete_versions, context};

    async fn put(store: &SqliteStore, key: &SecretKey, value: &[u8], now: i64) -> SecretRow {
        let seal = |v: i64| key.new_version(&context("s", "db", v), value).ok();
        store
            .put_secret("s", "db", &key.mac(value), &seal, now)
            .await
            .unwrap()
            .unwrap()
    }

    fn mount(row: &SecretRow) -> SecretMount {
        SecretMount {
            name: row.name.clone(),
            version: u64::try_from(row.version).unwrap(),
            digest: String::new(),
            id: row.id.clone(),
            check: row.check.clone().unwrap(),
            target: "/run/secrets/db".into(),
        }
    }

    #[tokio::test]
    async fn versions_get_random_ids_and_a_same_value_is_not_a_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::load_or_create(dir.path()).unwrap();
        let store = SqliteStore::open(&dir.path().join("skiff.db"))
            .await
            .unwrap();
        let v1 = put(&store, &key, b"hunter2", 1).await;
        assert_eq!(v1.version, 1);
        assert_eq!(v1.id.len(), 32);
        mount(&v1).verify(b"hunter2").unwrap();
        assert_eq!(
            put(&store, &key, b"hunter2", 2).await.id,
            v1.id,
            "same value"
        );
        let v2 = put(&store, &key, b"rotated", 3).await;
        assert_eq!(v2.version, 2);
        assert_ne!(v2.id, v1.id);
        assert_eq!(store.secrets("s").await.unwrap(), vec![v2.clone()]);
        let old = store.secret_version("s", "db", 1).await.unwrap().unwrap();
        assert_eq!((old.id, old.check), (v1.id.clone(), v1.check.clone()));
        // A removed secret set again is a new version, even with the old value.
        assert!(store.remove_secret("s", "db", 4).await.unwrap());
        assert_eq!(put(&store, &key, b"rotated", 5).await.version, 3);
        assert!(store.incomplete_secrets().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn versions_stored_before_ids_get_ids_and_check_values_and_lose_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::load_or_create(dir.path()).unwrap();
        let path = dir.path().join("skiff.db");
        // A database as the release before ids left it.
        {
            let opts = SqliteConnectOptions::from_str("sqlite:")
                .unwrap()
                .filename(&path)
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
            let all = super::super::migrator();
            let before = sqlx::migrate::Migrator::with_migrations(
                all.migrations
                    .iter()
                    .filter(|m| m.version < 10)
                    .cloned()
                    .collect(),
            );
            before.run(&pool).await.unwrap();
            for (version, value) in [(1, b"hunter2".as_slice()), (2, b"rotated")] {
                sqlx::query(
                    "INSERT INTO secrets (stack, name, version, digest, sealed, created_at) \
                     VALUES ('s', 'db', ?, ?, ?, 1)",
                )
                .bind(version)
                .bind(hex::encode(skiff_shared::sha256(value)))
                .bind(key.seal(&context("s", "db", version), value).unwrap())
                .execute(&pool)
                .await
                .unwrap();
            }
            // Sealed with a key since lost: it cannot be completed.
            let lost = SecretKey::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
            sqlx::query(
                "INSERT INTO secrets (stack, name, version, digest, sealed, created_at) \
                 VALUES ('t', 'api', 1, 'x', ?, 1)",
            )
            .bind(lost.seal(&context("t", "api", 1), b"gone").unwrap())
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let store = SqliteStore::open(&path).await.unwrap();
        let digests: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pragma_table_info('secrets') WHERE name = 'digest'",
        )
        .fetch_one(&store.pool)
        .await
        .unwrap();
        assert_eq!(digests, 0, "the digest column is gone");
        assert_eq!(store.incomplete_secrets().await.unwrap().len(), 3);
        assert_eq!(complete_versions(&store, &key).await.unwrap(), 2);
        let left = store.incomplete_secrets().await.unwrap();
        assert_eq!((left.len(), left[0].stack.as_str()), (1, "t"));

        let v1 = store.secret_version("s", "db", 1).await.unwrap().unwrap();
        let v2 = store.secret_version("s", "db", 2).await.unwrap().unwrap();
        assert!(v1.id.len() == 32 && v2.id.len() == 32 && v1.id != v2.id);
        mount(&v1).verify(b"hunter2").unwrap();
        assert_eq!(v2.check, Some(secret_check(&v2.id, b"rotated")));
        // The completed MAC recognises the latest value.
        assert_eq!(put(&store, &key, b"rotated", 9).await.version, 2);
        assert_eq!(put(&store, &key, b"new", 9).await.version, 3);
        let t = store.secret_version("t", "api", 1).await.unwrap().unwrap();
        assert_eq!(t.check, None);
    }
}
