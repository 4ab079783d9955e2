//! The keys that change how a service's containers run beside the
//! engine's defaults: capabilities, devices, security options, namespaces
//! shared with the server, ulimits, sysctls, `shm_size`, `pids_limit` and
//! `group_add`.
//!
//! The parser checks only how they are written. Whether a stack may have
//! the ones that give a container more than the engine's defaults
//! (`privileged`, `cap_add`, `devices`, host namespaces, ...) is for the
//! cluster's container policy, which the coordinator applies to every
//! deploy.

use std::collections::BTreeMap;

use crate::stack::model::*;
use crate::stack::yaml::{Key, Node, Pos, Value, join};

use super::{Cx, index, suggest};

/// The service keys this file handles.
pub(super) const RUNTIME_KEYS: &[&str] = &[
    "privileged",
    "cap_add",
    "cap_drop",
    "devices",
    "device_cgroup_rules",
    "security_opt",
    "network_mode",
    "pid",
    "uts",
    "ipc",
    "ulimits",
    "sysctls",
    "shm_size",
    "pids_limit",
    "group_add",
];

/// Linux capabilities, without the `CAP_` prefix.
const CAPABILITIES: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

/// Resource limits `ulimits:` may set.
const ULIMITS: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// Sysctls of the IPC namespace (the `net.*` ones are the network
/// namespace's): the kernel keeps a copy per container.
const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

fn is_ipc_sysctl(name: &str) -> bool {
    IPC_SYSCTLS.contains(&name) || name.starts_with("fs.mqueue.")
}

/// Where the keys that are checked against each other were written.
#[derive(Default)]
pub(super) struct RuntimeMarks {
    network_mode: Option<Pos>,
    ipc: Option<Pos>,
    sysctls: Vec<(String, Pos)>,
    /// `pids_limit` as written: its position and the limit (`None`: unlimited).
    pids_limit: Option<(Pos, Option<u64>)>,
}

impl Cx<'_, '_> {
    /// Reads one of [`RUNTIME_KEYS`] into `rt`.
    pub(super) fn runtime_key(
        &mut self,
        key: &Key,
        value: &Node,
        path: &str,
        rt: &mut Runtime,
        marks: &mut RuntimeMarks,
    ) {
        let p = join(path, &key.name);
        match key.name.as_str() {
            "privileged" => rt.privileged = self.boolean(value, &p).unwrap_or(false),
            "cap_add" => rt.cap_add = self.capabilities(value, &p),
            "cap_drop" => rt.cap_drop = self.capabilities(value, &p),
            "devices" => rt.devices = self.devices(value, &p),
            "device_cgroup_rules" => {
                for (i, item) in self.seq(value, &p).unwrap_or(&[]).iter().enumerate() {
                    let ip = index(&p, i);
                    let Some(rule) = self.string(item, &ip) else {
                        continue;
                    };
                    if cgroup_rule_ok(&rule) {
                        rt.device_cgroup_rules.push(rule);
                    } else {
                        self.err_fix(
                            item.pos,
                            &ip,
                            format!("invalid device cgroup rule {rule:?}"),
                            "write `TYPE MAJOR:MINOR PERMS`, such as `c 1:3 mr` or `b *:* rwm`",
                        );
                    }
                }
            }
            "security_opt" => rt.security_opt = self.security_opts(value, &p),
            "network_mode" => {
                marks.network_mode = Some(key.pos);
                if let Some(mode) = self.string(value, &p) {
                    if mode == "host" {
                        rt.host_network = true;
                    } else {
                        self.err_fix(
                            value.pos,
                            &p,
                            format!("`network_mode: {mode}` is not supported: it would bypass Skiff's network, DNS and firewall"),
                            "remove it; services reach each other by name on Skiff's network (`network_mode: host` is possible where the cluster's container policy allows it)",
                        );
                    }
                }
            }
            "pid" => rt.host_pid = self.host_only(value, &p, "pid"),
            "uts" => rt.host_uts = self.host_only(value, &p, "uts"),
            "ipc" => {
                marks.ipc = Some(key.pos);
                rt.ipc = self.ipc(value, &p);
            }
            "ulimits" => rt.ulimits = self.ulimits(value, &p),
            "sysctls" => {
                rt.sysctls = self.string_map(value, &p);
                for name in rt.sysctls.keys() {
                    let pos = match &value.value {
                        Value::Map(entries) => entries
                            .iter()
                            .find(|(k, _)| &k.name == name)
                            .map_or(value.pos, |(k, _)| k.pos),
                        Value::Seq(items) => items
                            .iter()
                            .find(|n| matches!(&n.value, Value::Scalar(s) if s.text.split('=').next() == Some(name.as_str())))
                            .map_or(value.pos, |n| n.pos),
                        _ => value.pos,
                    };
                    marks.sysctls.push((name.clone(), pos));
                }
            }
            "shm_size" => rt.shm_size_bytes = self.bytes(value, &p),
            "pids_limit" => {
                if let Some(limit) = self.pids_limit(value, &p) {
                    marks.pids_limit = Some((key.pos, limit));
                }
            }
            "group_add" => {
                for (i, item) in self.seq(value, &p).unwrap_or(&[]).iter().enumerate() {
                    if let Some(group) = self.non_empty_string(item, &index(&p, i)) {
                        rt.group_add.push(group);
                    }
                }
            }
            _ => {}
        }
    }

