//! The cluster's container policy: the settings an admin can allow for a
//! stack (`skiff policy allow STACK SETTING`), as written on the command
//! line and in the API, and the API's views of the policy.
//!
//! A setting is written as text: `privileged`, `host-network`,
//! `host-pid`, `host-ipc`, `host-uts`, `cap-add[:CAP]`,
//! `device[:/dev/PATH]`, `device-cgroup-rule`, `security-opt[:OPT]` or
//! `bind:/PATH`. [`PolicySetting`] parses and normalizes it; the client
//! and the coordinator both use it, so one rule gives one message.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Something a stack's containers may do only where an admin allows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicySetting {
    /// `privileged: true`.
    Privileged,
    /// `network_mode: host`.
    HostNetwork,
    /// `pid: host`.
    HostPid,
    /// `ipc: host`.
    HostIpc,
    /// `uts: host`.
    HostUts,
    /// `cap_add` beyond the engine's defaults: one capability (upper case,
    /// no `CAP_`), or `None` for any.
    CapAdd(Option<String>),
    /// `devices`: one host path, or `None` for any.
    Device(Option<String>),
    /// `device_cgroup_rules`.
    DeviceCgroupRule,
    /// `security_opt` (other than `no-new-privileges`): one option as
    /// `key=value`, or `None` for any.
    SecurityOpt(Option<String>),
    /// A bind mount of this absolute path or anything below it, where the
    /// policy protects it.
    Bind(String),
}

/// The settings as a user would write them, for messages.
pub const SETTINGS_HELP: &str = "privileged, host-network, host-pid, host-ipc, host-uts, cap-add[:CAP], device[:/dev/PATH], device-cgroup-rule, security-opt[:OPT] or bind:/PATH";

impl PolicySetting {
    /// Whether allowing `self` allows `needed` too: a broad setting
    /// (`cap-add`) covers each narrow one (`cap-add:NET_ADMIN`), and
    /// `bind:/srv` covers `bind:/srv/data`.
    pub fn covers(&self, needed: &PolicySetting) -> bool {
        use PolicySetting as S;
        match (self, needed) {
            (S::CapAdd(None), S::CapAdd(_))
            | (S::Device(None), S::Device(_))
            | (S::SecurityOpt(None), S::SecurityOpt(_)) => true,
            (S::Bind(allowed), S::Bind(path)) => {
                allowed == path
                    || allowed == "/"
                    || path
                        .strip_prefix(allowed.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            }
            (a, b) => a == b,
        }
    }
}

/// A `key=value` security option from `key=value` or the legacy
/// `key:value`.
fn normalize_security_opt(opt: &str) -> String {
    match opt.find(['=', ':']) {
        Some(at) => format!("{}={}", &opt[..at], &opt[at + 1..]),
        None => opt.to_owned(),
    }
}

/// An absolute path without `.`, `..`, repeated or trailing slashes.
fn normalize_path(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

impl FromStr for PolicySetting {
    type Err = String;

    /// Parses a setting as written on the command line, normalizing it:
    /// `cap-add:cap_net_admin` is `cap-add:NET_ADMIN`, `bind:/srv/` is
    /// `bind:/srv`.
    fn from_str(s: &str) -> Result<Self, String> {
        use PolicySetting as S;
        let unknown = || format!("unknown policy setting {s:?}; use {SETTINGS_HELP}");
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let empty = |what: &str| format!("{s:?} names no {what}; write {name}:{what} or {name}");
        Ok(match (name, arg) {
            ("privileged", None) => S::Privileged,
            ("host-network", None) => S::HostNetwork,
            ("host-pid", None) => S::HostPid,
            ("host-ipc", None) => S::HostIpc,
            ("host-uts", None) => S::HostUts,
            ("device-cgroup-rule", None) => S::DeviceCgroupRule,
            ("cap-add", None) => S::CapAdd(None),
            ("cap-add", Some("")) => return Err(empty("CAP")),
            ("cap-add", Some(cap)) => {
                let upper = cap.to_ascii_uppercase();
                let cap = upper.strip_prefix("CAP_").unwrap_or(&upper);
                if !cap.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                    return Err(format!(
                        "{s:?}: {cap:?} is not a capability name; write one such as NET_ADMIN"
                    ));
                }
                S::CapAdd(Some(cap.to_owned()))
            }
            ("device", None) => S::Device(None),
            ("device", Some(path)) => match normalize_path(path) {
                Some(p) if p != "/" => S::Device(Some(p)),
                _ => {
                    return Err(format!(
                        "{s:?}: a device is an absolute path on the server, such as /dev/fuse"
                    ));
                }
            },
            ("security-opt", None) => S::SecurityOpt(None),
            ("security-opt", Some("")) => return Err(empty("OPT")),
            ("security-opt", Some(opt)) => S::SecurityOpt(Some(normalize_security_opt(opt))),
            ("bind", Some(path)) => match normalize_path(path) {
                Some(p) => S::Bind(p),
                None => {
                    return Err(format!(
                        "{s:?}: a bind mount is an absolute path on the server, such as bind:/var/run/docker.sock"
                    ));
                }
            },
            ("bind", None) => {
                return Err(format!(
                    "{s:?} names no path; write bind:/PATH, such as bind:/var/run/docker.sock"
                ));
            }
            _ => return Err(unknown()),
        })
    }
}

impl fmt::Display for PolicySetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use PolicySetting as S;
        match self {
            S::Privileged => f.write_str("privileged"),
            S::HostNetwork => f.write_str("host-network"),
            S::HostPid => f.write_str("host-pid"),
            S::HostIpc => f.write_str("host-ipc"),
            S::HostUts => f.write_str("host-uts"),
            S::DeviceCgroupRule => f.write_str("device-cgroup-rule"),
            S::CapAdd(None) => f.write_str("cap-add"),
            S::CapAdd(Some(c)) => write!(f, "cap-add:{c}"),
            S::Device(None) => f.write_str("device"),
            S::Device(Some(p)) => write!(f, "device:{p}"),
            S::SecurityOpt(None) => f.write_str("security-opt"),
            S::SecurityOpt(Some(o)) => write!(f, "security-opt:{o}"),
            S::Bind(p) => write!(f, "bind:{p}"),
        }
    }
}

