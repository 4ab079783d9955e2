//! The networks controller: makes the stack networks on this host match
//! the `networks` section of the plan. It creates them as bridges labelled
//! as its own (`skiff.node`, `skiff.stack`, `skiff.network`) and removes
//! the ones no longer wanted once no container uses them. Networks it did
//! not label are never touched.
//!
//! With a cluster network, each bridge (`sk-<id>`) is made with the
//! network's cluster-wide subnet, the host's first lease as the range the
//! engine hands out, the plan's gateway, the cluster's MTU and Docker's
//! masquerade off, and labelled with those settings (`skiff.settings`): a
//! network made with other settings is remade once no container uses it,
//! and reported until then. A subnet that overlaps a route the agent did
//! not make is reported, not made. Proxy ARP is kept on on every bridge.
//! Every round it also sets the firewall's networks part and the leases
//! the containers controller hands addresses from.
//!
//! - [`diff`]: the pure decisions (changes, problems, firewall, leases).
//! - `host`: reading routes and writing the bridges' sysctls.
//!
//! The containers controller waits for a container's networks before it
//! creates the container; a network created here wakes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
use skiff_shared::sections::networks::{
    NetworkProblem, NetworkSpec, Networks, NetworksReport, NetworksSection,
};
use skiff_shared::workload::{LABEL_NETWORK, LABEL_NODE, LABEL_STACK};
use tracing::{debug, info, warn};

use crate::controller::{Context, Pace, Reconcile, Reporter, Versioned, drive};
use crate::engine::{EngineHandle, changes, node_filter};
use crate::firewall::Firewall;
use crate::leases::Leases;
use crate::supervisor::Host;
use crate::weave::Weave;

pub mod diff;
mod host;

pub use diff::{Action, Observed, Settings};

/// The label holding the settings a cluster network's bridge was made with.
pub const LABEL_SETTINGS: &str = "skiff.settings";

/// The networks controller.
#[derive(Debug)]
pub struct Controller {
    node_id: String,
    engine: EngineHandle,
    firewall: Arc<Firewall>,
    leases: Arc<Leases>,
    weave: Arc<Weave>,
}

impl Controller {
    pub fn new(host: &Host) -> Self {
        Self {
            node_id: host.node_id.clone(),
            engine: host.engine.clone(),
            firewall: host.firewall.clone(),
            leases: host.leases.clone(),
            weave: host.weave.clone(),
        }
    }
}

impl crate::controller::Controller for Controller {
    type Kind = Networks;

    async fn run(self: Arc<Self>, cx: Context<Networks>) {
        let Some(docker) = self.engine.get(&cx.tree).await else {
            return;
        };
        let r = Reconciler {
            docker,
            node_id: self.node_id.clone(),
            firewall: self.firewall.clone(),
            leases: self.leases.clone(),
            weave: self.weave.clone(),
            reporter: cx.reports,
            last: Mutex::default(),
            failed: Mutex::default(),
            firewall_said: Mutex::default(),
            section: Mutex::default(),
        };
        drive(&r, cx.desired, &cx.tree, Pace::default(), None).await;
    }
}

/// A failed engine call, naming what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("Docker Engine error while {what}: {source}")]
pub struct NetworkError {
    what: String,
    source: bollard::errors::Error,
}

struct Reconciler {
    docker: bollard::Docker,
    node_id: String,
    firewall: Arc<Firewall>,
    leases: Arc<Leases>,
    weave: Arc<Weave>,
    reporter: Reporter<Networks>,
    /// What the last round observed: the problems are decided from it.
    last: Mutex<Option<diff::Host>>,
    /// The changes that failed in the last round, by network.
    failed: Mutex<Vec<NetworkProblem>>,
    /// The firewall error last logged.
    firewall_said: Mutex<Option<String>>,
    /// The section of the last round: which containers' Weave addresses
    /// an observation finds.
    section: Mutex<Option<Arc<NetworksSection>>>,
}