    /// The checks across keys, once the whole service is read.
    pub(super) fn runtime_checks(&mut self, svc: &mut Service, path: &str, marks: &RuntimeMarks) {
        let rt = &svc.runtime;
        let mut errors: Vec<(Pos, String, String, &str)> = Vec::new();
        for (name, pos) in &marks.sysctls {
            let p = join(&join(path, "sysctls"), name);
            if name.starts_with("net.") {
                if rt.host_network {
                    errors.push((*pos, p, format!("sysctl `{name}` cannot be set with `network_mode: host`: it would change the server's own network settings"), "set it on the server itself, or leave the host's network"));
                }
            } else if is_ipc_sysctl(name) {
                if rt.ipc == Some(IpcMode::Host) {
                    errors.push((*pos, p, format!("sysctl `{name}` cannot be set with `ipc: host`: it would change the server's own IPC settings"), "set it on the server itself, or leave the host's IPC namespace"));
                }
            } else {
                errors.push((*pos, p, format!("sysctl `{name}` is not namespaced: setting it would change the kernel of the whole server"), "set it on the servers themselves (/etc/sysctl.d); a container may set only `net.*` and the IPC sysctls (`kernel.shm*`, `kernel.msg*`, `kernel.sem`, `fs.mqueue.*`)"));
            }
        }
        if let Some(pos) = marks.network_mode.filter(|_| rt.host_network) {
            if !svc.networks.is_empty() {
                errors.push((
                    pos,
                    join(path, "network_mode"),
                    "`network_mode: host` and `networks:` cannot be combined".into(),
                    "remove one of them",
                ));
            }
            if !svc.ports.is_empty() {
                errors.push((pos, join(path, "network_mode"), "`ports:` do not apply with `network_mode: host`: the service listens on the server's own ports".into(), "remove `ports:`"));
            }
        }
        for (pos, p, message, fix) in errors {
            self.err_fix(pos, &p, message, fix);
        }
        if let Some((pos, limit)) = marks.pids_limit {
            let deploy = svc.deploy.resources.limits.pids;
            match (limit, deploy) {
                (l, Some(d)) if l != Some(d) => self.err_fix(
                    pos,
                    &join(path, "pids_limit"),
                    format!("`pids_limit` and `deploy.resources.limits.pids` ({d}) disagree"),
                    "keep one of them",
                ),
                _ => svc.deploy.resources.limits.pids = limit,
            }
        }
    }

