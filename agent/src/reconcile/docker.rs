//! The reconcile side that talks to the Docker Engine: list the agent's
//! containers, and apply [`super::Action`]s.

use std::collections::HashMap;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, HealthConfig, HostConfig, Mount, MountType,
    PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, RemoveContainerOptions,
    StartContainerOptions, StopContainerOptions,
};
use futures_util::stream::FuturesUnordered;
use futures_util::{StreamExt, stream};
use skiff_shared::registry::ImageRef;
use skiff_shared::workload::{
    ContainerSpec, ContainerStatus, LABEL_KEY, LABEL_NAME, LABEL_NETWORK, LABEL_NODE,
    LABEL_SERVICE, LABEL_SLOT, LABEL_SPEC, LABEL_STACK, MountKind, NetworkAttach, Protocol,
    RestartSpec,
};
use tracing::{info, warn};

use super::{Action, Observed, State};

/// Default time between SIGTERM and SIGKILL.
const DEFAULT_GRACE_SECS: i32 = 10;

/// How many containers are created, started, removed or inspected at once.
/// The engine overlaps much of the work of one container's create and
/// start (the runtime, the shim, network setup) with another's: on a
/// 2-core machine, 20 containers took about 60% of the sequential time
/// four at a time, and eight at a time gained nothing more.
const PARALLEL: usize = 4;

/// The most waiting engine events taken as one "something changed".
const EVENT_BATCH: usize = 1024;

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
    #[error("{container}: secret {secret} (version {version}) has not been delivered to this host")]
    Secret {
        container: String,
        secret: String,
        version: u64,
    },
}

/// The agent's handle on its engine, scoped to its own node id.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
    node_id: String,
    /// Where delivered secrets are stored (see [`crate::secrets`]).
    secrets_dir: Option<std::path::PathBuf>,
    /// Where delivered registry credentials are stored (see [`crate::registries`]).
    registries_file: Option<std::path::PathBuf>,
}

