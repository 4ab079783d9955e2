//! The keys of a service: those Skiff handles, those it refuses (ignoring
//! them would change what the application does) and those it ignores with a
//! warning. The table in the `stack` module documentation lists the last
//! two. The keys of rights, namespaces and kernel limits are in
//! `runtime::RUNTIME_KEYS`.

/// Keys a service may have that Skiff handles.
pub(super) const SERVICE_KEYS: &[&str] = &[
    "image",
    "build",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "volumes",
    "tmpfs",
    "healthcheck",
    "depends_on",
    "labels",
    "secrets",
    "configs",
    "stop_grace_period",
    "stop_signal",
    "restart",
    "user",
    "working_dir",
    "hostname",
    "init",
    "read_only",
    "extra_hosts",
    "networks",
    "deploy",
    "x-skiff",
];

/// Service keys that are errors: ignoring them would change behaviour.
/// (key, reason, fix)
pub(in crate::stack) const SERVICE_ERRORS: &[(&str, &str, Option<&str>)] = &[
    (
        "userns_mode",
        "is not supported: the container would run in a different user namespace",
        None,
    ),
    (
        "cgroup",
        "is not supported: the container would run in a different cgroup namespace",
        None,
    ),
    (
        "cgroup_parent",
        "is not supported: the container would run in a different cgroup",
        None,
    ),
    (
        "runtime",
        "is not supported: the container would run under the default runtime",
        None,
    ),
    (
        "gpus",
        "is not supported: the container would run without GPUs",
        None,
    ),
    (
        "volumes_from",
        "is not supported: the container would lack the other service's volumes",
        Some("declare the volumes on this service too"),
    ),
    (
        "extends",
        "is not supported: the service would lack everything it inherits",
        Some("use YAML anchors and merge keys (`<<: *base`) instead"),
    ),
    (
        "profiles",
        "is not supported: every service of a stack is deployed",
        Some("remove the service or the `profiles:` key"),
    ),
    ("scale", "is not supported", Some("use `deploy.replicas`")),
    (
        "mem_limit",
        "is not supported",
        Some("use `deploy.resources.limits.memory`"),
    ),
    (
        "memswap_limit",
        "is not supported",
        Some("remove it; swap follows the memory limit"),
    ),
    (
        "mem_reservation",
        "is not supported",
        Some("use `deploy.resources.reservations.memory`"),
    ),
    (
        "cpus",
        "is not supported",
        Some("use `deploy.resources.limits.cpus`"),
    ),
    (
        "cpu_shares",
        "is not supported",
        Some("use `deploy.resources.reservations.cpus`"),
    ),
    (
        "cpu_quota",
        "is not supported",
        Some("use `deploy.resources.limits.cpus`"),
    ),
    (
        "cpu_period",
        "is not supported",
        Some("use `deploy.resources.limits.cpus`"),
    ),
    (
        "cpuset",
        "is not supported: the container would run on any CPU",
        None,
    ),
];

/// Service keys that are warnings: not acted on, with no change to what
/// the application does. (key, reason)
pub(in crate::stack) const SERVICE_WARNINGS: &[(&str, &str)] = &[
    (
        "container_name",
        "is ignored: Skiff names containers itself, since replicas cannot share a name",
    ),
    (
        "links",
        "is ignored: every service is reachable by its name through Skiff's DNS",
    ),
    (
        "external_links",
        "is ignored: every service is reachable by its name through Skiff's DNS",
    ),
    (
        "dns",
        "is ignored: containers resolve through Skiff's DNS, which forwards other names upstream",
    ),
    (
        "dns_search",
        "is ignored: containers resolve through Skiff's DNS",
    ),
    (
        "dns_opt",
        "is ignored: containers resolve through Skiff's DNS",
    ),
    (
        "logging",
        "is ignored: Skiff collects every container's output itself",
    ),
    (
        "tty",
        "is ignored: no terminal is attached to production containers",
    ),
    (
        "stdin_open",
        "is ignored: no terminal is attached to production containers",
    ),
    (
        "attach",
        "is ignored: Skiff collects every container's output itself",
    ),
    (
        "platform",
        "is ignored: the agent pulls the image for its host's platform",
    ),
    (
        "pull_policy",
        "is ignored: the agent pulls when the image's digest is not present",
    ),
    ("domainname", "is not passed on by this Skiff release"),
    ("mac_address", "is not passed on by this Skiff release"),
    ("oom_score_adj", "is not passed on by this Skiff release"),
    ("oom_kill_disable", "is not passed on by this Skiff release"),
    ("storage_opt", "is not passed on by this Skiff release"),
    ("isolation", "is not passed on by this Skiff release"),
    ("annotations", "is not passed on by this Skiff release"),
    ("blkio_config", "is not passed on by this Skiff release"),
    ("cpu_rt_runtime", "is not passed on by this Skiff release"),
    ("cpu_rt_period", "is not passed on by this Skiff release"),
    ("cpu_count", "is not passed on by this Skiff release"),
    ("cpu_percent", "is not passed on by this Skiff release"),
    ("mem_swappiness", "is not passed on by this Skiff release"),
    ("credential_spec", "is not passed on by this Skiff release"),
    ("label_file", "is not read by this Skiff release"),
    ("develop", "is a development-time setting and is ignored"),
    ("post_start", "is not run by this Skiff release"),
    ("pre_stop", "is not run by this Skiff release"),
    (
        "use_api_socket",
        "is ignored: containers get no Docker API socket",
    ),
    ("models", "is not supported by this Skiff release"),
    ("provider", "is not supported by this Skiff release"),
];
