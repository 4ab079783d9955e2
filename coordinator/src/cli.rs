//! The `skiff` command-line client.
//!
//! The coordinator URL and API token come from `--url`/`--token`, else
//! `SKIFF_URL`/`SKIFF_TOKEN`, else the config file written by `skiff login`
//! (`$SKIFF_CONFIG`, or `~/.config/skiff/config.toml`), else the URL
//! defaults to `http://127.0.0.1:7070`.
//!
//! Exit codes: 0 success, 1 the coordinator refused the request, 2 bad
//! usage or input, 3 the coordinator could not be reached, 4 the token was
//! refused.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand};
use hyper::Method;
use serde::{Deserialize, Serialize};

use crate::client::{Client, ClientError};
use skiff_api_types::*;

pub const DEFAULT_URL: &str = "http://127.0.0.1:7070";

#[derive(Debug, Parser)]
#[command(
    name = "skiff",
    version,
    about = "Manage a Skiff cluster through its coordinator's API."
)]
pub struct Cli {
    /// Coordinator API URL.
    #[arg(long, env = "SKIFF_URL", global = true)]
    pub url: Option<String>,
    /// API token.
    #[arg(long, env = "SKIFF_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a URL and token, then save them for later commands.
    Login(LoginArgs),
    /// Join tokens for adding servers.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The cluster's servers.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Deploy a Compose file as a stack (a new release).
    Deploy(DeployArgs),
    /// Stacks and their replicas.
    #[command(subcommand)]
    Stack(StackCommand),
    /// A stack's releases.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Restore an earlier release of a stack exactly (default: the one before the current).
    Rollback {
        stack: String,
        /// The release number to restore.
        #[arg(long)]
        to: Option<i64>,
        /// Return without following progress.
        #[arg(long)]
        detach: bool,
    },
    /// Services of a stack.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// A stack's secrets (values are never shown).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Credentials for pulling images from private registries (passwords are never shown).
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// The cluster's recent events: deploys, rollouts, nodes.
    Events {
        /// Keep printing new events as they happen.
        #[arg(long)]
        follow: bool,
        /// Only this stack's events.
        #[arg(long)]
        stack: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set a secret from standard input or --file; a changed value takes effect at the next deploy.
    Set {
        stack: String,
        name: String,
        /// Read the value from this file instead of standard input.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// List a stack's secrets: names and versions.
    Ls {
        stack: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a secret (releases that used it keep their version).
    Rm { stack: String, name: String },
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Store credentials for a registry; the password or token is read from
    /// standard input. Nodes whose plans pull from it receive them at once.
    Login {
        /// Registry host: hostname[:port], e.g. ghcr.io or 127.0.0.1:5000; Docker Hub is docker.io.
        host: String,
        #[arg(short = 'u', long)]
        username: String,
        /// Read the password from standard input (the only way it is read;
        /// accepted for familiarity with `docker login`).
        #[arg(long)]
        password_stdin: bool,
    },
    /// List registries with credentials: host, username, when set.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a registry's credentials.
    Logout { host: String },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Set replica counts: STACK.SERVICE=N ...
    Scale {
        #[arg(required = true)]
        targets: Vec<String>,
        /// Return without following progress.
        #[arg(long)]
        detach: bool,
    },
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The Compose file.
    #[arg(short = 'f', long = "file", default_value = "compose.yml")]
    pub file: PathBuf,
    /// Stack name.
    pub stack: String,
    /// Print what would start, stop and change, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Return once the release is recorded, without following progress.
    #[arg(long)]
    pub detach: bool,
    /// How long to follow progress before giving up.
    #[arg(long, default_value = "5m")]
    pub timeout: String,
}

#[derive(Debug, Subcommand)]
pub enum StackCommand {
    /// List stacks.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// List a stack's replicas: where they run and how they are.
    Ps {
        stack: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a stack: its containers are stopped and removed on every node.
    Rm { stack: String },
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// List a stack's releases, newest first.
    Ls {
        stack: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Coordinator API URL (default: --url, SKIFF_URL or http://127.0.0.1:7070).
    #[arg(long = "api-url")]
    pub api_url: Option<String>,
    /// Read the token from this file instead of --token/SKIFF_TOKEN.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token and print it alone on stdout.
    Create {
        /// Lifetime, e.g. 30m, 24h, 7d (default: the coordinator's, 24h).
        #[arg(long)]
        ttl: Option<String>,
        /// How many servers may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// List join tokens (never their secrets).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a join token.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show one node (by id or name).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a node: its session is closed and its certificate revoked for good.
    Rm { id: String },
    /// Set labels (key=value) or remove them (key-).
    Label {
        id: String,
        #[arg(required = true)]
        changes: Vec<String>,
    },
}

/// What `skiff login` saves.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    pub url: Option<String>,
    pub token: Option<String>,
}

fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SKIFF_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("skiff").join("config.toml"))
}

fn load_config() -> Result<CliConfig, Failure> {
    let Some(path) = config_path() else {
        return Ok(CliConfig::default());
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| {
            Failure::usage(format!(
                "invalid config file {}: {}",
                path.display(),
                e.message()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CliConfig::default()),
        Err(e) => Err(Failure::usage(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// A failed command: a message for stderr and an exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 2,
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Connect { .. } => 3,
            e if e.is_unauthorized() => 4,
            ClientError::Url { .. } => 2,
            ClientError::Api { status: 400, .. } => 2,
            _ => 1,
        };
        Self {
            message: e.to_string(),
            code,
        }
    }
}

/// Runs the CLI; prints results on stdout and one error line on stderr.
pub async fn main(cli: Cli) -> ExitCode {
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("skiff: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let saved = load_config()?;
    let url = cli
        .url
        .clone()
        .or(saved.url.clone())
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let token = cli.token.clone().or(saved.token.clone());
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Login(args) => {
            let url = args.api_url.unwrap_or(url);
            let token = match args.token_file {
                Some(p) => std::fs::read_to_string(&p)
                    .map_err(|e| {
                        Failure::usage(format!("cannot read token file {}: {e}", p.display()))
                    })?
                    .trim()
                    .to_owned(),
                None => cli.token.ok_or_else(|| {
                    Failure::usage("login needs --token, SKIFF_TOKEN or --token-file")
                })?,
            };
            let client = Client::new(&url, Some(token.clone()))?;
            let cluster: ClusterView = client.call(Method::GET, "/cluster", None::<&()>).await?;
            let path = config_path().ok_or_else(|| {
                Failure::usage("cannot find a config dir: set HOME or SKIFF_CONFIG")
            })?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Failure {
                    message: format!("cannot create {}: {e}", dir.display()),
                    code: 1,
                })?;
            }
            let text = toml::to_string(&CliConfig {
                url: Some(url.clone()),
                token: Some(token),
            })
            .unwrap_or_default();
            skiff_shared::files::write_atomic(&path, text.as_bytes(), skiff_shared::files::PRIVATE)
                .map_err(|e| Failure {
                    message: format!("cannot write {}: {e}", path.display()),
                    code: 1,
                })?;
            let _ = writeln!(
                out,
                "Logged in to cluster {} at {url}; saved to {}.",
                cluster.cluster_id,
                path.display()
            );
        }
        Command::Token(cmd) => {
            let client = Client::new(&url, token)?;
            token_command(&client, cmd, &mut out).await?;
        }
        Command::Node(cmd) => {
            let client = Client::new(&url, token)?;
            node_command(&client, cmd, &mut out).await?;
        }
        Command::Deploy(args) => {
            let client = Client::new(&url, token)?;
            deploy_command(&client, args, &mut out).await?;
        }
        Command::Stack(cmd) => {
            let client = Client::new(&url, token)?;
            stack_command(&client, cmd, &mut out).await?;
        }
        Command::Rollback { stack, to, detach } => {
            let client = Client::new(&url, token)?;
            let view: DeployView = client
                .call(
                    Method::POST,
                    &format!("/stacks/{}/rollback", path_segment(&stack)?),
                    Some(&RollbackRequest { to }),
                )
                .await?;
            let release = view.release.unwrap_or_default();
            let _ = writeln!(
                out,
                "Release {release} of {stack} restores the earlier one: {} changes.",
                view.steps.len()
            );
            if !detach {
                follow(&client, &stack, release, Duration::from_secs(300), &mut out).await?;
            }
        }
        Command::Service(ServiceCommand::Scale { targets, detach }) => {
            let client = Client::new(&url, token)?;
            for t in &targets {
                let parsed = t.split_once('=').and_then(|(svc, n)| {
                    let (stack, service) = svc.split_once('.')?;
                    Some((stack, service, n.parse::<u32>().ok()?))
                });
                let Some((stack, service, replicas)) = parsed else {
                    return Err(Failure::usage(format!(
                        "invalid scale target {t:?}: expected STACK.SERVICE=N"
                    )));
                };
                let view: DeployView = client
                    .call(
                        Method::POST,
                        &format!(
                            "/stacks/{}/services/{}/scale",
                            path_segment(stack)?,
                            path_segment(service)?
                        ),
                        Some(&ScaleRequest { replicas }),
                    )
                    .await?;
                let release = view.release.unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{stack}.{service} scaled to {replicas} (release {release})."
                );
                if !detach {
                    follow(&client, stack, release, Duration::from_secs(300), &mut out).await?;
                }
            }
        }
        Command::Secret(cmd) => {
            let client = Client::new(&url, token)?;
            secret_command(&client, cmd, &mut out).await?;
        }
        Command::Registry(cmd) => {
            let client = Client::new(&url, token)?;
            registry_command(&client, cmd, &mut out).await?;
        }
        Command::Events {
            follow,
            stack,
            json,
        } => {
            let client = Client::new(&url, token)?;
            let mut query = format!("/events?follow={follow}");
            if let Some(s) = &stack {
                query.push_str(&format!("&stack={}", path_segment(s)?));
            }
            let print = |out: &mut std::io::StdoutLock<'_>, e: &Event| {
                if json {
                    let _ = writeln!(out, "{}", serde_json::to_string(e).unwrap_or_default());
                } else {
                    let subject = e.stack.as_deref().or(e.node.as_deref()).unwrap_or("-");
                    let node = match (&e.stack, &e.node) {
                        (Some(_), Some(n)) => format!(" on {n}"),
                        _ => String::new(),
                    };
                    let _ = writeln!(
                        out,
                        "{}  {:<17} {subject}{node}: {}",
                        e.at, e.kind, e.message
                    );
                }
                let _ = out.flush();
            };
            if follow {
                client
                    .follow_events(&query, |data| {
                        if let Ok(e) = serde_json::from_str::<Event>(data) {
                            print(&mut out, &e);
                        }
                        true
                    })
                    .await?;
            } else {
                let events: Vec<Event> = client.call(Method::GET, &query, None::<&()>).await?;
                for e in &events {
                    print(&mut out, e);
                }
            }
        }
        Command::Release(ReleaseCommand::Ls { stack, json }) => {
            let client = Client::new(&url, token)?;
            let releases: Vec<ReleaseView> = client
                .call(
                    Method::GET,
                    &format!("/stacks/{}/releases", path_segment(&stack)?),
                    None::<&()>,
                )
                .await?;
            if json {
                print_json(&mut out, &releases);
            } else {
                let rows = releases
                    .iter()
                    .map(|r| {
                        vec![
                            r.number.to_string(),
                            if r.current {
                                "current".into()
                            } else {
                                String::new()
                            },
                            r.status.clone(),
                            r.created_at.clone(),
                            r.images
                                .iter()
                                .map(|(s, i)| format!("{s}={i}"))
                                .collect::<Vec<_>>()
                                .join(","),
                        ]
                    })
                    .collect();
                table(
                    &mut out,
                    &["RELEASE", "", "STATUS", "CREATED", "IMAGES"],
                    rows,
                );
            }
        }
    }
    Ok(())
}

fn print_json(out: &mut impl Write, v: &impl Serialize) {
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_default()
    );
}

async fn token_command(
    client: &Client,
    cmd: TokenCommand,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match cmd {
        TokenCommand::Create { ttl, uses } => {
            if let Some(t) = &ttl {
                humantime::parse_duration(t).map_err(|e| {
                    Failure::usage(format!("invalid --ttl {t:?} ({e}); write e.g. 30m, 24h"))
                })?;
            }
            let created: CreatedJoinToken = client
                .call(
                    Method::POST,
                    "/tokens/join",
                    Some(&CreateJoinToken {
                        ttl,
                        uses: Some(uses),
                    }),
                )
                .await?;
            let _ = writeln!(out, "{}", created.token);
        }
        TokenCommand::Ls { json } => {
            let tokens: Vec<JoinTokenView> = client
                .call(Method::GET, "/tokens/join", None::<&()>)
                .await?;
            if json {
                print_json(out, &tokens);
            } else {
                let rows = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.status.to_string(),
                            format!("{}/{}", t.uses, t.uses_allowed),
                            t.expires_at.clone(),
                            t.created_at.clone(),
                        ]
                    })
                    .collect();
                table(out, &["ID", "STATUS", "USES", "EXPIRES", "CREATED"], rows);
            }
        }
        TokenCommand::Revoke { id } => {
            let t: JoinTokenView = client
                .call(
                    Method::DELETE,
                    &format!("/tokens/join/{}", path_segment(&id)?),
                    None::<&()>,
                )
                .await?;
            let _ = writeln!(out, "Join token {} revoked.", t.id);
        }
    }
    Ok(())
}

