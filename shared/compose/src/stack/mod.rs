//! Stack files: Compose files parsed into Skiff's typed [`Stack`] model.
//!
//! [`parse`] takes a Compose file's text, its name (for messages), the
//! directory it lives in (for `env_file:` and secret/config `file:` paths),
//! the environment used for `${VAR}` interpolation and a [`FileSource`] to
//! read referenced files through (the disk by default, a map in tests). It
//! returns either a [`Parsed`] stack with warnings, or a [`StackError`]
//! holding every error found (and the warnings). Each [`Diagnostic`] names
//! the file, line, column and field path, and the fix where there is one:
//!
//! ```text
//! compose.yml:12:7: services.web.deploy.replicas: expected a non-negative integer, got "three"
//! ```
//!
//! ```ignore
//! let env: BTreeMap<String, String> = std::env::vars().collect();
//! let input = stack::Input::new(&text, "compose.yml", Path::new("."), &env);
//! match stack::parse(&input) {
//!     Ok(parsed) => { /* parsed.stack, parsed.warnings */ }
//!     Err(e) => eprintln!("{e}"), // one line per error
//! }
//! ```
//!
//! [`parse_env_file`] reads a `.env` file the same way, for callers that
//! build the interpolation environment from one as Compose does.
//!
//! Layout:
//! - `yaml`: a position-keeping YAML tree from `saphyr-parser` events;
//!   anchors, aliases and merge keys (`<<: *base`) are resolved there.
//! - `interpolate`: `${VAR}` and friends, as Compose does them.
//! - `convert`: the tree to the model, key by key, collecting diagnostics.
//! - `envfile`: `env_file:` parsing.
//! - `units`: durations, byte sizes, CPU counts.
//! - [`model`]: the model itself.
//!
//! # Compose keys Skiff does not support
//!
//! Nothing is dropped silently. A key Skiff does not act on is a warning
//! when running without it behaves the same for the application (or the
//! difference is only cosmetic), and an error when ignoring it would change
//! what the application does, what it may do, or what runs. Keys that are
//! not in the Compose specification at all are errors (usually typos; the
//! message suggests the nearest known key). `x-*` extension keys are
//! allowed everywhere.
//!
//! | key (service level unless noted) | verdict | why |
//! |---|---|---|
//! | `build` | error | image builds come in a later Skiff release; build and push the image and set `image:` |
//! | `network_mode` other than `host` | error | bridge, none or container networking bypasses Skiff's network, DNS and firewall |
//! | `pid`, `ipc` or `uts` naming another service or container | error | replicas run on different servers and cannot share a namespace |
//! | `userns_mode`, `cgroup`, `cgroup_parent`, `runtime`, `gpus`, `cpuset` | error | the container would run with different rights, namespaces or kernel settings than asked for |
//! | `sysctls` outside `net.*` and the IPC ones | error | they are not namespaced: they would change the whole server's kernel |
//! | `volumes_from`, `extends`, `include` (top level), `profiles` | error | ignoring them changes what runs or what it mounts |
//! | `scale`, `mem_limit`, `memswap_limit`, `mem_reservation`, `cpus`, `cpu_shares`, `cpu_quota`, `cpu_period` | error | legacy spellings that would change replicas or limits; the message names the `deploy:` key to use |
//! | `deploy.resources.reservations.devices`, `deploy.resources.reservations.generic_resources` | error | the scheduler cannot honour device reservations yet |
//! | `deploy.endpoint_mode: dnsrr` | error | Skiff's DNS decides how names resolve (`vip` is accepted and is the default) |
//! | `container_name` | warning | Skiff names containers itself (several replicas cannot share one name) |
//! | `links`, `external_links` | warning | every service is reachable by its name through Skiff's DNS anyway |
//! | `dns`, `dns_search`, `dns_opt` | warning | containers resolve through Skiff's DNS, which forwards other names upstream |
//! | `logging` | warning | Skiff collects every container's output itself |
//! | `tty`, `stdin_open`, `attach` | warning | no terminal is attached to production containers |
//! | `platform`, `pull_policy` | warning | the agent pulls for its host's platform when the digest is missing |
//! | `domainname`, `mac_address`, `oom_score_adj`, `oom_kill_disable`, `storage_opt`, `isolation`, `annotations`, `blkio_config`, `cpu_rt_runtime`, `cpu_rt_period`, `cpu_count`, `cpu_percent`, `mem_swappiness`, `credential_spec`, `label_file`, `develop`, `post_start`, `pre_stop`, `use_api_socket`, `models`, `provider` | warning | tuning or tooling keys this release does not pass on |
//! | volume options `z`, `Z`, propagation and consistency; long-syntax `bind.propagation`, `bind.selinux`, `volume.subpath`, `consistency`; tmpfs options other than `size` and `mode` | warning | not passed on by this release; the mount itself is made |
//! | top-level network `driver`, `driver_opts`, `ipam`, `attachable`, `enable_ipv6`; service network `ipv4_address`, `ipv6_address`, `priority`, ... | warning | Skiff's private network connects every host's containers and assigns addresses itself |
//! | top-level secret or config `driver`, `driver_opts`, `template_driver` | warning | Skiff stores and delivers secrets itself |
//! | unknown keys under `x-skiff` | warning | kept in the model (`other`) for newer Skiff releases; likely a typo today |
//! | a bind mount with a relative or `~` source | error | it names a place on the deploying machine, which means nothing on a server: write an absolute path, or ship small files as `configs:` |
//! | `deploy.placement.preferences` | warning | Skiff spreads replicas over hosts by default |
//! | `version` (top level) | warning | obsolete in Compose too |
//! | `restart` and `deploy.restart_policy` both set | warning | both are kept; Skiff's agent follows `deploy.restart_policy` |
//!
//! # Rights, namespaces and kernel limits
//!
//! `cap_drop`, `ulimits`, `sysctls` (`net.*` and the IPC namespace's
//! `kernel.shm*`, `kernel.msg*`, `kernel.sem`, `fs.mqueue.*`), `shm_size`,
//! `pids_limit` (the same limit as `deploy.resources.limits.pids`) and
//! `group_add` give a container nothing beyond the engine's defaults and
//! are always accepted. `privileged`, `cap_add`, `devices`,
//! `device_cgroup_rules`, `security_opt`, `network_mode: host`, `pid: host`,
//! `ipc: host` and `uts: host` are parsed and kept in [`Runtime`]; whether a
//! stack may have them is the cluster's container policy, which the
//! coordinator applies to every deploy, rollback and scale (`skiff policy`).
//!
//! # Skiff's choices where Compose and Swarm differ
//! - `deploy.update_config.failure_action` defaults to `rollback` (Swarm:
//!   `pause`): a failed deploy rolls back by itself. Every other update and
//!   rollback default is Swarm's.
//! - Labels starting with `skiff.` are reserved: the agent only touches
//!   containers it labelled so.
//! - Service names may not contain dots: they become DNS labels
//!   (`<service>.<stack>.skiff`).

