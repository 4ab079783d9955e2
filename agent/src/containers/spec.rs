//! The engine's create request for a container spec: labels, ports,
//! mounts (secret files included), restart policy, health check, limits,
//! the first network; and the config files written into a created
//! container before it starts.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, HealthConfig, HostConfig, Mount, MountType, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use skiff_shared::workload::{
    ContainerSpec, LABEL_KEY, LABEL_NAME, LABEL_NODE, LABEL_SERVICE, LABEL_SLOT, LABEL_SPEC,
    LABEL_STACK, MountKind, Protocol, RestartSpec,
};

use super::engine::{ApplyError, Engine, docker_err};

impl Engine {
    /// Writes the spec's config files into a created container.
    pub(super) async fn write_configs(
        &self,
        id: &str,
        spec: &ContainerSpec,
    ) -> Result<(), ApplyError> {
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

    pub(super) fn create_body(
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
                        super::diff::network_name(&self.node_id, &spec.stack, net),
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
                    .map(|net| super::diff::network_name(&self.node_id, &spec.stack, net)),
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
