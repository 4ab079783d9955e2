//! The containers controller's side that talks to the Docker Engine: list
//! this node's containers, the engine's networks and the delivered
//! secrets, report their status, and apply [`Action`]s.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use bollard::Docker;
use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, StartContainerOptions,
    StopContainerOptions,
};
use futures_util::stream::FuturesUnordered;
use futures_util::{StreamExt, stream};
use skiff_shared::workload::{
    ContainerAddress, ContainerSpec, ContainerState, ContainerStatus, FailureStage, Health,
    LABEL_KEY, LABEL_NAME, LABEL_SPEC,
};
use tracing::{debug, info};

use super::diff::{Action, Host, Observed, State, network_name};
use crate::engine::node_filter;
use crate::leases::Leases;

/// The endpoint setting that asks for a network's explicit address, if
/// the container has one there.
pub(super) fn endpoint_address(
    addresses: &Addresses,
    network: &str,
) -> Option<bollard::models::EndpointIpamConfig> {
    addresses
        .get(network)
        .map(|a| bollard::models::EndpointIpamConfig {
            ipv4_address: Some(a.to_string()),
            ..Default::default()
        })
}

/// Default time between SIGTERM and SIGKILL.
const DEFAULT_GRACE_SECS: i32 = 10;

/// How many containers are created, started, removed or inspected at once.
/// The engine overlaps much of the work of one container's create and
/// start (the runtime, the shim, network setup) with another's: on a
/// 2-core machine, 20 containers took about 60% of the sequential time
/// four at a time, and eight at a time gained nothing more.
const PARALLEL: usize = 4;

/// A reconcile step that failed, naming the container and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("Docker Engine error while {what}: {source}")]
    Docker {
        what: String,
        source: bollard::errors::Error,
    },
    #[error("image {image} is not on this host and could not be pulled: {reason}")]
    Image { image: String, reason: String },
    #[error("network {network}: {reason}")]
    Network { network: String, reason: String },
    /// A secret not delivered, or delivered with a value the plan does not name.
    #[error("{container}: {source}")]
    Secret {
        container: String,
        source: super::secrets::MountError,
    },
    #[error("cannot remove unused secret {file}: {source}")]
    DropSecret {
        file: String,
        source: std::io::Error,
    },
}

/// The agent's handle on its engine, scoped to its own node id.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(super) docker: Docker,
    pub(super) node_id: String,
    /// Where delivered secrets are stored (see [`super::secrets`]).
    secrets_dir: Option<PathBuf>,
    /// Where delivered registry credentials are stored (see [`super::registries`]).
    pub(super) registries_file: Option<PathBuf>,
    /// The cluster networks' leases here, for addresses beyond the first.
    leases: Option<Arc<Leases>>,
    /// The containers' addresses on Weave Net (mesh `weave`), reported as
    /// their addresses on those networks.
    weave: Option<Arc<crate::weave::Weave>>,
    /// Containers that could not be pulled, created or started, reported
    /// until they run.
    pub(super) failures: Arc<super::failures::Failures>,
}

/// The explicit addresses a new container gets, by engine network name.
pub(super) type Addresses = HashMap<String, Ipv4Addr>;

pub(super) fn docker_err(
    what: impl Into<String>,
) -> impl FnOnce(bollard::errors::Error) -> ApplyError {
    let what = what.into();
    move |source| ApplyError::Docker { what, source }
}

impl Engine {
    pub fn new(docker: Docker, node_id: impl Into<String>) -> Self {
        Self {
            docker,
            node_id: node_id.into(),
            secrets_dir: None,
            registries_file: None,
            leases: None,
            weave: None,
            failures: Arc::default(),
        }
    }

    /// Reports the containers' Weave addresses (and wakes on their
    /// changes).
    pub fn with_weave(mut self, weave: Arc<crate::weave::Weave>) -> Self {
        self.weave = Some(weave);
        self
    }

    /// Gives containers addresses from later leases once a cluster
    /// network's first lease is full.
    pub fn with_leases(mut self, leases: Arc<Leases>) -> Self {
        self.leases = Some(leases);
        self
    }