    fn capabilities(&mut self, node: &Node, path: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let Some(items) = self.seq(node, path) else {
            return out;
        };
        for (i, item) in items.iter().enumerate() {
            let p = index(path, i);
            let Some(text) = self.non_empty_string(item, &p) else {
                continue;
            };
            let upper = text.trim().to_ascii_uppercase();
            let name = upper.strip_prefix("CAP_").unwrap_or(&upper).to_owned();
            if name != "ALL" && !CAPABILITIES.contains(&name.as_str()) {
                let fix = suggest(&name, CAPABILITIES.iter().copied()).map_or_else(
                    || "write a Linux capability such as NET_ADMIN, or ALL".to_owned(),
                    |s| format!("did you mean `{s}`?"),
                );
                self.err_fix(item.pos, &p, format!("unknown capability {text:?}"), fix);
                continue;
            }
            if !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }

    fn devices(&mut self, node: &Node, path: &str) -> Vec<Device> {
        let mut out = Vec::new();
        let Some(items) = self.seq(node, path) else {
            return out;
        };
        for (i, item) in items.iter().enumerate() {
            let p = index(path, i);
            let device = match &item.value {
                Value::Map(entries) => {
                    let mut source = None;
                    let mut target = None;
                    let mut permissions = None;
                    for (k, v) in entries {
                        let kp = join(&p, &k.name);
                        match k.name.as_str() {
                            "source" => source = self.non_empty_string(v, &kp),
                            "target" => target = self.non_empty_string(v, &kp),
                            "permissions" => permissions = self.non_empty_string(v, &kp),
                            o if super::is_extension(o) => {}
                            _ => self.unknown_key(k, &p, &["source", "target", "permissions"]),
                        }
                    }
                    let Some(source) = source else {
                        self.err(
                            item.pos,
                            &p,
                            "a device needs `source:` (the path on the server)",
                        );
                        continue;
                    };
                    (source.clone(), target.unwrap_or(source), permissions)
                }
                _ => {
                    let Some(text) = self.non_empty_string(item, &p) else {
                        continue;
                    };
                    let parts: Vec<&str> = text.split(':').collect();
                    let perms = |s: &str| !s.is_empty() && s.chars().all(|c| "rwm".contains(c));
                    match parts.as_slice() {
                        [s] => ((*s).to_owned(), (*s).to_owned(), None),
                        [s, x] if perms(x) => {
                            ((*s).to_owned(), (*s).to_owned(), Some((*x).to_owned()))
                        }
                        [s, t] => ((*s).to_owned(), (*t).to_owned(), None),
                        [s, t, x] => ((*s).to_owned(), (*t).to_owned(), Some((*x).to_owned())),
                        _ => {
                            self.err_fix(
                                item.pos,
                                &p,
                                format!("invalid device {text:?}"),
                                "write `/dev/HOST[:/dev/CONTAINER[:PERMISSIONS]]`",
                            );
                            continue;
                        }
                    }
                }
            };
            let (source, target, permissions) = device;
            if !source.starts_with('/') {
                self.err_fix(
                    item.pos,
                    &p,
                    format!("device {source:?} is not a path on the server"),
                    "write the device's absolute path, such as /dev/fuse (CDI device names are not supported)",
                );
                continue;
            }
            if !target.starts_with('/') {
                self.err(
                    item.pos,
                    &p,
                    format!("the container path {target:?} must be absolute"),
                );
                continue;
            }
            let permissions = permissions.unwrap_or_else(|| "rwm".to_owned());
            if !permissions.chars().all(|c| "rwm".contains(c)) {
                self.err_fix(
                    item.pos,
                    &p,
                    format!("invalid device permissions {permissions:?}"),
                    "write some of r (read), w (write) and m (mknod), such as `rw`",
                );
                continue;
            }
            out.push(Device {
                source,
                target,
                permissions,
            });
        }
        out
    }

    /// `security_opt`, each normalized to `key=value`.
    fn security_opts(&mut self, node: &Node, path: &str) -> Vec<String> {
        let mut out = Vec::new();
        let Some(items) = self.seq(node, path) else {
            return out;
        };
        for (i, item) in items.iter().enumerate() {
            let p = index(path, i);
            let Some(text) = self.non_empty_string(item, &p) else {
                continue;
            };
            let at = text.find(['=', ':']);
            let (key, value) = match at {
                Some(at) => (&text[..at], &text[at + 1..]),
                None => (text.as_str(), ""),
            };
            let normalized = match key {
                "no-new-privileges" => match value {
                    "" | "true" => Some("no-new-privileges=true".to_owned()),
                    "false" => Some("no-new-privileges=false".to_owned()),
                    _ => None,
                },
                "seccomp" if value == "unconfined" => Some("seccomp=unconfined".to_owned()),
                "seccomp" => {
                    self.err_fix(
                        item.pos,
                        &p,
                        format!("seccomp profile {value:?} is not supported: a profile file on this machine does not reach the servers"),
                        "leave the engine's default profile, or write `seccomp=unconfined`",
                    );
                    continue;
                }
                "systempaths" if value == "unconfined" => Some("systempaths=unconfined".to_owned()),
                "apparmor" | "label" if !value.is_empty() => Some(format!("{key}={value}")),
                "systempaths" | "apparmor" | "label" => None,
                _ => {
                    self.err_fix(
                        item.pos,
                        &p,
                        format!("unknown security option {key:?}"),
                        "use no-new-privileges, seccomp, apparmor, label or systempaths",
                    );
                    continue;
                }
            };
            match normalized {
                Some(n) => {
                    if !out.contains(&n) {
                        out.push(n);
                    }
                }
                None => self.err(
                    item.pos,
                    &p,
                    format!("invalid value {value:?} for security option `{key}`"),
                ),
            }
        }
        out
    }

    /// `pid` and `uts`: only `host` is meaningful on a cluster.
    fn host_only(&mut self, node: &Node, path: &str, key: &str) -> bool {
        let Some(mode) = self.string(node, path) else {
            return false;
        };
        match mode.as_str() {
            "host" => true,
            m if m.starts_with("service:") || m.starts_with("container:") => {
                self.not_shared(node.pos, path, key, m);
                false
            }
            _ => {
                self.err_fix(
                    node.pos,
                    path,
                    format!("unknown {key} mode {mode:?}"),
                    format!("write `{key}: host`, or remove it for the container's own namespace"),
                );
                false
            }
        }
    }

    fn not_shared(&mut self, pos: Pos, path: &str, key: &str, mode: &str) {
        self.err_fix(
            pos,
            path,
            format!("`{key}: {mode}` is not supported: replicas run on different servers and cannot share another container's namespace"),
            format!("remove `{key}:`"),
        );
    }

    fn ipc(&mut self, node: &Node, path: &str) -> Option<IpcMode> {
        let mode = self.string(node, path)?;
        match mode.as_str() {
            "host" => Some(IpcMode::Host),
            "private" => Some(IpcMode::Private),
            "shareable" => Some(IpcMode::Shareable),
            "none" => Some(IpcMode::None),
            m if m.starts_with("service:") || m.starts_with("container:") => {
                self.not_shared(node.pos, path, "ipc", m);
                None
            }
            _ => {
                self.err_fix(
                    node.pos,
                    path,
                    format!("unknown ipc mode {mode:?}"),
                    "write host, private, shareable or none",
                );
                None
            }
        }
    }

    fn int(&mut self, node: &Node, path: &str) -> Option<i64> {
        let text = self.string(node, path)?;
        match text.trim().parse::<i64>() {
            Ok(n) if n >= -1 => Some(n),
            _ => {
                self.err(
                    node.pos,
                    path,
                    format!("expected an integer (-1 for unlimited), got {text:?}"),
                );
                None
            }
        }
    }

    fn ulimits(&mut self, node: &Node, path: &str) -> BTreeMap<String, Ulimit> {
        let mut out = BTreeMap::new();
        for (k, v) in self.map(node, path).unwrap_or(&[]) {
            let p = join(path, &k.name);
            if !ULIMITS.contains(&k.name.as_str()) {
                let fix = suggest(&k.name, ULIMITS.iter().copied()).map_or_else(
                    || format!("use one of {}", ULIMITS.join(", ")),
                    |s| format!("did you mean `{s}`?"),
                );
                self.err_fix(k.pos, &p, format!("unknown ulimit `{}`", k.name), fix);
                continue;
            }
            let limit = match &v.value {
                Value::Map(entries) => {
                    let mut soft = None;
                    let mut hard = None;
                    for (lk, lv) in entries {
                        let lp = join(&p, &lk.name);
                        match lk.name.as_str() {
                            "soft" => soft = self.int(lv, &lp),
                            "hard" => hard = self.int(lv, &lp),
                            o if super::is_extension(o) => {}
                            _ => self.unknown_key(lk, &p, &["soft", "hard"]),
                        }
                    }
                    match (soft, hard) {
                        (Some(soft), Some(hard)) => Ulimit { soft, hard },
                        _ => {
                            if !self.errors.iter().any(|e| e.path.starts_with(&p)) {
                                self.err_fix(
                                    v.pos,
                                    &p,
                                    "a ulimit mapping needs `soft:` and `hard:`",
                                    format!(
                                        "write `{}: {{soft: N, hard: N}}`, or one number for both",
                                        k.name
                                    ),
                                );
                            }
                            continue;
                        }
                    }
                }
                _ => {
                    let Some(n) = self.int(v, &p) else {
                        continue;
                    };
                    Ulimit { soft: n, hard: n }
                }
            };
            let unlimited = |n: i64| n == -1;
            if !unlimited(limit.hard) && (unlimited(limit.soft) || limit.soft > limit.hard) {
                self.err(
                    v.pos,
                    &p,
                    format!(
                        "the soft limit {} is above the hard limit {}",
                        limit.soft, limit.hard
                    ),
                );
                continue;
            }
            out.insert(k.name.clone(), limit);
        }
        out
    }

    /// `pids_limit`: a positive number, or -1 (or 0) for unlimited.
    fn pids_limit(&mut self, node: &Node, path: &str) -> Option<Option<u64>> {
        let n = self.int(node, path)?;
        Some(u64::try_from(n).ok().filter(|n| *n > 0))
    }
}

/// `TYPE MAJOR:MINOR PERMS`: type `a`, `b` or `c`, numbers or `*`,
/// permissions some of `rwm`.
fn cgroup_rule_ok(rule: &str) -> bool {
    let parts: Vec<&str> = rule.split_whitespace().collect();
    let number = |s: &str| s == "*" || (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    match parts.as_slice() {
        [kind, numbers, perms] => {
            matches!(*kind, "a" | "b" | "c")
                && numbers
                    .split_once(':')
                    .is_some_and(|(major, minor)| number(major) && number(minor))
                && !perms.is_empty()
                && perms.chars().all(|c| "rwm".contains(c))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_rules() {
        for ok in ["c 1:3 mr", "b *:* rwm", "a 7:* r", "c 10:200 rwm"] {
            assert!(cgroup_rule_ok(ok), "{ok}");
        }
        for bad in [
            "",
            "c 1:3",
            "x 1:3 r",
            "c 1-3 r",
            "c 1:3 rx",
            "c a:3 r",
            "c 1:3 r extra",
        ] {
            assert!(!cgroup_rule_ok(bad), "{bad}");
        }
    }

    #[test]
    fn ipc_sysctls_are_namespaced() {
        assert!(is_ipc_sysctl("kernel.shmmax"));
        assert!(is_ipc_sysctl("fs.mqueue.msg_max"));
        assert!(!is_ipc_sysctl("kernel.pid_max"));
        assert!(!is_ipc_sysctl("vm.max_map_count"));
    }
}
