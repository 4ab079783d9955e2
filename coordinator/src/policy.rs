//! The cluster's container policy: what no container may do unless an
//! admin allows it for its stack (`skiff policy allow STACK SETTING`).
//!
//! Refused by default: privileged containers, the host's network, PID, IPC
//! and UTS namespaces, capabilities beyond the engine's defaults, host
//! devices and device cgroup rules, security options other than
//! `no-new-privileges`, and bind mounts of the server's root, `/etc`,
//! `/proc`, `/sys`, Skiff's data (`/var/lib/skiff`) and the Docker socket,
//! of anything inside them (`/` apart) or of a directory above them.
//!
//! [`check`] is pure: it takes a release's resolved services and the
//! stack's allowances, and names every refusal with the setting that
//! would allow it. Deploys, rollbacks and scales run it on the release
//! they are about to record ([`crate::deploy::deploy_defs`]), so a release
//! recorded before a policy change is checked again when it is restored.
//! The agent has its own, narrower check for its data dir.

use std::path::Path;

use skiff_api_types::PolicyRuleView;
use skiff_api_types::policy::PolicySetting;
use skiff_shared::files::{Reach, normalize};
use skiff_shared::workload::{ContainerSpec, DEFAULT_CAPABILITIES, IpcMode, MountKind};

use crate::deploy::resolve::ServiceDef;
use crate::store::{AllowanceRow, StoreError};

/// Paths no container may bind-mount unless allowed, and what they would
/// hand it.
const PROTECTED: &[(&str, &str)] = &[
    ("/", "the server's whole file system"),
    ("/etc", "the server's configuration and password hashes"),
    (
        "/proc",
        "the server's processes, and through them its file system",
    ),
    ("/sys", "the kernel's settings"),
    ("/var/lib/skiff", "Skiff's keys, database and secrets"),
    (
        "/var/run/docker.sock",
        "the Docker Engine, and with it the whole server",
    ),
    (
        "/run/docker.sock",
        "the Docker Engine, and with it the whole server",
    ),
];

/// What the policy refuses by default, for `GET /policy`.
pub fn rules() -> Vec<PolicyRuleView> {
    let rule = |setting: &str, description: &str| PolicyRuleView {
        setting: setting.to_owned(),
        description: description.to_owned(),
    };
    let mut out = vec![
        rule(
            "privileged",
            "`privileged: true`: every device and capability of the server",
        ),
        rule(
            "host-network",
            "`network_mode: host`: the server's own network, outside Skiff's network and firewall",
        ),
        rule(
            "host-pid",
            "`pid: host`: every process of the server, to see and signal",
        ),
        rule(
            "host-ipc",
            "`ipc: host`: the server's shared memory and IPC",
        ),
        rule("host-uts", "`uts: host`: the server's host name"),
        rule(
            "cap-add[:CAP]",
            &format!(
                "`cap_add` beyond the engine's defaults ({} need nothing)",
                DEFAULT_CAPABILITIES.join(", ")
            ),
        ),
        rule("device[:/dev/PATH]", "`devices`: the server's hardware"),
        rule(
            "device-cgroup-rule",
            "`device_cgroup_rules`: access to the server's devices",
        ),
        rule(
            "security-opt[:OPT]",
            "`security_opt` other than no-new-privileges: seccomp, AppArmor or SELinux confinement lifted or changed",
        ),
    ];
    for (path, what) in PROTECTED {
        out.push(rule(
            &format!("bind:{path}"),
            &format!(
                "a bind mount of {path}{}: {what}",
                if *path == "/" {
                    ""
                } else {
                    ", anything in it or a directory above it"
                }
            ),
        ));
    }
    out
}

/// A stack's allowances, parsed.
///
/// # Errors
/// A stored setting that does not parse (the store is corrupt).
pub fn parse_allowances(rows: &[AllowanceRow]) -> Result<Vec<PolicySetting>, StoreError> {
    rows.iter()
        .map(|r| {
            r.setting.parse().map_err(|e| {
                StoreError::Corrupt(format!("policy allowance of stack {}: {e}", r.stack))
            })
        })
        .collect()
}

/// The protected path a bind source reaches, and how: it is it, is inside
/// it, or holds it.
fn protected(source: &Path) -> Option<(&'static str, &'static str, &'static str)> {
    PROTECTED.iter().find_map(|(path, what)| {
        let how = match Reach::of(source, Path::new(path))? {
            Reach::Is => "is",
            Reach::Above => "holds",
            // Everything is inside `/`: only `/` itself is refused.
            Reach::Inside if *path == "/" => return None,
            Reach::Inside => "is inside",
        };
        Some((*path, how, *what))
    })
}

/// One thing a container asks for that needs an allowance.
struct Need {
    /// The narrowest setting that allows it.
    setting: PolicySetting,
    /// What the container asks for, and why it is refused by default.
    what: String,
}

