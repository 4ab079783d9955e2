//! The top level of a stack file: its keys, the service names, and the
//! `volumes:` and `networks:` declarations.

use std::collections::BTreeMap;

use crate::stack::model::*;
use crate::stack::yaml::{Key, Node, Value, join};

use super::{Cx, Declared, ServiceMarks, is_extension, to_json};

const TOP_KEYS: &[&str] = &[
    "version", "name", "services", "networks", "volumes", "secrets", "configs", "include",
    "x-skiff",
];

impl Cx<'_, '_> {
    pub(super) fn top(&mut self, root: &Node) -> Option<Stack> {
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
                            if k.name == "logs" {
                                stack.skiff.log_sinks = self.stack_logs(v, &join(&p, "logs"));
                                continue;
                            }
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

    pub(super) fn service_name_ok(&mut self, key: &Key, path: &str) -> bool {
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

    pub(super) fn top_volumes(&mut self, node: &Node) -> BTreeMap<String, Volume> {
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
                    "external" => {
                        let (external, name) = self.external(k, v, &kp);
                        vol.external = external;
                        if name.is_some() {
                            vol.name = name;
                        }
                    }
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

    /// `external:` of a top-level volume, network, secret or config: a
    /// boolean, or the legacy `{name: ...}` form, which is external under
    /// that name. Returns whether it is external and the legacy name.
    pub(super) fn external(
        &mut self,
        key: &Key,
        value: &Node,
        path: &str,
    ) -> (bool, Option<String>) {
        match &value.value {
            Value::Map(entries) => {
                self.warn_fix(
                    key.pos,
                    path,
                    "`external: {name: ...}` is deprecated",
                    "write `external: true` and `name: ...`",
                );
                let name = match entries.iter().find(|(k, _)| k.name == "name") {
                    Some((_, n)) => self.non_empty_string(n, &join(path, "name")),
                    None => None,
                };
                (true, name)
            }
            _ => (self.boolean(value, path).unwrap_or(false), None),
        }
    }

    pub(super) fn top_networks(&mut self, node: &Node) -> BTreeMap<String, Network> {
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
                    "external" => {
                        let (external, name) = self.external(k, v, &kp);
                        net.external = external;
                        if name.is_some() {
                            net.name = name;
                        }
                    }
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
}
