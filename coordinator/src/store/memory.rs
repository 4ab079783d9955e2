//! An in-memory [`DeployStore`](super::DeployStore): nodes, plans, stacks,
//! secrets and policy allowances in maps, with the SQLite store's
//! semantics. Unit tests of deploys and rollouts use it; nothing is
//! written anywhere.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use skiff_shared::protocol::HostFacts;

use super::{
    AllowanceRow, IncompleteSecret, NewSecretVersion, NodePlanRow, NodeRow, NodeStore, PlanStore,
    PolicyStore, ReleaseRow, ReleaseStatus, Result, SecretRow, SecretStore, StackRow, StackStore,
};
use super::{ClusterNetworkRow, LeaseRow, MeshHostRow, NetworkStore, StoreError};

#[derive(Debug, Default)]
struct Data {
    nodes: BTreeMap<String, NodeRow>,
    plans: BTreeMap<String, NodePlanRow>,
    /// By name, with when it was removed.
    stacks: BTreeMap<String, (StackRow, Option<i64>)>,
    releases: Vec<ReleaseRow>,
    /// By (stack, name, version).
    secrets: BTreeMap<(String, String, i64), Secret>,
    /// Policy allowances by (stack, setting), with when they were given.
    allowances: BTreeMap<(String, String), i64>,
    /// Cluster networks by id, the next id, leases, mesh hosts.
    networks: BTreeMap<i64, ClusterNetworkRow>,
    next_network: i64,
    leases: Vec<LeaseRow>,
    mesh_hosts: BTreeMap<String, MeshHostRow>,
}

/// One version of a secret.
#[derive(Clone)]
struct Secret {
    id: String,
    mac: Option<String>,
    check: Option<String>,
    sealed: String,
    created_at: i64,
    removed_at: Option<i64>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Secret {
    fn row(&self, name: &str, version: i64, created_at: i64) -> SecretRow {
        SecretRow {
            name: name.to_owned(),
            version,
            id: self.id.clone(),
            check: self.check.clone(),
            created_at,
        }
    }
}

/// The store in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    data: Mutex<Data>,
}

impl MemoryStore {
    fn lock(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a node as if it had joined.
    pub fn add_node(&self, node: NodeRow) {
        self.lock().nodes.insert(node.id.clone(), node);
    }
}

#[async_trait]
impl NodeStore for MemoryStore {
    async fn nodes(&self, include_removed: bool) -> Result<Vec<NodeRow>> {
        let mut out: Vec<NodeRow> = self
            .lock()
            .nodes
            .values()
            .filter(|n| include_removed || n.removed_at.is_none())
            .cloned()
            .collect();
        out.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        Ok(out)
    }

    async fn node(&self, id: &str) -> Result<Option<NodeRow>> {
        Ok(self.lock().nodes.get(id).cloned())
    }

    async fn node_connected(
        &self,
        id: &str,
        facts: &HostFacts,
        agent_version: &str,
        remote_addr: &str,
        now: i64,
    ) -> Result<()> {
        if let Some(n) = self.lock().nodes.get_mut(id) {
            n.facts = facts.clone();
            agent_version.clone_into(&mut n.agent_version);
            n.remote_addr = Some(remote_addr.to_owned());
            n.last_seen_at = Some(now);
        }
        Ok(())
    }

    async fn node_seen(&self, ids: &[String], now: i64) -> Result<()> {
        let mut data = self.lock();
        for id in ids {
            if let Some(n) = data.nodes.get_mut(id) {
                n.last_seen_at = Some(now);
            }
        }
        Ok(())
    }

    async fn set_node_labels(&self, id: &str, labels: &BTreeMap<String, String>) -> Result<bool> {
        Ok(match self.lock().nodes.get_mut(id) {
            Some(n) if n.removed_at.is_none() => {
                n.labels = labels.clone();
                true
            }
            _ => false,
        })
    }

    async fn set_node_cert(&self, id: &str, serial: &str, not_after: i64) -> Result<()> {
        if let Some(n) = self.lock().nodes.get_mut(id) {
            serial.clone_into(&mut n.cert_serial);
            n.cert_not_after = not_after;
        }
        Ok(())
    }

    async fn set_node_plan(&self, id: &str, generation: i64, error: Option<&str>) -> Result<()> {
        if let Some(n) = self.lock().nodes.get_mut(id) {
            n.plan_generation = Some(generation);
            n.plan_error = error.map(str::to_owned);
        }
        Ok(())
    }

    async fn remove_node(&self, id: &str, now: i64) -> Result<bool> {
        Ok(match self.lock().nodes.get_mut(id) {
            Some(n) if n.removed_at.is_none() => {
                n.removed_at = Some(now);
                true
            }
            _ => false,
        })
    }
}

#[async_trait]
impl PlanStore for MemoryStore {
    async fn node_plans(&self) -> Result<Vec<NodePlanRow>> {
        Ok(self.lock().plans.values().cloned().collect())
    }