/// What a container asks for beyond the defaults.
fn needs(spec: &ContainerSpec) -> Vec<Need> {
    let r = &spec.runtime;
    let mut out = Vec::new();
    let mut need = |setting, what: String| out.push(Need { setting, what });
    if r.privileged {
        need(
            PolicySetting::Privileged,
            "`privileged: true` gives the container every device and capability of the server"
                .into(),
        );
    }
    if r.host_network {
        need(
            PolicySetting::HostNetwork,
            "`network_mode: host` puts the container on the server's own network, outside Skiff's network and firewall".into(),
        );
    }
    if r.host_pid {
        need(
            PolicySetting::HostPid,
            "`pid: host` lets the container see and signal every process of the server".into(),
        );
    }
    if r.ipc == Some(IpcMode::Host) {
        need(
            PolicySetting::HostIpc,
            "`ipc: host` shares the server's shared memory and IPC with the container".into(),
        );
    }
    if r.host_uts {
        need(
            PolicySetting::HostUts,
            "`uts: host` lets the container change the server's host name".into(),
        );
    }
    for cap in &r.cap_add {
        if !DEFAULT_CAPABILITIES.contains(&cap.as_str()) {
            need(
                PolicySetting::CapAdd(Some(cap.clone())),
                format!("`cap_add: {cap}` grants more than the engine's default capabilities"),
            );
        }
    }
    for d in &r.devices {
        need(
            PolicySetting::Device(Some(d.source.clone())),
            format!(
                "the device {} gives the container the server's hardware",
                d.source
            ),
        );
    }
    if !r.device_cgroup_rules.is_empty() {
        need(
            PolicySetting::DeviceCgroupRule,
            "`device_cgroup_rules` give the container access to the server's devices".into(),
        );
    }
    for opt in &r.security_opt {
        if !opt.starts_with("no-new-privileges") {
            need(
                PolicySetting::SecurityOpt(Some(opt.clone())),
                format!("`security_opt: {opt}` changes how the container is confined"),
            );
        }
    }
    for m in spec.mounts.iter().filter(|m| m.kind == MountKind::Bind) {
        let source = normalize(Path::new(&m.source));
        if let Some((path, how, what)) = protected(&source) {
            let shown = source.display().to_string();
            let relation = if how == "is" {
                String::new()
            } else {
                format!(", which {how} {path}")
            };
            need(
                PolicySetting::Bind(shown.clone()),
                format!(
                    "the bind mount of {shown} (at {}){relation} gives the container {what}",
                    m.target
                ),
            );
        }
    }
    out
}

