//! From a parsed stack to what the scheduler places and what agents run:
//! one [`ServiceDef`] per service, holding the scheduler's view and the
//! container spec every replica is created from. Pure: no I/O.

use skiff_compose::stack::FailureAction;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skiff_compose::placement::Constraint;
use skiff_compose::stack::{
    ConfigSource, Dependency, DeployMode, FileGrant, HealthTest, Mount, RestartCondition,
    RestartMode, Stack, UpdateConfig,
};
use skiff_shared::workload::{
    ConfigFile, ContainerSpec, DeviceSpec, HealthSpec, IpcMode, MAX_CONFIG_BYTES, MountKind,
    MountSpec, NetworkAttach, PortSpec, ProbeSpec, Protocol, ResourceSpec, RestartSpec,
    RuntimeSpec, SecretMount, Ulimit,
};

use skiff_shared::sections::dns::{DEFAULT_TTL_SECS, Policy, PortRecord, Protocol as DnsProtocol};

use crate::scheduler::{self, Mode, Resources};

mod ingress;

pub use ingress::{IngressPort, IngressSettings, RouteDef};

/// Slot number of the copy of a global service on each host.
pub const GLOBAL_SLOT: u32 = 0;

/// One service of a release, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceDef {
    pub name: String,
    /// `None` is global.
    pub replicas: Option<u32>,
    pub constraints: Vec<String>,
    pub max_per_host: Option<u32>,
    pub reservations_cpu_millis: u64,
    pub reservations_memory_bytes: u64,
    pub stateful: bool,
    /// The container every replica is created from (its slot set per replica).
    pub template: ContainerSpec,
    pub update: UpdatePolicy,
    pub rollback: UpdatePolicy,
    /// Services whose replicas must be started (or healthy, or done)
    /// before this service's new replicas start.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub depends_on: BTreeMap<String, Dependency>,
    /// How its name is answered, and how long a replica that left DNS
    /// keeps running (releases from before ElasticDNS have the defaults).
    #[serde(default, skip_serializing_if = "DnsSettings::is_default")]
    pub dns: DnsSettings,
    /// Its ports published on every edge host and its HTTP routes.
    #[serde(default, skip_serializing_if = "IngressSettings::is_empty")]
    pub ingress: IngressSettings,
    /// The stack's own log sinks (`x-skiff.logs`), the same in every
    /// service of a release, so that a rollback brings them back; `None`
    /// ships to the cluster's sinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_sinks: Option<Vec<skiff_shared::sections::logs::SinkSpec>>,
}

/// A service's DNS settings, from `x-skiff.dns` and `x-skiff.drain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsSettings {
    pub policy: Policy,
    pub ttl_secs: u32,
    /// How long a replica stays up once every host stopped giving its
    /// address (its connections in flight finish).
    pub drain_ms: u64,
    /// The ports its replicas listen on (SRV records): container ports
    /// of `ports` and `expose`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRecord>,
}

/// The drain time of a service that sets none.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(2);

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            ttl_secs: DEFAULT_TTL_SECS,
            drain_ms: ms(DEFAULT_DRAIN),
            ports: Vec::new(),
        }
    }
}

impl DnsSettings {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    fn of(svc: &skiff_compose::stack::Service) -> Self {
        use skiff_compose::stack::DnsPolicy;
        let dns = svc.skiff.dns.unwrap_or_default();
        let mut ports: Vec<PortRecord> = svc
            .ports
            .iter()
            .map(|p| (p.target, p.protocol))
            .chain(svc.expose.iter().map(|e| (e.port, e.protocol)))
            .filter_map(|(port, protocol)| {
                let protocol = match protocol {
                    skiff_compose::stack::Protocol::Tcp => DnsProtocol::Tcp,
                    skiff_compose::stack::Protocol::Udp => DnsProtocol::Udp,
                    skiff_compose::stack::Protocol::Sctp => return None,
                };
                Some(PortRecord { port, protocol })
            })
            .collect();
        ports.sort();
        ports.dedup();
        Self {
            policy: match dns.policy {
                DnsPolicy::RoundRobin => Policy::RoundRobin,
                DnsPolicy::Closest => Policy::Closest,
                DnsPolicy::Version => Policy::Version,
            },
            ttl_secs: dns.ttl.map_or(DEFAULT_TTL_SECS, |t| {
                u32::try_from(t.as_secs()).unwrap_or(u32::MAX)
            }),
            drain_ms: ms(svc.skiff.drain.unwrap_or(DEFAULT_DRAIN)),
            ports,
        }
    }
}