/// Refuses ids that would change the URL's path.
fn path_segment(id: &str) -> Result<&str, Failure> {
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(Failure::usage(format!("invalid id or name {id:?}")));
    }
    Ok(id)
}

async fn node_command(
    client: &Client,
    cmd: NodeCommand,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match cmd {
        NodeCommand::Ls { json } => {
            let nodes: Vec<NodeView> = client.call(Method::GET, "/nodes", None::<&()>).await?;
            if json {
                print_json(out, &nodes);
            } else {
                let rows = nodes
                    .iter()
                    .map(|n| {
                        vec![
                            n.id.chars().take(12).collect(),
                            n.name.clone(),
                            n.status.to_string(),
                            ago(n.last_seen_at.as_deref(), n.status),
                            n.remote_addr.clone().unwrap_or_else(|| "-".into()),
                            dash(&n.agent_version),
                            n.docker_version.clone().unwrap_or_else(|| "-".into()),
                            labels_text(&n.labels),
                        ]
                    })
                    .collect();
                table(
                    out,
                    &[
                        "ID",
                        "NAME",
                        "STATUS",
                        "LAST SEEN",
                        "ADDRESS",
                        "AGENT",
                        "DOCKER",
                        "LABELS",
                    ],
                    rows,
                );
            }
        }
        NodeCommand::Show { id, json } => {
            let n: NodeView = client
                .call(
                    Method::GET,
                    &format!("/nodes/{}", path_segment(&id)?),
                    None::<&()>,
                )
                .await?;
            if json {
                print_json(out, &n);
            } else {
                show_node(out, &n);
            }
        }
        NodeCommand::Rm { id } => {
            let n: NodeView = client
                .call(
                    Method::DELETE,
                    &format!("/nodes/{}", path_segment(&id)?),
                    None::<&()>,
                )
                .await?;
            let _ = writeln!(
                out,
                "Node {} ({}) removed; its certificate is revoked.",
                n.name, n.id
            );
        }
        NodeCommand::Label { id, changes } => {
            let mut change = LabelChange::default();
            for c in &changes {
                if let Some(k) = c.strip_suffix('-').filter(|_| !c.contains('=')) {
                    skiff_shared::join::names::check_label(k, "").map_err(Failure::usage)?;
                    change.remove.push(k.to_owned());
                } else {
                    let (k, v) = skiff_shared::join::names::parse_label(c).map_err(|m| {
                        Failure::usage(format!("{m}; use key=value to set, key- to remove"))
                    })?;
                    change.set.insert(k, v);
                }
            }
            let n: NodeView = client
                .call(
                    Method::PATCH,
                    &format!("/nodes/{}/labels", path_segment(&id)?),
                    Some(&change),
                )
                .await?;
            let _ = writeln!(out, "{}", labels_text(&n.labels));
        }
    }
    Ok(())
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

fn labels_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn ago(ts: Option<&str>, status: NodeStatus) -> String {
    if status == NodeStatus::Connected {
        return "now".into();
    }
    let Some(t) = ts.and_then(|t| humantime::parse_rfc3339(t).ok()) else {
        return "never".into();
    };
    let secs = SystemTime::now()
        .duration_since(t)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let d = Duration::from_secs(secs);
    format!(
        "{} ago",
        humantime::format_duration(d)
            .to_string()
            .split(' ')
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn bytes_text(b: u64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    #[allow(clippy::cast_precision_loss)]
    let g = b as f64 / GIB;
    format!("{g:.1} GiB")
}

fn show_node(out: &mut impl Write, n: &NodeView) {
    let mut kv = |k: &str, v: String| {
        let _ = writeln!(out, "{:<18}{v}", format!("{k}:"));
    };
    kv("ID", n.id.clone());
    kv("Name", n.name.clone());
    kv("Status", n.status.to_string());
    kv(
        "Connected since",
        n.connected_since.clone().unwrap_or_else(|| "-".into()),
    );
    kv(
        "Last seen",
        n.last_seen_at.clone().unwrap_or_else(|| "never".into()),
    );
    kv("Joined", n.joined_at.clone());
    kv("Labels", labels_text(&n.labels));
    kv(
        "Address",
        n.remote_addr.clone().unwrap_or_else(|| "-".into()),
    );
    kv(
        "Addresses",
        if n.addresses.is_empty() {
            "-".into()
        } else {
            n.addresses.join(", ")
        },
    );
    kv("Agent", dash(&n.agent_version));
    kv(
        "Docker",
        match (&n.docker_version, &n.docker_api_version) {
            (Some(v), Some(a)) => format!("{v} (API {a})"),
            (Some(v), None) => v.clone(),
            _ => "unavailable".into(),
        },
    );
    kv("Hostname", dash(&n.host.hostname));
    kv("OS", dash(&n.host.os));
    kv("Kernel", dash(&n.host.kernel));
    kv("CPUs", format!("{} ({})", n.host.cpus, dash(&n.host.arch)));
    kv("Memory", bytes_text(n.host.memory_bytes));
    for d in &n.host.disks {
        kv(
            "Disk",
            format!(
                "{} {} {} free of {}",
                d.mount,
                d.filesystem,
                bytes_text(d.available_bytes),
                bytes_text(d.total_bytes)
            ),
        );
    }
    kv("Cert expires", n.certificate_expires_at.clone());
    kv(
        "Plan",
        match (&n.plan_generation, &n.plan_error) {
            (_, Some(e)) => format!("refused: {e}"),
            (Some(g), None) => format!("generation {g} accepted"),
            (None, None) => "none yet".into(),
        },
    );
}

/// Prints rows under headers in aligned columns.
pub fn table(out: &mut impl Write, headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   "));
            }
        }
        s
    };
    let _ = writeln!(
        out,
        "{}",
        line(headers.iter().map(|h| (*h).to_owned()).collect())
    );
    for r in rows {
        let _ = writeln!(out, "{}", line(r));
    }
}