/// Checks a release of `stack` against the stack's allowances: one
/// message for everything a service asks for that is not allowed, naming
/// the setting that would allow it. Empty: allowed.
pub fn check(stack: &str, defs: &[ServiceDef], allowed: &[PolicySetting]) -> Vec<String> {
    let mut out = Vec::new();
    for def in defs {
        for n in needs(&def.template) {
            if allowed.iter().any(|a| a.covers(&n.setting)) {
                continue;
            }
            out.push(format!(
                "service {}: {}; the cluster's container policy refuses it; an admin can allow it with `skiff policy allow {stack} {}`",
                def.name, n.what, n.setting
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;

    fn defs(text: &str) -> Vec<ServiceDef> {
        let env = BTreeMap::new();
        let files: BTreeMap<std::path::PathBuf, String> = BTreeMap::new();
        let input = skiff_compose::stack::Input::new(text, "compose.yml", Path::new("/srv"), &env)
            .with_files(&files);
        let stack = match skiff_compose::stack::parse(&input) {
            Ok(p) => p.stack,
            Err(e) => panic!("{e}"),
        };
        crate::deploy::resolve::resolve("shop", &stack, &BTreeMap::new())
            .unwrap()
            .0
    }

    fn allow(settings: &[&str]) -> Vec<PolicySetting> {
        settings.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn what_gives_no_more_than_the_defaults_needs_nothing() {
        let d = defs(
            "services:\n  cache:\n    image: redis:7\n    cap_drop: [ALL]\n    cap_add: [CHOWN, SETUID, NET_BIND_SERVICE]\n    ulimits: {nofile: 65536, memlock: -1}\n    sysctls: {net.core.somaxconn: 1024}\n    shm_size: 1g\n    pids_limit: 100\n    group_add: [mail]\n    security_opt: [\"no-new-privileges:true\"]\n    ipc: private\n    volumes: [\"/srv/cache:/data\", \"/etc-backup:/b\", \"/var/lib/skiffy:/c\", \"/run/docker:/d\", data:/e]\nvolumes:\n  data: {}\n",
        );
        assert_eq!(check("shop", &d, &[]), Vec::<String>::new());
    }

    #[test]
    fn each_refusal_names_the_setting_that_allows_it() {
        let d = defs(
            "services:\n  probe:\n    image: probe:1\n    privileged: true\n    network_mode: host\n    pid: host\n    ipc: host\n    uts: host\n    cap_add: [NET_ADMIN, CHOWN]\n    devices: [/dev/fuse]\n    device_cgroup_rules: [\"c 10:229 rw\"]\n    security_opt: [\"seccomp:unconfined\", no-new-privileges]\n",
        );
        let refused = check("shop", &d, &[]);
        let settings: Vec<&str> = refused
            .iter()
            .map(|m| {
                m.rsplit_once("skiff policy allow shop ")
                    .unwrap()
                    .1
                    .trim_end_matches('`')
            })
            .collect();
        assert_eq!(
            settings,
            vec![
                "privileged",
                "host-network",
                "host-pid",
                "host-ipc",
                "host-uts",
                "cap-add:NET_ADMIN",
                "device:/dev/fuse",
                "device-cgroup-rule",
                "security-opt:seccomp=unconfined"
            ]
        );
        assert_eq!(
            refused[0],
            "service probe: `privileged: true` gives the container every device and capability of the server; the cluster's container policy refuses it; an admin can allow it with `skiff policy allow shop privileged`"
        );
        // Narrow and broad allowances.
        let allowed = allow(&[
            "privileged",
            "host-network",
            "host-pid",
            "host-ipc",
            "host-uts",
            "cap-add",
            "device:/dev/fuse",
            "device-cgroup-rule",
            "security-opt",
        ]);
        assert_eq!(check("shop", &d, &allowed), Vec::<String>::new());
        let some = allow(&["privileged", "cap-add:SYS_ADMIN", "device"]);
        let left = check("shop", &d, &some);
        assert_eq!(left.len(), 7, "{left:#?}");
        assert!(left.iter().any(|m| m.contains("cap-add:NET_ADMIN")));
    }

    #[test]
    fn protected_paths_their_contents_and_parents_are_refused() {
        for (source, setting, says) in [
            (
                "/",
                "bind:/",
                "the bind mount of / (at /m) gives the container the server's whole file system",
            ),
            ("/etc", "bind:/etc", "password hashes"),
            ("/etc/shadow", "bind:/etc/shadow", "which is inside /etc"),
            (
                "/var/lib/skiff/agent",
                "bind:/var/lib/skiff/agent",
                "Skiff's keys",
            ),
            ("/var/lib", "bind:/var/lib", "which holds /var/lib/skiff"),
            (
                "/var/run/docker.sock",
                "bind:/var/run/docker.sock",
                "the Docker Engine",
            ),
            (
                "/run/docker.sock",
                "bind:/run/docker.sock",
                "the Docker Engine",
            ),
            (
                "/var/run",
                "bind:/var/run",
                "which holds /var/run/docker.sock",
            ),
            ("/run", "bind:/run", "which holds /run/docker.sock"),
            ("/proc/1/root", "bind:/proc/1/root", "which is inside /proc"),
            ("/sys", "bind:/sys", "the kernel's settings"),
            ("/srv/../etc/./", "bind:/etc", "password hashes"),
        ] {
            let d = defs(&format!(
                "services:\n  web:\n    image: web\n    volumes: [\"{source}:/m:ro\"]\n"
            ));
            let refused = check("shop", &d, &[]);
            assert_eq!(refused.len(), 1, "{source}: {refused:?}");
            assert!(
                refused[0].contains(says)
                    && refused[0].ends_with(&format!("`skiff policy allow shop {setting}`")),
                "{source}: {}",
                refused[0]
            );
            assert_eq!(
                check("shop", &d, &allow(&[setting])),
                Vec::<String>::new(),
                "{source} allowed"
            );
        }
        // An allowance covers what is below it, and only for its stack.
        let d =
            defs("services:\n  web:\n    image: web\n    volumes: [\"/var/run/docker.sock:/s\"]\n");
        assert!(check("shop", &d, &allow(&["bind:/var/run"])).is_empty());
        assert_eq!(check("shop", &d, &allow(&["bind:/run"])).len(), 1);
    }

    #[test]
    fn the_default_rules_list_every_setting() {
        let listed: Vec<String> = rules().into_iter().map(|r| r.setting).collect();
        for s in [
            "privileged",
            "host-network",
            "host-pid",
            "host-ipc",
            "host-uts",
            "cap-add[:CAP]",
            "device[:/dev/PATH]",
            "device-cgroup-rule",
            "security-opt[:OPT]",
            "bind:/",
            "bind:/etc",
            "bind:/var/lib/skiff",
            "bind:/var/run/docker.sock",
            "bind:/run/docker.sock",
        ] {
            assert!(listed.iter().any(|l| l == s), "{s}: {listed:?}");
        }
    }
}