    /// The addresses `spec`'s container gets on the networks whose first
    /// lease is full here (the engine picks the others), each the lowest
    /// free one of the later leases.
    async fn addresses(&self, spec: &ContainerSpec) -> Result<Addresses, ApplyError> {
        let mut out = Addresses::new();
        let Some(leases) = &self.leases else {
            return Ok(out);
        };
        if spec.runtime.host_network {
            return Ok(out);
        }
        for net in &spec.networks {
            let name = network_name(&self.node_id, &spec.stack, net);
            let Some(these) = leases.extra(&name) else {
                continue;
            };
            let network = self
                .docker
                .inspect_network(
                    &name,
                    None::<bollard::query_parameters::InspectNetworkOptions>,
                )
                .await
                .map_err(docker_err(format!("inspecting network {name}")))?;
            let used = network
                .containers
                .unwrap_or_default()
                .into_values()
                .filter_map(|e| {
                    let a = e.ipv4_address?;
                    a.split('/').next()?.parse::<Ipv4Addr>().ok()
                })
                .collect();
            if let Some(a) = crate::leases::pick(&these, &used) {
                info!(container = %spec.name(), network = %name, address = %a, "The network's first lease is full; using a later one.");
                out.insert(name, a);
            }
        }
        Ok(out)
    }

    /// Pulls with the registry credentials stored in `data_dir`.
    pub fn with_registry_credentials_from(mut self, data_dir: &std::path::Path) -> Self {
        self.registries_file = Some(super::registries::path(data_dir));
        self
    }

    /// Mounts secrets from `data_dir`'s secret store.
    pub fn with_secrets_from(mut self, data_dir: &std::path::Path) -> Self {
        self.secrets_dir = Some(super::secrets::dir(data_dir));
        self
    }

    /// The host path and target of each secret a spec mounts, each value
    /// checked against the plan; fails naming the first one that was not
    /// delivered or does not match.
    fn secret_files(&self, spec: &ContainerSpec) -> Result<Vec<(PathBuf, String)>, ApplyError> {
        spec.secrets
            .iter()
            .map(|s| {
                let source = match &self.secrets_dir {
                    Some(dir) => super::secrets::source(dir, s),
                    None => Err(super::secrets::MountError::NotDelivered {
                        name: s.name.clone(),
                        version: s.version,
                    }),
                };
                source
                    .map(|p| (p, s.target.clone()))
                    .map_err(|source| ApplyError::Secret {
                        container: spec.name(),
                        source,
                    })
            })
            .collect()
    }

    /// The engine name of a container: unique per node (several agents may
    /// share one engine), readable in `docker ps`.
    pub fn container_name(&self, spec: &ContainerSpec) -> String {
        format!("skiff.{}.r{}.{}", spec.name(), spec.revision, self.node_id)
    }