/// How replicas are replaced, from `update_config` / `rollback_config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdatePolicy {
    pub parallelism: u32,
    pub delay_ms: u64,
    pub monitor_ms: u64,
    pub start_first: bool,
    pub failure_action: FailureAction,
}

/// A problem turning the stack into something runnable, naming the service and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service {service}: {message}")]
pub struct ResolveError {
    pub service: String,
    pub message: String,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn policy(c: &UpdateConfig) -> UpdatePolicy {
    UpdatePolicy {
        parallelism: u32::try_from(c.parallelism).unwrap_or(u32::MAX),
        delay_ms: ms(c.delay),
        monitor_ms: ms(c.monitor),
        start_first: c.order == skiff_compose::stack::UpdateOrder::StartFirst,
        failure_action: c.failure_action,
    }
}

/// A stored secret version as deploys see it: its id and check value,
/// never its value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretVersion {
    pub version: u64,
    pub id: String,
    /// None for a version stored before ids that could not be opened.
    pub check: Option<String>,
}

impl From<crate::store::SecretRow> for SecretVersion {
    fn from(r: crate::store::SecretRow) -> Self {
        Self {
            version: u64::try_from(r.version).unwrap_or(0),
            id: r.id,
            check: r.check,
        }
    }
}

/// The mount of version `v` of secret `name` at `target`, or why there is none.
fn secret_mount(
    stack_name: &str,
    name: &str,
    v: &SecretVersion,
    target: String,
) -> Result<SecretMount, String> {
    let Some(check) = v.check.clone() else {
        return Err(format!(
            "secret {name:?} (version {}) was stored by an earlier release and cannot be opened with this coordinator's secrets.key; set it again with `skiff secret set {stack_name} {name}`",
            v.version
        ));
    };
    Ok(SecretMount {
        name: name.to_owned(),
        version: v.version,
        digest: String::new(),
        id: v.id.clone(),
        check,
        target,
    })
}

/// The secret versions (name, version) that `defs` mount as planned
/// before versions had ids, by digest (releases made before).
pub fn unkeyed_secret_mounts(defs: &[ServiceDef]) -> BTreeSet<(String, u64)> {
    defs.iter()
        .flat_map(|d| &d.template.secrets)
        .filter(|m| m.id.is_empty())
        .map(|m| (m.name.clone(), m.version))
        .collect()
}

