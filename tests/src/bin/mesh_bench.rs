//! `skiff-mesh-bench`: runs the agent's mesh controller alone, on this
//! host (or in a network namespace: `ip netns exec`), from a `mesh`
//! section in a JSON file, with no coordinator. The file is read again
//! whenever it changes; `null` (or no file) is a plan without a `mesh`
//! section, which makes the host leave the mesh. Every report the
//! controller sends is printed on stdout as one JSON line.
//!
//! It is how the mesh is tried between network namespaces (see
//! `scripts/mesh-netns.sh`): two instances, two sections naming each other.
//!
//! Exit codes: 0 stopped by SIGTERM/SIGINT, 2 invalid flags.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use skiff_agent::config::WireguardChoice;
use skiff_agent::mesh::{Controller, MeshOptions};
use skiff_agent::supervisor::{Host, Supervisor};
use skiff_shared::plan::{HostPlan, Section};
use skiff_shared::sections::mesh::{Mesh, MeshSection};
use skiff_shared::tasks::TaskTree;

#[derive(Debug, Parser)]
#[command(
    name = "skiff-mesh-bench",
    about = "Runs the agent's mesh controller alone from a section in a JSON file."
)]
struct Cli {
    /// Where the WireGuard key is kept (`<dir>/mesh/wireguard.key`).
    #[arg(long)]
    data_dir: PathBuf,
    /// The `mesh` section, as JSON; `null` or missing: no section.
    #[arg(long)]
    section: PathBuf,
    /// `auto`, `kernel` or `userspace`.
    #[arg(long, default_value = "auto")]
    wireguard: String,
    /// The agent's `mesh_endpoint`.
    #[arg(long)]
    endpoint: Option<String>,
}

fn read(path: &PathBuf) -> Result<Option<MeshSection>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn plan(generation: u64, section: Option<&MeshSection>) -> Result<HostPlan, String> {
    let mut sections = BTreeMap::new();
    if let Some(s) = section {
        sections.insert(
            "mesh".to_owned(),
            Section::of::<Mesh>(generation, s).map_err(|e| e.to_string())?,
        );
    }
    Ok(HostPlan {
        cluster_id: "bench".into(),
        epoch: 1,
        node_id: "bench".into(),
        generation,
        issued_at_ms: 0,
        sections,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = skiff_shared::logging::init() {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    let wireguard = match cli.wireguard.as_str() {
        "auto" => WireguardChoice::Auto,
        "kernel" => WireguardChoice::Kernel,
        "userspace" => WireguardChoice::Userspace,
        other => {
            eprintln!("--wireguard {other}: use auto, kernel or userspace");
            return ExitCode::from(2);
        }
    };
    let tree = TaskTree::root();
    let host = Host {
        node_id: "bench".into(),
        data_dir: cli.data_dir.clone(),
        engine: skiff_agent::engine::EngineHandle::connect(&tree),
        firewall: std::sync::Arc::default(),
        leases: std::sync::Arc::default(),
        weave: std::sync::Arc::default(),
        mesh: MeshOptions {
            wireguard,
            endpoint: cli.endpoint.clone(),
        },
        dns: skiff_agent::dns::DnsOptions::default(),
    };
    let mut s = Supervisor::new(tree.child());
    s.add(Controller::new(&host));
    let router = s.router();
    let mut last: Option<Option<MeshSection>> = None;
    let mut generation = 0;
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("signals: {e}");
            return ExitCode::from(2);
        }
    };
    loop {
        match read(&cli.section) {
            Ok(section) if last.as_ref() != Some(&section) => {
                generation += 1;
                match plan(generation, section.as_ref()).and_then(|p| router.prepare(&p)) {
                    Ok(steps) => steps.into_iter().for_each(|publish| publish()),
                    Err(e) => eprintln!("the section is refused: {e}"),
                }
                last = Some(section);
            }
            Ok(_) => {}
            Err(e) => eprintln!("{e}"),
        }
        for (_, body) in router.reports().take(|_| true) {
            println!("{body}");
        }
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    tree.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), tree.wait()).await;
    ExitCode::SUCCESS
}
