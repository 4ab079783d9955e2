//! `skiff-agent`: parse flags, load config, set up logging and the signal
//! handler, then join or run ([`skiff_agent::run`]).
//!
//! Exit codes: 0 clean stop, 1 runtime failure, 2 invalid flags, config,
//! token or `SKIFF_LOG`, 3 the coordinator could not be reached at join (no
//! connection, no TLS handshake or no complete answer within the deadlines,
//! or an answer over 1 MiB), 4 this node was removed from the cluster
//! (systemd does not restart it), 5 the join was refused.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use skiff_agent::RunError;
use skiff_agent::config::Config;
use skiff_agent::identity::{self, IdentityError, JoinOptions, Joined};
use skiff_agent::link::LinkError;
use skiff_shared::join::{JoinToken, names};
use skiff_shared::tasks::TaskTree;

// No `Debug` here or on `Command`: `join` holds the join token's secret.
#[derive(Parser)]
#[command(name = "skiff-agent", version, about = "The Skiff agent.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join a cluster with a token from `skiff token create`.
    Join {
        /// The coordinator's agent port, HOST:PORT.
        #[arg(long)]
        coordinator: String,
        /// The join token.
        #[arg(long, env = "SKIFF_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        /// Data dir (default /var/lib/skiff/agent).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Node name (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// Node label key=value; repeat for more.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Run the agent.
    Run {
        /// Data dir (default /var/lib/skiff/agent).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// TOML config file; flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("skiff-agent: {message}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = skiff_shared::logging::init() {
        return fail(2, e);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(1, format!("cannot start the runtime: {e}")),
    };
    match cli.command {
        Command::Join {
            coordinator,
            token,
            data_dir,
            name,
            labels,
        } => runtime.block_on(join(coordinator, token, data_dir, name, labels)),
        Command::Run { data_dir, config } => runtime.block_on(run(data_dir, config)),
    }
}

async fn join(
    coordinator: String,
    token: String,
    data_dir: Option<PathBuf>,
    name: Option<String>,
    labels: Vec<String>,
) -> ExitCode {
    let token: JoinToken = match token.parse() {
        Ok(t) => t,
        Err(e) => return fail(2, format!("invalid --token: {e}")),
    };
    if let Err(e) = skiff_shared::tls::server_name_of(&coordinator) {
        return fail(2, format!("invalid --coordinator: {e}"));
    }
    let name = name.unwrap_or_else(|| sysinfo::System::host_name().unwrap_or_default());
    if let Err(e) = names::check_node_name(&name) {
        return fail(2, format!("{e}; pass --name"));
    }
    let mut label_map = BTreeMap::new();
    for l in &labels {
        match names::parse_label(l) {
            Ok((k, v)) => {
                label_map.insert(k, v);
            }
            Err(e) => return fail(2, format!("invalid --label: {e}")),
        }
    }
    let opts = JoinOptions {
        coordinator,
        token,
        data_dir: data_dir.unwrap_or_else(|| Config::default().data_dir),
        name,
        labels: label_map,
    };
    match identity::join(&opts).await {
        Ok(Joined::New { node_id }) => {
            println!("Joined the cluster as node {node_id} ({}).", opts.name);
            ExitCode::SUCCESS
        }
        Ok(Joined::Already { node_id }) => {
            println!("Already joined this cluster as node {node_id}; nothing to do.");
            ExitCode::SUCCESS
        }
        Err(e @ (IdentityError::Connect { .. } | IdentityError::Exchange { .. })) => fail(3, e),
        Err(e @ IdentityError::Refused { .. }) => fail(5, e),
        Err(e @ (IdentityError::Input(_) | IdentityError::OtherCluster { .. })) => fail(2, e),
        Err(e) => fail(1, e),
    }
}

async fn run(data_dir: Option<PathBuf>, config: Option<PathBuf>) -> ExitCode {
    let mut cfg = match &config {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => return fail(2, e),
        },
        None => Config::default(),
    };
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    if let Err(e) = cfg.validate() {
        return fail(2, e);
    }
    let tree = TaskTree::root();
    let signals = tree.clone();
    tree.spawn("signals", async move {
        use tokio::signal::unix::{SignalKind, signal};
        let term = async {
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    term.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            () = signals.cancelled() => return,
            () = term => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        signals.cancel();
    });
    match skiff_agent::run(cfg, tree).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(RunError::Identity(e @ IdentityError::NotJoined { .. })) => fail(2, e),
        Err(RunError::Link(e @ LinkError::Removed)) => {
            tracing::error!(error = %e, "Agent stopping.");
            fail(4, e)
        }
        Err(e) => fail(1, e),
    }
}
