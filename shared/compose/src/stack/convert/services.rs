//! One service: its mapping key by key, the image, `command` and
//! `entrypoint`, `environment` and `env_file`, labels, `restart`,
//! `extra_hosts` and the networks it joins.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::stack::interpolate::Vars;
use crate::stack::model::*;
use crate::stack::yaml::{Node, Pos, Value, join};
use crate::stack::{Severity, envfile};

use super::runtime::{RUNTIME_KEYS, RuntimeMarks};
use super::{
    Cx, Declared, SERVICE_ERRORS, SERVICE_KEYS, SERVICE_WARNINGS, ServiceMarks, index,
    is_extension, suggest,
};

impl Cx<'_, '_> {
    pub(super) fn service(
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
            runtime: Runtime::default(),
        };
        let mut runtime_marks = RuntimeMarks::default();
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
                k if RUNTIME_KEYS.contains(&k) => {
                    self.runtime_key(key, value, path, &mut svc.runtime, &mut runtime_marks);
                }
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
                        let known: Vec<&str> =
                            SERVICE_KEYS.iter().chain(RUNTIME_KEYS).copied().collect();
                        self.unknown_key(key, path, &known);
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
        self.runtime_checks(&mut svc, path, &runtime_marks);
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

    pub(super) fn image_ok(&mut self, image: &str, pos: Pos, path: &str) -> bool {
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
    pub(super) fn argv(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
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

    pub(super) fn environment(&mut self, node: &Node, path: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        let mut take = |cx: &mut Self, key: &str, value: Option<String>, pos: Pos, p: &str| {
            if key.is_empty() || key.contains(char::is_whitespace) {
                cx.err(pos, p, format!("invalid variable name {key:?}"));
                return;
            }
            let value = match value {
                Some(v) => v,
                None => match cx.vars.var(key) {
                    Some(v) => v.to_owned(),
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

    pub(super) fn env_files(&mut self, node: &Node, path: &str) -> Vec<(String, String)> {
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
            let text = match self.read_file(&resolved) {
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
            let parsed = envfile::parse(&text, &self.vars);
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

    pub(super) fn reserved_labels(
        &mut self,
        labels: &BTreeMap<String, String>,
        pos: Pos,
        path: &str,
    ) {
        for key in labels.keys().filter(|k| k.starts_with("skiff.")) {
            self.err_fix(
                pos,
                &join(path, key),
                format!("label `{key}` is reserved: Skiff marks the containers it manages with `skiff.*` labels"),
                "use another prefix, such as `com.example.`",
            );
        }
    }

    pub(super) fn restart(&mut self, node: &Node, path: &str) -> Option<RestartMode> {
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

    pub(super) fn extra_hosts(&mut self, node: &Node, path: &str) -> BTreeMap<String, String> {
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

    pub(super) fn service_networks(
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
}
