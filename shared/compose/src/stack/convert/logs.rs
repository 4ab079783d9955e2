//! The stack's own log sinks: `x-skiff.logs: { sinks: [...] }` at the top
//! level. Each sink is `name`, `url`, `format` (`syslog`, `json_lines` or
//! `otlp`), and optionally `ca_file` (a PEM file beside the stack file,
//! read like env files so it travels with the deploy), `buffer` (a byte
//! size) and `when_full` (`block` or `drop_oldest`). `sinks: []` ships the
//! stack's output nowhere.

use skiff_shared::sections::logs::{
    DEFAULT_BUFFER_BYTES, FullPolicy, SinkFormat, SinkSpec, check_sinks,
};

use crate::stack::yaml::{Node, join};

use super::{Cx, index, is_extension};

const LOGS_KEYS: &[&str] = &["sinks"];
const SINK_KEYS: &[&str] = &["name", "url", "format", "ca_file", "buffer", "when_full"];

impl Cx<'_, '_> {
    /// `x-skiff.logs`; `None` when absent or invalid (errors reported).
    pub(super) fn stack_logs(&mut self, node: &Node, path: &str) -> Option<Vec<SinkSpec>> {
        let entries = self.map(node, path)?;
        let errors_before = self.errors.len();
        let mut sinks = None;
        for (k, v) in entries {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "sinks" => {
                    let mut list = Vec::new();
                    if !v.is_null() {
                        for (i, item) in self.seq(v, &kp).unwrap_or(&[]).iter().enumerate() {
                            if let Some(sink) = self.sink(item, &index(&kp, i)) {
                                list.push(sink);
                            }
                        }
                    }
                    sinks = Some(list);
                }
                other if is_extension(other) => {}
                _ => self.unknown_key(k, path, LOGS_KEYS),
            }
        }
        let Some(sinks) = sinks else {
            self.err_fix(
                node.pos,
                path,
                "`x-skiff.logs` has no `sinks:`",
                "list the stack's sinks under `sinks:`, or write `sinks: []` to ship its output nowhere",
            );
            return None;
        };
        if self.errors.len() != errors_before {
            return None;
        }
        if let Err(e) = check_sinks(&sinks) {
            self.err_fix(
                node.pos,
                &join(path, "sinks"),
                e.to_string(),
                "give each sink its own name",
            );
            return None;
        }
        Some(sinks)
    }

    fn sink(&mut self, node: &Node, path: &str) -> Option<SinkSpec> {
        let entries = self.map(node, path)?;
        let errors_before = self.errors.len();
        let (mut name, mut url, mut format) = (None, None, None);
        let mut ca_pem = None;
        let mut buffer_bytes = DEFAULT_BUFFER_BYTES;
        let mut when_full = FullPolicy::default();
        for (k, v) in entries {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "name" => name = self.non_empty_string(v, &kp),
                "url" => url = self.non_empty_string(v, &kp).map(|u| (u, v.pos)),
                "format" => {
                    if let Some(text) = self.string(v, &kp) {
                        match text.parse::<SinkFormat>() {
                            Ok(f) => format = Some(f),
                            Err(why) => self.err_fix(
                                v.pos,
                                &kp,
                                why,
                                "write `format: syslog`, `format: json_lines` or `format: otlp`",
                            ),
                        }
                    }
                }
                "ca_file" => {
                    if let Some(written) = self.non_empty_string(v, &kp) {
                        let resolved = self.resolve(&written);
                        match self.read_file(&resolved) {
                            Ok(text) => ca_pem = Some(text),
                            Err(e) => self.err_fix(
                                v.pos,
                                &kp,
                                format!(
                                    "cannot read CA file {written:?} ({}): {e}",
                                    resolved.display()
                                ),
                                "give the path of a PEM file with the CA that signed the receiver's certificate (relative to the stack file)",
                            ),
                        }
                    }
                }
                "buffer" => {
                    if let Some(n) = self.bytes(v, &kp) {
                        buffer_bytes = n;
                    }
                }
                "when_full" => {
                    if let Some(text) = self.string(v, &kp) {
                        match text.parse::<FullPolicy>() {
                            Ok(p) => when_full = p,
                            Err(why) => self.err_fix(
                                v.pos,
                                &kp,
                                why,
                                "write `when_full: block` or `when_full: drop_oldest`",
                            ),
                        }
                    }
                }
                other if is_extension(other) => {}
                _ => self.unknown_key(k, path, SINK_KEYS),
            }
        }
        for (missing, key) in [
            (name.is_none(), "name"),
            (url.is_none(), "url"),
            (format.is_none(), "format"),
        ] {
            let already = entries.iter().any(|(k, _)| k.name == key);
            if missing && !already {
                self.err_fix(
                    node.pos,
                    path,
                    format!("a sink needs `{key}:`"),
                    "give each sink `name`, `url` and `format`",
                );
            }
        }
        if self.errors.len() != errors_before {
            return None;
        }
        let ((url, url_pos), name, format) = (url?, name?, format?);
        let spec = SinkSpec {
            name,
            url,
            format,
            ca_pem,
            buffer_bytes,
            when_full,
        };
        if let Err(e) = spec.check() {
            let (pos, key) = if e.field.ends_with(": buffer") {
                (node.pos, "buffer")
            } else if e.field.ends_with(": ca") {
                (node.pos, "ca_file")
            } else if e.field.starts_with("sink name") {
                (node.pos, "name")
            } else {
                (url_pos, "url")
            };
            self.err(pos, &join(path, key), e.to_string());
            return None;
        }
        Some(spec)
    }
}