mod convert;
mod envfile;
mod interpolate;
pub mod model;
mod order;
mod units;
mod yaml;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

pub use model::*;
pub use units::{format_duration, parse_bytes, parse_duration, parse_nano_cpus};

/// Reads the files a stack file refers to (`env_file:`, secret and config
/// `file:`). [`DiskFiles`] reads the disk; a `BTreeMap<PathBuf, String>` is
/// an in-memory file system for tests.
pub trait FileSource {
    /// The file's content as text.
    fn read_to_string(&self, path: &Path) -> std::io::Result<String>;
    /// Whether a regular file exists at `path`.
    fn is_file(&self, path: &Path) -> bool;
}

/// Reads files from the local disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskFiles;

impl FileSource for DiskFiles {
    fn read_to_string(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn is_file(&self, path: &Path) -> bool {
        path.is_file()
    }
}

impl FileSource for BTreeMap<PathBuf, String> {
    fn read_to_string(&self, path: &Path) -> std::io::Result<String> {
        self.get(path)
            .cloned()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"))
    }

    fn is_file(&self, path: &Path) -> bool {
        self.contains_key(path)
    }
}

/// What to parse, and with what.
pub struct Input<'a> {
    /// The Compose file's text.
    pub text: &'a str,
    /// The file's name as messages should show it (`compose.yml`).
    pub file_name: &'a str,
    /// The directory relative paths are resolved against.
    pub dir: &'a Path,
    /// Variables for interpolation (usually the deploying shell's
    /// environment plus a `.env` file).
    pub env: &'a BTreeMap<String, String>,
    /// Where referenced files are read from.
    pub files: &'a dyn FileSource,
}

impl<'a> Input<'a> {
    /// An input whose referenced files are read from disk.
    pub fn new(
        text: &'a str,
        file_name: &'a str,
        dir: &'a Path,
        env: &'a BTreeMap<String, String>,
    ) -> Input<'a> {
        Input {
            text,
            file_name,
            dir,
            env,
            files: &DiskFiles,
        }
    }

    /// The same input, reading referenced files through `files`.
    pub fn with_files(mut self, files: &'a dyn FileSource) -> Input<'a> {
        self.files = files;
        self
    }
}

impl fmt::Debug for Input<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Input")
            .field("file_name", &self.file_name)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The stack cannot be deployed as written.
    Error,
    /// The stack deploys, but something in it is not acted on.
    Warning,
}

/// One message about a stack file, with where it points.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file the position is in (the stack file, or an `env_file`).
    pub file: String,
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
    /// Dotted field path, such as `services.web.ports[0]`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when there is a known fix.
    pub fix: Option<String>,
}

