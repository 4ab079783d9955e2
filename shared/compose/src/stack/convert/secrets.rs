//! Secrets and configs: the top-level declarations (`file`, `environment`,
//! `external`, `name`, `content`) and the grants of a service.

use std::collections::{BTreeMap, BTreeSet};

use crate::stack::interpolate::Vars;
use crate::stack::model::*;
use crate::stack::yaml::{Node, Pos, Value, join};

use super::{Cx, index, is_extension, suggest};

impl Cx<'_, '_> {
    /// Reads `file`, `environment`, `external`, `name`, `content` of a
    /// top-level secret or config; returns the source found.
    pub(super) fn file_object(
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
                        if self.file_exists(&path) {
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
                        // A secret's value is uploaded on its own; a
                        // config's is read into the release.
                        let set = if kind == "secret" {
                            self.var_is_set(&var)
                        } else {
                            self.vars.var(&var).is_some()
                        };
                        if set {
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
                    let (external, legacy_name) = self.external(k, v, &kp);
                    if external {
                        sources.push((k.pos, ConfigSource::External(String::new())));
                    }
                    if legacy_name.is_some() {
                        name = legacy_name;
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

    pub(super) fn top_secrets(&mut self, node: &Node) -> BTreeMap<String, SecretDef> {
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

    pub(super) fn top_configs(&mut self, node: &Node) -> BTreeMap<String, ConfigDef> {
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

    pub(super) fn grants(
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
}
