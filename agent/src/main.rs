//! `skiff-agent`: parse flags, load config, set up logging, then join or run.
//!
//! Exit codes: 0 clean stop, 1 runtime failure, 2 invalid flags, config or
//! token, 3 the coordinator could not be reached, 4 this node was removed
//! from the cluster (systemd does not restart it), 5 the join was refused.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use skiff_agent::config::Config;
use skiff_agent::identity::{self, IdentityError, JoinOptions, Joined};
use skiff_agent::link::{self, LinkError, LinkOptions};
use skiff_shared::join::{JoinToken, names};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "skiff-agent", version, about = "The Skiff agent.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
        Err(e @ IdentityError::Connect { .. }) => fail(3, e),
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
    let mut identity = match identity::Identity::load(&cfg.data_dir) {
        Ok(i) => i,
        Err(e @ IdentityError::NotJoined { .. }) => return fail(2, e),
        Err(e) => return fail(1, e),
    };
    if let Some(c) = cfg.coordinator {
        identity.node.coordinator = c;
    }
    // The last signed plan is enforced from the start, coordinator or not.
    let stored = skiff_agent::plan::stored(&identity);
    if let Some(plan) = &stored {
        tracing::info!(generation = plan.generation, "Loaded the last signed plan.");
    }
    let (plans, plan_rx) = tokio::sync::watch::channel(stored);
    let (observed, observed_rx) = tokio::sync::watch::channel(None);
    tracing::info!(node = %identity.node.node_id, name = %identity.node.name, coordinator = %identity.node.coordinator, "Agent starting.");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        } else {
            let _ = tokio::signal::ctrl_c().await;
        }
        stop.cancel();
    });
    tokio::spawn(reconcile(
        identity.node.node_id.clone(),
        plan_rx,
        observed,
        identity.dir.clone(),
        shutdown.clone(),
    ));
    match link::run(
        identity,
        LinkOptions::default(),
        plans,
        observed_rx,
        shutdown,
    )
    .await
    {
        Ok(()) => {
            tracing::info!("Agent stopped.");
            ExitCode::SUCCESS
        }
        Err(e @ LinkError::Removed) => {
            tracing::error!(error = %e, "Agent stopping.");
            fail(4, e)
        }
        Err(e) => fail(1, e),
    }
}

/// Connects to the Docker Engine (retrying until it answers, so the API
/// version is negotiated with the engine that is really there), then keeps
/// the host at the latest plan.
async fn reconcile(
    node_id: String,
    plans: tokio::sync::watch::Receiver<Option<skiff_shared::signing::Plan>>,
    observed: tokio::sync::watch::Sender<
        Option<std::sync::Arc<skiff_shared::workload::ObservedState>>,
    >,
    data_dir: std::path::PathBuf,
    shutdown: CancellationToken,
) {
    let mut said = false;
    let docker = loop {
        let attempt = match bollard::Docker::connect_with_local_defaults() {
            Ok(d) => d.negotiate_version().await,
            Err(e) => Err(e),
        };
        match attempt {
            Ok(d) => break d,
            Err(error) => {
                if !said {
                    tracing::warn!(error = %error, "Docker Engine unavailable; containers are reconciled once it answers.");
                    said = true;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
        }
    };
    let engine = skiff_agent::reconcile::docker::Engine::new(docker, node_id)
        .with_secrets_from(&data_dir)
        .with_registry_credentials_from(&data_dir);
    skiff_agent::reconcile::run(engine, plans, observed, shutdown).await;
}