    async fn put_node_plan(&self, plan: &NodePlanRow, _now: i64) -> Result<()> {
        self.lock().plans.insert(plan.node_id.clone(), plan.clone());
        Ok(())
    }
}

#[async_trait]
impl StackStore for MemoryStore {
    async fn insert_release(
        &self,
        stack: &str,
        compose: &str,
        services: &str,
        now: i64,
    ) -> Result<i64> {
        let mut data = self.lock();
        let number = data
            .releases
            .iter()
            .filter(|r| r.stack == stack)
            .map(|r| r.number)
            .max()
            .unwrap_or(0)
            + 1;
        data.releases.push(ReleaseRow {
            stack: stack.to_owned(),
            number,
            created_at: now,
            compose: compose.to_owned(),
            services: services.to_owned(),
            status: ReleaseStatus::Deploying,
            message: None,
        });
        let created_at = data.stacks.get(stack).map_or(now, |(s, _)| s.created_at);
        data.stacks.insert(
            stack.to_owned(),
            (
                StackRow {
                    name: stack.to_owned(),
                    current_release: number,
                    created_at,
                    updated_at: now,
                },
                None,
            ),
        );
        Ok(number)
    }

    async fn stacks(&self) -> Result<Vec<StackRow>> {
        Ok(self
            .lock()
            .stacks
            .values()
            .filter(|(_, removed)| removed.is_none())
            .map(|(s, _)| s.clone())
            .collect())
    }

    async fn releases(&self, stack: &str) -> Result<Vec<ReleaseRow>> {
        let mut out: Vec<ReleaseRow> = self
            .lock()
            .releases
            .iter()
            .filter(|r| r.stack == stack)
            .cloned()
            .collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.number));
        Ok(out)
    }

    async fn set_release_status(
        &self,
        stack: &str,
        number: i64,
        status: ReleaseStatus,
        message: Option<&str>,
    ) -> Result<()> {
        let mut data = self.lock();
        if let Some(r) = data
            .releases
            .iter_mut()
            .find(|r| r.stack == stack && r.number == number)
        {
            r.status = status;
            r.message = message.map(str::to_owned);
        }
        Ok(())
    }

    async fn set_current_release(&self, stack: &str, number: i64, now: i64) -> Result<()> {
        if let Some((s, _)) = self.lock().stacks.get_mut(stack) {
            s.current_release = number;
            s.updated_at = now;
        }
        Ok(())
    }

    async fn remove_stack(&self, stack: &str, now: i64) -> Result<bool> {
        Ok(match self.lock().stacks.get_mut(stack) {
            Some((_, removed @ None)) => {
                *removed = Some(now);
                true
            }
            _ => false,
        })
    }
}

#[async_trait]
impl PolicyStore for MemoryStore {
    async fn allowances(&self) -> Result<Vec<AllowanceRow>> {
        Ok(self
            .lock()
            .allowances
            .iter()
            .map(|((stack, setting), at)| AllowanceRow {
                stack: stack.clone(),
                setting: setting.clone(),
                created_at: *at,
            })
            .collect())
    }

    async fn stack_allowances(&self, stack: &str) -> Result<Vec<AllowanceRow>> {
        let mut all = self.allowances().await?;
        all.retain(|a| a.stack == stack);
        Ok(all)
    }

    async fn allow(&self, stack: &str, settings: &[String], now: i64) -> Result<()> {
        let mut data = self.lock();
        for s in settings {
            data.allowances
                .entry((stack.to_owned(), s.clone()))
                .or_insert(now);
        }
        Ok(())
    }

    async fn revoke(&self, stack: &str, settings: &[String]) -> Result<Vec<String>> {
        let mut data = self.lock();
        let missing: Vec<String> = settings
            .iter()
            .filter(|s| {
                !data
                    .allowances
                    .contains_key(&(stack.to_owned(), (*s).clone()))
            })
            .cloned()
            .collect();
        if missing.is_empty() {
            for s in settings {
                data.allowances.remove(&(stack.to_owned(), s.clone()));
            }
        }
        Ok(missing)
    }
}

#[async_trait]
impl SecretStore for MemoryStore {
    async fn put_secret(
        &self,
        stack: &str,
        name: &str,
        mac: &str,
        seal: &(dyn Fn(i64) -> Option<NewSecretVersion> + Sync),
        now: i64,
    ) -> Result<Option<SecretRow>> {
        let mut data = self.lock();
        let latest = data
            .secrets
            .iter()
            .filter(|((s, n, _), _)| s == stack && n == name)
            .max_by_key(|((_, _, v), _)| *v)
            .map(|((_, _, v), s)| (*v, s.clone()));
        if let Some((version, s)) = &latest
            && s.removed_at.is_none()
            && s.mac.as_deref() == Some(mac)
        {
            return Ok(Some(s.row(name, *version, now)));
        }
        let version = latest.map_or(1, |(v, _)| v + 1);
        let Some(new) = seal(version) else {
            return Ok(None);
        };
        let secret = Secret {
            id: new.id,
            mac: Some(mac.to_owned()),
            check: Some(new.check),
            sealed: new.sealed,
            created_at: now,
            removed_at: None,
        };
        let row = secret.row(name, version, now);
        data.secrets
            .insert((stack.to_owned(), name.to_owned(), version), secret);
        Ok(Some(row))
    }