/// Parses the Compose file here (the environment and referenced files are
/// this machine's), then sends the model to the coordinator.
async fn deploy_command(
    client: &Client,
    args: DeployArgs,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let timeout = humantime::parse_duration(&args.timeout).map_err(|e| {
        Failure::usage(format!(
            "invalid --timeout {:?} ({e}); write e.g. 5m",
            args.timeout
        ))
    })?;
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", args.file.display())))?;
    let dir = args
        .file
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(std::path::Path::new("."))
        .to_owned();
    // As Compose does: the shell's environment, plus a `.env` file beside the
    // stack file for variables the shell does not set.
    let mut env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    let dotenv = dir.join(".env");
    if let Ok(text) = std::fs::read_to_string(&dotenv) {
        let shown = dotenv.display().to_string();
        let vars = skiff_shared::stack::parse_env_file(&text, &shown, &env)
            .map_err(|e| Failure::usage(e.to_string()))?;
        for (k, v) in vars {
            env.entry(k).or_insert(v);
        }
    }
    let file_name = args.file.display().to_string();
    let input = skiff_shared::stack::Input::new(&text, &file_name, &dir, &env);
    let mut parsed =
        skiff_shared::stack::parse(&input).map_err(|e| Failure::usage(e.to_string()))?;
    read_configs(&mut parsed.stack, &env)?;
    for w in &parsed.warnings {
        eprintln!("skiff: {}", w.render());
    }
    if !args.dry_run {
        upload_stack_secrets(client, &args.stack, &parsed.stack, &env).await?;
    }
    let request = DeployRequest {
        stack: serde_json::to_value(&parsed.stack).unwrap_or_default(),
        compose: text,
        dry_run: args.dry_run,
    };
    let view: DeployView = client
        .call(
            Method::POST,
            &format!("/stacks/{}/deploy", path_segment(&args.stack)?),
            Some(&request),
        )
        .await?;
    for w in &view.warnings {
        eprintln!("skiff: warning: {w}");
    }
    if args.dry_run {
        if view.steps.is_empty() {
            let _ = writeln!(out, "Nothing to change.");
        }
        for s in &view.steps {
            let reason = s
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            let _ = writeln!(out, "{:<8} {} on {}{reason}", s.action, s.container, s.node);
        }
        return Ok(());
    }
    let release = view.release.unwrap_or_default();
    let _ = writeln!(
        out,
        "Release {release} of {} recorded: {} changes.",
        args.stack,
        view.steps.len()
    );
    if args.detach {
        return Ok(());
    }
    follow(client, &args.stack, release, timeout, out).await
}

