//! The container policy's allowances in SQLite (`policy_allowances`).

use async_trait::async_trait;

use super::SqliteStore;
use crate::store::{AllowanceRow, PolicyStore, Result};

fn rows(rows: Vec<(String, String, i64)>) -> Vec<AllowanceRow> {
    rows.into_iter()
        .map(|(stack, setting, created_at)| AllowanceRow {
            stack,
            setting,
            created_at,
        })
        .collect()
}

#[async_trait]
impl PolicyStore for SqliteStore {
    async fn allowances(&self) -> Result<Vec<AllowanceRow>> {
        Ok(rows(
            sqlx::query_as(
                "SELECT stack, setting, created_at FROM policy_allowances ORDER BY stack, setting",
            )
            .fetch_all(&self.pool)
            .await?,
        ))
    }

    async fn stack_allowances(&self, stack: &str) -> Result<Vec<AllowanceRow>> {
        Ok(rows(
            sqlx::query_as(
                "SELECT stack, setting, created_at FROM policy_allowances WHERE stack = ? ORDER BY setting",
            )
            .bind(stack)
            .fetch_all(&self.pool)
            .await?,
        ))
    }

    async fn allow(&self, stack: &str, settings: &[String], now: i64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        for setting in settings {
            sqlx::query(
                "INSERT INTO policy_allowances (stack, setting, created_at) VALUES (?, ?, ?) \
                 ON CONFLICT (stack, setting) DO NOTHING",
            )
            .bind(stack)
            .bind(setting)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn revoke(&self, stack: &str, settings: &[String]) -> Result<Vec<String>> {
        let mut tx = self.write_tx().await?;
        let mut missing = Vec::new();
        for setting in settings {
            let done = sqlx::query("DELETE FROM policy_allowances WHERE stack = ? AND setting = ?")
                .bind(stack)
                .bind(setting)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() == 0 {
                missing.push(setting.clone());
            }
        }
        if missing.is_empty() {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn allowances_are_kept_per_stack_and_revoked_all_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("skiff.db"))
            .await
            .unwrap();
        let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        store
            .allow("shop", &s(&["privileged", "bind:/etc"]), 1)
            .await
            .unwrap();
        store.allow("shop", &s(&["privileged"]), 2).await.unwrap();
        store.allow("mon", &s(&["host-pid"]), 3).await.unwrap();
        let all = store.allowances().await.unwrap();
        let listed: Vec<(&str, &str, i64)> = all
            .iter()
            .map(|a| (a.stack.as_str(), a.setting.as_str(), a.created_at))
            .collect();
        assert_eq!(
            listed,
            vec![
                ("mon", "host-pid", 3),
                ("shop", "bind:/etc", 1),
                ("shop", "privileged", 1)
            ],
            "allowing again keeps the first time"
        );
        assert_eq!(
            store
                .revoke("shop", &s(&["privileged", "host-ipc"]))
                .await
                .unwrap(),
            vec!["host-ipc".to_owned()]
        );
        assert_eq!(
            store.stack_allowances("shop").await.unwrap().len(),
            2,
            "nothing revoked when one was not allowed"
        );
        assert!(
            store
                .revoke("shop", &s(&["privileged"]))
                .await
                .unwrap()
                .is_empty()
        );
        let left = store.stack_allowances("shop").await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].setting, "bind:/etc");
    }
}