    async fn secrets(&self, stack: &str) -> Result<Vec<SecretRow>> {
        let data = self.lock();
        let mut latest: BTreeMap<&str, (i64, &Secret)> = BTreeMap::new();
        for ((s, n, v), row) in &data.secrets {
            if s == stack && latest.get(n.as_str()).is_none_or(|(have, _)| v > have) {
                latest.insert(n, (*v, row));
            }
        }
        Ok(latest
            .into_iter()
            .filter(|(_, (_, s))| s.removed_at.is_none())
            .map(|(name, (version, s))| s.row(name, version, s.created_at))
            .collect())
    }

    async fn secret_version(
        &self,
        stack: &str,
        name: &str,
        version: i64,
    ) -> Result<Option<SecretRow>> {
        Ok(self
            .lock()
            .secrets
            .get(&(stack.to_owned(), name.to_owned(), version))
            .map(|s| s.row(name, version, s.created_at)))
    }

    async fn sealed_secret(&self, stack: &str, name: &str, version: i64) -> Result<Option<String>> {
        Ok(self
            .lock()
            .secrets
            .get(&(stack.to_owned(), name.to_owned(), version))
            .map(|s| s.sealed.clone()))
    }

    async fn remove_secret(&self, stack: &str, name: &str, now: i64) -> Result<bool> {
        let mut removed = false;
        for ((s, n, _), secret) in &mut self.lock().secrets {
            if s == stack && n == name && secret.removed_at.is_none() {
                secret.removed_at = Some(now);
                removed = true;
            }
        }
        Ok(removed)
    }

    async fn incomplete_secrets(&self) -> Result<Vec<IncompleteSecret>> {
        Ok(self
            .lock()
            .secrets
            .iter()
            .filter(|(_, s)| s.mac.is_none() || s.check.is_none())
            .map(|((stack, name, version), s)| IncompleteSecret {
                stack: stack.clone(),
                name: name.clone(),
                version: *version,
                id: s.id.clone(),
                sealed: s.sealed.clone(),
            })
            .collect())
    }

    async fn complete_secret(&self, id: &str, mac: &str, check: &str) -> Result<()> {
        for secret in self.lock().secrets.values_mut() {
            if secret.id == id {
                secret.mac = Some(mac.to_owned());
                secret.check = Some(check.to_owned());
            }
        }
        Ok(())
    }
}

#[async_trait]
impl NetworkStore for MemoryStore {
    async fn cluster_networks(&self) -> Result<Vec<ClusterNetworkRow>> {
        Ok(self.lock().networks.values().cloned().collect())
    }

    async fn add_cluster_network(
        &self,
        stack: &str,
        name: &str,
        subnet: &str,
        _now: i64,
    ) -> Result<i64> {
        let mut data = self.lock();
        if data
            .networks
            .values()
            .any(|n| (n.stack == stack && n.name == name) || n.subnet == subnet)
        {
            return Err(StoreError::Corrupt(format!(
                "network {stack}/{name} or subnet {subnet} is recorded already"
            )));
        }
        data.next_network += 1;
        let id = data.next_network;
        data.networks.insert(
            id,
            ClusterNetworkRow {
                id,
                stack: stack.to_owned(),
                name: name.to_owned(),
                subnet: subnet.to_owned(),
            },
        );
        Ok(id)
    }

    async fn remove_cluster_network(&self, id: i64) -> Result<()> {
        let mut data = self.lock();
        data.networks.remove(&id);
        data.leases.retain(|l| l.network_id != id);
        Ok(())
    }

    async fn leases(&self) -> Result<Vec<LeaseRow>> {
        Ok(self.lock().leases.clone())
    }

    async fn add_lease(&self, lease: &LeaseRow, _now: i64) -> Result<()> {
        let mut data = self.lock();
        if data.leases.iter().any(|l| l.subnet == lease.subnet) {
            return Err(StoreError::Corrupt(format!(
                "subnet {} is leased already",
                lease.subnet
            )));
        }
        data.leases.push(lease.clone());
        Ok(())
    }

    async fn remove_leases(&self, network_id: i64, node_id: &str) -> Result<()> {
        self.lock()
            .leases
            .retain(|l| !(l.network_id == network_id && l.node_id == node_id));
        Ok(())
    }

    async fn mesh_hosts(&self) -> Result<Vec<MeshHostRow>> {
        Ok(self.lock().mesh_hosts.values().cloned().collect())
    }

    async fn put_mesh_host(&self, host: &MeshHostRow, _now: i64) -> Result<()> {
        self.lock()
            .mesh_hosts
            .insert(host.node_id.clone(), host.clone());
        Ok(())
    }

    async fn remove_mesh_host(&self, node_id: &str) -> Result<()> {
        self.lock().mesh_hosts.remove(node_id);
        Ok(())
    }
}