/// Gives mounts planned before ids their version's id and check value
/// from `versions` (by name and version), so a release restored from
/// before ids plans no digests. Its containers are replaced once.
pub fn key_secret_mounts(
    stack_name: &str,
    defs: &mut [ServiceDef],
    versions: &BTreeMap<(String, u64), SecretVersion>,
) -> Result<(), Vec<ResolveError>> {
    let mut errors = Vec::new();
    for d in defs.iter_mut() {
        for m in d.template.secrets.iter_mut().filter(|m| m.id.is_empty()) {
            let keyed = match versions.get(&(m.name.clone(), m.version)) {
                Some(v) => secret_mount(stack_name, &m.name, v, m.target.clone()),
                None => Err(format!(
                    "secret {:?} (version {}) is no longer stored; set it with `skiff secret set {stack_name} {}` and deploy the stack",
                    m.name, m.version, m.name
                )),
            };
            match keyed {
                Ok(k) => *m = k,
                Err(message) => errors.push(ResolveError {
                    service: d.name.clone(),
                    message,
                }),
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Resolves every service of `stack`, deployed as `stack_name`. Returns
/// all problems, not just the first; warnings are things that deploy but
/// are not acted on yet.
/// `secrets` are the stack's secrets as stored: the latest version of each, by name.
pub fn resolve(
    stack_name: &str,
    stack: &Stack,
    secrets: &BTreeMap<String, SecretVersion>,
) -> Result<(Vec<ServiceDef>, Vec<String>), Vec<ResolveError>> {
    let mut defs = Vec::new();
    let mut errors = Vec::new();
    let warnings = Vec::new();
    for name in &stack.start_order {
        let Some(svc) = stack.services.get(name) else {
            continue;
        };
        let err = |message: String| ResolveError {
            service: name.clone(),
            message,
        };
        let configs = config_files(stack, &svc.configs).unwrap_or_else(|e| {
            errors.extend(e.into_iter().map(err));
            Vec::new()
        });
        let mut mounts_secret = Vec::new();
        for grant in &svc.secrets {
            let target = if grant.target.starts_with('/') {
                grant.target.clone()
            } else {
                format!("/run/secrets/{}", grant.target)
            };
            match secrets.get(&grant.source) {
                Some(v) => match secret_mount(stack_name, &grant.source, v, target) {
                    Ok(m) => mounts_secret.push(m),
                    Err(message) => errors.push(err(message)),
                },
                None => errors.push(err(format!(
                    "secret {:?} is not set for stack {stack_name}; run `skiff secret set {stack_name} {}`",
                    grant.source, grant.source
                ))),
            }
        }
        for c in &svc.deploy.placement.constraints {
            if let Err(e) = c.parse::<Constraint>() {
                errors.push(err(e.to_string()));
            }
        }
        let replicas = match svc.deploy.mode {
            DeployMode::Replicated { replicas } => match u32::try_from(replicas) {
                Ok(r) if r <= 10_000 => Some(r),
                _ => {
                    errors.push(err(format!(
                        "{replicas} replicas is more than the 10000 a service may have"
                    )));
                    continue;
                }
            },
            DeployMode::Global => None,
        };
        let mut ports = Vec::new();
        for p in &svc.ports {
            let Some(published) = p.published else {
                continue;
            };
            let protocol = match p.protocol {
                skiff_compose::stack::Protocol::Tcp => Protocol::Tcp,
                skiff_compose::stack::Protocol::Udp => Protocol::Udp,
                skiff_compose::stack::Protocol::Sctp => {
                    errors.push(err(format!(
                        "port {published}/sctp: SCTP ports are not supported; use tcp or udp"
                    )));
                    continue;
                }
            };
            ports.push(PortSpec {
                target: p.target,
                published,
                protocol,
                host_ip: p.host_ip.map(|ip| ip.to_string()),
            });
        }
        let (ingress, ingress_errors) = IngressSettings::of(svc, &mut ports);
        errors.extend(ingress_errors.into_iter().map(err));
        let mut stateful = false;
        let mounts = svc
            .volumes
            .iter()
            .map(|m| match m {
                Mount::Volume {
                    source,
                    target,
                    read_only,
                    ..
                } => {
                    stateful = true;
                    // Named volumes belong to the stack, as Compose names them.
                    let source = source
                        .as_ref()
                        .map(|s| {
                            let external = stack.volumes.get(s).is_some_and(|v| v.external);
                            let declared = stack.volumes.get(s).and_then(|v| v.name.clone());
                            declared.unwrap_or_else(|| {
                                if external {
                                    s.clone()
                                } else {
                                    format!("{stack_name}_{s}")
                                }
                            })
                        })
                        .unwrap_or_default();
                    MountSpec {
                        kind: MountKind::Volume,
                        source,
                        target: target.clone(),
                        read_only: *read_only,
                    }
                }
                Mount::Bind {
                    source,
                    target,
                    read_only,
                    ..
                } => {
                    stateful = true;
                    MountSpec {
                        kind: MountKind::Bind,
                        source: source.display().to_string(),
                        target: target.clone(),
                        read_only: *read_only,
                    }
                }
                Mount::Tmpfs { target, .. } => MountSpec {
                    kind: MountKind::Tmpfs,
                    source: String::new(),
                    target: target.clone(),
                    read_only: false,
                },
            })
            .collect();
        let healthcheck = svc.healthcheck.as_ref().and_then(|h| {
            let test = match h.test.as_ref()? {
                HealthTest::None => vec!["NONE".to_owned()],
                HealthTest::Cmd(argv) => std::iter::once("CMD".to_owned())
                    .chain(argv.iter().cloned())
                    .collect(),
                HealthTest::CmdShell(s) => vec!["CMD-SHELL".to_owned(), s.clone()],
            };
            Some(HealthSpec {
                test,
                interval_ms: ms(h.interval.unwrap_or(Duration::from_secs(30))),
                timeout_ms: ms(h.timeout.unwrap_or(Duration::from_secs(30))),
                retries: h.retries.unwrap_or(3),
                start_period_ms: ms(h.start_period.unwrap_or(Duration::ZERO)),
            })
        });
        let restart = match &svc.restart {
            Some(RestartMode::No) => RestartSpec::No,
            Some(RestartMode::Always) => RestartSpec::Always,
            Some(RestartMode::UnlessStopped) => RestartSpec::UnlessStopped,
            Some(RestartMode::OnFailure { max_retries }) => RestartSpec::OnFailure {
                max_attempts: max_retries.unwrap_or(0),
            },
            None => match svc.deploy.restart_policy.condition {
                RestartCondition::None => RestartSpec::No,
                RestartCondition::Any => RestartSpec::Always,
                RestartCondition::OnFailure => RestartSpec::OnFailure {
                    max_attempts: svc
                        .deploy
                        .restart_policy
                        .max_attempts
                        .and_then(|m| u32::try_from(m).ok())
                        .unwrap_or(0),
                },
            },
        };
        let limits = &svc.deploy.resources.limits;
        let reservations = &svc.deploy.resources.reservations;
        let mut labels = svc.labels.clone();
        labels.extend(svc.deploy.labels.clone());
        let template = ContainerSpec {
            stack: stack_name.to_owned(),
            service: name.clone(),
            slot: 1,
            revision: 0,
            image: svc.image.clone(),
            command: svc.command.clone(),
            entrypoint: svc.entrypoint.clone(),
            env: svc.environment.clone(),
            labels,
            ports,
            mounts,
            healthcheck,
            restart,
            resources: ResourceSpec {
                cpu_limit_millis: limits.nano_cpus.map(|n| n / 1_000_000),
                memory_limit_bytes: limits.memory_bytes,
                memory_reservation_bytes: reservations.memory_bytes,
                pids_limit: limits.pids,
            },
            stop_grace_ms: Some(ms(svc.stop_grace_period)),
            user: svc.user.clone(),
            working_dir: svc.working_dir.clone(),
            secrets: mounts_secret,
            probe: svc.skiff.healthcheck.as_ref().map(|p| ProbeSpec {
                http_path: p.http_path.clone(),
                port: p.port,
                interval_ms: ms(p.interval),
                timeout_ms: ms(p.timeout),
                retries: p.retries,
                start_period_ms: ms(p.start_period),
            }),
            configs,
            // A container on the host's network joins no stack network.
            networks: if svc.runtime.host_network {
                Vec::new()
            } else {
                network_attachments(stack, name, svc)
            },
            // Set by ElasticDNS (the coordinator's dns section).
            dns: Vec::new(),
            dns_search: Vec::new(),
            runtime: runtime(&svc.runtime),
        };
        // A port published on the host can be bound once per host.
        let max_per_host = svc
            .deploy
            .placement
            .max_replicas_per_node
            .and_then(|m| u32::try_from(m).ok())
            .or((!template.ports.is_empty()).then_some(1));
        defs.push(ServiceDef {
            name: name.clone(),
            replicas,
            constraints: svc.deploy.placement.constraints.clone(),
            max_per_host,
            reservations_cpu_millis: reservations.nano_cpus.map(|n| n / 1_000_000).unwrap_or(0),
            reservations_memory_bytes: reservations.memory_bytes.unwrap_or(0),
            stateful,
            template,
            update: policy(&svc.deploy.update_config),
            rollback: policy(&svc.deploy.rollback_config),
            depends_on: svc.depends_on.clone(),
            dns: DnsSettings::of(svc),
            ingress,
            log_sinks: stack.skiff.log_sinks.clone(),
        });
    }
    check_port_conflicts(&defs, &mut errors);
    if errors.is_empty() {
        Ok((defs, warnings))
    } else {
        Err(errors)
    }
}

/// A service's rights, namespaces and kernel limits as the agent takes
/// them. Whether the stack may have them is the container policy's to
/// decide ([`crate::policy`]).
fn runtime(r: &skiff_compose::stack::Runtime) -> RuntimeSpec {
    use skiff_compose::stack::IpcMode as From;
    RuntimeSpec {
        privileged: r.privileged,
        cap_add: r.cap_add.clone(),
        cap_drop: r.cap_drop.clone(),
        devices: r
            .devices
            .iter()
            .map(|d| DeviceSpec {
                source: d.source.clone(),
                target: d.target.clone(),
                permissions: d.permissions.clone(),
            })
            .collect(),
        device_cgroup_rules: r.device_cgroup_rules.clone(),
        security_opt: r.security_opt.clone(),
        host_network: r.host_network,
        host_pid: r.host_pid,
        host_uts: r.host_uts,
        ipc: r.ipc.map(|m| match m {
            From::Host => IpcMode::Host,
            From::Private => IpcMode::Private,
            From::Shareable => IpcMode::Shareable,
            From::None => IpcMode::None,
        }),
        ulimits: r
            .ulimits
            .iter()
            .map(|(name, u)| {
                (
                    name.clone(),
                    Ulimit {
                        soft: u.soft,
                        hard: u.hard,
                    },
                )
            })
            .collect(),
        sysctls: r.sysctls.clone(),
        shm_size_bytes: r.shm_size_bytes,
        group_add: r.group_add.clone(),
    }
}

/// The networks a service joins: those it lists, or the stack's `default`.
fn network_attachments(
    stack: &Stack,
    service: &str,
    svc: &skiff_compose::stack::Service,
) -> Vec<NetworkAttach> {
    let listed: Vec<(String, Vec<String>)> = if svc.networks.is_empty() {
        vec![("default".to_owned(), Vec::new())]
    } else {
        svc.networks
            .iter()
            .map(|(n, s)| (n.clone(), s.aliases.clone()))
            .collect()
    };
    listed
        .into_iter()
        .map(|(name, extra)| {
            let declared = stack.networks.get(&name);
            let external = declared.is_some_and(|n| n.external);
            let mut aliases = vec![service.to_owned()];
            aliases.extend(extra.into_iter().filter(|a| a != service));
            NetworkAttach {
                name: if external {
                    declared.and_then(|n| n.name.clone()).unwrap_or(name)
                } else {
                    name
                },
                external,
                internal: declared.is_some_and(|n| n.internal),
                aliases,
            }
        })
        .collect()
}

/// The config files a service mounts, with their content. Parsing a
/// deploy request reads `file:` and `environment:` configs into
/// `content:` ([`crate::compose::parse`]), so here every config must have
/// content.
fn config_files(stack: &Stack, grants: &[FileGrant]) -> Result<Vec<ConfigFile>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let id = |v: &Option<String>, what: &str, name: &str, errors: &mut Vec<String>| match v {
        None => 0,
        Some(n) => n.parse::<u64>().unwrap_or_else(|_| {
            errors.push(format!(
                "config {name}: {what} {n:?} is not a number; give a numeric {what}"
            ));
            0
        }),
    };
    for g in grants {
        let name = &g.source;
        let content = match stack.configs.get(name).map(|c| &c.source) {
            Some(ConfigSource::Content(text)) => text.clone(),
            Some(ConfigSource::External(_)) => {
                errors.push(format!(
                    "config {name} is external, and Skiff keeps no configs of its own; declare it with `file:` or `content:`"
                ));
                continue;
            }
            Some(ConfigSource::File(_) | ConfigSource::Environment(_)) => {
                errors.push(format!(
                    "config {name} was sent without its content; deploy with `skiff deploy`, which reads `file:` and `environment:` configs"
                ));
                continue;
            }
            None => {
                errors.push(format!(
                    "config {name} is not declared under the top-level `configs:`; declare it"
                ));
                continue;
            }
        };
        if content.len() > MAX_CONFIG_BYTES {
            errors.push(format!(
                "config {name} is {} bytes, more than the {MAX_CONFIG_BYTES} a config may hold; use a volume for larger files",
                content.len()
            ));
            continue;
        }
        let target = if g.target.starts_with('/') {
            g.target.clone()
        } else {
            format!("/{}", g.target)
        };
        if target.ends_with('/') || target.split('/').any(|c| c == "..") {
            errors.push(format!(
                "config {name}: target {target:?} is not a file path; write an absolute path such as /etc/app/app.conf"
            ));
            continue;
        }
        out.push(ConfigFile {
            name: name.clone(),
            target,
            content,
            mode: g.mode.unwrap_or(0o444),
            uid: id(&g.uid, "uid", name, &mut errors),
            gid: id(&g.gid, "gid", name, &mut errors),
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Two services publishing the same port would collide on any host
/// running both (or on every edge host); two services cannot take the
/// same route.
fn check_port_conflicts(defs: &[ServiceDef], errors: &mut Vec<ResolveError>) {
    let mut seen: BTreeMap<(u16, Protocol), &str> = BTreeMap::new();
    let mut routes: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for d in defs {
        let ingress = d.ingress.ports.iter().map(|p| {
            let protocol = match p.protocol {
                DnsProtocol::Tcp => Protocol::Tcp,
                DnsProtocol::Udp => Protocol::Udp,
            };
            (p.published, protocol)
        });
        let host = d.template.ports.iter().map(|p| (p.published, p.protocol));
        for (published, protocol) in host.chain(ingress) {
            if let Some(other) = seen.insert((published, protocol), &d.name)
                && other != d.name
            {
                errors.push(ResolveError {
                    service: d.name.clone(),
                    message: format!(
                        "port {published} is also published by service {other}; publish it from one service only"
                    ),
                });
            }
        }
        for r in &d.ingress.routes {
            if let Some(other) = routes.insert((&r.domain, &r.path), &d.name)
                && other != d.name
            {
                errors.push(ResolveError {
                    service: d.name.clone(),
                    message: format!(
                        "route {}{} is also taken by service {other}; give each service its own domain or path",
                        r.domain, r.path
                    ),
                });
            }
        }
    }
}

impl ServiceDef {
    /// The scheduler's view of this service.
    pub fn to_scheduler(&self) -> scheduler::Service {
        scheduler::Service {
            name: self.name.clone(),
            mode: self.replicas.map_or(Mode::Global, Mode::Replicated),
            constraints: self
                .constraints
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
            max_per_host: self.max_per_host,
            reservations: Resources {
                cpu_millis: self.reservations_cpu_millis,
                memory_bytes: self.reservations_memory_bytes,
            },
            image: self.template.image.clone(),
            image_digest: None,
            stateful: self.stateful,
        }
    }

    /// The container spec of one replica.
    pub fn container(&self, slot: scheduler::Slot) -> ContainerSpec {
        let mut c = self.template.clone();
        c.slot = match slot {
            scheduler::Slot::Replica(n) => n,
            scheduler::Slot::Global => GLOBAL_SLOT,
        };
        c
    }
}

#[cfg(test)]
mod tests;
