//! The engine's create request for a container spec: labels, ports,
//! mounts (secret files included), restart policy, health check, limits,
//! rights, namespaces and kernel limits, the first network (or the
//! host's); and the config files written into a created container before
//! it starts.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, DeviceMapping, HealthConfig, HostConfig, Mount, MountType, PortBinding,
    ResourcesUlimits, RestartPolicy, RestartPolicyNameEnum,
};
use skiff_shared::workload::{
    ContainerSpec, LABEL_KEY, LABEL_NAME, LABEL_NODE, LABEL_SERVICE, LABEL_SLOT, LABEL_SPEC,
    LABEL_STACK, MountKind, Protocol, RestartSpec, RuntimeSpec,
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
        addresses: &super::engine::Addresses,
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
                .filter(|_| !spec.runtime.host_network)
                .map(|net| {
                    let name = super::diff::network_name(&self.node_id, &spec.stack, net);
                    bollard::models::NetworkingConfig {
                        endpoints_config: Some(HashMap::from([(
                            name.clone(),
                            bollard::models::EndpointSettings {
                                aliases: Some(net.aliases.clone()),
                                ipam_config: super::engine::endpoint_address(addresses, &name),
                                ..Default::default()
                            },
                        )])),
                    }
                }),
            host_config: Some(HostConfig {
                network_mode: if spec.runtime.host_network {
                    Some("host".to_owned())
                } else {
                    spec.networks
                        .first()
                        .map(|net| super::diff::network_name(&self.node_id, &spec.stack, net))
                },
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
                pids_limit: spec
                    .resources
                    .pids_limit
                    .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
                dns: (!spec.dns.is_empty()).then(|| spec.dns.clone()),
                dns_search: (!spec.dns_search.is_empty()).then(|| spec.dns_search.clone()),
                ..runtime_config(&spec.runtime)
            }),
            ..Default::default()
        }
    }
}

/// The host config of a spec's rights, namespaces and kernel limits; every
/// field the spec leaves at its default is left to the engine.
fn runtime_config(r: &RuntimeSpec) -> HostConfig {
    let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    HostConfig {
        privileged: r.privileged.then_some(true),
        cap_add: list(&r.cap_add),
        cap_drop: list(&r.cap_drop),
        devices: (!r.devices.is_empty()).then(|| {
            r.devices
                .iter()
                .map(|d| DeviceMapping {
                    path_on_host: Some(d.source.clone()),
                    path_in_container: Some(d.target.clone()),
                    cgroup_permissions: Some(d.permissions.clone()),
                })
                .collect()
        }),
        device_cgroup_rules: list(&r.device_cgroup_rules),
        security_opt: list(&r.security_opt),
        pid_mode: r.host_pid.then(|| "host".to_owned()),
        uts_mode: r.host_uts.then(|| "host".to_owned()),
        ipc_mode: r.ipc.map(|m| m.as_str().to_owned()),
        ulimits: (!r.ulimits.is_empty()).then(|| {
            r.ulimits
                .iter()
                .map(|(name, u)| ResourcesUlimits {
                    name: Some(name.clone()),
                    soft: Some(u.soft),
                    hard: Some(u.hard),
                })
                .collect()
        }),
        sysctls: (!r.sysctls.is_empty()).then(|| {
            r.sysctls
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }),
        shm_size: r
            .shm_size_bytes
            .map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
        group_add: list(&r.group_add),
        ..Default::default()
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use skiff_shared::workload::{DeviceSpec, IpcMode, Ulimit};

    use super::*;

    #[test]
    fn runtime_settings_reach_the_host_config() {
        assert_eq!(
            runtime_config(&RuntimeSpec::default()),
            HostConfig::default(),
            "nothing set, nothing sent: the engine's defaults apply"
        );
        let r = RuntimeSpec {
            privileged: true,
            cap_add: vec!["NET_ADMIN".into()],
            cap_drop: vec!["ALL".into()],
            devices: vec![DeviceSpec {
                source: "/dev/fuse".into(),
                target: "/dev/fuse".into(),
                permissions: "rw".into(),
            }],
            device_cgroup_rules: vec!["c 10:229 rw".into()],
            security_opt: vec!["no-new-privileges=true".into()],
            host_network: true,
            host_pid: true,
            host_uts: true,
            ipc: Some(IpcMode::Shareable),
            ulimits: BTreeMap::from([(
                "nofile".into(),
                Ulimit {
                    soft: 1024,
                    hard: 2048,
                },
            )]),
            sysctls: BTreeMap::from([("net.core.somaxconn".into(), "1024".into())]),
            shm_size_bytes: Some(64 << 20),
            group_add: vec!["mail".into()],
        };
        let h = runtime_config(&r);
        assert_eq!(h.privileged, Some(true));
        assert_eq!(h.cap_add, Some(vec!["NET_ADMIN".to_owned()]));
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_owned()]));
        let d = &h.devices.unwrap()[0];
        assert_eq!(
            (d.path_on_host.as_deref(), d.cgroup_permissions.as_deref()),
            (Some("/dev/fuse"), Some("rw"))
        );
        assert_eq!(h.device_cgroup_rules, Some(vec!["c 10:229 rw".to_owned()]));
        assert_eq!(
            h.security_opt,
            Some(vec!["no-new-privileges=true".to_owned()])
        );
        assert_eq!(
            (
                h.pid_mode.as_deref(),
                h.uts_mode.as_deref(),
                h.ipc_mode.as_deref()
            ),
            (Some("host"), Some("host"), Some("shareable"))
        );
        let u = &h.ulimits.unwrap()[0];
        assert_eq!(
            (u.name.as_deref(), u.soft, u.hard),
            (Some("nofile"), Some(1024), Some(2048))
        );
        assert_eq!(
            h.sysctls
                .unwrap()
                .get("net.core.somaxconn")
                .map(String::as_str),
            Some("1024")
        );
        assert_eq!(h.shm_size, Some(64 << 20));
        assert_eq!(h.group_add, Some(vec!["mail".to_owned()]));
    }
}