/// Prints progress until release `release` is rolled out and every
/// replica runs it (healthy, where it has a health check); fails when the
/// rollout rolled back, paused or failed, or after `timeout`.
async fn follow(
    client: &Client,
    stack: &str,
    release: i64,
    timeout: Duration,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    let mut screen =
        crate::progress::Screen::new(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    // A host's error that persists this long fails the deploy (a busy
    // engine can fail a round that the next one gets through).
    const PERSISTENT: Duration = Duration::from_secs(10);
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        // A coordinator briefly busy or restarting does not end the follow.
        let polled = async {
            let view: StackView = client
                .call(Method::GET, &format!("/stacks/{stack}"), None::<&()>)
                .await?;
            let tasks: Vec<TaskView> = client
                .call(Method::GET, &format!("/stacks/{stack}/tasks"), None::<&()>)
                .await?;
            Ok::<_, ClientError>((view, tasks))
        };
        let (view, tasks) = match polled.await {
            Ok(v) => v,
            Err(
                e @ (ClientError::Connect { .. }
                | ClientError::Http { .. }
                | ClientError::Api { status: 503, .. }),
            ) if tokio::time::Instant::now() < deadline => {
                if last != e.to_string() {
                    eprintln!("skiff: {e}; still following");
                    last = e.to_string();
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let rollout = view.rollout.filter(|r| r.release == release);
        if let Some(r) = &rollout
            && !matches!(r.state.as_str(), "in_progress" | "completed")
        {
            return Err(Failure {
                message: format!(
                    "release {release} of {stack} {}: {}",
                    r.state.replace('_', " "),
                    r.message
                ),
                code: 1,
            });
        }
        let ready = tasks.iter().filter(|t| t.is_ready()).count();
        let mut lines = crate::progress::render(&crate::progress::by_service(&tasks));
        if let Some(r) = rollout.as_ref().filter(|r| r.state == "in_progress") {
            let mut status = format!("release {release}: {}/{} replaced", r.replaced, r.total);
            if !r.message.is_empty() {
                status.push_str(&format!("; {}", r.message));
            }
            lines.push(status);
        }
        screen.show(out, lines);
        match tasks.iter().find_map(|t| t.error.as_ref().map(|e| (t, e))) {
            Some((t, e)) => {
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= PERSISTENT {
                    return Err(Failure {
                        message: format!("deploy of {stack} failed: {} on {}: {e}", t.name, t.node),
                        code: 1,
                    });
                }
            }
            None => failing_since = None,
        }
        let rolled_out = rollout.as_ref().is_none_or(|r| r.state == "completed");
        if rolled_out && ready >= view.desired && tasks.iter().all(|t| t.up_to_date) {
            let _ = writeln!(out, "Deployed.");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let stuck: Vec<String> = tasks
                .iter()
                .filter(|t| !(t.up_to_date && t.state == "running"))
                .map(|t| format!("{} on {} is {}", t.name, t.node, t.state))
                .collect();
            return Err(Failure {
                message: format!(
                    "deploy of {stack} not ready after {}: {}",
                    humantime::format_duration(timeout),
                    stuck.join("; ")
                ),
                code: 1,
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn stack_command(
    client: &Client,
    cmd: StackCommand,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match cmd {
        StackCommand::Ls { json } => {
            let stacks: Vec<StackView> = client.call(Method::GET, "/stacks", None::<&()>).await?;
            if json {
                print_json(out, &stacks);
            } else {
                let rows = stacks
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.release.to_string(),
                            format!("{}/{}", s.running, s.desired),
                            s.updated_at.clone(),
                        ]
                    })
                    .collect();
                table(out, &["NAME", "RELEASE", "RUNNING", "UPDATED"], rows);
            }
        }
        StackCommand::Ps { stack, json } => {
            let tasks: Vec<TaskView> = client
                .call(
                    Method::GET,
                    &format!("/stacks/{}/tasks", path_segment(&stack)?),
                    None::<&()>,
                )
                .await?;
            if json {
                print_json(out, &tasks);
            } else {
                let rows = tasks
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.node.clone(),
                            t.state.clone(),
                            t.health.clone().unwrap_or_else(|| "-".into()),
                            t.restart_count.to_string(),
                            if t.up_to_date {
                                "yes".into()
                            } else {
                                "no".into()
                            },
                            t.ips.join(","),
                            t.image.clone(),
                        ]
                    })
                    .collect();
                table(
                    out,
                    &[
                        "NAME", "NODE", "STATE", "HEALTH", "RESTARTS", "CURRENT", "IPS", "IMAGE",
                    ],
                    rows,
                );
            }
        }
        StackCommand::Rm { stack } => {
            let _: StackView = client
                .call(
                    Method::DELETE,
                    &format!("/stacks/{}", path_segment(&stack)?),
                    None::<&()>,
                )
                .await?;
            let _ = writeln!(out, "Stack {stack} removed.");
        }
    }
    Ok(())
}

async fn set_secret(
    client: &Client,
    stack: &str,
    name: &str,
    value: &[u8],
) -> Result<SecretView, Failure> {
    use base64::Engine as _;
    let body = SetSecret {
        value: base64::engine::general_purpose::STANDARD.encode(value),
    };
    Ok(client
        .call(
            Method::PUT,
            &format!(
                "/stacks/{}/secrets/{}",
                path_segment(stack)?,
                path_segment(name)?
            ),
            Some(&body),
        )
        .await?)
}

async fn secret_command(
    client: &Client,
    cmd: SecretCommand,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match cmd {
        SecretCommand::Set { stack, name, file } => {
            let value = match &file {
                Some(p) => std::fs::read(p)
                    .map_err(|e| Failure::usage(format!("cannot read {}: {e}", p.display())))?,
                None => {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map_err(|e| {
                        Failure::usage(format!("cannot read the secret from standard input: {e}"))
                    })?;
                    buf
                }
            };
            if value.is_empty() {
                return Err(Failure::usage(
                    "the secret is empty; pipe it in or pass --file",
                ));
            }
            let v = set_secret(client, &stack, &name, &value).await?;
            let _ = writeln!(out, "Secret {name} of {stack} is at version {}.", v.version);
        }
        SecretCommand::Ls { stack, json } => {
            let list: Vec<SecretView> = client
                .call(
                    Method::GET,
                    &format!("/stacks/{}/secrets", path_segment(&stack)?),
                    None::<&()>,
                )
                .await?;
            if json {
                print_json(out, &list);
            } else {
                let rows = list
                    .iter()
                    .map(|s| vec![s.name.clone(), s.version.to_string(), s.created_at.clone()])
                    .collect();
                table(out, &["NAME", "VERSION", "CREATED"], rows);
            }
        }
        SecretCommand::Rm { stack, name } => {
            let _: SecretView = client
                .call(
                    Method::DELETE,
                    &format!(
                        "/stacks/{}/secrets/{}",
                        path_segment(&stack)?,
                        path_segment(&name)?
                    ),
                    None::<&()>,
                )
                .await?;
            let _ = writeln!(out, "Secret {name} of {stack} removed.");
        }
    }
    Ok(())
}

/// A registry host argument, checked and normalized.
fn registry_host(host: &str) -> Result<String, Failure> {
    skiff_shared::registry::check_host(host).map_err(Failure::usage)
}

/// Reads a registry password from standard input, without its final line
/// break. A terminal is refused: what is typed there would be echoed.
fn read_password(host: &str, username: &str) -> Result<String, Failure> {
    use std::io::IsTerminal as _;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(Failure::usage(format!(
            "registry login reads the password from standard input; pipe it in, e.g. `printf '%s' \"$TOKEN\" | skiff registry login {host} --username {username} --password-stdin`"
        )));
    }
    let mut buf = String::new();
    std::io::Read::read_to_string(&mut stdin.lock(), &mut buf).map_err(|e| {
        Failure::usage(format!("cannot read the password from standard input: {e}"))
    })?;
    let password = buf
        .strip_suffix("\r\n")
        .or_else(|| buf.strip_suffix('\n'))
        .unwrap_or(&buf);
    if password.is_empty() {
        return Err(Failure::usage(
            "the password read from standard input is empty; pipe the password or token in",
        ));
    }
    Ok(password.to_owned())
}

async fn registry_command(
    client: &Client,
    cmd: RegistryCommand,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match cmd {
        RegistryCommand::Login {
            host,
            username,
            password_stdin: _,
        } => {
            let host = registry_host(&host)?;
            skiff_api_types::validate::check_username(&username).map_err(Failure::usage)?;
            let password = read_password(&host, &username)?;
            skiff_api_types::validate::check_password(&password).map_err(Failure::usage)?;
            let view: RegistryView = client
                .call(
                    Method::PUT,
                    &format!("/registries/{host}"),
                    Some(&SetRegistry { username, password }),
                )
                .await?;
            let _ = writeln!(
                out,
                "Credentials for {} saved (user {}); nodes pulling from it receive them now.",
                view.host, view.username
            );
        }
        RegistryCommand::Ls { json } => {
            let list: Vec<RegistryView> =
                client.call(Method::GET, "/registries", None::<&()>).await?;
            if json {
                print_json(out, &list);
            } else {
                let rows = list
                    .iter()
                    .map(|r| vec![r.host.clone(), r.username.clone(), r.created_at.clone()])
                    .collect();
                table(out, &["HOST", "USERNAME", "CREATED"], rows);
            }
        }
        RegistryCommand::Logout { host } => {
            let host = registry_host(&host)?;
            let view: RegistryView = client
                .call(Method::DELETE, &format!("/registries/{host}"), None::<&()>)
                .await?;
            let _ = writeln!(out, "Credentials for {} removed.", view.host);
        }
    }
    Ok(())
}

/// Reads the stack's `file:` and `environment:` configs into `content:`:
/// a config's content travels with the release.
fn read_configs(
    stack: &mut skiff_shared::stack::Stack,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<(), Failure> {
    use skiff_shared::stack::ConfigSource;
    for (name, def) in &mut stack.configs {
        let content = match &def.source {
            ConfigSource::File(path) => {
                let bytes = std::fs::read(path).map_err(|e| {
                    Failure::usage(format!(
                        "config {name}: cannot read {}: {e}",
                        path.display()
                    ))
                })?;
                String::from_utf8(bytes).map_err(|_| {
                    Failure::usage(format!(
                        "config {name}: {} is not UTF-8 text; put binary files in a secret or the image",
                        path.display()
                    ))
                })?
            }
            ConfigSource::Environment(var) => env.get(var).cloned().ok_or_else(|| {
                Failure::usage(format!(
                    "config {name}: environment variable {var} is not set"
                ))
            })?,
            ConfigSource::Content(_) | ConfigSource::External(_) => continue,
        };
        def.source = ConfigSource::Content(content);
    }
    Ok(())
}

/// Uploads the stack's `file:` and `environment:` secrets before a deploy
/// (a value equal to the stored one makes no new version).
async fn upload_stack_secrets(
    client: &Client,
    stack_name: &str,
    stack: &skiff_shared::stack::Stack,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<(), Failure> {
    for (name, def) in &stack.secrets {
        let value = match &def.source {
            skiff_shared::stack::SecretSource::File(path) => std::fs::read(path).map_err(|e| {
                Failure::usage(format!(
                    "secret {name}: cannot read {}: {e}",
                    path.display()
                ))
            })?,
            skiff_shared::stack::SecretSource::Environment(var) => env
                .get(var)
                .ok_or_else(|| {
                    Failure::usage(format!(
                        "secret {name}: environment variable {var} is not set"
                    ))
                })?
                .clone()
                .into_bytes(),
            skiff_shared::stack::SecretSource::External(_) => continue,
        };
        set_secret(client, stack_name, name, &value).await?;
    }
    Ok(())
}
