//! From the position-keeping YAML tree to the [`Stack`] model.
//!
//! Each section has one function that walks its mapping key by key:
//! known keys are converted (or reported), `x-*` keys pass, anything else
//! is an error that suggests the nearest known key. Errors never stop the
//! walk early, so one run reports every problem in the file.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Component, PathBuf};
use std::time::Duration;

use super::interpolate::{InterpolationError, interpolate};
use super::model::*;
use super::yaml::{self, Key, Node, Pos, Value, join};
use super::{Diagnostic, Input, Parsed, Severity, StackError, envfile, order, units};

/// Keys a service may have that Skiff handles.
const SERVICE_KEYS: &[&str] = &[
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
pub(super) const SERVICE_ERRORS: &[(&str, &str, Option<&str>)] = &[
    (
        "network_mode",
        "is not supported: host or container networking would bypass Skiff's network, DNS and firewall",
        Some("remove it; services reach each other by name on Skiff's network"),
    ),
    (
        "privileged",
        "is not supported: the container would run with different rights than asked for",
        None,
    ),
    (
        "cap_add",
        "is not supported: the container would run without the added capabilities",
        None,
    ),
    (
        "cap_drop",
        "is not supported: ignoring it would grant capabilities the file takes away",
        None,
    ),
    (
        "devices",
        "is not supported: the container would run without the devices",
        None,
    ),
    (
        "security_opt",
        "is not supported: the container would run with a different security profile",
        None,
    ),
    (
        "userns_mode",
        "is not supported: the container would run in a different user namespace",
        None,
    ),
    (
        "pid",
        "is not supported: the container would run in its own PID namespace",
        None,
    ),
    (
        "ipc",
        "is not supported: the container would run in its own IPC namespace",
        None,
    ),
    (
        "uts",
        "is not supported: the container would run in its own UTS namespace",
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
        "group_add",
        "is not supported: the container's user would lack the added groups",
        None,
    ),
    (
        "sysctls",
        "is not supported: the kernel settings would stay the defaults",
        None,
    ),
    (
        "ulimits",
        "is not supported: the limits would stay the engine's defaults",
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
    (
        "pids_limit",
        "is not supported",
        Some("use `deploy.resources.limits.pids`"),
    ),
];

/// Service keys that are warnings: not acted on, with no change to what
/// the application does. (key, reason)
pub(super) const SERVICE_WARNINGS: &[(&str, &str)] = &[
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
    ("shm_size", "is not passed on by this Skiff release"),
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

const TOP_KEYS: &[&str] = &[
    "version", "name", "services", "networks", "volumes", "secrets", "configs", "include",
    "x-skiff",
];

/// Accumulates diagnostics while the tree is walked.
struct Cx<'a, 'i> {
    input: &'a Input<'i>,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    unset_warned: BTreeSet<String>,
}

/// What the checks across services need from each service: positions.
#[derive(Default)]
struct ServiceMarks {
    /// Position of the service in the file, for reports in file order.
    order: usize,
    depends_on: Vec<(String, Pos)>,
    depends_key: Pos,
    ports: Vec<Pos>,
}

/// Names declared at top level, for checking references.
#[derive(Default)]
struct Declared {
    volumes: BTreeSet<String>,
    networks: BTreeSet<String>,
    secrets: BTreeSet<String>,
    configs: BTreeSet<String>,
}

pub(super) fn convert(input: &Input<'_>) -> Result<Parsed, StackError> {
    let mut cx = Cx {
        input,
        errors: Vec::new(),
        warnings: Vec::new(),
        unset_warned: BTreeSet::new(),
    };
    let stack = match yaml::parse(input.text) {
        Ok(Some(mut root)) => {
            cx.interpolate_tree(&mut root, "");
            cx.top(&root)
        }
        Ok(None) => {
            cx.err_fix(
                Pos { line: 1, column: 1 },
                "",
                "the file is empty",
                "a stack file is a Compose file with a top-level `services:` mapping",
            );
            None
        }
        Err(e) => {
            cx.push(
                Severity::Error,
                cx.input.file_name.to_string(),
                e.pos,
                &e.path,
                e.message,
                e.help,
            );
            None
        }
    };
    let main = input.file_name.to_string();
    let key = |d: &Diagnostic| (d.file != main, d.file.clone(), d.line, d.column);
    cx.errors.sort_by_key(key);
    cx.warnings.sort_by_key(key);
    match stack {
        Some(stack) if cx.errors.is_empty() => Ok(Parsed {
            stack,
            warnings: cx.warnings,
        }),
        _ => Err(StackError {
            errors: cx.errors,
            warnings: cx.warnings,
        }),
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The known name nearest to `name`, if it is close enough to be a typo.
fn suggest<'k>(name: &str, known: impl IntoIterator<Item = &'k str>) -> Option<&'k str> {
    known
        .into_iter()
        .map(|k| (levenshtein(name, k), k))
        .filter(|(d, k)| *d <= (k.len().max(name.len()) / 3).max(1) && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn is_extension(key: &str) -> bool {
    key.starts_with("x-")
}

impl Cx<'_, '_> {
    fn push(
        &mut self,
        severity: Severity,
        file: String,
        pos: Pos,
        path: &str,
        message: String,
        fix: Option<String>,
    ) {
        let d = Diagnostic {
            severity,
            file,
            line: pos.line,
            column: pos.column,
            path: path.to_string(),
            message,
            fix,
        };
        match severity {
            Severity::Error => self.errors.push(d),
            Severity::Warning => self.warnings.push(d),
        }
    }

    fn err(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        let file = self.input.file_name.to_string();
        self.push(Severity::Error, file, pos, path, message.into(), None);
    }

    fn err_fix(
        &mut self,
        pos: Pos,
        path: &str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        let file = self.input.file_name.to_string();
        self.push(
            Severity::Error,
            file,
            pos,
            path,
            message.into(),
            Some(fix.into()),
        );
    }

    fn warn(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        let file = self.input.file_name.to_string();
        self.push(Severity::Warning, file, pos, path, message.into(), None);
    }

    fn warn_fix(
        &mut self,
        pos: Pos,
        path: &str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        let file = self.input.file_name.to_string();
        self.push(
            Severity::Warning,
            file,
            pos,
            path,
            message.into(),
            Some(fix.into()),
        );
    }

    /// Reports a key that is neither known nor an extension.
    fn unknown_key(&mut self, key: &Key, path: &str, known: &[&str]) {
        let p = join(path, &key.name);
        match suggest(&key.name, known.iter().copied()) {
            Some(s) => self.err_fix(
                key.pos,
                &p,
                format!("unknown key `{}`", key.name),
                format!("did you mean `{s}`?"),
            ),
            None => self.err(
                key.pos,
                &p,
                format!(
                    "unknown key `{}` (known here: {})",
                    key.name,
                    known.join(", ")
                ),
            ),
        }
    }

    /// Interpolates every scalar value (not keys) in place, as Compose
    /// does before it reads the file.
    fn interpolate_tree(&mut self, node: &mut Node, path: &str) {
        match &mut node.value {
            Value::Scalar(s) => {
                if !s.text.contains('$') {
                    return;
                }
                match interpolate(&s.text, self.input.env) {
                    Ok(r) => {
                        for name in r.unset {
                            if self.unset_warned.insert(name.clone()) {
                                self.warn_fix(
                                    node.pos,
                                    path,
                                    format!("variable {name} is not set; using a blank string"),
                                    format!("set {name} in the environment you deploy from, or give a default: ${{{name}:-value}}"),
                                );
                            }
                        }
                        s.text = r.text;
                        s.plain = false;
                    }
                    Err(InterpolationError::Required { name, message }) => {
                        let msg = if message.is_empty() {
                            format!("required variable {name} is missing")
                        } else {
                            format!("required variable {name} is missing: {message}")
                        };
                        self.err_fix(
                            node.pos,
                            path,
                            msg,
                            format!("set {name} in the environment you deploy from"),
                        );
                    }
                    Err(InterpolationError::Invalid { reason }) => {
                        self.err_fix(node.pos, path, reason, "write `$$` for a literal `$`");
                    }
                }
            }
            Value::Seq(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.interpolate_tree(item, &index(path, i));
                }
            }
            Value::Map(entries) => {
                for (k, v) in entries.iter_mut() {
                    let p = join(path, &k.name);
                    self.interpolate_tree(v, &p);
                }
            }
        }
    }

    // ----- typed accessors -------------------------------------------------

    fn map<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [(Key, Node)]> {
        match &node.value {
            Value::Map(entries) => Some(entries),
            _ if node.is_null() => Some(&[]),
            _ => {
                self.err(
                    node.pos,
                    path,
                    format!("expected a mapping, got {}", node.kind()),
                );
                None
            }
        }
    }

    fn seq<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            _ if node.is_null() => Some(&[]),
            _ => {
                self.err(
                    node.pos,
                    path,
                    format!("expected a list, got {}", node.kind()),
                );
                None
            }
        }
    }

    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::Scalar(s) if !s.is_null() => Some(s.text.clone()),
            _ => {
                self.err(
                    node.pos,
                    path,
                    format!("expected a string, got {}", node.kind()),
                );
                None
            }
        }
    }

    /// A string, or `None` for null (no error).
    fn opt_string(&mut self, node: &Node, path: &str) -> Option<String> {
        if node.is_null() {
            return None;
        }
        self.string(node, path)
    }

    fn non_empty_string(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        if s.trim().is_empty() {
            self.err(node.pos, path, "expected a non-empty string");
            return None;
        }
        Some(s)
    }

    fn uint(&mut self, node: &Node, path: &str) -> Option<u64> {
        let text = self.string(node, path)?;
        match text.trim().parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                self.err(
                    node.pos,
                    path,
                    format!("expected a non-negative integer, got {text:?}"),
                );
                None
            }
        }
    }

    fn u32(&mut self, node: &Node, path: &str) -> Option<u32> {
        let n = self.uint(node, path)?;
        match u32::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                self.err(
                    node.pos,
                    path,
                    format!("{n} is too large (at most {})", u32::MAX),
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        let text = self.string(node, path)?;
        match text.as_str() {
            "true" | "True" | "TRUE" => Some(true),
            "false" | "False" | "FALSE" => Some(false),
            _ => {
                self.err(
                    node.pos,
                    path,
                    format!("expected true or false, got {text:?}"),
                );
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let text = self.string(node, path)?;
        match units::parse_duration(&text) {
            Ok(d) => Some(d),
            Err(why) => {
                self.err_fix(
                    node.pos,
                    path,
                    format!("expected a duration, got {text:?}: {why}"),
                    "write a number with a unit, such as `30s`, `1m30s` or `500ms`",
                );
                None
            }
        }
    }

    fn bytes(&mut self, node: &Node, path: &str) -> Option<u64> {
        let text = self.string(node, path)?;
        match units::parse_bytes(&text) {
            Ok(n) => Some(n),
            Err(why) => {
                self.err_fix(
                    node.pos,
                    path,
                    format!("expected a byte size, got {text:?}: {why}"),
                    "write a number with an optional unit b, k, m or g, such as `512M` or `1g`",
                );
                None
            }
        }
    }

    fn file_mode(&mut self, node: &Node, path: &str) -> Option<u32> {
        let text = self.string(node, path)?;
        let t = text.trim();
        let parsed = if let Some(oct) = t.strip_prefix("0o") {
            u32::from_str_radix(oct, 8).ok()
        } else if t.len() > 1 && t.starts_with('0') {
            u32::from_str_radix(&t[1..], 8).ok()
        } else {
            t.parse::<u32>().ok()
        };
        match parsed {
            Some(m) if m <= 0o7777 => Some(m),
            _ => {
                self.err(
                    node.pos,
                    path,
                    format!("expected a file mode such as 0440, got {text:?}"),
                );
                None
            }
        }
    }

    /// Permission bits always written in octal (`1777`, `0755`), as
    /// tmpfs modes are.
    fn octal_mode(&mut self, node: &Node, path: &str) -> Option<u32> {
        let text = self.string(node, path)?;
        let t = text.trim();
        match u32::from_str_radix(t.strip_prefix("0o").unwrap_or(t), 8) {
            Ok(m) if m <= 0o7777 => Some(m),
            _ => {
                self.err(
                    node.pos,
                    path,
                    format!("expected octal permission bits such as 1777, got {text:?}"),
                );
                None
            }
        }
    }

    /// A list of strings; a single string is accepted as a one-item list
    /// when `single` is true.
    fn string_list(&mut self, node: &Node, path: &str, single: bool) -> Vec<String> {
        if single && matches!(node.value, Value::Scalar(_)) && !node.is_null() {
            return self.string(node, path).into_iter().collect();
        }
        let Some(items) = self.seq(node, path) else {
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.string(item, &index(path, i)))
            .collect()
    }

    /// Labels-style mappings: a map of key to scalar, or a list of
    /// `key=value` strings.
    fn string_map(&mut self, node: &Node, path: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        match &node.value {
            Value::Map(entries) => {
                for (k, v) in entries {
                    let p = join(path, &k.name);
                    let value = match &v.value {
                        Value::Scalar(s) if s.is_null() => String::new(),
                        Value::Scalar(s) => s.text.clone(),
                        _ => {
                            self.err(v.pos, &p, format!("expected a string, got {}", v.kind()));
                            continue;
                        }
                    };
                    out.insert(k.name.clone(), value);
                }
            }
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = index(path, i);
                    let Some(text) = self.string(item, &p) else {
                        continue;
                    };
                    let (k, v) = text.split_once('=').unwrap_or((&text, ""));
                    if out.insert(k.to_string(), v.to_string()).is_some() {
                        self.warn(
                            item.pos,
                            &p,
                            format!("`{k}` is set twice; the last one wins"),
                        );
                    }
                }
            }
            _ if node.is_null() => {}
            _ => self.err(
                node.pos,
                path,
                format!(
                    "expected a mapping or a list of `key=value`, got {}",
                    node.kind()
                ),
            ),
        }
        out
    }

    /// Reports every entry of a sub-mapping as not supported (warning).
    fn warn_key(&mut self, key: &Key, path: &str, reason: &str) {
        let p = join(path, &key.name);
        self.warn(key.pos, &p, format!("`{}` {reason}", key.name));
    }

    /// Resolves a path written in the stack file against its directory,
    /// lexically (no file system access).
    fn resolve(&self, written: &str) -> PathBuf {
        let expanded = match written.strip_prefix("~/") {
            Some(rest) => match self.input.env.get("HOME") {
                Some(home) => PathBuf::from(home).join(rest),
                None => PathBuf::from(written),
            },
            None => PathBuf::from(written),
        };
        let joined = if expanded.is_absolute() {
            expanded
        } else {
            self.input.dir.join(expanded)
        };
        let mut out = PathBuf::new();
        for c in joined.components() {
            match c {
                Component::CurDir => {}
                Component::ParentDir => {
                    out.pop();
                }
                other => out.push(other),
            }
        }
        out
    }

    // ----- top level --------------------------------------------------------

    fn top(&mut self, root: &Node) -> Option<Stack> {
        let Value::Map(entries) = &root.value else {
            self.err_fix(
                root.pos,
                "",
                format!(
                    "expected a mapping at the top of the file, got {}",
                    root.kind()
                ),
                "a stack file is a Compose file with a top-level `services:` mapping",
            );
            return None;
        };
        let find = |name: &str| entries.iter().find(|(k, _)| k.name == name);
        let mut stack = Stack {
            name: None,
            services: BTreeMap::new(),
            start_order: Vec::new(),
            networks: BTreeMap::new(),
            volumes: BTreeMap::new(),
            secrets: BTreeMap::new(),
            configs: BTreeMap::new(),
            skiff: SkiffSettings::default(),
        };
        for (key, value) in entries {
            let p = join("", &key.name);
            match key.name.as_str() {
                "version" => self.warn_fix(
                    key.pos,
                    &p,
                    "`version` is obsolete and ignored",
                    "remove the `version:` line",
                ),
                "name" => {
                    if let Some(name) = self.non_empty_string(value, &p) {
                        let ok = name.chars().all(|c| {
                            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
                        }) && name.starts_with(|c: char| c.is_ascii_alphanumeric());
                        if ok {
                            stack.name = Some(name);
                        } else {
                            self.err_fix(
                                value.pos,
                                &p,
                                format!("invalid stack name {name:?}"),
                                "use lowercase letters, digits, `-` and `_`, starting with a letter or digit",
                            );
                        }
                    }
                }
                "include" => self.err_fix(
                    key.pos,
                    &p,
                    "`include` is not supported: the included services would not be deployed",
                    "merge the included files into this one",
                ),
                "services" | "networks" | "volumes" | "secrets" | "configs" => {}
                "x-skiff" => {
                    if let Some(m) = self.map(value, &p) {
                        for (k, v) in m {
                            self.warn(
                                k.pos,
                                &join(&p, &k.name),
                                format!("unknown x-skiff setting `{}`; kept, but not used by this Skiff release", k.name),
                            );
                            stack.skiff.other.insert(k.name.clone(), to_json(v));
                        }
                    }
                }
                other if is_extension(other) => {}
                _ => self.unknown_key(key, "", TOP_KEYS),
            }
        }

        let mut declared = Declared::default();
        if let Some((_, v)) = find("volumes") {
            stack.volumes = self.top_volumes(v);
            declared.volumes = stack.volumes.keys().cloned().collect();
        }
        if let Some((_, v)) = find("networks") {
            stack.networks = self.top_networks(v);
            declared.networks = stack.networks.keys().cloned().collect();
        }
        if let Some((_, v)) = find("secrets") {
            stack.secrets = self.top_secrets(v);
            declared.secrets = stack.secrets.keys().cloned().collect();
        }
        if let Some((_, v)) = find("configs") {
            stack.configs = self.top_configs(v);
            declared.configs = stack.configs.keys().cloned().collect();
        }

        let mut marks: BTreeMap<String, ServiceMarks> = BTreeMap::new();
        match find("services") {
            None => self.err_fix(
                root.pos,
                "services",
                "no `services:` in the file",
                "add a top-level `services:` mapping with at least one service",
            ),
            Some((key, value)) => {
                let services = self.map(value, "services").unwrap_or(&[]);
                if services.is_empty() && (value.is_null() || matches!(value.value, Value::Map(_)))
                {
                    self.err(key.pos, "services", "no services defined");
                }
                for (name_key, svc) in services {
                    let p = join("services", &name_key.name);
                    if !self.service_name_ok(name_key, &p) {
                        continue;
                    }
                    let mut m = ServiceMarks {
                        order: marks.len(),
                        ..ServiceMarks::default()
                    };
                    if let Some(s) = self.service(&name_key.name, svc, &p, &declared, &mut m) {
                        stack.services.insert(name_key.name.clone(), s);
                    }
                    marks.insert(name_key.name.clone(), m);
                }
            }
        }
        self.cross_checks(&mut stack, &marks);
        Some(stack)
    }

    fn service_name_ok(&mut self, key: &Key, path: &str) -> bool {
        let name = &key.name;
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && name.starts_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            self.err_fix(
                key.pos,
                path,
                format!("invalid service name {name:?}"),
                "service names become DNS labels: up to 63 letters, digits, `-` and `_`, starting with a letter or digit",
            );
        }
        ok
    }

    fn top_volumes(&mut self, node: &Node) -> BTreeMap<String, Volume> {
        let mut out = BTreeMap::new();
        let Some(entries) = self.map(node, "volumes") else {
            return out;
        };
        for (key, value) in entries {
            let p = join("volumes", &key.name);
            let mut vol = Volume::default();
            for (k, v) in self.map(value, &p).unwrap_or(&[]) {
                let kp = join(&p, &k.name);
                match k.name.as_str() {
                    "external" => match &v.value {
                        Value::Map(_) => {
                            vol.external = true;
                            self.warn_fix(
                                k.pos,
                                &kp,
                                "`external: {name: ...}` is deprecated",
                                "write `external: true` and `name: ...`",
                            );
                            if let Some((_, n)) = self
                                .map(v, &kp)
                                .and_then(|m| m.iter().find(|(k, _)| k.name == "name"))
                            {
                                vol.name = self.string(n, &join(&kp, "name"));
                            }
                        }
                        _ => vol.external = self.boolean(v, &kp).unwrap_or(false),
                    },
                    "name" => vol.name = self.non_empty_string(v, &kp),
                    "driver" => vol.driver = self.opt_string(v, &kp),
                    "driver_opts" => vol.driver_opts = self.string_map(v, &kp),
                    "labels" => vol.labels = self.string_map(v, &kp),
                    other if is_extension(other) => {}
                    _ => self.unknown_key(
                        k,
                        &p,
                        &["external", "name", "driver", "driver_opts", "labels"],
                    ),
                }
            }
            out.insert(key.name.clone(), vol);
        }
        out
    }

    fn top_networks(&mut self, node: &Node) -> BTreeMap<String, Network> {
        let mut out = BTreeMap::new();
        let Some(entries) = self.map(node, "networks") else {
            return out;
        };
        for (key, value) in entries {
            let p = join("networks", &key.name);
            let mut net = Network::default();
            for (k, v) in self.map(value, &p).unwrap_or(&[]) {
                let kp = join(&p, &k.name);
                match k.name.as_str() {
                    "external" => net.external = self.boolean(v, &kp).unwrap_or(false),
                    "name" => net.name = self.non_empty_string(v, &kp),
                    "internal" => net.internal = self.boolean(v, &kp).unwrap_or(false),
                    "labels" => net.labels = self.string_map(v, &kp),
                    "driver" | "driver_opts" | "ipam" | "attachable" | "enable_ipv4"
                    | "enable_ipv6" => {
                        self.warn_key(k, &p, "is ignored: Skiff's private network connects the containers of every host");
                    }
                    other if is_extension(other) => {}
                    _ => self.unknown_key(
                        k,
                        &p,
                        &[
                            "external",
                            "name",
                            "internal",
                            "labels",
                            "driver",
                            "driver_opts",
                            "ipam",
                            "attachable",
                            "enable_ipv6",
                        ],
                    ),
                }
            }
            out.insert(key.name.clone(), net);
        }
        out
    }

    /// Reads `file`, `environment`, `external`, `name`, `content` of a
    /// top-level secret or config; returns the source found.
    fn file_object(
        &mut self,
        value: &Node,
        p: &str,
        kind: &str,
        allow_content: bool,
    ) -> Option<(ConfigSource, BTreeMap<String, String>)> {
        let entries = self.map(value, p)?;
        let mut sources: Vec<(Pos, ConfigSource)> = Vec::new();
        let mut name = None;
        let mut labels = BTreeMap::new();
        for (k, v) in entries {
            let kp = join(p, &k.name);
            match k.name.as_str() {
                "file" => {
                    if let Some(f) = self.non_empty_string(v, &kp) {
                        let path = self.resolve(&f);
                        if self.input.files.is_file(&path) {
                            sources.push((k.pos, ConfigSource::File(path)));
                        } else {
                            self.err_fix(
                                v.pos,
                                &kp,
                                format!("{kind} file {f:?} not found (looked for {})", path.display()),
                                if kind == "secret" {
                                    "create the file, or store the secret with `skiff secret set` and write `external: true`".to_owned()
                                } else {
                                    "create the file, or write the config inline with `content:`".to_owned()
                                },
                            );
                        }
                    }
                }
                "environment" => {
                    if let Some(var) = self.non_empty_string(v, &kp) {
                        if self.input.env.contains_key(&var) {
                            sources.push((k.pos, ConfigSource::Environment(var)));
                        } else {
                            self.err_fix(
                                v.pos,
                                &kp,
                                format!("variable {var} is not set"),
                                format!("set {var} in the environment you deploy from"),
                            );
                        }
                    }
                }
                "content" if allow_content => {
                    if let Some(c) = self.string(v, &kp) {
                        sources.push((k.pos, ConfigSource::Content(c)));
                    }
                }
                "external" => {
                    if self.boolean(v, &kp).unwrap_or(false) {
                        sources.push((k.pos, ConfigSource::External(String::new())));
                    }
                }
                "name" => name = self.non_empty_string(v, &kp),
                "labels" => labels = self.string_map(v, &kp),
                "driver" | "driver_opts" | "template_driver" => {
                    self.warn_key(k, p, "is ignored by this Skiff release");
                }
                other if is_extension(other) => {}
                _ => {
                    let known: &[&str] = if allow_content {
                        &[
                            "file",
                            "environment",
                            "content",
                            "external",
                            "name",
                            "labels",
                        ]
                    } else {
                        &["file", "environment", "external", "name", "labels"]
                    };
                    self.unknown_key(k, p, known)
                }
            }
        }
        let key_name = p.rsplit('.').next().unwrap_or(p).to_string();
        let mut sources = sources.into_iter();
        let first = sources.next();
        if let Some((pos, _)) = sources.next() {
            self.err(
                pos,
                p,
                format!(
                    "a {kind} takes exactly one of `file`, `environment`{} or `external: true`",
                    if allow_content { ", `content`" } else { "" }
                ),
            );
            return None;
        }
        let source = match first {
            Some((_, ConfigSource::External(_))) => {
                ConfigSource::External(name.unwrap_or(key_name))
            }
            Some((_, s)) => s,
            None => {
                if entries.is_empty()
                    || !self
                        .errors
                        .iter()
                        .any(|e| e.path == p || e.path.starts_with(&format!("{p}.")))
                {
                    self.err_fix(
                        value.pos,
                        p,
                        format!("the {kind} has no source"),
                        format!("give it `file: ./path`, `environment: VAR`{} or `external: true` (stored with `skiff secret set`)", if allow_content { ", `content: ...`" } else { "" }),
                    );
                }
                return None;
            }
        };
        Some((source, labels))
    }

    fn top_secrets(&mut self, node: &Node) -> BTreeMap<String, SecretDef> {
        let mut out = BTreeMap::new();
        let Some(entries) = self.map(node, "secrets") else {
            return out;
        };
        for (key, value) in entries {
            let p = join("secrets", &key.name);
            if let Some((source, labels)) = self.file_object(value, &p, "secret", false) {
                let source = match source {
                    ConfigSource::File(f) => SecretSource::File(f),
                    ConfigSource::Environment(v) => SecretSource::Environment(v),
                    ConfigSource::External(n) | ConfigSource::Content(n) => {
                        SecretSource::External(n)
                    }
                };
                out.insert(key.name.clone(), SecretDef { source, labels });
            } else {
                // Declared, even if broken: references to it are not errors too.
                out.insert(
                    key.name.clone(),
                    SecretDef {
                        source: SecretSource::External(key.name.clone()),
                        labels: BTreeMap::new(),
                    },
                );
            }
        }
        out
    }

    fn top_configs(&mut self, node: &Node) -> BTreeMap<String, ConfigDef> {
        let mut out = BTreeMap::new();
        let Some(entries) = self.map(node, "configs") else {
            return out;
        };
        for (key, value) in entries {
            let p = join("configs", &key.name);
            let (source, labels) = self
                .file_object(value, &p, "config", true)
                .unwrap_or((ConfigSource::External(key.name.clone()), BTreeMap::new()));
            out.insert(key.name.clone(), ConfigDef { source, labels });
        }
        out
    }

    // ----- services -------------------------------------------------------

    fn service(
        &mut self,
        name: &str,
        node: &Node,
        path: &str,
        declared: &Declared,
        marks: &mut ServiceMarks,
    ) -> Option<Service> {
        let entries = match &node.value {
            Value::Map(e) => e.as_slice(),
            _ => {
                self.err(
                    node.pos,
                    path,
                    format!("expected a mapping, got {}", node.kind()),
                );
                return None;
            }
        };
        let mut svc = Service {
            image: String::new(),
            command: None,
            entrypoint: None,
            environment: BTreeMap::new(),
            ports: Vec::new(),
            expose: Vec::new(),
            volumes: Vec::new(),
            healthcheck: None,
            depends_on: BTreeMap::new(),
            labels: BTreeMap::new(),
            secrets: Vec::new(),
            configs: Vec::new(),
            stop_grace_period: Duration::from_secs(10),
            stop_signal: None,
            restart: None,
            user: None,
            working_dir: None,
            hostname: None,
            init: None,
            read_only: false,
            extra_hosts: BTreeMap::new(),
            networks: BTreeMap::new(),
            deploy: Deploy::default(),
            skiff: SkiffService::default(),
        };
        let mut image_set = false;
        let mut build_key = None;
        let mut env_files: Vec<(String, String)> = Vec::new();
        let mut env_entries: Vec<(String, String)> = Vec::new();
        let mut restart_key = None;
        let mut restart_policy_set = false;
        for (key, value) in entries {
            let p = join(path, &key.name);
            match key.name.as_str() {
                "image" => {
                    // Set, even when invalid: the error is about its value.
                    image_set = true;
                    if let Some(img) = self.non_empty_string(value, &p)
                        && self.image_ok(&img, value.pos, &p)
                    {
                        svc.image = img;
                    }
                }
                "build" => build_key = Some(key.pos),
                "command" => svc.command = self.argv(value, &p),
                "entrypoint" => svc.entrypoint = self.argv(value, &p),
                "environment" => env_entries = self.environment(value, &p),
                "env_file" => env_files = self.env_files(value, &p),
                "ports" => {
                    if let Some(items) = self.seq(value, &p) {
                        for (i, item) in items.iter().enumerate() {
                            for port in self.port(item, &index(&p, i)) {
                                svc.ports.push(port);
                                marks.ports.push(item.pos);
                            }
                        }
                    }
                }
                "expose" => {
                    if let Some(items) = self.seq(value, &p) {
                        for (i, item) in items.iter().enumerate() {
                            svc.expose.extend(self.expose(item, &index(&p, i)));
                        }
                    }
                }
                "volumes" => {
                    if let Some(items) = self.seq(value, &p) {
                        for (i, item) in items.iter().enumerate() {
                            if let Some(m) = self.mount(item, &index(&p, i), declared) {
                                svc.volumes.push(m);
                            }
                        }
                    }
                }
                "tmpfs" => {
                    for (i, t) in self.string_list(value, &p, true).into_iter().enumerate() {
                        let ip = if matches!(value.value, Value::Seq(_)) {
                            index(&p, i)
                        } else {
                            p.clone()
                        };
                        if let Some(m) = self.tmpfs_short(&t, value.pos, &ip) {
                            svc.volumes.push(m);
                        }
                    }
                }
                "healthcheck" => svc.healthcheck = self.healthcheck(value, &p),
                "depends_on" => {
                    marks.depends_key = key.pos;
                    svc.depends_on = self.depends_on(value, &p, marks);
                }
                "labels" => {
                    svc.labels = self.string_map(value, &p);
                    self.reserved_labels(&svc.labels, value.pos, &p);
                }
                "secrets" => svc.secrets = self.grants(value, &p, "secret", &declared.secrets),
                "configs" => svc.configs = self.grants(value, &p, "config", &declared.configs),
                "stop_grace_period" => {
                    if let Some(d) = self.duration(value, &p) {
                        svc.stop_grace_period = d;
                    }
                }
                "stop_signal" => svc.stop_signal = self.non_empty_string(value, &p),
                "restart" => {
                    restart_key = Some(key.pos);
                    svc.restart = self.restart(value, &p);
                }
                "user" => svc.user = self.non_empty_string(value, &p),
                "working_dir" => {
                    svc.working_dir = self.non_empty_string(value, &p);
                    if svc
                        .working_dir
                        .as_ref()
                        .is_some_and(|w| !w.starts_with('/'))
                    {
                        self.err(
                            value.pos,
                            &p,
                            "working_dir must be an absolute path in the container",
                        );
                    }
                }
                "hostname" => svc.hostname = self.non_empty_string(value, &p),
                "init" => svc.init = self.boolean(value, &p),
                "read_only" => svc.read_only = self.boolean(value, &p).unwrap_or(false),
                "extra_hosts" => svc.extra_hosts = self.extra_hosts(value, &p),
                "networks" => svc.networks = self.service_networks(value, &p, declared),
                "deploy" => {
                    restart_policy_set = matches!(&value.value, Value::Map(e) if e.iter().any(|(k, _)| k.name == "restart_policy"));
                    svc.deploy = self.deploy(value, &p);
                }
                "x-skiff" => svc.skiff = self.skiff_service(value, &p),
                other if is_extension(other) => {}
                other => {
                    if let Some((_, why, fix)) = SERVICE_ERRORS.iter().find(|(k, _, _)| *k == other)
                    {
                        match fix {
                            Some(f) => self.err_fix(key.pos, &p, format!("`{other}` {why}"), *f),
                            None => self.err_fix(
                                key.pos,
                                &p,
                                format!("`{other}` {why}"),
                                format!("remove `{other}`"),
                            ),
                        }
                    } else if let Some((_, why)) =
                        SERVICE_WARNINGS.iter().find(|(k, _)| *k == other)
                    {
                        self.warn(key.pos, &p, format!("`{other}` {why}"));
                    } else {
                        self.unknown_key(key, path, SERVICE_KEYS);
                    }
                }
            }
        }
        if let Some(pos) = build_key {
            let fix = if image_set {
                "remove `build:` and push the image named in `image:` before deploying".to_string()
            } else {
                format!("build and push the image yourself, then set `services.{name}.image` to it")
            };
            self.err_fix(
                pos,
                &join(path, "build"),
                "Skiff does not build images yet: builds from git and Dockerfiles come in a later Skiff release",
                fix,
            );
        } else if !image_set {
            self.err_fix(
                node.pos,
                path,
                format!("service `{name}` has no `image`"),
                "set `image:` to an image in a registry the servers can pull from",
            );
        }
        if let (Some(pos), true) = (restart_key, restart_policy_set) {
            self.warn(
                pos,
                &join(path, "restart"),
                "both `restart` and `deploy.restart_policy` are set; Skiff follows `deploy.restart_policy`",
            );
        }
        // Precedence as Compose: env_file entries in order, then
        // `environment`.
        for (k, v) in env_files.into_iter().chain(env_entries) {
            svc.environment.insert(k, v);
        }
        Some(svc)
    }

    fn image_ok(&mut self, image: &str, pos: Pos, path: &str) -> bool {
        if image.chars().any(char::is_whitespace) {
            self.err(
                pos,
                path,
                format!("invalid image reference {image:?}: it contains white space"),
            );
            return false;
        }
        let name_end = image.find('@').unwrap_or(image.len());
        let name = &image[..name_end];
        let repo = match name.rfind(':') {
            Some(c) if !name[c..].contains('/') => &name[..c],
            _ => name,
        };
        let path_part = match repo.split_once('/') {
            Some((host, rest))
                if host.contains('.') || host.contains(':') || host == "localhost" =>
            {
                rest
            }
            _ => repo,
        };
        if path_part.chars().any(|c| c.is_ascii_uppercase()) {
            self.err_fix(
                pos,
                path,
                format!("invalid image reference {image:?}: repository names are lowercase"),
                format!("write {:?}", image.to_ascii_lowercase()),
            );
            return false;
        }
        true
    }

    /// `command` and `entrypoint`: a string split like a shell, or a list.
    fn argv(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        match &node.value {
            Value::Scalar(s) if s.is_null() => None,
            Value::Scalar(s) => match shlex::split(&s.text) {
                Some(words) => Some(words),
                None => {
                    self.err_fix(
                        node.pos,
                        path,
                        format!(
                            "cannot split {:?} into words: a quote is not closed",
                            s.text
                        ),
                        "close the quote, or write the command as a list",
                    );
                    None
                }
            },
            Value::Seq(_) => Some(self.string_list(node, path, false)),
            Value::Map(_) => {
                self.err(node.pos, path, "expected a string or a list, got a mapping");
                None
            }
        }
    }

    fn environment(&mut self, node: &Node, path: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        let mut take = |cx: &mut Self, key: &str, value: Option<String>, pos: Pos, p: &str| {
            if key.is_empty() || key.contains(char::is_whitespace) {
                cx.err(pos, p, format!("invalid variable name {key:?}"));
                return;
            }
            let value = match value {
                Some(v) => v,
                None => match cx.input.env.get(key) {
                    Some(v) => v.clone(),
                    None => {
                        cx.warn_fix(
                            pos,
                            p,
                            format!("{key} has no value and is not set in the deploying environment; it is left out"),
                            format!("give it a value (`{key}=...`) or set {key} where you deploy from"),
                        );
                        return;
                    }
                },
            };
            if let Some(prev) = at.get(key).and_then(|i| out.get_mut(*i)) {
                cx.warn(pos, p, format!("{key} is set twice; the last one wins"));
                prev.1 = value;
            } else {
                at.insert(key.to_string(), out.len());
                out.push((key.to_string(), value));
            }
        };
        match &node.value {
            Value::Map(entries) => {
                for (k, v) in entries {
                    let p = join(path, &k.name);
                    let value = match &v.value {
                        Value::Scalar(s) if s.is_null() => None,
                        Value::Scalar(s) => Some(s.text.clone()),
                        _ => {
                            self.err(
                                v.pos,
                                &p,
                                format!("expected a string, number or boolean, got {}", v.kind()),
                            );
                            continue;
                        }
                    };
                    take(self, &k.name, value, k.pos, &p);
                }
            }
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = index(path, i);
                    let Some(text) = self.string(item, &p) else {
                        continue;
                    };
                    match text.split_once('=') {
                        Some((k, v)) => take(self, k, Some(v.to_string()), item.pos, &p),
                        None => take(self, &text, None, item.pos, &p),
                    }
                }
            }
            _ if node.is_null() => {}
            _ => self.err(
                node.pos,
                path,
                format!(
                    "expected a mapping or a list of `KEY=value`, got {}",
                    node.kind()
                ),
            ),
        }
        out
    }

    fn env_files(&mut self, node: &Node, path: &str) -> Vec<(String, String)> {
        let mut list: Vec<(String, bool, Pos, String)> = Vec::new();
        let one = |cx: &mut Self,
                   n: &Node,
                   p: &str,
                   list: &mut Vec<(String, bool, Pos, String)>| match &n.value {
            Value::Map(entries) => {
                let mut file = None;
                let mut required = true;
                for (k, v) in entries {
                    let kp = join(p, &k.name);
                    match k.name.as_str() {
                        "path" => file = cx.non_empty_string(v, &kp),
                        "required" => required = cx.boolean(v, &kp).unwrap_or(true),
                        "format" => {
                            if cx.string(v, &kp).is_some_and(|f| f != "raw") {
                                cx.err(
                                    v.pos,
                                    &kp,
                                    "only the default format and `raw` are supported",
                                );
                            }
                        }
                        other if is_extension(other) => {}
                        _ => cx.unknown_key(k, p, &["path", "required", "format"]),
                    }
                }
                match file {
                    Some(f) => list.push((f, required, n.pos, p.to_string())),
                    None if !entries.iter().any(|(k, _)| k.name == "path") => {
                        cx.err(n.pos, p, "an env_file entry needs `path:`");
                    }
                    None => {}
                }
            }
            _ => {
                if let Some(f) = cx.non_empty_string(n, p) {
                    list.push((f, true, n.pos, p.to_string()));
                }
            }
        };
        match &node.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    one(self, item, &index(path, i), &mut list);
                }
            }
            _ if node.is_null() => {}
            _ => one(self, node, path, &mut list),
        }
        let mut out = Vec::new();
        for (written, required, pos, p) in list {
            let resolved = self.resolve(&written);
            let text = match self.input.files.read_to_string(&resolved) {
                Ok(t) => t,
                Err(e) => {
                    if required {
                        self.err_fix(
                            pos,
                            &p,
                            format!("cannot read env file {written:?} ({}): {e}", resolved.display()),
                            "create the file, fix the path (relative to the stack file), or mark it `required: false`",
                        );
                    }
                    continue;
                }
            };
            let parsed = envfile::parse(&text, self.input.env);
            let file = written.trim_start_matches("./").to_string();
            for issue in parsed.errors {
                self.push(
                    Severity::Error,
                    file.clone(),
                    Pos {
                        line: issue.line,
                        column: issue.column,
                    },
                    &p,
                    issue.message,
                    issue.fix,
                );
            }
            for issue in parsed.warnings {
                self.push(
                    Severity::Warning,
                    file.clone(),
                    Pos {
                        line: issue.line,
                        column: issue.column,
                    },
                    &p,
                    issue.message,
                    issue.fix,
                );
            }
            out.extend(parsed.vars);
        }
        out
    }

    // ----- ports ------------------------------------------------------------

    fn protocol(&mut self, text: &str, pos: Pos, path: &str) -> Option<Protocol> {
        match text.to_ascii_lowercase().as_str() {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => {
                self.err(
                    pos,
                    path,
                    format!("unknown protocol {text:?} (use tcp, udp or sctp)"),
                );
                None
            }
        }
    }

    /// A port number or a range `a-b`, as an inclusive range.
    fn port_range(&mut self, text: &str, pos: Pos, path: &str) -> Option<(u16, u16)> {
        let one = |cx: &mut Self, t: &str| -> Option<u16> {
            match t.trim().parse::<u32>() {
                Ok(n) if (1..=65535).contains(&n) => u16::try_from(n).ok(),
                Ok(n) => {
                    cx.err(pos, path, format!("port {n} is out of range (1-65535)"));
                    None
                }
                Err(_) => {
                    cx.err(pos, path, format!("expected a port number, got {t:?}"));
                    None
                }
            }
        };
        match text.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (one(self, a)?, one(self, b)?);
                if a > b {
                    self.err(pos, path, format!("port range {text:?} runs backwards"));
                    return None;
                }
                Some((a, b))
            }
            None => one(self, text).map(|p| (p, p)),
        }
    }

    fn expand_ports(
        &mut self,
        published: Option<(u16, u16)>,
        target: (u16, u16),
        base: &Port,
        pos: Pos,
        path: &str,
    ) -> Vec<Port> {
        let count = usize::from(target.1 - target.0) + 1;
        match published {
            Some(p) if p.0 != p.1 || target.0 != target.1 => {
                let pcount = usize::from(p.1 - p.0) + 1;
                if pcount != count {
                    self.err_fix(
                        pos,
                        path,
                        format!(
                            "published range has {pcount} ports but the container range has {count}"
                        ),
                        "give ranges of the same length, or one published port per container port",
                    );
                    return Vec::new();
                }
                (0..=target.1 - target.0)
                    .map(|i| Port {
                        target: target.0 + i,
                        published: Some(p.0 + i),
                        ..base.clone()
                    })
                    .collect()
            }
            Some(p) => vec![Port {
                target: target.0,
                published: Some(p.0),
                ..base.clone()
            }],
            None => (target.0..=target.1)
                .map(|t| Port {
                    target: t,
                    ..base.clone()
                })
                .collect(),
        }
    }

    fn port(&mut self, node: &Node, path: &str) -> Vec<Port> {
        let base = Port {
            target: 0,
            published: None,
            host_ip: None,
            protocol: Protocol::Tcp,
            mode: PortMode::Ingress,
            name: None,
            app_protocol: None,
        };
        match &node.value {
            Value::Scalar(s) if !s.is_null() => self.port_short(&s.text, node.pos, path, base),
            Value::Map(entries) => self.port_long(entries, node, path, base),
            _ => {
                self.err(
                    node.pos,
                    path,
                    format!(
                        "expected a port (\"8080:80\") or a mapping with `target`, got {}",
                        node.kind()
                    ),
                );
                Vec::new()
            }
        }
    }

    fn port_short(&mut self, text: &str, pos: Pos, path: &str, mut base: Port) -> Vec<Port> {
        let (spec, proto) = match text.rsplit_once('/') {
            Some((s, p)) => (s, Some(p)),
            None => (text, None),
        };
        if let Some(p) = proto {
            match self.protocol(p, pos, path) {
                Some(p) => base.protocol = p,
                None => return Vec::new(),
            }
        }
        // [host_ip:][published:]target, host_ip possibly in brackets.
        let (ip, rest) = if let Some(after) = spec.strip_prefix('[') {
            match after.split_once("]:") {
                Some((ip, rest)) => (Some(ip.to_string()), rest.to_string()),
                None => {
                    self.err(
                        pos,
                        path,
                        format!("invalid port {text:?}: `[` without `]:`"),
                    );
                    return Vec::new();
                }
            }
        } else {
            let parts: Vec<&str> = spec.split(':').collect();
            if parts.len() > 2 {
                let ip = parts[..parts.len() - 2].join(":");
                (Some(ip), parts[parts.len() - 2..].join(":"))
            } else {
                (None, spec.to_string())
            }
        };
        if let Some(ip) = ip {
            match ip.parse::<IpAddr>() {
                Ok(ip) => base.host_ip = Some(ip),
                Err(_) => {
                    self.err_fix(
                        pos,
                        path,
                        format!("invalid host address {ip:?} in port {text:?}"),
                        "write `IP:PUBLISHED:TARGET`, with IPv6 addresses in brackets",
                    );
                    return Vec::new();
                }
            }
        }
        let (published, target) = match rest.split_once(':') {
            Some((p, t)) => (
                if p.is_empty() {
                    None
                } else {
                    Some(p.to_string())
                },
                t.to_string(),
            ),
            None => (None, rest.clone()),
        };
        let Some(target) = self.port_range(&target, pos, path) else {
            return Vec::new();
        };
        let published = match published {
            Some(p) => match self.port_range(&p, pos, path) {
                Some(r) => Some(r),
                None => return Vec::new(),
            },
            None => None,
        };
        if let Some(p) = published
            && p.0 != p.1
            && target.0 == target.1
        {
            self.err_fix(
                pos,
                path,
                format!(
                    "published range {}-{} for the single container port {}",
                    p.0, p.1, target.0
                ),
                format!("publish one port, e.g. \"{}:{}\"", p.0, target.0),
            );
            return Vec::new();
        }
        self.expand_ports(published, target, &base, pos, path)
    }

    fn port_long(
        &mut self,
        entries: &[(Key, Node)],
        node: &Node,
        path: &str,
        mut base: Port,
    ) -> Vec<Port> {
        let mut target = None;
        let mut published = None;
        let mut ok = true;
        for (k, v) in entries {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "target" => match self.string(v, &kp) {
                    Some(t) if !t.contains('-') => target = self.port_range(&t, v.pos, &kp),
                    Some(t) => {
                        self.err(v.pos, &kp, format!("expected a single port, got {t:?}"));
                        ok = false;
                    }
                    None => ok = false,
                },
                "published" => match self.string(v, &kp) {
                    Some(t) if t.is_empty() => {}
                    Some(t) => match self.port_range(&t, v.pos, &kp) {
                        Some(r) => published = Some((r, v.pos)),
                        None => ok = false,
                    },
                    None => ok = false,
                },
                "host_ip" => match self.string(v, &kp).map(|s| (s.parse::<IpAddr>(), s)) {
                    Some((Ok(ip), _)) => base.host_ip = Some(ip),
                    Some((Err(_), s)) => {
                        self.err(v.pos, &kp, format!("invalid IP address {s:?}"));
                        ok = false;
                    }
                    None => ok = false,
                },
                "protocol" => match self
                    .string(v, &kp)
                    .and_then(|s| self.protocol(&s, v.pos, &kp))
                {
                    Some(p) => base.protocol = p,
                    None => ok = false,
                },
                "mode" => match self.string(v, &kp).as_deref() {
                    Some("ingress") => base.mode = PortMode::Ingress,
                    Some("host") => base.mode = PortMode::Host,
                    Some(other) => {
                        self.err(
                            v.pos,
                            &kp,
                            format!("unknown port mode {other:?} (use ingress or host)"),
                        );
                        ok = false;
                    }
                    None => ok = false,
                },
                "name" => base.name = self.non_empty_string(v, &kp),
                "app_protocol" => base.app_protocol = self.non_empty_string(v, &kp),
                other if is_extension(other) => {}
                _ => self.unknown_key(
                    k,
                    path,
                    &[
                        "target",
                        "published",
                        "host_ip",
                        "protocol",
                        "mode",
                        "name",
                        "app_protocol",
                    ],
                ),
            }
        }
        let Some(target) = target else {
            if ok {
                self.err(
                    node.pos,
                    path,
                    "a port needs `target:` (the port inside the container)",
                );
            }
            return Vec::new();
        };
        if !ok {
            return Vec::new();
        }
        match published {
            Some((p, pos)) if p.0 != p.1 => {
                self.err_fix(
                    pos,
                    &join(path, "published"),
                    format!(
                        "published range {}-{} for the single container port {}",
                        p.0, p.1, target.0
                    ),
                    format!("publish one port, e.g. {}", p.0),
                );
                Vec::new()
            }
            _ => self.expand_ports(published.map(|(p, _)| p), target, &base, node.pos, path),
        }
    }

    fn expose(&mut self, node: &Node, path: &str) -> Vec<ExposedPort> {
        let Some(text) = self.string(node, path) else {
            return Vec::new();
        };
        let (spec, proto) = match text.rsplit_once('/') {
            Some((s, p)) => (s.to_string(), self.protocol(p, node.pos, path)),
            None => (text.clone(), Some(Protocol::Tcp)),
        };
        let (Some(protocol), Some((a, b))) = (proto, self.port_range(&spec, node.pos, path)) else {
            return Vec::new();
        };
        (a..=b).map(|port| ExposedPort { port, protocol }).collect()
    }

    // ----- volumes ------------------------------------------------------------

    fn check_target(&mut self, target: &str, pos: Pos, path: &str) -> bool {
        if !target.starts_with('/') {
            self.err(
                pos,
                path,
                format!("the container path {target:?} must be absolute"),
            );
            return false;
        }
        true
    }

    fn named_volume(&mut self, name: &str, pos: Pos, path: &str, declared: &Declared) -> bool {
        if declared.volumes.contains(name) {
            return true;
        }
        let fix = match suggest(name, declared.volumes.iter().map(String::as_str)) {
            Some(s) => format!(
                "did you mean `{s}`? Otherwise declare `{name}` under the top-level `volumes:`"
            ),
            None => format!(
                "declare it under the top-level `volumes:` (`volumes: {{{name}: {{}}}}`), or write a path (`./{name}` or `/...`) for a bind mount"
            ),
        };
        self.err_fix(
            pos,
            path,
            format!("volume `{name}` is not declared at top level"),
            fix,
        );
        false
    }

    fn bind_source(&mut self, written: &str, pos: Pos, path: &str) -> PathBuf {
        let resolved = self.resolve(written);
        if !written.starts_with('/') {
            self.warn_fix(
                pos,
                path,
                format!("bind mount of {written:?} is mounted from {} on each server that runs the service", resolved.display()),
                "put the files there on every server, or ship them as a `configs:` entry",
            );
        }
        resolved
    }

    fn mount(&mut self, node: &Node, path: &str, declared: &Declared) -> Option<Mount> {
        match &node.value {
            Value::Scalar(s) if !s.is_null() => self.mount_short(&s.text, node.pos, path, declared),
            Value::Map(entries) => self.mount_long(entries, node, path, declared),
            _ => {
                self.err(node.pos, path, format!("expected a volume (\"data:/var/lib/data\") or a mapping with `type`, got {}", node.kind()));
                None
            }
        }
    }

    fn mount_short(
        &mut self,
        text: &str,
        pos: Pos,
        path: &str,
        declared: &Declared,
    ) -> Option<Mount> {
        let parts: Vec<&str> = text.split(':').collect();
        let (source, target, mode) = match parts.as_slice() {
            [t] => (None, *t, None),
            [s, t] => (Some(*s), *t, None),
            [s, t, m] => (Some(*s), *t, Some(*m)),
            _ => {
                self.err_fix(
                    pos,
                    path,
                    format!("invalid volume {text:?}"),
                    "write `SOURCE:TARGET[:ro]`",
                );
                return None;
            }
        };
        if !self.check_target(target, pos, path) {
            return None;
        }
        let mut read_only = false;
        let mut nocopy = false;
        for opt in mode.unwrap_or("").split(',').filter(|o| !o.is_empty()) {
            match opt {
                "ro" => read_only = true,
                "rw" => read_only = false,
                "nocopy" => nocopy = true,
                "z" | "Z" | "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate"
                | "consistent" | "cached" | "delegated" => {
                    self.warn(
                        pos,
                        path,
                        format!("volume option `{opt}` is not passed on by this Skiff release"),
                    );
                }
                other => {
                    self.err_fix(
                        pos,
                        path,
                        format!("unknown volume option {other:?}"),
                        "use `ro` or `rw`",
                    );
                    return None;
                }
            }
        }
        match source {
            None => Some(Mount::Volume {
                source: None,
                target: target.to_string(),
                read_only,
                nocopy,
            }),
            Some(s) if s.starts_with('/') || s.starts_with('.') || s.starts_with('~') => {
                if s.starts_with('~') && !s.starts_with("~/") && s != "~" {
                    self.err(
                        pos,
                        path,
                        format!("cannot expand {s:?}: only `~/` is understood"),
                    );
                    return None;
                }
                if s.starts_with('~') && !self.input.env.contains_key("HOME") {
                    self.err_fix(
                        pos,
                        path,
                        format!("cannot expand {s:?}: HOME is not set"),
                        "write an absolute path",
                    );
                    return None;
                }
                let source = self.bind_source(s, pos, path);
                Some(Mount::Bind {
                    source,
                    target: target.to_string(),
                    read_only,
                    create_host_path: true,
                })
            }
            Some("") => {
                self.err(pos, path, format!("invalid volume {text:?}: empty source"));
                None
            }
            Some(name) => {
                if !self.named_volume(name, pos, path, declared) {
                    return None;
                }
                Some(Mount::Volume {
                    source: Some(name.to_string()),
                    target: target.to_string(),
                    read_only,
                    nocopy,
                })
            }
        }
    }

    fn mount_long(
        &mut self,
        entries: &[(Key, Node)],
        node: &Node,
        path: &str,
        declared: &Declared,
    ) -> Option<Mount> {
        let get = |name: &str| entries.iter().find(|(k, _)| k.name == name);
        let kind = match get("type") {
            Some((_, v)) => self.string(v, &join(path, "type"))?,
            None => {
                self.err_fix(
                    node.pos,
                    path,
                    "a volume mapping needs `type:`",
                    "add `type: volume`, `type: bind` or `type: tmpfs`",
                );
                return None;
            }
        };
        let mut source = None;
        let mut target = None;
        let mut read_only = false;
        let mut nocopy = false;
        let mut create_host_path = true;
        let mut size = None;
        let mut mode = None;
        for (k, v) in entries {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "type" => {}
                "source" => source = self.opt_string(v, &kp).map(|s| (s, v.pos)),
                "target" => target = self.non_empty_string(v, &kp).map(|t| (t, v.pos)),
                "read_only" => read_only = self.boolean(v, &kp).unwrap_or(false),
                "consistency" => self.warn_key(k, path, "is not passed on by this Skiff release"),
                "bind" if kind == "bind" => {
                    for (bk, bv) in self.map(v, &kp).unwrap_or(&[]) {
                        match bk.name.as_str() {
                            "create_host_path" => {
                                create_host_path = self
                                    .boolean(bv, &join(&kp, "create_host_path"))
                                    .unwrap_or(true)
                            }
                            "propagation" | "selinux" | "recursive" => {
                                self.warn_key(bk, &kp, "is not passed on by this Skiff release")
                            }
                            o if is_extension(o) => {}
                            _ => self.unknown_key(
                                bk,
                                &kp,
                                &["create_host_path", "propagation", "selinux", "recursive"],
                            ),
                        }
                    }
                }
                "volume" if kind == "volume" => {
                    for (vk, vv) in self.map(v, &kp).unwrap_or(&[]) {
                        match vk.name.as_str() {
                            "nocopy" => {
                                nocopy = self.boolean(vv, &join(&kp, "nocopy")).unwrap_or(false)
                            }
                            "subpath" => {
                                self.warn_key(vk, &kp, "is not passed on by this Skiff release")
                            }
                            o if is_extension(o) => {}
                            _ => self.unknown_key(vk, &kp, &["nocopy", "subpath"]),
                        }
                    }
                }
                "tmpfs" if kind == "tmpfs" => {
                    for (tk, tv) in self.map(v, &kp).unwrap_or(&[]) {
                        match tk.name.as_str() {
                            "size" => size = self.bytes(tv, &join(&kp, "size")),
                            "mode" => mode = self.octal_mode(tv, &join(&kp, "mode")),
                            o if is_extension(o) => {}
                            _ => self.unknown_key(tk, &kp, &["size", "mode"]),
                        }
                    }
                }
                "bind" | "volume" | "tmpfs" => {
                    self.err(
                        k.pos,
                        &kp,
                        format!(
                            "`{}` options do not apply to a mount of type `{kind}`",
                            k.name
                        ),
                    );
                }
                other if is_extension(other) => {}
                _ => self.unknown_key(
                    k,
                    path,
                    &[
                        "type",
                        "source",
                        "target",
                        "read_only",
                        "bind",
                        "volume",
                        "tmpfs",
                        "consistency",
                    ],
                ),
            }
        }
        let Some((target, tpos)) = target else {
            self.err(
                node.pos,
                path,
                "a volume mapping needs `target:` (the path in the container)",
            );
            return None;
        };
        if !self.check_target(&target, tpos, &join(path, "target")) {
            return None;
        }
        match kind.as_str() {
            "volume" => {
                let source = match source {
                    Some((s, pos)) if !s.is_empty() => {
                        if !self.named_volume(&s, pos, &join(path, "source"), declared) {
                            return None;
                        }
                        Some(s)
                    }
                    _ => None,
                };
                Some(Mount::Volume {
                    source,
                    target,
                    read_only,
                    nocopy,
                })
            }
            "bind" => {
                let Some((s, pos)) = source.filter(|(s, _)| !s.is_empty()) else {
                    self.err(
                        node.pos,
                        path,
                        "a bind mount needs `source:` (the path on the server)",
                    );
                    return None;
                };
                let source = self.bind_source(&s, pos, &join(path, "source"));
                Some(Mount::Bind {
                    source,
                    target,
                    read_only,
                    create_host_path,
                })
            }
            "tmpfs" => {
                if let Some((_, pos)) = source {
                    self.err(pos, &join(path, "source"), "a tmpfs mount has no source");
                    return None;
                }
                Some(Mount::Tmpfs {
                    target,
                    size_bytes: size,
                    mode,
                })
            }
            other => {
                let p = join(path, "type");
                let pos = get("type").map_or(node.pos, |(_, v)| v.pos);
                if matches!(other, "npipe" | "image" | "cluster") {
                    self.err(
                        pos,
                        &p,
                        format!("mounts of type `{other}` are not supported"),
                    );
                } else {
                    self.err(
                        pos,
                        &p,
                        format!("unknown mount type {other:?} (use volume, bind or tmpfs)"),
                    );
                }
                None
            }
        }
    }

    fn tmpfs_short(&mut self, text: &str, pos: Pos, path: &str) -> Option<Mount> {
        let (target, opts) = text.split_once(':').unwrap_or((text, ""));
        if !self.check_target(target, pos, path) {
            return None;
        }
        let mut size = None;
        let mut mode = None;
        for opt in opts.split(',').filter(|o| !o.is_empty()) {
            match opt.split_once('=') {
                Some(("size", v)) => match units::parse_bytes(v) {
                    Ok(n) => size = Some(n),
                    Err(why) => {
                        self.err(pos, path, format!("invalid tmpfs size {v:?}: {why}"));
                        return None;
                    }
                },
                Some(("mode", v)) => match u32::from_str_radix(v, 8) {
                    Ok(m) if m <= 0o7777 => mode = Some(m),
                    _ => {
                        self.err(
                            pos,
                            path,
                            format!("invalid tmpfs mode {v:?}: expected octal such as 1777"),
                        );
                        return None;
                    }
                },
                _ => self.warn(
                    pos,
                    path,
                    format!("tmpfs option `{opt}` is not passed on by this Skiff release"),
                ),
            }
        }
        Some(Mount::Tmpfs {
            target: target.to_string(),
            size_bytes: size,
            mode,
        })
    }

    // ----- healthcheck, depends_on, grants ------------------------------------

    fn healthcheck(&mut self, node: &Node, path: &str) -> Option<Healthcheck> {
        let entries = self.map(node, path)?;
        let mut hc = Healthcheck {
            test: None,
            interval: None,
            timeout: None,
            start_period: None,
            start_interval: None,
            retries: None,
        };
        let mut disable = None;
        let mut test_pos = None;
        for (k, v) in entries {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "test" => {
                    test_pos = Some(k.pos);
                    hc.test = self.health_test(v, &kp);
                }
                "interval" => hc.interval = self.duration(v, &kp),
                "timeout" => hc.timeout = self.duration(v, &kp),
                "start_period" => hc.start_period = self.duration(v, &kp),
                "start_interval" => hc.start_interval = self.duration(v, &kp),
                "retries" => hc.retries = self.u32(v, &kp),
                "disable" => disable = self.boolean(v, &kp),
                other if is_extension(other) => {}
                _ => self.unknown_key(
                    k,
                    path,
                    &[
                        "test",
                        "interval",
                        "timeout",
                        "start_period",
                        "start_interval",
                        "retries",
                        "disable",
                    ],
                ),
            }
        }
        if disable == Some(true) {
            if let (Some(_), Some(tpos)) = (&hc.test, test_pos)
                && hc.test != Some(HealthTest::None)
            {
                self.err_fix(
                    tpos,
                    &join(path, "test"),
                    "`test` and `disable: true` contradict each other",
                    "keep one of them",
                );
                return None;
            }
            hc.test = Some(HealthTest::None);
        }
        Some(hc)
    }

    fn health_test(&mut self, node: &Node, path: &str) -> Option<HealthTest> {
        match &node.value {
            Value::Scalar(s) if !s.is_null() => {
                if s.text.trim().is_empty() {
                    self.err(node.pos, path, "the health check command is empty");
                    return None;
                }
                Some(HealthTest::CmdShell(s.text.clone()))
            }
            Value::Seq(_) => {
                let items = self.string_list(node, path, false);
                match items.split_first() {
                    Some((first, rest)) if first == "NONE" => {
                        if !rest.is_empty() {
                            self.warn(node.pos, path, "items after NONE are ignored");
                        }
                        Some(HealthTest::None)
                    }
                    Some((first, rest)) if first == "CMD" && !rest.is_empty() => {
                        Some(HealthTest::Cmd(rest.to_vec()))
                    }
                    Some((first, rest)) if first == "CMD-SHELL" && !rest.is_empty() => {
                        if rest.len() > 1 {
                            self.warn_fix(
                                node.pos,
                                path,
                                "CMD-SHELL takes one string; the items are joined with spaces",
                                "write the command as one string",
                            );
                        }
                        Some(HealthTest::CmdShell(rest.join(" ")))
                    }
                    Some((first, _)) if first == "CMD" || first == "CMD-SHELL" => {
                        self.err(node.pos, path, format!("{first} needs a command after it"));
                        None
                    }
                    _ => {
                        self.err_fix(
                            node.pos,
                            path,
                            "a health check list must start with CMD, CMD-SHELL or NONE",
                            "write [\"CMD\", \"curl\", \"-f\", \"http://localhost/\"] or [\"CMD-SHELL\", \"curl -f http://localhost/ || exit 1\"]",
                        );
                        None
                    }
                }
            }
            _ => {
                self.err(
                    node.pos,
                    path,
                    format!("expected a string or a list, got {}", node.kind()),
                );
                None
            }
        }
    }

    fn depends_on(
        &mut self,
        node: &Node,
        path: &str,
        marks: &mut ServiceMarks,
    ) -> BTreeMap<String, Dependency> {
        let mut out = BTreeMap::new();
        let started = Dependency {
            condition: DependsCondition::ServiceStarted,
            required: true,
            restart: false,
        };
        match &node.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = index(path, i);
                    if let Some(name) = self.non_empty_string(item, &p) {
                        if out.insert(name.clone(), started.clone()).is_some() {
                            self.warn(item.pos, &p, format!("`{name}` is listed twice"));
                        }
                        marks.depends_on.push((name, item.pos));
                    }
                }
            }
            Value::Map(entries) => {
                for (k, v) in entries {
                    let p = join(path, &k.name);
                    let mut dep = started.clone();
                    for (dk, dv) in self.map(v, &p).unwrap_or(&[]) {
                        let dp = join(&p, &dk.name);
                        match dk.name.as_str() {
                            "condition" => match self.string(dv, &dp).as_deref() {
                                Some("service_started") => {
                                    dep.condition = DependsCondition::ServiceStarted
                                }
                                Some("service_healthy") => {
                                    dep.condition = DependsCondition::ServiceHealthy
                                }
                                Some("service_completed_successfully") => {
                                    dep.condition = DependsCondition::ServiceCompletedSuccessfully
                                }
                                Some(other) => {
                                    let fix = suggest(other, ["service_started", "service_healthy", "service_completed_successfully"])
                                        .map_or("use service_started, service_healthy or service_completed_successfully".to_string(), |s| format!("did you mean `{s}`?"));
                                    self.err_fix(
                                        dv.pos,
                                        &dp,
                                        format!("unknown condition {other:?}"),
                                        fix,
                                    );
                                }
                                None => {}
                            },
                            "required" => dep.required = self.boolean(dv, &dp).unwrap_or(true),
                            "restart" => {
                                dep.restart = self.boolean(dv, &dp).unwrap_or(false);
                                if dep.restart {
                                    self.warn(dv.pos, &dp, "dependents are not restarted when this service is updated; they keep running");
                                }
                            }
                            o if is_extension(o) => {}
                            _ => self.unknown_key(dk, &p, &["condition", "required", "restart"]),
                        }
                    }
                    marks.depends_on.push((k.name.clone(), k.pos));
                    out.insert(k.name.clone(), dep);
                }
            }
            _ if node.is_null() => {}
            _ => self.err(
                node.pos,
                path,
                format!(
                    "expected a list of services or a mapping, got {}",
                    node.kind()
                ),
            ),
        }
        out
    }

    fn grants(
        &mut self,
        node: &Node,
        path: &str,
        kind: &str,
        declared: &BTreeSet<String>,
    ) -> Vec<FileGrant> {
        let mut out = Vec::new();
        let Some(items) = self.seq(node, path) else {
            return out;
        };
        let default_target = |source: &str| {
            if kind == "secret" {
                format!("/run/secrets/{source}")
            } else {
                format!("/{source}")
            }
        };
        for (i, item) in items.iter().enumerate() {
            let p = index(path, i);
            let (grant, src_pos) = match &item.value {
                Value::Map(entries) => {
                    let mut g = FileGrant {
                        source: String::new(),
                        target: String::new(),
                        uid: None,
                        gid: None,
                        mode: None,
                    };
                    let mut src_pos = item.pos;
                    for (k, v) in entries {
                        let kp = join(&p, &k.name);
                        match k.name.as_str() {
                            "source" => {
                                src_pos = v.pos;
                                g.source = self.non_empty_string(v, &kp).unwrap_or_default();
                            }
                            "target" => {
                                g.target = self.non_empty_string(v, &kp).unwrap_or_default()
                            }
                            "uid" => g.uid = self.non_empty_string(v, &kp),
                            "gid" => g.gid = self.non_empty_string(v, &kp),
                            "mode" => g.mode = self.file_mode(v, &kp),
                            o if is_extension(o) => {}
                            _ => {
                                self.unknown_key(k, &p, &["source", "target", "uid", "gid", "mode"])
                            }
                        }
                    }
                    if g.source.is_empty() {
                        if !entries.iter().any(|(k, _)| k.name == "source") {
                            self.err(item.pos, &p, format!("a {kind} entry needs `source:`"));
                        }
                        continue;
                    }
                    (g, src_pos)
                }
                _ => match self.non_empty_string(item, &p) {
                    Some(s) => (
                        FileGrant {
                            source: s,
                            target: String::new(),
                            uid: None,
                            gid: None,
                            mode: None,
                        },
                        item.pos,
                    ),
                    None => continue,
                },
            };
            let mut grant = grant;
            if !declared.contains(&grant.source) {
                let fix = match suggest(&grant.source, declared.iter().map(String::as_str)) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!(
                        "declare it under the top-level `{kind}s:` with `file:`, `environment:` or {}",
                        if kind == "secret" {
                            "`external: true`"
                        } else {
                            "`content:`"
                        }
                    ),
                };
                self.err_fix(
                    src_pos,
                    &p,
                    format!("{kind} `{}` is not declared at top level", grant.source),
                    fix,
                );
                continue;
            }
            grant.target = if grant.target.is_empty() {
                default_target(&grant.source)
            } else if grant.target.starts_with('/') {
                grant.target
            } else {
                default_target(&grant.target)
            };
            out.push(grant);
        }
        out
    }

    fn reserved_labels(&mut self, labels: &BTreeMap<String, String>, pos: Pos, path: &str) {
        for key in labels.keys().filter(|k| k.starts_with("skiff.")) {
            self.err_fix(
                pos,
                &join(path, key),
                format!("label `{key}` is reserved: Skiff marks the containers it manages with `skiff.*` labels"),
                "use another prefix, such as `com.example.`",
            );
        }
    }

    fn restart(&mut self, node: &Node, path: &str) -> Option<RestartMode> {
        let text = self.string(node, path)?;
        match text.as_str() {
            "no" | "\"no\"" => Some(RestartMode::No),
            "always" => Some(RestartMode::Always),
            "unless-stopped" => Some(RestartMode::UnlessStopped),
            "on-failure" => Some(RestartMode::OnFailure { max_retries: None }),
            t if t.starts_with("on-failure:") => match t["on-failure:".len()..].parse::<u32>() {
                Ok(n) => Some(RestartMode::OnFailure {
                    max_retries: Some(n),
                }),
                Err(_) => {
                    self.err_fix(
                        node.pos,
                        path,
                        format!("invalid restart policy {t:?}"),
                        "write `on-failure:N` with N a number of retries",
                    );
                    None
                }
            },
            other => {
                let fix = suggest(other, ["no", "always", "unless-stopped", "on-failure"]).map_or(
                    "use no, always, unless-stopped or on-failure[:N]".to_string(),
                    |s| format!("did you mean `{s}`?"),
                );
                self.err_fix(
                    node.pos,
                    path,
                    format!("unknown restart policy {other:?}"),
                    fix,
                );
                None
            }
        }
    }

    fn extra_hosts(&mut self, node: &Node, path: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        match &node.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = index(path, i);
                    let Some(text) = self.string(item, &p) else {
                        continue;
                    };
                    let split = text.split_once('=').or_else(|| text.split_once(':'));
                    match split {
                        Some((h, ip)) if !h.is_empty() && !ip.is_empty() => {
                            out.insert(h.to_string(), ip.to_string());
                        }
                        _ => self.err_fix(
                            item.pos,
                            &p,
                            format!("invalid host entry {text:?}"),
                            "write `name=address` or `name:address`",
                        ),
                    }
                }
            }
            Value::Map(_) => out = self.string_map(node, path),
            _ if node.is_null() => {}
            _ => self.err(
                node.pos,
                path,
                format!("expected a list or a mapping, got {}", node.kind()),
            ),
        }
        out
    }

    fn service_networks(
        &mut self,
        node: &Node,
        path: &str,
        declared: &Declared,
    ) -> BTreeMap<String, ServiceNetwork> {
        let mut out = BTreeMap::new();
        let check = |cx: &mut Self, name: &str, pos: Pos, p: &str| -> bool {
            if name == "default" || declared.networks.contains(name) {
                return true;
            }
            let fix = match suggest(name, declared.networks.iter().map(String::as_str)) {
                Some(s) => format!("did you mean `{s}`?"),
                None => "declare it under the top-level `networks:`".to_string(),
            };
            cx.err_fix(
                pos,
                p,
                format!("network `{name}` is not declared at top level"),
                fix,
            );
            false
        };
        match &node.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = index(path, i);
                    if let Some(name) = self.non_empty_string(item, &p)
                        && check(self, &name, item.pos, &p)
                    {
                        out.insert(name, ServiceNetwork::default());
                    }
                }
            }
            Value::Map(entries) => {
                for (k, v) in entries {
                    let p = join(path, &k.name);
                    if !check(self, &k.name, k.pos, &p) {
                        continue;
                    }
                    let mut net = ServiceNetwork::default();
                    for (nk, nv) in self.map(v, &p).unwrap_or(&[]) {
                        match nk.name.as_str() {
                            "aliases" => {
                                net.aliases = self.string_list(nv, &join(&p, "aliases"), false)
                            }
                            "ipv4_address" | "ipv6_address" | "link_local_ips" | "mac_address"
                            | "priority" | "gw_priority" | "driver_opts" | "interface_name" => {
                                self.warn_key(
                                    nk,
                                    &p,
                                    "is ignored: Skiff assigns addresses on its own network",
                                );
                            }
                            o if is_extension(o) => {}
                            _ => self.unknown_key(
                                nk,
                                &p,
                                &["aliases", "ipv4_address", "ipv6_address", "priority"],
                            ),
                        }
                    }
                    out.insert(k.name.clone(), net);
                }
            }
            _ if node.is_null() => {}
            _ => self.err(
                node.pos,
                path,
                format!("expected a list or a mapping, got {}", node.kind()),
            ),
        }
        out
    }

    // ----- deploy ---------------------------------------------------------------

    fn deploy(&mut self, node: &Node, path: &str) -> Deploy {
        let mut d = Deploy::default();
        let Some(entries) = self.map(node, path) else {
            return d;
        };
        let mut replicas = None;
        let mut global = None;
        for (k, v) in entries {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "mode" => match self.string(v, &kp).as_deref() {
                    Some("replicated") => {}
                    Some("global") => global = Some(v.pos),
                    Some(m @ ("replicated-job" | "global-job")) => {
                        self.err(v.pos, &kp, format!("mode `{m}` is not supported yet (use replicated or global)"));
                    }
                    Some(other) => {
                        self.err(v.pos, &kp, format!("unknown mode {other:?} (use replicated or global)"));
                    }
                    None => {}
                },
                "replicas" => replicas = self.uint(v, &kp).map(|r| (r, k.pos)),
                "placement" => d.placement = self.placement(v, &kp),
                "resources" => d.resources = self.resources(v, &kp),
                "restart_policy" => d.restart_policy = self.restart_policy(v, &kp),
                "update_config" => d.update_config = self.update_config(v, &kp, UpdateConfig::update_default()),
                "rollback_config" => d.rollback_config = self.update_config(v, &kp, UpdateConfig::rollback_default()),
                "labels" => {
                    d.labels = self.string_map(v, &kp);
                    self.reserved_labels(&d.labels, v.pos, &kp);
                }
                "endpoint_mode" => match self.string(v, &kp).as_deref() {
                    Some("vip") | None => {}
                    Some("dnsrr") => self.err_fix(v.pos, &kp, "`endpoint_mode: dnsrr` is not supported: Skiff's DNS decides how service names resolve", "remove it"),
                    Some(other) => self.err(v.pos, &kp, format!("unknown endpoint_mode {other:?}")),
                },
                other if is_extension(other) => {}
                _ => self.unknown_key(k, path, &["mode", "replicas", "placement", "resources", "restart_policy", "update_config", "rollback_config", "labels", "endpoint_mode"]),
            }
        }
        match (global, replicas) {
            (Some(_), Some((_, pos))) => self.err_fix(
                pos,
                &join(path, "replicas"),
                "`replicas` cannot be used with `mode: global`",
                "remove `replicas` (global runs one replica per eligible host) or the mode",
            ),
            (Some(_), None) => d.mode = DeployMode::Global,
            (None, Some((r, _))) => d.mode = DeployMode::Replicated { replicas: r },
            (None, None) => {}
        }
        d
    }

    fn placement(&mut self, node: &Node, path: &str) -> Placement {
        let mut pl = Placement::default();
        for (k, v) in self.map(node, path).unwrap_or(&[]) {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "constraints" => {
                    if let Some(items) = self.seq(v, &kp) {
                        for (i, item) in items.iter().enumerate() {
                            if let Some(c) = self.non_empty_string(item, &index(&kp, i)) {
                                pl.constraints.push(c);
                            }
                        }
                    }
                }
                "preferences" => self.warn_key(
                    k,
                    path,
                    "is ignored: Skiff spreads replicas over hosts by default",
                ),
                "max_replicas_per_node" => pl.max_replicas_per_node = self.uint(v, &kp),
                other if is_extension(other) => {}
                _ => self.unknown_key(
                    k,
                    path,
                    &["constraints", "preferences", "max_replicas_per_node"],
                ),
            }
        }
        pl
    }

    fn resources(&mut self, node: &Node, path: &str) -> Resources {
        let mut r = Resources::default();
        for (k, v) in self.map(node, path).unwrap_or(&[]) {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "limits" => r.limits = self.resource_spec(v, &kp, false),
                "reservations" => r.reservations = self.resource_spec(v, &kp, true),
                other if is_extension(other) => {}
                _ => self.unknown_key(k, path, &["limits", "reservations"]),
            }
        }
        if let (Some(l), Some(res)) = (r.limits.memory_bytes, r.reservations.memory_bytes)
            && res > l
        {
            self.err(
                node.pos,
                path,
                format!("the memory reservation ({res} bytes) is above the limit ({l} bytes)"),
            );
        }
        if let (Some(l), Some(res)) = (r.limits.nano_cpus, r.reservations.nano_cpus)
            && res > l
        {
            self.err(node.pos, path, "the CPU reservation is above the limit");
        }
        r
    }

    fn resource_spec(&mut self, node: &Node, path: &str, reservation: bool) -> ResourceSpec {
        let mut s = ResourceSpec::default();
        for (k, v) in self.map(node, path).unwrap_or(&[]) {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "cpus" => {
                    if let Some(text) = self.string(v, &kp) {
                        match units::parse_nano_cpus(&text) {
                            Ok(0) => self.err(v.pos, &kp, "cpus must be above 0"),
                            Ok(n) => s.nano_cpus = Some(n),
                            Err(why) => self.err_fix(
                                v.pos,
                                &kp,
                                format!("expected a number of CPUs, got {text:?}: {why}"),
                                "write a number such as 0.5 or 2",
                            ),
                        }
                    }
                }
                "memory" => s.memory_bytes = self.bytes(v, &kp),
                "pids" if !reservation => s.pids = self.uint(v, &kp),
                "devices" | "generic_resources" if reservation => {
                    self.err_fix(
                        k.pos,
                        &kp,
                        format!(
                            "`{}` is not supported: the scheduler cannot reserve devices yet",
                            k.name
                        ),
                        format!("remove `{}`", k.name),
                    );
                }
                other if is_extension(other) => {}
                _ => {
                    let known: &[&str] = if reservation {
                        &["cpus", "memory", "devices", "generic_resources"]
                    } else {
                        &["cpus", "memory", "pids"]
                    };
                    self.unknown_key(k, path, known)
                }
            }
        }
        s
    }

    fn restart_policy(&mut self, node: &Node, path: &str) -> RestartPolicy {
        let mut rp = RestartPolicy::default();
        for (k, v) in self.map(node, path).unwrap_or(&[]) {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "condition" => match self.string(v, &kp).as_deref() {
                    Some("none") => rp.condition = RestartCondition::None,
                    Some("on-failure") => rp.condition = RestartCondition::OnFailure,
                    Some("any") => rp.condition = RestartCondition::Any,
                    Some(other) => {
                        let fix = suggest(other, ["none", "on-failure", "any"])
                            .map_or("use none, on-failure or any".to_string(), |s| {
                                format!("did you mean `{s}`?")
                            });
                        self.err_fix(
                            v.pos,
                            &kp,
                            format!("unknown restart condition {other:?}"),
                            fix,
                        );
                    }
                    None => {}
                },
                "delay" => {
                    if let Some(d) = self.duration(v, &kp) {
                        rp.delay = d;
                    }
                }
                "max_attempts" => rp.max_attempts = self.uint(v, &kp).filter(|n| *n > 0),
                "window" => rp.window = self.duration(v, &kp),
                other if is_extension(other) => {}
                _ => self.unknown_key(k, path, &["condition", "delay", "max_attempts", "window"]),
            }
        }
        rp
    }

    fn update_config(&mut self, node: &Node, path: &str, mut u: UpdateConfig) -> UpdateConfig {
        for (k, v) in self.map(node, path).unwrap_or(&[]) {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "parallelism" => {
                    if let Some(n) = self.uint(v, &kp) {
                        u.parallelism = n;
                    }
                }
                "delay" => {
                    if let Some(d) = self.duration(v, &kp) {
                        u.delay = d;
                    }
                }
                "monitor" => {
                    if let Some(d) = self.duration(v, &kp) {
                        u.monitor = d;
                    }
                }
                "failure_action" => match self.string(v, &kp).as_deref() {
                    Some("continue") => u.failure_action = FailureAction::Continue,
                    Some("pause") => u.failure_action = FailureAction::Pause,
                    Some("rollback") => u.failure_action = FailureAction::Rollback,
                    Some(other) => {
                        let fix = suggest(other, ["continue", "pause", "rollback"])
                            .map_or("use continue, pause or rollback".to_string(), |s| {
                                format!("did you mean `{s}`?")
                            });
                        self.err_fix(v.pos, &kp, format!("unknown failure_action {other:?}"), fix);
                    }
                    None => {}
                },
                "max_failure_ratio" => {
                    if let Some(t) = self.string(v, &kp) {
                        match t.trim().parse::<f64>() {
                            Ok(r) if (0.0..=1.0).contains(&r) => u.max_failure_ratio = r,
                            _ => self.err(
                                v.pos,
                                &kp,
                                format!("expected a ratio between 0 and 1, got {t:?}"),
                            ),
                        }
                    }
                }
                "order" => match self.string(v, &kp).as_deref() {
                    Some("stop-first") => u.order = UpdateOrder::StopFirst,
                    Some("start-first") => u.order = UpdateOrder::StartFirst,
                    Some(other) => {
                        let fix = suggest(other, ["stop-first", "start-first"])
                            .map_or("use start-first or stop-first".to_string(), |s| {
                                format!("did you mean `{s}`?")
                            });
                        self.err_fix(v.pos, &kp, format!("unknown order {other:?}"), fix);
                    }
                    None => {}
                },
                other if is_extension(other) => {}
                _ => self.unknown_key(
                    k,
                    path,
                    &[
                        "parallelism",
                        "delay",
                        "failure_action",
                        "monitor",
                        "max_failure_ratio",
                        "order",
                    ],
                ),
            }
        }
        u
    }

    fn skiff_service(&mut self, node: &Node, path: &str) -> SkiffService {
        let mut s = SkiffService::default();
        for (k, v) in self.map(node, path).unwrap_or(&[]) {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "domains" => {
                    let items = self.string_list(v, &kp, true);
                    for (i, d) in items.into_iter().enumerate() {
                        if valid_domain(&d) {
                            s.domains.push(d.to_ascii_lowercase());
                        } else {
                            let p = if matches!(v.value, Value::Seq(_)) {
                                index(&kp, i)
                            } else {
                                kp.clone()
                            };
                            let pos = match &v.value {
                                Value::Seq(items) => items.get(i).map_or(v.pos, |n| n.pos),
                                _ => v.pos,
                            };
                            self.err_fix(pos, &p, format!("invalid domain {d:?}"), "write a host name such as `app.example.com` (a leading `*.` is allowed)");
                        }
                    }
                }
                "healthcheck" => s.healthcheck = self.probe(v, &kp),
                _ => {
                    self.warn(k.pos, &kp, format!("unknown x-skiff setting `{}`; kept, but not used by this Skiff release", k.name));
                    s.other.insert(k.name.clone(), to_json(v));
                }
            }
        }
        s
    }

    /// `x-skiff.healthcheck`: `type` (`http` or `tcp`), `port`, `path`
    /// (HTTP only, default `/`), `interval`, `timeout`, `retries`,
    /// `start_period`.
    fn probe(&mut self, node: &Node, path: &str) -> Option<Probe> {
        let entries = self.map(node, path)?;
        let mut kind = None;
        let (mut port, mut http_path, mut path_pos) = (None, None, None);
        // A field already reported as invalid is not reported missing too.
        let errors_before = self.errors.len();
        let mut probe = Probe {
            http_path: None,
            port: 0,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            retries: 3,
            start_period: Duration::ZERO,
        };
        for (k, v) in entries {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "type" => match self.string(v, &kp).as_deref() {
                    Some(t @ ("http" | "tcp")) => kind = Some(t == "http"),
                    Some(other) => self.err_fix(
                        v.pos,
                        &kp,
                        format!("unknown check type {other:?}"),
                        "use `http` or `tcp`",
                    ),
                    None => {}
                },
                "port" => match self.uint(v, &kp) {
                    Some(n @ 1..=65535) => port = u16::try_from(n).ok(),
                    Some(n) => self.err_fix(
                        v.pos,
                        &kp,
                        format!("port {n} is out of range"),
                        "use a port from 1 to 65535",
                    ),
                    None => {}
                },
                "path" => {
                    path_pos = Some(v.pos);
                    match self.string(v, &kp) {
                        Some(p)
                            if p.starts_with('/')
                                && !p.chars().any(|c| c.is_whitespace() || c.is_control()) =>
                        {
                            http_path = Some(p)
                        }
                        Some(p) => self.err_fix(
                            v.pos,
                            &kp,
                            format!("invalid path {p:?}"),
                            "write an absolute URL path such as `/healthz`",
                        ),
                        None => {}
                    }
                }
                "interval" => probe.interval = self.duration(v, &kp).unwrap_or(probe.interval),
                "timeout" => probe.timeout = self.duration(v, &kp).unwrap_or(probe.timeout),
                "start_period" => {
                    probe.start_period = self.duration(v, &kp).unwrap_or(probe.start_period)
                }
                "retries" => probe.retries = self.u32(v, &kp).unwrap_or(probe.retries),
                other if is_extension(other) => {}
                _ => self.unknown_key(
                    k,
                    path,
                    &[
                        "type",
                        "port",
                        "path",
                        "interval",
                        "timeout",
                        "retries",
                        "start_period",
                    ],
                ),
            }
        }
        if self.errors.len() > errors_before {
            return None;
        }
        let Some(http) = kind else {
            self.err_fix(
                node.pos,
                path,
                "the check has no `type`",
                "add `type: http` or `type: tcp`",
            );
            return None;
        };
        let Some(port) = port else {
            self.err_fix(
                node.pos,
                path,
                "the check has no `port`",
                "add the container port to check, such as `port: 8080`",
            );
            return None;
        };
        if !http && let Some(pos) = path_pos {
            self.err_fix(
                pos,
                &join(path, "path"),
                "a TCP check has no path",
                "remove `path`, or use `type: http`",
            );
            return None;
        }
        if probe.interval < Duration::from_millis(100)
            || probe.timeout.is_zero()
            || probe.retries == 0
        {
            self.err_fix(
                node.pos,
                path,
                "`interval` must be at least 100ms, `timeout` above zero and `retries` at least 1",
                "raise them",
            );
            return None;
        }
        probe.port = port;
        probe.http_path = http.then(|| http_path.unwrap_or_else(|| "/".to_owned()));
        Some(probe)
    }

    // ----- checks across services -----------------------------------------------

    fn cross_checks(&mut self, stack: &mut Stack, marks: &BTreeMap<String, ServiceMarks>) {
        // depends_on names.
        let names: Vec<String> = stack.services.keys().cloned().collect();
        for (svc, m) in marks {
            for (dep, pos) in &m.depends_on {
                let p = join(&join(&join("services", svc), "depends_on"), dep);
                if dep == svc {
                    self.err(*pos, &p, format!("service `{svc}` depends on itself"));
                } else if !marks.contains_key(dep) {
                    let fix = suggest(dep, names.iter().map(String::as_str)).map_or(
                        "depend on a service defined in this file".to_string(),
                        |s| format!("did you mean `{s}`?"),
                    );
                    self.err_fix(
                        *pos,
                        &p,
                        format!("depends on `{dep}`, which is not a service of this stack"),
                        fix,
                    );
                } else if let (Some(s), Some(d)) =
                    (stack.services.get(svc), stack.services.get(dep))
                    && s.depends_on
                        .get(dep)
                        .is_some_and(|x| x.condition == DependsCondition::ServiceHealthy)
                {
                    match &d.healthcheck {
                        Some(Healthcheck { test: Some(HealthTest::None), .. }) => self.err_fix(
                            *pos,
                            &p,
                            format!("waits for `{dep}` to be healthy, but `{dep}` disables its health check"),
                            "enable the health check or use `condition: service_started`",
                        ),
                        None => self.warn(
                            *pos,
                            &p,
                            format!("waits for `{dep}` to be healthy; `{dep}` has no healthcheck here, so its image must define one"),
                        ),
                        Some(_) => {}
                    }
                }
            }
        }
        // Start order and cycles (self-dependencies are reported above).
        let graph: BTreeMap<String, Vec<String>> = stack
            .services
            .iter()
            .map(|(n, s)| {
                (
                    n.clone(),
                    s.depends_on.keys().filter(|d| *d != n).cloned().collect(),
                )
            })
            .collect();
        match order::start_order(&graph) {
            Ok(o) => stack.start_order = o,
            Err(cycle) => {
                let first = cycle.first().cloned().unwrap_or_default();
                let pos = marks.get(&first).map_or(Pos::default(), |m| m.depends_key);
                self.err_fix(
                    pos,
                    &join(&join("services", &first), "depends_on"),
                    format!("dependency cycle: {}", cycle.join(" -> ")),
                    "remove one of these dependencies",
                );
            }
        }
        // Published ports must be unique across the stack. One message per
        // port entry, even when a range clashes on many ports.
        type Publisher = (Option<IpAddr>, String, usize);
        let mut seen: BTreeMap<(u16, Protocol), Vec<Publisher>> = BTreeMap::new();
        let mut reported: BTreeSet<(String, Pos)> = BTreeSet::new();
        let mut in_file_order: Vec<(&String, &Service)> = stack.services.iter().collect();
        in_file_order.sort_by_key(|(n, _)| marks.get(*n).map(|m| m.order).unwrap_or_default());
        for (svc, s) in in_file_order {
            let Some(m) = marks.get(svc) else { continue };
            for (i, port) in s.ports.iter().enumerate() {
                let Some(published) = port.published else {
                    continue;
                };
                let pos = m.ports.get(i).copied().unwrap_or_default();
                let publishers = seen.entry((published, port.protocol)).or_default();
                let clash = publishers
                    .iter()
                    .find(|(ip, _, _)| {
                        ip.is_none() || port.host_ip.is_none() || *ip == port.host_ip
                    })
                    .map(|(_, other, line)| (other.clone(), *line));
                match clash {
                    Some((other, line)) => {
                        if reported.insert((svc.clone(), pos)) {
                            self.err_fix(
                                pos,
                                &join(&join("services", svc), "ports"),
                                format!(
                                    "port {published}/{} is already published by service `{other}` (line {line})",
                                    port.protocol.as_str()
                                ),
                                "publish a different host port",
                            );
                        }
                    }
                    None => publishers.push((port.host_ip, svc.clone(), pos.line)),
                }
            }
        }
    }
}

fn valid_domain(d: &str) -> bool {
    let d = d.strip_prefix("*.").unwrap_or(d);
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// An untyped YAML node as JSON, with plain scalars typed as YAML 1.2's
/// core schema types them.
fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match &node.value {
        Value::Scalar(s) if s.is_null() => J::Null,
        Value::Scalar(s) if s.plain => match s.text.as_str() {
            "true" | "True" | "TRUE" => J::Bool(true),
            "false" | "False" | "FALSE" => J::Bool(false),
            t => {
                if let Ok(i) = t.parse::<i64>() {
                    J::from(i)
                } else if let Some(f) = t.parse::<f64>().ok().and_then(serde_json::Number::from_f64)
                {
                    J::Number(f)
                } else {
                    J::String(t.to_string())
                }
            }
        },
        Value::Scalar(s) => J::String(s.text.clone()),
        Value::Seq(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => J::Object(
            entries
                .iter()
                .map(|(k, v)| (k.name.clone(), to_json(v)))
                .collect(),
        ),
    }
}