/// The cluster's container policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyView {
    /// What no container may do unless it is allowed for its stack.
    pub refused_by_default: Vec<PolicyRuleView>,
    /// What admins allowed, by stack then setting.
    pub allowances: Vec<PolicyAllowanceView>,
}

/// One thing the policy refuses by default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyRuleView {
    /// The setting that allows it, as `skiff policy allow` takes it
    /// (`privileged`, `cap-add[:CAP]`, `bind:/etc`).
    pub setting: String,
    /// What it lets a container do.
    pub description: String,
}

/// A setting an admin allowed for a stack.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyAllowanceView {
    pub stack: String,
    /// Normalized, as `skiff policy allow` takes it.
    pub setting: String,
    /// RFC 3339.
    pub created_at: String,
}

/// Allow or revoke settings for a stack.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PolicyChange {
    pub stack: String,
    /// One or more settings, such as `privileged` or `bind:/var/run/docker.sock`.
    pub settings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<String, String> {
        s.parse::<PolicySetting>().map(|p| p.to_string())
    }

    #[test]
    fn settings_parse_normalized_and_print_back() {
        for (written, normal) in [
            ("privileged", "privileged"),
            ("host-network", "host-network"),
            ("host-pid", "host-pid"),
            ("host-ipc", "host-ipc"),
            ("host-uts", "host-uts"),
            ("device-cgroup-rule", "device-cgroup-rule"),
            ("cap-add", "cap-add"),
            ("cap-add:net_admin", "cap-add:NET_ADMIN"),
            ("cap-add:CAP_SYS_PTRACE", "cap-add:SYS_PTRACE"),
            ("device", "device"),
            ("device:/dev/fuse/", "device:/dev/fuse"),
            ("security-opt", "security-opt"),
            (
                "security-opt:seccomp:unconfined",
                "security-opt:seccomp=unconfined",
            ),
            (
                "security-opt:apparmor=unconfined",
                "security-opt:apparmor=unconfined",
            ),
            ("bind:/", "bind:/"),
            ("bind://var/run//docker.sock", "bind:/var/run/docker.sock"),
            ("bind:/etc/../etc/ssl/", "bind:/etc/ssl"),
        ] {
            assert_eq!(parse(written).as_deref(), Ok(normal), "{written}");
            assert_eq!(parse(normal).as_deref(), Ok(normal), "{normal} is stable");
        }
        for (bad, says) in [
            (
                "priviliged",
                "unknown policy setting \"priviliged\"; use privileged, host-network",
            ),
            ("", "unknown policy setting"),
            ("privileged:yes", "unknown policy setting"),
            ("bind", "names no path; write bind:/PATH"),
            ("bind:etc", "a bind mount is an absolute path"),
            ("cap-add:", "names no CAP"),
            ("cap-add:NET ADMIN", "is not a capability name"),
            ("device:fuse", "a device is an absolute path"),
            ("security-opt:", "names no OPT"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn broad_settings_cover_narrow_ones() {
        let s = |t: &str| t.parse::<PolicySetting>().unwrap();
        assert!(s("cap-add").covers(&s("cap-add:NET_ADMIN")));
        assert!(!s("cap-add:SYS_ADMIN").covers(&s("cap-add:NET_ADMIN")));
        assert!(s("device").covers(&s("device:/dev/fuse")));
        assert!(s("security-opt").covers(&s("security-opt:seccomp=unconfined")));
        assert!(s("bind:/var/run").covers(&s("bind:/var/run/docker.sock")));
        assert!(s("bind:/").covers(&s("bind:/etc")));
        assert!(s("bind:/etc").covers(&s("bind:/etc")));
        assert!(!s("bind:/etc").covers(&s("bind:/etcetera")));
        assert!(!s("bind:/etc/ssl").covers(&s("bind:/etc")));
        assert!(!s("privileged").covers(&s("host-pid")));
        assert!(s("host-pid").covers(&s("host-pid")));
    }
}