fn docker_err(what: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> ApplyError {
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
        }
    }

    /// Pulls with the registry credentials stored in `data_dir`.
    pub fn with_registry_credentials_from(mut self, data_dir: &std::path::Path) -> Self {
        self.registries_file = Some(crate::registries::path(data_dir));
        self
    }

    /// The stored credentials for `registry`; none when there are none or
    /// they cannot be read (said in the log, without their content).
    fn registry_credential(
        &self,
        registry: &str,
    ) -> Option<skiff_shared::registry::RegistryCredential> {
        let path = self.registries_file.as_ref()?;
        match crate::registries::for_host(path, registry) {
            Ok(c) => c,
            Err(error) => {
                warn!(error = %error, "Cannot read registry credentials; pulling without.");
                None
            }
        }
    }

    /// Mounts secrets from `data_dir`'s secret store.
    pub fn with_secrets_from(mut self, data_dir: &std::path::Path) -> Self {
        self.secrets_dir = Some(crate::secrets::dir(data_dir));
        self
    }

    /// Removes delivered secrets that no desired container mounts.
    pub fn prune_secrets(&self, desired: &[ContainerSpec]) {
        if let Some(dir) = &self.secrets_dir
            && let Err(error) = crate::secrets::prune(dir, desired)
        {
            warn!(error = %error, "Removing unused secrets failed.");
        }
    }

    /// The host path of each secret a spec mounts; fails naming the first
    /// one that was not delivered.
    fn secret_files(
        &self,
        spec: &ContainerSpec,
    ) -> Result<Vec<(std::path::PathBuf, String)>, ApplyError> {
        spec.secrets
            .iter()
            .map(|s| {
                let path = self
                    .secrets_dir
                    .as_ref()
                    .map(|d| d.join(&s.digest))
                    .filter(|p| p.is_file());
                path.map(|p| (p, s.target.clone()))
                    .ok_or_else(|| ApplyError::Secret {
                        container: spec.name(),
                        secret: s.name.clone(),
                        version: s.version,
                    })
            })
            .collect()
    }

    /// The engine name of a container: unique per node (several agents may
    /// share one engine), readable in `docker ps`.
    pub fn container_name(&self, spec: &ContainerSpec) -> String {
        format!("skiff.{}.r{}.{}", spec.name(), spec.revision, self.node_id)
    }

    /// Events on this node's containers, as a stream of "something changed".
    /// Events that are already waiting come as one item: a reconcile round
    /// that creates 50 containers leaves some 150 events behind it, and
    /// one more round sees all of them.
    pub fn events(&self) -> futures_util::stream::BoxStream<'static, ()> {
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("label".to_owned(), vec![super::node_filter(&self.node_id)]),
        ]);
        self.docker
            .events(Some(bollard::query_parameters::EventsOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .take_while(|e| std::future::ready(e.is_ok()))
            .ready_chunks(EVENT_BATCH)
            .map(|_| ())
            .boxed()
    }

    /// This node's containers, from their labels.
    pub async fn observe(&self) -> Result<Vec<Observed>, ApplyError> {
        let filters =
            HashMap::from([("label".to_owned(), vec![super::node_filter(&self.node_id)])]);
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
        let ips = c
            .network_settings
            .and_then(|n| n.networks)
            .map(|nets| {
                let mut ips: Vec<String> = nets
                    .into_values()
                    .filter_map(|e| e.ip_address.filter(|ip| !ip.is_empty()))
                    .collect();
                ips.sort();
                ips
            })
            .unwrap_or_default();
        Some(ContainerStatus {
            key: o.key,
            name: o.name,
            id: o.id,
            state: state.status.map(|s| s.to_string()).unwrap_or_default(),
            health: state
                .health
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .filter(|s| !s.is_empty() && s != "none"),
            restart_count: c
                .restart_count
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
            started_at: state.started_at.filter(|t| !t.starts_with("0001-")),
            exit_code: state.exit_code,
            ips,
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
        // The networks the creates need, one at a time (the engine lets
        // two concurrent creates make two networks of one name).
        for action in run {
            if let Action::Create { spec } = action {
                for net in &spec.networks {
                    self.ensure_network(spec, net).await?;
                }
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
                self.docker
                    .start_container(id, None::<StartContainerOptions>)
                    .await
                    .map_err(docker_err(format!("starting {name}")))
            }
            Action::Create { spec } => {
                info!(container = %spec.name(), image = %spec.image, "Creating container.");
                if let Some(Some(reason)) = images.get(spec.image.as_str()) {
                    return Err(ApplyError::Image {
                        image: spec.image.clone(),
                        reason: reason.clone(),
                    });
                }
                let secrets = self.secret_files(spec)?;
                let name = self.container_name(spec);
                let created = self
                    .docker
                    .create_container(
                        Some(CreateContainerOptions {
                            name: Some(name.clone()),
                            ..Default::default()
                        }),
                        self.create_body(spec, &secrets),
                    )
                    .await
                    .map_err(docker_err(format!("creating {}", spec.name())))?;
                let prepared = match self.join_networks(&created.id, spec).await {
                    Ok(()) => self.write_configs(&created.id, spec).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = prepared {
                    // A created container would be started as it is next
                    // round; without its configs it must not exist at all.
                    let _ = self.remove(&created.id).await;
                    return Err(e);
                }
                self.docker
                    .start_container(&created.id, None::<StartContainerOptions>)
                    .await
                    .map_err(docker_err(format!("starting {}", spec.name())))
            }
        }
    }

    /// The engine name of a stack network on this node (several agents may
    /// share one engine); an external network keeps its own name.
    pub fn network_name(&self, stack: &str, net: &NetworkAttach) -> String {
        if net.external {
            net.name.clone()
        } else {
            format!("skiff.{stack}.{}.{}", net.name, self.node_id)
        }
    }

    /// Creates a stack network on this node unless it exists; an external
    /// one must exist.
    async fn ensure_network(
        &self,
        spec: &ContainerSpec,
        net: &NetworkAttach,
    ) -> Result<(), ApplyError> {
        let name = self.network_name(&spec.stack, net);
        match self
            .docker
            .inspect_network(
                &name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(docker_err(format!("inspecting network {name}"))(e)),
        }
        if net.external {
            return Err(ApplyError::Network {
                network: name,
                reason: "it is external, and does not exist on this host; create it or remove `external: true`".into(),
            });
        }
        info!(network = %name, "Creating network.");
        let labels = HashMap::from([
            (LABEL_NODE.to_owned(), self.node_id.clone()),
            (LABEL_STACK.to_owned(), spec.stack.clone()),
            (LABEL_NETWORK.to_owned(), net.name.clone()),
        ]);
        self.docker
            .create_network(bollard::models::NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                internal: Some(net.internal),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(docker_err(format!("creating network {name}")))
    }

    /// Connects a created container to its networks after the first (the
    /// engine takes one at create).
    async fn join_networks(&self, id: &str, spec: &ContainerSpec) -> Result<(), ApplyError> {
        for net in spec.networks.iter().skip(1) {
            let name = self.network_name(&spec.stack, net);
            self.docker
                .connect_network(
                    &name,
                    bollard::models::NetworkConnectRequest {
                        container: id.to_owned(),
                        endpoint_config: Some(bollard::models::EndpointSettings {
                            aliases: Some(net.aliases.clone()),
                            ..Default::default()
                        }),
                    },
                )
                .await
                .map_err(docker_err(format!("connecting {} to {name}", spec.name())))?;
        }
        Ok(())
    }

    /// Removes the networks this agent created that no desired container
    /// joins. One still in use (a container being replaced) is left for a
    /// later round.
    pub async fn prune_networks(&self, desired: &[ContainerSpec]) {
        let wanted: std::collections::HashSet<String> = desired
            .iter()
            .flat_map(|c| c.networks.iter().map(|n| self.network_name(&c.stack, n)))
            .collect();
        let filters =
            HashMap::from([("label".to_owned(), vec![super::node_filter(&self.node_id)])]);
        let Ok(list) = self
            .docker
            .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
        else {
            return;
        };
        for n in list {
            let Some(name) = n.name.filter(|n| !wanted.contains(n)) else {
                continue;
            };
            match self.docker.remove_network(&name).await {
                Ok(()) => info!(network = %name, "Removed unused network."),
                Err(e) => tracing::debug!(network = %name, error = %e, "Network not removed yet."),
            }
        }
    }

    /// Writes the spec's config files into a created container.
    async fn write_configs(&self, id: &str, spec: &ContainerSpec) -> Result<(), ApplyError> {
        if spec.configs.is_empty() {
            return Ok(());
        }
        let archive = config_archive(&spec.configs).map_err(|e| ApplyError::Docker {
            what: format!("packing the configs of {}", spec.name()),
            source: bollard::errors::Error::IOError { err: e },
        })?;
        self.docker
            .upload_to_container(
                id,
                Some(bollard::query_parameters::UploadToContainerOptions {
                    path: "/".into(),
                    ..Default::default()
                }),
                bollard::body_full(archive.into()),
            )
            .await
            .map_err(docker_err(format!(
                "writing the configs of {}",
                spec.name()
            )))
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

    /// Pulls `image` unless the engine has it. A reference by digest
    /// (`repo@sha256:…`) that is present is found by the engine too, so
    /// it is never pulled again. The pull carries the stored credentials
    /// of the image's registry, if there are any.
    async fn ensure_image(&self, image: &str) -> Result<(), ApplyError> {
        if self.docker.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        let reference = ImageRef::parse(image);
        let credential = self.registry_credential(&reference.registry);
        let (name, tag) = reference.pull_target();
        let mut pull = self.docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(name.to_owned()),
                tag: Some(tag.to_owned()),
                ..Default::default()
            }),
            None,
            credential.as_ref().map(|c| DockerCredentials {
                username: Some(c.username.clone()),
                password: Some(c.password.clone()),
                serveraddress: Some(c.host.clone()),
                ..Default::default()
            }),
        );
        while let Some(step) = pull.next().await {
            if let Err(e) = step {
                let message = match e {
                    bollard::errors::Error::DockerResponseServerError { message, .. } => message,
                    bollard::errors::Error::DockerStreamError { error } => error,
                    other => other.to_string(),
                };
                let reason = pull_failure(
                    &message,
                    &reference.registry,
                    credential.as_ref().map(|c| c.username.as_str()),
                );
                warn!(image, registry = %reference.registry, error = %reason, "Image pull failed.");
                return Err(ApplyError::Image {
                    image: image.to_owned(),
                    reason,
                });
            }
        }
        Ok(())
    }

    fn create_body(
        &self,
        spec: &ContainerSpec,
        secrets: &[(std::path::PathBuf, String)],
    ) -> ContainerCreateBody {
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.insert(LABEL_NODE.into(), self.node_id.clone());
        labels.insert(LABEL_NAME.into(), spec.name());
        labels.insert(LABEL_KEY.into(), spec.key());
        labels.insert(LABEL_STACK.into(), spec.stack.clone());
        labels.insert(LABEL_SERVICE.into(), spec.service.clone());
        labels.insert(LABEL_SLOT.into(), spec.slot.to_string());
        labels.insert(LABEL_SPEC.into(), spec.fingerprint());

        let mut exposed: Vec<String> = Vec::new();
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for p in &spec.ports {
            let key = format!(
                "{}/{}",
                p.target,
                if p.protocol == Protocol::Udp {
                    "udp"
                } else {
                    "tcp"
                }
            );
            if !exposed.contains(&key) {
                exposed.push(key.clone());
            }
            bindings
                .entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: p.host_ip.clone(),
                    host_port: Some(p.published.to_string()),
                });
        }
        let mounts: Vec<Mount> = spec
            .mounts
            .iter()
            .map(|m| Mount {
                target: Some(m.target.clone()),
                source: (m.kind != MountKind::Tmpfs).then(|| m.source.clone()),
                typ: Some(match m.kind {
                    MountKind::Volume => MountType::VOLUME,
                    MountKind::Bind => MountType::BIND,
                    MountKind::Tmpfs => MountType::TMPFS,
                }),
                read_only: Some(m.read_only),
                ..Default::default()
            })
            .chain(secrets.iter().map(|(path, target)| Mount {
                target: Some(target.clone()),
                source: Some(path.display().to_string()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            }))
            .collect();
        let restart_policy = Some(match spec.restart {
            RestartSpec::No => RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            },
            RestartSpec::Always => RestartPolicy {
                name: Some(RestartPolicyNameEnum::ALWAYS),
                maximum_retry_count: None,
            },
            RestartSpec::UnlessStopped => RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            },
            RestartSpec::OnFailure { max_attempts } => RestartPolicy {
                name: Some(RestartPolicyNameEnum::ON_FAILURE),
                maximum_retry_count: (max_attempts > 0).then_some(i64::from(max_attempts)),
            },
        });
        let ms_to_ns = |ms: u64| i64::try_from(ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
        let healthcheck = spec.healthcheck.as_ref().map(|h| HealthConfig {
            test: Some(h.test.clone()),
            interval: Some(ms_to_ns(h.interval_ms)),
            timeout: Some(ms_to_ns(h.timeout_ms)),
            retries: Some(i64::from(h.retries)),
            start_period: Some(ms_to_ns(h.start_period_ms)),
            ..Default::default()
        });
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.command.clone(),
            entrypoint: spec.entrypoint.clone(),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            healthcheck,
            user: spec.user.clone(),
            working_dir: spec.working_dir.clone(),
            stop_timeout: spec
                .stop_grace_ms
                .map(|ms| i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX)),
            networking_config: spec
                .networks
                .first()
                .map(|net| bollard::models::NetworkingConfig {
                    endpoints_config: Some(HashMap::from([(
                        self.network_name(&spec.stack, net),
                        bollard::models::EndpointSettings {
                            aliases: Some(net.aliases.clone()),
                            ..Default::default()
                        },
                    )])),
                }),
            host_config: Some(HostConfig {
                network_mode: spec
                    .networks
                    .first()
                    .map(|net| self.network_name(&spec.stack, net)),
                port_bindings: (!bindings.is_empty()).then_some(bindings),
                mounts: Some(mounts),
                restart_policy,
                nano_cpus: spec
                    .resources
                    .cpu_limit_millis
                    .map(|m| i64::try_from(m.saturating_mul(1_000_000)).unwrap_or(i64::MAX)),
                memory: spec
                    .resources
                    .memory_limit_bytes
                    .and_then(|b| i64::try_from(b).ok()),
                memory_reservation: spec
                    .resources
                    .memory_reservation_bytes
                    .and_then(|b| i64::try_from(b).ok()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// Why a pull from `registry` failed, from the engine's message: a refusal
/// of credentials says which command fixes it; anything else names the
/// registry and keeps the engine's words. `username` is the one the pull
/// used, if any.
fn pull_failure(message: &str, registry: &str, username: Option<&str>) -> String {
    let lower = message.to_ascii_lowercase();
    let unauthorized = [
        "no basic auth credentials",
        "unauthorized",
        "authentication required",
    ]
    .iter()
    .any(|m| lower.contains(m));
    let denied = lower.contains("denied");
    match (unauthorized, denied, username) {
        (true, _, None) => format!(
            "authentication required by registry {registry}: run `skiff registry login {registry}`"
        ),
        (true, _, Some(user)) => format!(
            "registry {registry} refused the credentials of user {user}: check them and run `skiff registry login {registry}` again"
        ),
        (false, true, None) => format!(
            "registry {registry} denied access: the image does not exist there, or it needs credentials (`skiff registry login {registry}`)"
        ),
        (false, true, Some(user)) => format!(
            "registry {registry} denied user {user} access: the image does not exist there, or the account may not pull it"
        ),
        (false, false, _) => format!("registry {registry}: {message}"),
    }
}

/// 404 (gone) and 304 (already stopped) are what we wanted anyway.
/// A tar archive of config files, paths relative to the container's root
/// (the engine creates missing parent directories).
fn config_archive(files: &[skiff_shared::workload::ConfigFile]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for f in files {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(f.content.len() as u64);
        header.set_mode(f.mode);
        header.set_uid(f.uid);
        header.set_gid(f.gid);
        header.set_mtime(0);
        tar.append_data(
            &mut header,
            f.target.trim_start_matches('/'),
            f.content.as_bytes(),
        )?;
    }
    tar.into_inner()
}

fn is_gone_or_stopped(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 304 | 404,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_failures_say_what_to_do() {
        let r = "127.0.0.1:5000";
        let no_creds = pull_failure(
            "Head \"http://127.0.0.1:5000/v2/app/manifests/1\": no basic auth credentials",
            r,
            None,
        );
        assert_eq!(
            no_creds,
            "authentication required by registry 127.0.0.1:5000: run `skiff registry login 127.0.0.1:5000`"
        );
        let wrong = pull_failure("unauthorized: authentication required", r, Some("alice"));
        assert!(
            wrong.contains("refused the credentials of user alice")
                && wrong.contains("skiff registry login 127.0.0.1:5000"),
            "{wrong}"
        );
        let hub = pull_failure(
            "pull access denied for x, repository does not exist or may require 'docker login': denied: requested access to the resource is denied",
            "docker.io",
            None,
        );
        assert!(hub.contains("skiff registry login docker.io"), "{hub}");
        let down = pull_failure(
            "dial tcp 127.0.0.1:5000: connect: connection refused",
            r,
            None,
        );
        assert_eq!(
            down,
            "registry 127.0.0.1:5000: dial tcp 127.0.0.1:5000: connect: connection refused"
        );
    }
}
