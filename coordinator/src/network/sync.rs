//! [`ClusterNetwork::sync`]: the records follow the containers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use skiff_shared::workload::ContainerSpec;
use tracing::{info, warn};

use super::{ClusterNetwork, Host, Net, NetworkError, in_use, ipam, networks_of};
use crate::now_ms;
use crate::store::{LeaseRow, MeshHostRow, NodeRow};

/// (stack, network name).
type Key = (String, String);

impl ClusterNetwork {
    /// Brings networks, leases and hosts in line with `containers`, the
    /// containers every live node will run: a network gets a subnet when
    /// it first has containers, and a lease on each host where it has
    /// them, grown when its replicas there outgrow it; leases go when the
    /// network's containers have left the host (as the host last
    /// reported), networks when they have none anywhere. Returns whether
    /// anything changed (every node's plan then needs building again).
    /// Call it holding the plan book's lock.
    ///
    /// # Errors
    /// A range or subnet has no room left, or the store failed; what was
    /// recorded before the failure stays recorded, and is valid.
    pub async fn sync(
        &self,
        containers: &BTreeMap<String, Vec<ContainerSpec>>,
    ) -> Result<bool, NetworkError> {
        let nodes = self.store.nodes(false).await?;
        let live: BTreeSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();

        // Which network runs on which node, with how many containers, and
        // which (network, node) pairs are still in use.
        let mut wanted: BTreeMap<Key, BTreeMap<String, usize>> = BTreeMap::new();
        let mut kept: BTreeSet<(Key, String)> = BTreeSet::new();
        for (node, specs) in containers.iter().filter(|(n, _)| live.contains(n.as_str())) {
            for (net, count) in networks_of(specs) {
                kept.insert((net.clone(), node.clone()));
                wanted.entry(net).or_default().insert(node.clone(), count);
            }
        }
        for node in &live {
            for net in in_use(&self.observed, node) {
                kept.insert((net, (*node).to_owned()));
            }
        }

        let mut changed = self.forget_networks(&wanted, &kept).await?;
        changed |= self.record_networks(&wanted).await?;
        changed |= self.lease(&wanted).await?;
        changed |= self.reclaim(&kept).await?;
        changed |= self.sync_hosts(&nodes).await?;

        let mut s = self.lock();
        let mtu = self.underlay_mtu(&s);
        if s.planned_mtu != Some(mtu) {
            s.planned_mtu = Some(mtu);
            changed = true;
        }
        Ok(changed)
    }

    /// Forgets networks with no containers anywhere, and their leases.
    async fn forget_networks(
        &self,
        wanted: &BTreeMap<Key, BTreeMap<String, usize>>,
        kept: &BTreeSet<(Key, String)>,
    ) -> Result<bool, NetworkError> {
        let gone: Vec<(Key, Net)> = self
            .lock()
            .nets
            .iter()
            .filter(|(k, _)| !wanted.contains_key(*k) && !kept.iter().any(|(kk, _)| kk == *k))
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        for (key, net) in &gone {
            self.store.remove_cluster_network(net.id).await?;
            info!(network = %format!("{}/{}", key.0, key.1), subnet = %net.subnet, "Network subnet released.");
            let mut s = self.lock();
            s.nets.remove(key);
            s.leases.retain(|(id, _), _| *id != net.id);
        }
        Ok(!gone.is_empty())
    }

    /// Gives every wanted network without one an id and a subnet.
    async fn record_networks(
        &self,
        wanted: &BTreeMap<Key, BTreeMap<String, usize>>,
    ) -> Result<bool, NetworkError> {
        let mut changed = false;
        for key in wanted.keys() {
            if self.lock().nets.contains_key(key) {
                continue;
            }
            let taken: Vec<Ipv4Net> = self.lock().nets.values().map(|n| n.subnet).collect();
            let prefix = self.settings.network_prefix;
            let subnet = self.settings.range.subnet(prefix, &taken).ok_or_else(|| {
                NetworkError::RangeFull {
                    range: self.settings.range.net,
                    prefix,
                    network: format!("{}/{}", key.0, key.1),
                }
            })?;
            let id = self
                .store
                .add_cluster_network(&key.0, &key.1, &subnet.to_string(), now_ms())
                .await?;
            info!(network = %format!("{}/{}", key.0, key.1), id, subnet = %subnet, "Network given a cluster subnet.");
            self.lock().nets.insert(key.clone(), Net { id, subnet });
            changed = true;
        }
        Ok(changed)
    }

