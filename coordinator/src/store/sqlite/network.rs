//! The cluster network in SQLite (`cluster_networks`, `subnet_leases`,
//! `mesh_hosts`).

use async_trait::async_trait;

use super::SqliteStore;
use crate::store::{ClusterNetworkRow, LeaseRow, MeshHostRow, NetworkStore, Result};

#[async_trait]
impl NetworkStore for SqliteStore {
    async fn cluster_networks(&self) -> Result<Vec<ClusterNetworkRow>> {
        let rows: Vec<(i64, String, String, String)> =
            sqlx::query_as("SELECT id, stack, name, subnet FROM cluster_networks ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(id, stack, name, subnet)| ClusterNetworkRow {
                id,
                stack,
                name,
                subnet,
            })
            .collect())
    }

    async fn add_cluster_network(
        &self,
        stack: &str,
        name: &str,
        subnet: &str,
        now: i64,
    ) -> Result<i64> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO cluster_networks (stack, name, subnet, created_at) VALUES (?, ?, ?, ?) \
             RETURNING id",
        )
        .bind(stack)
        .bind(name)
        .bind(subnet)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    async fn remove_cluster_network(&self, id: i64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM subnet_leases WHERE network_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM cluster_networks WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn leases(&self) -> Result<Vec<LeaseRow>> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT network_id, node_id, subnet FROM subnet_leases ORDER BY network_id, node_id, subnet",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(network_id, node_id, subnet)| LeaseRow {
                network_id,
                node_id,
                subnet,
            })
            .collect())
    }

    async fn add_lease(&self, lease: &LeaseRow, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO subnet_leases (subnet, network_id, node_id, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&lease.subnet)
        .bind(lease.network_id)
        .bind(&lease.node_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn remove_leases(&self, network_id: i64, node_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM subnet_leases WHERE network_id = ? AND node_id = ?")
            .bind(network_id)
            .bind(node_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn mesh_hosts(&self) -> Result<Vec<MeshHostRow>> {
        let rows: Vec<(String, String, Option<String>, Option<i64>)> = sqlx::query_as(
            "SELECT node_id, address, public_key, underlay_mtu FROM mesh_hosts ORDER BY node_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(node_id, address, public_key, mtu)| MeshHostRow {
                node_id,
                address,
                public_key,
                underlay_mtu: mtu.and_then(|m| u32::try_from(m).ok()),
            })
            .collect())
    }

    async fn put_mesh_host(&self, host: &MeshHostRow, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO mesh_hosts (node_id, address, public_key, underlay_mtu, updated_at) \
             VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (node_id) DO UPDATE SET address = excluded.address, \
             public_key = excluded.public_key, underlay_mtu = excluded.underlay_mtu, \
             updated_at = excluded.updated_at",
        )
        .bind(&host.node_id)
        .bind(&host.address)
        .bind(&host.public_key)
        .bind(host.underlay_mtu.map(i64::from))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn remove_mesh_host(&self, node_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM mesh_hosts WHERE node_id = ?")
            .bind(node_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