impl Diagnostic {
    /// `file:line:col: [warning: ]path: message[; fix: ...]`.
    pub fn render(&self) -> String {
        let mut out = format!("{}:{}:{}: ", self.file, self.line, self.column);
        if self.severity == Severity::Warning {
            out.push_str("warning: ");
        }
        if !self.path.is_empty() {
            out.push_str(&self.path);
            out.push_str(": ");
        }
        out.push_str(&self.message);
        if let Some(fix) = &self.fix {
            out.push_str("; fix: ");
            out.push_str(fix);
        }
        out
    }
}

/// A stack file that parsed, and what was not acted on in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub stack: Stack,
    pub warnings: Vec<Diagnostic>,
    /// What the parse read besides the file's text.
    pub uses: Uses,
}

/// What a parse read besides the file's own text: with the text and
/// these alone, the file parses the same way on another machine (the
/// coordinator parses again what `skiff deploy` sends it). `Debug` shows
/// names and paths only: values may be secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Uses {
    /// Variables whose values were read (interpolation, `environment:`
    /// entries without a value, bare keys of env files, `environment:`
    /// configs, `~/`), with their values. Variables read but not set are
    /// not listed.
    pub variables: BTreeMap<String, String>,
    /// Variables that only had to be set: the `environment:` source of a
    /// secret, whose value is uploaded as a secret, not with the file.
    pub variables_set: BTreeSet<String>,
    /// Files read (`env_file:`, and `file:` configs once [`inline_configs`]
    /// read them), by path as resolved, with their text.
    pub files: BTreeMap<PathBuf, String>,
    /// Files that only had to exist: the `file:` source of a secret.
    pub files_present: BTreeSet<PathBuf>,
}

impl fmt::Debug for Uses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Uses")
            .field("variables", &self.variables.keys().collect::<Vec<_>>())
            .field("variables_set", &self.variables_set)
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .field("files_present", &self.files_present)
            .finish()
    }
}

/// Reads the `file:` and `environment:` configs of a parsed stack into
/// `content:` (a config's content travels with the release), through the
/// files and variables of `input`, and adds what it read to
/// `parsed.uses`. Both `skiff deploy` and the coordinator call it after
/// [`parse`].
///
/// # Errors
/// The first config that cannot be read, naming it and the fix.
pub fn inline_configs(parsed: &mut Parsed, input: &Input<'_>) -> Result<(), String> {
    for (name, def) in &mut parsed.stack.configs {
        let content = match &def.source {
            ConfigSource::File(path) => match input.files.read_to_string(path) {
                Ok(text) => {
                    parsed.uses.files.insert(path.clone(), text.clone());
                    text
                }
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    return Err(format!(
                        "config {name}: {} is not UTF-8 text; put binary files in a secret or the image",
                        path.display()
                    ));
                }
                Err(e) => {
                    return Err(format!(
                        "config {name}: cannot read {}: {e}",
                        path.display()
                    ));
                }
            },
            ConfigSource::Environment(var) => match input.env.get(var) {
                Some(value) => {
                    parsed.uses.variables.insert(var.clone(), value.clone());
                    value.clone()
                }
                None => {
                    return Err(format!(
                        "config {name}: environment variable {var} is not set"
                    ));
                }
            },
            ConfigSource::Content(_) | ConfigSource::External(_) => continue,
        };
        def.source = ConfigSource::Content(content);
    }
    Ok(())
}

/// A stack file that did not parse: every error found, in file order, and
/// the warnings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", render_all(.errors))]
pub struct StackError {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

fn render_all(list: &[Diagnostic]) -> String {
    list.iter()
        .map(Diagnostic::render)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads an env file (`KEY=value` lines, as `env_file:` and Compose's
/// `.env` are written), interpolating values against `env`. Returns the
/// variables in file order, or the errors, each naming `file_name`.
///
/// # Errors
/// Malformed lines, unclosed quotes, and missing required variables.
pub fn parse_env_file(
    text: &str,
    file_name: &str,
    env: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, StackError> {
    let parsed = envfile::parse(text, env);
    let diag = |severity, issue: envfile::EnvFileIssue| Diagnostic {
        severity,
        file: file_name.to_string(),
        line: issue.line,
        column: issue.column,
        path: String::new(),
        message: issue.message,
        fix: issue.fix,
    };
    let errors: Vec<Diagnostic> = parsed
        .errors
        .into_iter()
        .map(|i| diag(Severity::Error, i))
        .collect();
    if errors.is_empty() {
        return Ok(parsed.vars);
    }
    Err(StackError {
        errors,
        warnings: parsed
            .warnings
            .into_iter()
            .map(|i| diag(Severity::Warning, i))
            .collect(),
    })
}

/// Parses a Compose file into a [`Stack`].
///
/// # Errors
/// Every problem found, each with file, line, column, field path and fix.
pub fn parse(input: &Input<'_>) -> Result<Parsed, StackError> {
    convert::convert(input)
}
