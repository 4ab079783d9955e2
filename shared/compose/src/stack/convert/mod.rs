//! From the position-keeping YAML tree to the [`Stack`](super::Stack) model.
//!
//! Each section has one function that walks its mapping key by key:
//! known keys are converted (or reported), `x-*` keys pass, anything else
//! is an error that suggests the nearest known key. Errors never stop the
//! walk early, so one run reports every problem in the file.
//!
//! Layout, one file per Compose area:
//! - `top`: the top-level keys, `volumes:` and `networks:`.
//! - `secrets`: secrets and configs, declared and granted.
//! - `services`: one service's mapping and its simpler keys.
//! - `ports`: `ports` and `expose`.
//! - `mounts`: a service's `volumes` and `tmpfs`.
//! - `health`: `healthcheck`.
//! - `depends`: `depends_on` and the checks across services.
//! - `deploy`: `deploy` and its sub-keys.
//! - `runtime`: capabilities, devices, security options, host namespaces,
//!   ulimits, sysctls, `shm_size`, `pids_limit`, `group_add`.
//! - `skiff`: a service's `x-skiff` mapping.
//! - `logs`: the stack's own log sinks (`x-skiff.logs`).
//! - `keys`: the service keys handled, refused and ignored.
//!
//! This file holds the context that collects diagnostics, the helpers that
//! report them, the typed readers of scalars, and the entry point.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::interpolate::{InterpolationError, Vars, interpolate};
use super::yaml::{self, Key, Node, Pos, Value, join};
use super::{Diagnostic, Input, Parsed, Severity, StackError, Uses, units};

mod depends;
mod deploy;
mod health;
mod keys;
mod logs;
mod mounts;
mod ports;
mod routes;
mod runtime;
mod secrets;
mod services;
mod skiff;
mod top;

use keys::SERVICE_KEYS;
pub(super) use keys::{SERVICE_ERRORS, SERVICE_WARNINGS};

/// Accumulates diagnostics while the tree is walked, and what was read
/// besides the file's text.
struct Cx<'a, 'i> {
    input: &'a Input<'i>,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    unset_warned: BTreeSet<String>,
    /// The interpolation environment, recording every variable read.
    vars: Recorder<'i>,
    /// Files read and checked, and variables only checked for.
    uses: Uses,
}

/// The interpolation environment, with the name of every variable read.
struct Recorder<'e> {
    env: &'e BTreeMap<String, String>,
    read: RefCell<BTreeSet<String>>,
}

impl Vars for Recorder<'_> {
    fn var(&self, name: &str) -> Option<&str> {
        self.read.borrow_mut().insert(name.to_owned());
        self.env.get(name).map(String::as_str)
    }
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
        vars: Recorder {
            env: input.env,
            read: RefCell::default(),
        },
        uses: Uses::default(),
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
        Some(stack) if cx.errors.is_empty() => {
            let mut uses = cx.uses;
            for name in cx.vars.read.into_inner() {
                if let Some(value) = input.env.get(&name) {
                    uses.variables_set.remove(&name);
                    uses.variables.insert(name, value.clone());
                }
            }
            Ok(Parsed {
                stack,
                warnings: cx.warnings,
                uses,
            })
        }
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
                match interpolate(&s.text, &self.vars) {
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

    /// Reads a file the stack file refers to, remembering its text.
    fn read_file(&mut self, path: &Path) -> std::io::Result<String> {
        let text = self.input.files.read_to_string(path)?;
        self.uses.files.insert(path.to_owned(), text.clone());
        Ok(text)
    }

    /// Whether a file the stack file refers to exists (its content is
    /// read at deploy time, not by the parse).
    fn file_exists(&mut self, path: &Path) -> bool {
        let exists = self.input.files.is_file(path);
        if exists {
            self.uses.files_present.insert(path.to_owned());
        }
        exists
    }

    /// Whether a variable is set, when only that matters (its value is
    /// a secret, uploaded apart from the file).
    fn var_is_set(&mut self, name: &str) -> bool {
        let set = self.input.env.contains_key(name);
        if set {
            self.uses.variables_set.insert(name.to_owned());
        }
        set
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
            Some(rest) => match self.vars.var("HOME") {
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