impl Reconciler {
    async fn observe_network(&self, n: bollard::models::Network) -> Option<Observed> {
        let labels = n.labels.unwrap_or_default();
        let name = n.name?;
        // Stopped containers too: they would not start again on a network
        // remade under them (the engine's inspect lists running ones only).
        let in_use = match self
            .docker
            .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                all: true,
                filters: Some(HashMap::from([("network".to_owned(), vec![name.clone()])])),
                ..Default::default()
            }))
            .await
        {
            Ok(list) => !list.is_empty(),
            // Unreadable: taken as used (never remade).
            Err(_) => true,
        };
        let bridge = n
            .options
            .unwrap_or_default()
            .get(host::OPTION_BRIDGE)
            .map(|b| diff::Bridge {
                proxy_arp: host::proxy_arp_on(b),
                name: b.clone(),
            });
        Some(Observed {
            name,
            stack: labels.get(LABEL_STACK)?.clone(),
            network: labels.get(LABEL_NETWORK)?.clone(),
            settings: labels.get(LABEL_SETTINGS).cloned(),
            in_use,
            bridge,
        })
    }

    async fn create(&self, spec: &NetworkSpec, settings: &Settings) -> Result<(), NetworkError> {
        let name = spec.engine_name(&self.node_id);
        let mut labels = HashMap::from([
            (LABEL_NODE.to_owned(), self.node_id.clone()),
            (LABEL_STACK.to_owned(), spec.stack.clone()),
            (LABEL_NETWORK.to_owned(), spec.name.clone()),
        ]);
        let mut request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            internal: Some(spec.internal),
            ..Default::default()
        };
        if let Settings::Cluster(c) = settings {
            info!(network = %name, bridge = %c.bridge, subnet = %c.subnet, range = %c.ip_range, "Creating cluster network.");
            labels.insert(LABEL_SETTINGS.to_owned(), c.fingerprint());
            request.ipam = Some(Ipam {
                driver: Some("default".into()),
                config: Some(vec![IpamConfig {
                    subnet: Some(c.subnet.to_string()),
                    ip_range: Some(c.ip_range.to_string()),
                    gateway: Some(c.gateway.to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            });
            request.options = Some(HashMap::from([
                (host::OPTION_BRIDGE.to_owned(), c.bridge.clone()),
                (
                    "com.docker.network.driver.mtu".to_owned(),
                    c.mtu.to_string(),
                ),
                (
                    "com.docker.network.bridge.enable_ip_masquerade".to_owned(),
                    "false".to_owned(),
                ),
            ]));
        } else {
            info!(network = %name, "Creating network.");
        }
        request.labels = Some(labels);
        self.docker
            .create_network(request)
            .await
            .map(|_| ())
            .map_err(|source| NetworkError {
                what: format!("creating network {name}"),
                source,
            })
    }

    /// This node's containers as Weave attachment needs them: with their
    /// main process's pid while they run, if `pids` (the `weave` bridge is
    /// there; none are looked into otherwise).
    async fn weave_containers(
        &self,
        pids: bool,
    ) -> Result<Vec<crate::weave::diff::Container>, NetworkError> {
        let filters = HashMap::from([("label".to_owned(), vec![node_filter(&self.node_id)])]);
        let list = self
            .docker
            .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|source| NetworkError {
                what: "listing containers".into(),
                source,
            })?;
        let mut out = Vec::with_capacity(list.len());
        for c in list {
            let Some(id) = c.id else { continue };
            let running = c
                .state
                .is_some_and(|s| s == bollard::models::ContainerSummaryStateEnum::RUNNING);
            let networks = c
                .network_settings
                .and_then(|n| n.networks)
                .map(|n| n.into_keys().collect())
                .unwrap_or_default();
            let pid = if pids && running {
                self.docker
                    .inspect_container(
                        &id,
                        None::<bollard::query_parameters::InspectContainerOptions>,
                    )
                    .await
                    .ok()
                    .and_then(|i| i.state?.pid)
                    .and_then(|p| u32::try_from(p).ok())
                    .filter(|p| *p != 0)
            } else {
                None
            };
            out.push(crate::weave::diff::Container { id, pid, networks });
        }
        Ok(out)
    }

    /// Makes one change; an error is the network's problem this round.
    async fn apply_one(&self, action: &Action) -> Result<(), String> {
        match action {
            Action::Create { spec, settings } => {
                self.create(spec, settings).await.map_err(|e| e.to_string())
            }
            Action::Replace {
                name,
                spec,
                settings,
            } => {
                info!(network = %name, "Remaking network with the plan's settings.");
                self.docker
                    .remove_network(name)
                    .await
                    .map_err(|e| format!("removing {name} to remake it: {e}"))?;
                self.create(spec, settings).await.map_err(|e| e.to_string())
            }
            Action::Remove { name } => {
                match self.docker.remove_network(name).await {
                    Ok(()) => info!(network = %name, "Removed unused network."),
                    Err(e) => debug!(network = %name, error = %e, "Network not removed yet."),
                }
                Ok(())
            }
            Action::ProxyArp { bridge, .. } => {
                host::set_proxy_arp(bridge).map_err(|e| e.to_string())?;
                debug!(bridge = %bridge, "Proxy ARP on.");
                Ok(())
            }
            Action::Weave(a) => self.weave.apply(a).await,
        }
    }
}

impl Reconcile for Reconciler {
    type Kind = Networks;
    type Observed = diff::Host;
    type Action = Action;
    type Error = NetworkError;

    async fn observe(&self) -> Result<diff::Host, NetworkError> {
        let filters = HashMap::from([("label".to_owned(), vec![node_filter(&self.node_id)])]);
        let list = self
            .docker
            .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|source| NetworkError {
                what: "listing networks".into(),
                source,
            })?;
        let mut networks = Vec::with_capacity(list.len());
        for n in list {
            networks.extend(self.observe_network(n).await);
        }
        let bridge_mtu = crate::weave::bridge_mtu().await;
        let containers = self.weave_containers(bridge_mtu.is_some()).await?;
        let observed = diff::Host {
            networks,
            routes: host::routes(),
            node_id: self.node_id.clone(),
            weave: self.weave.observe(bridge_mtu, containers).await,
        };
        // What is attached now (attachments of this round add to it).
        if let Some(section) = self
            .section
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            self.weave.set_addresses(crate::weave::diff::addresses(
                section,
                &self.node_id,
                &observed.weave,
            ));
        }
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(observed.clone());
        Ok(observed)
    }

    fn diff(desired: &NetworksSection, observed: &diff::Host) -> Vec<Action> {
        diff::diff(desired, observed)
    }

    async fn apply(&self, actions: &[Action]) -> Result<(), NetworkError> {
        let mut failed = Vec::new();
        for action in actions {
            if let Err(error) = self.apply_one(action).await {
                warn!(error = %error, "A network change failed.");
                if let Some((stack, name)) = action.network() {
                    failed.push(NetworkProblem {
                        stack: stack.to_owned(),
                        name: name.to_owned(),
                        error,
                    });
                }
            }
        }
        *self.failed.lock().unwrap_or_else(PoisonError::into_inner) = failed;
        Ok(())
    }

    /// Network changes (a container leaving one makes it removable), and
    /// this node's containers going away.
    fn wakeups(&self) -> futures_util::stream::BoxStream<'static, ()> {
        let networks = HashMap::from([("type".to_owned(), vec!["network".to_owned()])]);
        // Started: attached to Weave Net in weave mode.
        let containers = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            (
                "event".to_owned(),
                vec!["destroy".to_owned(), "start".to_owned()],
            ),
            ("label".to_owned(), vec![node_filter(&self.node_id)]),
        ]);
        Box::pin(futures_util::stream::select(
            changes(&self.docker, networks),
            changes(&self.docker, containers),
        ))
    }

    /// Sets the firewall's part and the leases, and reports.
    async fn after_round(&self, desired: &Versioned<NetworksSection>, error: Option<String>) {
        let section = &desired.value;
        self.leases.set(diff::leases(section, &self.node_id));
        self.weave
            .set_networks(crate::weave::diff::engine_names(section, &self.node_id));
        let first = self
            .section
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(section.clone())
            .is_none();
        let firewall_error = match diff::rules(section) {
            Err(e) => Some(e),
            Ok(rules) => {
                let on = rules.is_some();
                match self.firewall.set_networks(rules).await {
                    Err(e) => Some(e.to_string()),
                    Ok(()) if on => self
                        .firewall
                        .ensure_docker_user()
                        .await
                        .err()
                        .map(|e| e.to_string()),
                    Ok(()) => None,
                }
            }
        };
        {
            // Said once per distinct error, not every round.
            let mut said = self
                .firewall_said
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if firewall_error != *said {
                match &firewall_error {
                    Some(e) => warn!(error = %e, "The firewall is not set; retrying every round."),
                    None if said.is_some() => info!("The firewall is set."),
                    None => {}
                }
                said.clone_from(&firewall_error);
            }
        }
        let last = self
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut problems = last
            .map(|host| {
                if first {
                    // The first round's observation knew no section.
                    self.weave.add_addresses(crate::weave::diff::addresses(
                        section,
                        &self.node_id,
                        &host.weave,
                    ));
                }
                diff::problems(section, &host, &self.weave.api().to_string())
            })
            .unwrap_or_default();
        problems.extend(
            self.failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned(),
        );
        if let Some(e) = error {
            debug!(error = %e, "Networks not observed this round.");
        }
        self.reporter.send(
            &NetworksReport {
                problems,
                firewall_error,
            }
            .fit(),
        );
    }
}

#[cfg(test)]
mod live_tests;