    /// Events on this node's containers and the engine's network
    /// creations, as a stream of "something changed".
    pub fn events(&self) -> futures_util::stream::BoxStream<'static, ()> {
        let containers = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("label".to_owned(), vec![node_filter(&self.node_id)]),
        ]);
        let networks = HashMap::from([
            ("type".to_owned(), vec!["network".to_owned()]),
            ("event".to_owned(), vec!["create".to_owned()]),
        ]);
        let weave = match &self.weave {
            Some(w) => w.changes(),
            None => futures_util::stream::pending().boxed(),
        };
        futures_util::stream::select(
            futures_util::stream::select(
                crate::engine::changes(&self.docker, containers),
                crate::engine::changes(&self.docker, networks),
            ),
            weave,
        )
        .boxed()
    }

    /// Everything the diff looks at: this node's containers, the engine's
    /// networks, the delivered secrets.
    pub async fn observe_host(&self) -> Result<Host, ApplyError> {
        let networks = self
            .docker
            .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
            .await
            .map_err(docker_err("listing networks"))?
            .into_iter()
            .filter_map(|n| n.name)
            .collect();
        Ok(Host {
            node_id: self.node_id.clone(),
            containers: self.observe().await?,
            networks,
            secrets: self
                .secrets_dir
                .as_deref()
                .map(super::secrets::stored)
                .unwrap_or_default(),
        })
    }

    /// This node's containers, from their labels.
    pub async fn observe(&self) -> Result<Vec<Observed>, ApplyError> {
        let filters = HashMap::from([("label".to_owned(), vec![node_filter(&self.node_id)])]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(docker_err("listing containers"))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                // Containers carry our node label only if we made them; one
                // without a name label is not ours to interpret, so skip it.
                let name = labels.get(LABEL_NAME)?.clone();
                let key = labels
                    .get(LABEL_KEY)
                    .cloned()
                    .unwrap_or_else(|| format!("{name}@0"));
                let state = match c.state {
                    Some(ContainerSummaryStateEnum::CREATED) => State::Created,
                    Some(ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD) => {
                        State::Down
                    }
                    _ => State::Up,
                };
                Some(Observed {
                    id: c.id?,
                    key,
                    name,
                    spec: labels.get(LABEL_SPEC).cloned().unwrap_or_default(),
                    state,
                })
            })
            .collect())
    }

    /// The images on the engine, by tag and id.
    pub async fn images(&self) -> Result<Vec<String>, ApplyError> {
        let list = self
            .docker
            .list_images(None::<bollard::query_parameters::ListImagesOptions>)
            .await
            .map_err(docker_err("listing images"))?;
        let mut out: Vec<String> = list
            .into_iter()
            .flat_map(|i| {
                let mut names = i.repo_tags;
                names.push(i.id);
                names.extend(i.repo_digests);
                names
            })
            .filter(|n| !n.is_empty() && n != "<none>:<none>")
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The engine's view of this node's containers, for the coordinator.
    /// Containers are inspected [`PARALLEL`] at a time.
    pub async fn status(&self) -> Result<Vec<ContainerStatus>, ApplyError> {
        let mut out: Vec<ContainerStatus> = stream::iter(self.observe().await?)
            .map(|o| self.container_status(o))
            .buffer_unordered(PARALLEL)
            .filter_map(std::future::ready)
            .collect()
            .await;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// One container's status; `None` when it was removed between list and
    /// inspect (it is then simply not reported).
    async fn container_status(&self, o: Observed) -> Option<ContainerStatus> {
        let c = self
            .docker
            .inspect_container(
                &o.id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()?;
        let state = c.state.unwrap_or_default();
        let networks = c
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default();
        let mut ips: Vec<String> = networks
            .values()
            .filter_map(|e| e.ip_address.clone().filter(|ip| !ip.is_empty()))
            .collect();
        ips.sort();
        // Its addresses on its stack's networks, by the stack's names.
        let stack = o.name.split('.').next().unwrap_or_default();
        let prefix = format!("skiff.{stack}.");
        let suffix = format!(".{}", self.node_id);
        let mut addresses: Vec<ContainerAddress> = networks
            .iter()
            .filter_map(|(engine_name, e)| {
                let network = engine_name.strip_prefix(&prefix)?.strip_suffix(&suffix)?;
                // On Weave Net, the engine's address there is the host's
                // own: the cluster address is Weave's (added below).
                if self.weave.as_ref().is_some_and(|w| w.attaches(engine_name)) {
                    return None;
                }
                let address = e.ip_address.clone().filter(|ip| !ip.is_empty())?;
                Some(ContainerAddress {
                    network: network.to_owned(),
                    address,
                })
            })
            .collect();
        // On Weave Net, its cluster address there is Weave's.
        if let Some(w) = &self.weave {
            for a in w.addresses_of(&o.id) {
                addresses.retain(|x| x.network != a.network);
                addresses.push(a);
            }
        }
        addresses.sort();
        Some(ContainerStatus {
            key: o.key,
            name: o.name,
            id: o.id,
            state: state.status.map_or(ContainerState::Unknown, |s| {
                ContainerState::from_engine(s.as_ref())
            }),
            health: state
                .health
                .and_then(|h| h.status)
                .and_then(|s| Health::from_engine(s.as_ref())),
            restart_count: c
                .restart_count
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
            started_at: state.started_at.filter(|t| !t.starts_with("0001-")),
            exit_code: state.exit_code,
            ips,
            addresses,
            image_id: c.image.unwrap_or_default(),
            spec: o.spec,
        })
    }

    /// Applies actions in the order [`super::diff`] gives them (removals,
    /// then starts, then creates): each run of actions of one kind is done
    /// [`PARALLEL`] at a time, and the next run begins only when the one
    /// before it finished, so names and ports are free before anything is
    /// created. Stops at the first failure: nothing new is begun after it,
    /// what is under way finishes, and the error of the earliest failed
    /// action is returned (the next reconcile round retries from what then
    /// exists).
    pub async fn apply(&self, actions: &[Action]) -> Result<(), ApplyError> {
        for run in actions.chunk_by(|a, b| std::mem::discriminant(a) == std::mem::discriminant(b)) {
            self.apply_run(run).await?;
        }
        Ok(())
    }

    /// Applies actions that may run concurrently, [`PARALLEL`] at a time.
    async fn apply_run(&self, run: &[Action]) -> Result<(), ApplyError> {
        // Each image once, before its containers are created, rather than
        // once per container and possibly several pulls of one image at once.
        let mut images: HashMap<&str, Option<String>> = HashMap::new();
        for action in run {
            if let Action::Create { spec } = action
                && !images.contains_key(spec.image.as_str())
            {
                let failure = self.ensure_image(&spec.image).await.err().map(|e| match e {
                    ApplyError::Image { reason, .. } => reason,
                    other => other.to_string(),
                });
                images.insert(&spec.image, failure);
            }
        }
        // A hand-driven FuturesUnordered rather than `stream.map(closure)`:
        // the closure form is not provably Send for every lifetime, which a
        // spawned reconcile task needs.
        let images = &images;
        let mut pending = run.iter().enumerate();
        let mut in_flight = FuturesUnordered::new();
        let mut results: Vec<(usize, Result<(), ApplyError>)> = Vec::new();
        let mut failed = false;
        loop {
            while !failed && in_flight.len() < PARALLEL {
                let Some((i, action)) = pending.next() else {
                    break;
                };
                in_flight.push(async move { (i, self.apply_one(action, images).await) });
            }
            let Some((i, result)) = in_flight.next().await else {
                break;
            };
            failed |= result.is_err();
            results.push((i, result));
        }
        results.sort_by_key(|(i, _)| *i);
        results.into_iter().try_for_each(|(_, result)| result)
    }

    /// One action. `images` holds the pull failure, if any, of every image
    /// a create in the same run needs.
    async fn apply_one(
        &self,
        action: &Action,
        images: &HashMap<&str, Option<String>>,
    ) -> Result<(), ApplyError> {
        match action {
            Action::Remove { id, name } => {
                info!(container = %name, "Removing container.");
                self.remove(id).await
            }
            Action::Start { id, name } => {
                info!(container = %name, "Starting container.");
                let started = self
                    .docker
                    .start_container(id, None::<StartContainerOptions>)
                    .await;
                self.note(name, FailureStage::Start, started.as_ref().err());
                started.map_err(docker_err(format!("starting {name}")))
            }
            Action::Wait {
                name,
                network,
                external: true,
            } => Err(ApplyError::Network {
                network: network.clone(),
                reason: format!(
                    "{name} joins it, but it is external and does not exist on this host; create it or remove `external: true`"
                ),
            }),
            Action::Wait { name, network, .. } => {
                debug!(container = %name, network = %network, "Waiting for the network.");
                Ok(())
            }
            Action::DropSecret { file } => match &self.secrets_dir {
                Some(dir) => {
                    super::secrets::remove(dir, file).map_err(|source| ApplyError::DropSecret {
                        file: file.clone(),
                        source,
                    })
                }
                None => Ok(()),
            },
            Action::Create { spec } => {
                info!(container = %spec.name(), image = %spec.image, "Creating container.");
                if let Some(Some(reason)) = images.get(spec.image.as_str()) {
                    let e = ApplyError::Image {
                        image: spec.image.clone(),
                        reason: reason.clone(),
                    };
                    self.failures
                        .record(&spec.key(), FailureStage::Pull, e.to_string());
                    return Err(e);
                }
                let secrets = self.secret_files(spec)?;
                let name = self.container_name(spec);
                // Two creates must not pick the same address.
                let _picking = match &self.leases {
                    Some(l)
                        if spec.networks.iter().any(|n| {
                            l.extra(&network_name(&self.node_id, &spec.stack, n))
                                .is_some()
                        }) =>
                    {
                        Some(l.picking().await)
                    }
                    _ => None,
                };
                let addresses = self.addresses(spec).await?;
                let created = self
                    .docker
                    .create_container(
                        Some(CreateContainerOptions {
                            name: Some(name.clone()),
                            ..Default::default()
                        }),
                        self.create_body(spec, &secrets, &addresses),
                    )
                    .await;
                self.note(&spec.key(), FailureStage::Create, created.as_ref().err());
                let created = created.map_err(docker_err(format!("creating {}", spec.name())))?;
                let prepared = match self.join_networks(&created.id, spec, &addresses).await {
                    Ok(()) => self.write_configs(&created.id, spec).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = prepared {
                    // A created container would be started as it is next
                    // round; without its configs it must not exist at all.
                    let _ = self.remove(&created.id).await;
                    return Err(e);
                }
                let started = self
                    .docker
                    .start_container(&created.id, None::<StartContainerOptions>)
                    .await;
                self.note(&spec.key(), FailureStage::Start, started.as_ref().err());
                started.map_err(docker_err(format!("starting {}", spec.name())))
            }
        }
    }

    /// Remembers how the engine answered a step of bringing up `key`: its
    /// message on failure; on success the container is past that step.
    fn note(&self, key: &str, stage: FailureStage, error: Option<&bollard::errors::Error>) {
        match error {
            Some(e) => self
                .failures
                .record(key, stage, super::failures::engine_message(e)),
            None => self.failures.clear(key),
        }
    }

    /// Connects a created container to its networks after the first (the
    /// engine takes one at create).
    async fn join_networks(
        &self,
        id: &str,
        spec: &ContainerSpec,
        addresses: &Addresses,
    ) -> Result<(), ApplyError> {
        for net in spec.networks.iter().skip(1) {
            let name = network_name(&self.node_id, &spec.stack, net);
            self.docker
                .connect_network(
                    &name,
                    bollard::models::NetworkConnectRequest {
                        container: id.to_owned(),
                        endpoint_config: Some(bollard::models::EndpointSettings {
                            aliases: Some(net.aliases.clone()),
                            ipam_config: endpoint_address(addresses, &name),
                            ..Default::default()
                        }),
                    },
                )
                .await
                .map_err(docker_err(format!("connecting {} to {name}", spec.name())))?;
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), ApplyError> {
        let grace = self
            .docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()
            .and_then(|c| c.config?.stop_timeout)
            .and_then(|t| i32::try_from(t).ok())
            .unwrap_or(DEFAULT_GRACE_SECS);
        // SIGTERM, then SIGKILL after the grace period (Docker does both).
        if let Err(e) = self
            .docker
            .stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(grace),
                    signal: None,
                }),
            )
            .await
            && !is_gone_or_stopped(&e)
        {
            return Err(ApplyError::Docker {
                what: format!("stopping {id}"),
                source: e,
            });
        }
        match self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_gone_or_stopped(&e) => Ok(()),
            Err(e) => Err(ApplyError::Docker {
                what: format!("removing {id}"),
                source: e,
            }),
        }
    }
}

/// 404 (gone) and 304 (already stopped) are what we wanted anyway.
fn is_gone_or_stopped(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 304 | 404,
            ..
        }
    )
}
