//! `skiff-coordinator`: parse flags, load and validate config, set up
//! logging, prepare the data dir, bind, serve until SIGINT or SIGTERM.
//!
//! Exit codes: 0 clean stop, 1 runtime failure, 2 invalid flags, config or
//! `SKIFF_LOG`, 3 a port could not be bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use skiff_coordinator::config::Config;
use skiff_shared::tasks::TaskTree;
use tokio::net::TcpListener;
use tracing::error;

#[derive(Debug, Parser)]
#[command(name = "skiff-coordinator", version, about = "The Skiff coordinator.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the coordinator.
    Serve {
        /// Data dir (default /var/lib/skiff/coordinator).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// HTTP API address (default 127.0.0.1:7070).
        #[arg(long)]
        api_listen: Option<SocketAddr>,
        /// Agent link address (default 0.0.0.0:7443).
        #[arg(long)]
        agent_listen: Option<SocketAddr>,
        /// Names and addresses agents use to reach this coordinator, comma separated.
        #[arg(long, value_delimiter = ',')]
        advertise: Vec<String>,
        /// TOML config file; flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = skiff_shared::logging::init() {
        eprintln!("skiff-coordinator: {e}");
        return ExitCode::from(2);
    }
    let Command::Serve {
        data_dir,
        api_listen,
        agent_listen,
        advertise,
        config,
    } = cli.command;
    let mut cfg = match &config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("skiff-coordinator: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    if let Some(a) = api_listen {
        cfg.api_listen = a;
    }
    if let Some(a) = agent_listen {
        cfg.agent_listen = a;
    }
    if !advertise.is_empty() {
        cfg.advertise = advertise;
    }
    if let Err(e) = cfg.validate() {
        eprintln!("skiff-coordinator: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("skiff-coordinator: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(cfg))
}

async fn serve(cfg: Config) -> ExitCode {
    let (api_addr, agent_addr) = (cfg.api_listen, cfg.agent_listen);
    let tree = TaskTree::root();
    let coordinator = match skiff_coordinator::server::prepare(cfg, &tree).await {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "Coordinator cannot start.");
            eprintln!("skiff-coordinator: {e}");
            return ExitCode::from(1);
        }
    };
    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))
    };
    let (api, agent) = match (
        bind(api_addr, "api_listen").await,
        bind(agent_addr, "agent_listen").await,
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("skiff-coordinator: {e}");
            return ExitCode::from(3);
        }
    };
    let signals = tree.clone();
    tree.spawn("signals", async move {
        tokio::select! {
            () = signals.cancelled() => {}
            () = wait_for_signal() => signals.cancel(),
        }
    });
    match skiff_coordinator::server::run(coordinator, api, agent).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff-coordinator: {e}");
            ExitCode::from(1)
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