    /// Leases a piece of each wanted network's subnet on every host where
    /// it runs, and more where its replicas outgrew what it has.
    async fn lease(
        &self,
        wanted: &BTreeMap<Key, BTreeMap<String, usize>>,
    ) -> Result<bool, NetworkError> {
        let mut changed = false;
        for (key, per_node) in wanted {
            let Some(net) = self.lock().nets.get(key).copied() else {
                continue;
            };
            for (node, count) in per_node {
                let pair = (net.id, node.clone());
                let have = self.lock().leases.get(&pair).cloned().unwrap_or_default();
                let capacity: usize = have.iter().map(ipam::capacity).sum();
                let need = ipam::need(*count);
                if !have.is_empty() && capacity >= need {
                    continue;
                }
                let prefix = ipam::prefix_for(
                    need.saturating_sub(capacity),
                    self.settings.lease_prefix,
                    net.subnet.prefix_len(),
                );
                let taken: Vec<Ipv4Net> = self
                    .lock()
                    .leases
                    .iter()
                    .filter(|((id, _), _)| *id == net.id)
                    .flat_map(|(_, l)| l.iter().copied())
                    .collect();
                let piece = ipam::first_free(&net.subnet, prefix, &taken).ok_or_else(|| {
                    NetworkError::NetworkFull {
                        network: format!("{}/{}", key.0, key.1),
                        subnet: net.subnet,
                        prefix,
                        node: node.clone(),
                    }
                })?;
                self.store
                    .add_lease(
                        &LeaseRow {
                            network_id: net.id,
                            node_id: node.clone(),
                            subnet: piece.to_string(),
                        },
                        now_ms(),
                    )
                    .await?;
                info!(network = %format!("{}/{}", key.0, key.1), node = %node, lease = %piece, "Subnet leased.");
                self.lock().leases.entry(pair).or_default().push(piece);
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Ends the leases of networks whose containers left a host.
    async fn reclaim(&self, kept: &BTreeSet<(Key, String)>) -> Result<bool, NetworkError> {
        let kept_ids: BTreeSet<(i64, &str)> = {
            let s = self.lock();
            kept.iter()
                .filter_map(|(k, node)| s.nets.get(k).map(|n| (n.id, node.as_str())))
                .collect()
        };
        let stale: Vec<(i64, String)> = self
            .lock()
            .leases
            .keys()
            .filter(|(id, node)| !kept_ids.contains(&(*id, node.as_str())))
            .cloned()
            .collect();
        for (id, node) in &stale {
            self.store.remove_leases(*id, node).await?;
            info!(network_id = id, node = %node, "Leases reclaimed.");
            self.lock().leases.remove(&(*id, node.clone()));
        }
        Ok(!stale.is_empty())
    }

    /// Every live node has a mesh address, with its endpoint and (once
    /// reported) its key stored; removed nodes have none.
    async fn sync_hosts(&self, nodes: &[NodeRow]) -> Result<bool, NetworkError> {
        let mut changed = false;
        let gone: Vec<String> = self
            .lock()
            .hosts
            .keys()
            .filter(|id| !nodes.iter().any(|n| n.id == **id))
            .cloned()
            .collect();
        for node in gone {
            self.store.remove_mesh_host(&node).await?;
            info!(node = %node, "Host left the mesh.");
            let mut s = self.lock();
            s.hosts.remove(&node);
            s.reports.remove(&node);
            s.problems.remove(&node);
            s.conflicts.remove(&node);
            changed = true;
        }
        for n in nodes {
            changed |= self.sync_host(n).await?;
        }
        Ok(changed)
    }

    async fn sync_host(&self, n: &NodeRow) -> Result<bool, NetworkError> {
        let endpoint = super::endpoint_of(n);
        let existing = self.lock().hosts.get(&n.id).cloned();
        let mut changed = false;
        let mut host = match existing {
            Some(h) => h,
            None => {
                let taken: BTreeSet<Ipv4Addr> =
                    self.lock().hosts.values().map(|h| h.address).collect();
                let address = self.settings.range.host_address(&taken).ok_or_else(|| {
                    NetworkError::NoHostAddress {
                        range: self.settings.range.net,
                        node: n.name.clone(),
                    }
                })?;
                info!(node = %n.name, address = %address, "Host joined the mesh.");
                changed = true;
                Host {
                    name: n.name.clone(),
                    address,
                    public_key: None,
                    underlay_mtu: None,
                    stored: false,
                    endpoint: None,
                }
            }
        };
        host.name = n.name.clone();
        if host.endpoint != endpoint {
            host.endpoint = endpoint;
            changed = true;
        }
        let reported = self
            .lock()
            .reports
            .get(&n.id)
            .and_then(|r| r.public_key.clone());
        if reported.is_some() && reported != host.public_key {
            host.public_key = reported;
            host.stored = false;
            changed = true;
        }
        if !host.stored {
            self.store
                .put_mesh_host(
                    &MeshHostRow {
                        node_id: n.id.clone(),
                        address: host.address.to_string(),
                        public_key: host.public_key.clone(),
                        underlay_mtu: host.underlay_mtu,
                    },
                    now_ms(),
                )
                .await?;
            host.stored = true;
        }
        let conflict = self.conflict(n, host.address);
        let mut s = self.lock();
        match conflict {
            Some(why) => {
                if s.conflicts.get(&n.id) != Some(&why) {
                    warn!(node = %n.name, reason = %why, "Host overlaps the cluster range.");
                }
                s.conflicts.insert(n.id.clone(), why);
            }
            None => {
                s.conflicts.remove(&n.id);
            }
        }
        // A report may have come in meanwhile with a new underlay MTU: it
        // stays, to be stored next time.
        if let Some(now) = s.hosts.get(&n.id)
            && now.underlay_mtu != host.underlay_mtu
        {
            host.underlay_mtu = now.underlay_mtu;
            host.stored = false;
        }
        s.hosts.insert(n.id.clone(), host);
        Ok(changed)
    }

    /// Why a host's own addresses clash with the cluster range, if they
    /// do: an address in the range that Skiff did not give it.
    fn conflict(&self, n: &NodeRow, mesh_address: Ipv4Addr) -> Option<String> {
        let s = self.lock();
        let ours = |a: &Ipv4Addr| {
            *a == mesh_address
                || s.leases
                    .iter()
                    .filter(|((_, node), _)| *node == n.id)
                    .any(|(_, leases)| leases.iter().any(|l| l.contains(a)))
        };
        n.facts
            .addresses
            .iter()
            .filter_map(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok())
            .find(|a| self.settings.range.net.contains(a) && !ours(a))
            .map(|a| {
                format!(
                    "its address {a} is in the cluster range {}: its containers cannot reach the cluster network, and traffic to {a} may go astray; give the host another address, or create the cluster with another [network] range",
                    self.settings.range.net
                )
            })
    }
}
