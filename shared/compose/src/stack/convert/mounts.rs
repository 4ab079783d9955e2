//! A service's `volumes`: named volumes, bind mounts and tmpfs, in the short
//! and the long syntax, and `tmpfs`.

use std::path::PathBuf;

use crate::stack::model::*;
use crate::stack::units;
use crate::stack::yaml::{Key, Node, Pos, Value, join};

use super::{Cx, Declared, is_extension, suggest};

impl Cx<'_, '_> {
    pub(super) fn check_target(&mut self, target: &str, pos: Pos, path: &str) -> bool {
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

    pub(super) fn named_volume(
        &mut self,
        name: &str,
        pos: Pos,
        path: &str,
        declared: &Declared,
    ) -> bool {
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

    /// The server path of a bind mount. Only an absolute path means the
    /// same on every server: a relative or `~` path would name a directory
    /// on the deploying machine, which the servers do not have.
    pub(super) fn bind_source(&mut self, written: &str, pos: Pos, path: &str) -> Option<PathBuf> {
        if !written.starts_with('/') {
            self.err_fix(
                pos,
                path,
                format!("bind mount of {written:?} is a relative path, which means nothing on a server"),
                "write an absolute path on the servers (such as /srv/app/data), or ship small files as a `configs:` entry",
            );
            return None;
        }
        Some(self.resolve(written))
    }

    pub(super) fn mount(&mut self, node: &Node, path: &str, declared: &Declared) -> Option<Mount> {
        match &node.value {
            Value::Scalar(s) if !s.is_null() => self.mount_short(&s.text, node.pos, path, declared),
            Value::Map(entries) => self.mount_long(entries, node, path, declared),
            _ => {
                self.err(node.pos, path, format!("expected a volume (\"data:/var/lib/data\") or a mapping with `type`, got {}", node.kind()));
                None
            }
        }
    }

    pub(super) fn mount_short(
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
                let source = self.bind_source(s, pos, path)?;
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

    pub(super) fn mount_long(
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
                let source = self.bind_source(&s, pos, &join(path, "source"))?;
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

    pub(super) fn tmpfs_short(&mut self, text: &str, pos: Pos, path: &str) -> Option<Mount> {
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
}
