//! `skiff-dns-bench`: the agent's DNS server alone, for benchmarks
//! (`scripts/bench/dns.sh`).
//!
//! - `serve --records FILE --listen ADDR [--upstream ADDR]...`: answers
//!   from a `dns` section in a JSON file, with no rate limit, until
//!   SIGTERM/SIGINT; then prints its counters as JSON on stdout.
//! - `generate --dir DIR [--services N] [--replicas N]`: writes a section
//!   (`records.json`), the same names as unbound `local-data`
//!   (`unbound-local.conf`), and dnsperf query files for the cluster's
//!   names (`cluster.queries`) and forwarded names (`forward.queries`,
//!   `forward-local.conf`: the upstream's data for them).
//!
//! Exit codes: 0 done, 1 failed, 2 invalid flags or input.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use skiff_agent::dns::forward::Forwarder;
use skiff_agent::dns::{Limits, Rate, Server};
use skiff_shared::sections::dns::{
    DnsSection, NodeRecord, Policy, Records, Replica, ReplicaAddress, ServiceRecords,
};
use skiff_shared::tasks::TaskTree;

#[derive(Debug, Parser)]
#[command(
    name = "skiff-dns-bench",
    about = "The agent's DNS server alone, for benchmarks."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a records file.
    Serve {
        #[arg(long)]
        records: PathBuf,
        #[arg(long, default_value = "127.0.0.1:5300")]
        listen: SocketAddr,
        /// Upstream resolvers for other names (none: SERVFAIL).
        #[arg(long)]
        upstream: Vec<SocketAddr>,
        /// UDP sockets (SO_REUSEPORT); default one per core.
        #[arg(long)]
        udp_sockets: Option<usize>,
    },
    /// Write a records file, unbound's local data and query files.
    Generate {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 100)]
        services: u32,
        #[arg(long, default_value_t = 3)]
        replicas: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Generate {
            dir,
            services,
            replicas,
        } => match generate(&dir, services, replicas) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("skiff-dns-bench: {e}");
                ExitCode::from(1)
            }
        },
        Command::Serve {
            records,
            listen,
            upstream,
            udp_sockets,
        } => {
            let section: DnsSection = match std::fs::read(&records)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("skiff-dns-bench: {}: {e}", records.display());
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("skiff-dns-bench: {e}");
                    return ExitCode::from(1);
                }
            };
            runtime.block_on(serve(section, listen, upstream, udp_sockets))
        }
    }
}

async fn serve(
    section: DnsSection,
    listen: SocketAddr,
    upstream: Vec<SocketAddr>,
    udp_sockets: Option<usize>,
) -> ExitCode {
    let tree = TaskTree::root();
    let mut limits = Limits {
        rate: Rate {
            per_second: 0,
            burst: 0,
        },
        ..Limits::default()
    };
    if let Some(n) = udp_sockets {
        limits.udp_sockets = n;
    }
    let server = Server::new(tree.child(), limits, Forwarder::new(upstream));
    server.set_records(Records::new(&section));
    match server.open(listen) {
        Ok(local) => eprintln!("skiff-dns-bench: listening on {local} (UDP and TCP)"),
        Err(e) => {
            eprintln!("skiff-dns-bench: cannot listen on {listen}: {e}");
            return ExitCode::from(1);
        }
    }
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return ExitCode::from(1);
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tree.cancel();
    tree.wait().await;
    match serde_json::to_string(&server.stats()) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("skiff-dns-bench: {e}"),
    }
    ExitCode::SUCCESS
}

/// `services` services of `replicas` replicas in 10 stacks, on 4 nodes.
fn generate(dir: &std::path::Path, services: u32, replicas: u32) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut section = DnsSection {
        generation: 1,
        node: "n1".into(),
        zone: None,
        listen: vec![],
        services: vec![],
        nodes: (1..=4u8)
            .map(|n| NodeRecord {
                name: format!("n{n}"),
                address: Ipv4Addr::new(100, 64, 0, n),
            })
            .collect(),
    };
    let mut unbound = String::from("server:\n    local-zone: \"skiff.\" static\n");
    let mut queries = String::new();
    for s in 0..services {
        let stack = format!("stack{}", s % 10);
        let service = format!("svc{s}");
        let name = format!("{service}.{stack}.skiff");
        let mut reps = Vec::new();
        for r in 0..replicas {
            let n = s * replicas + r;
            let ip = Ipv4Addr::new(10, 80 + (n >> 16) as u8, (n >> 8) as u8, n as u8);
            reps.push(Replica {
                slot: r + 1,
                node: format!("n{}", r % 4 + 1),
                zone: None,
                release: 1,
                addresses: vec![ReplicaAddress { network: s, ip }],
                published: true,
            });
            let _ = writeln!(unbound, "    local-data: \"{name}. 5 IN A {ip}\"");
        }
        section.services.push(ServiceRecords {
            stack,
            service,
            policy: Policy::RoundRobin,
            ttl_secs: 5,
            ports: vec![],
            replicas: reps,
        });
        let _ = writeln!(queries, "{name} A");
    }
    let json = serde_json::to_vec_pretty(&section).map_err(|e| e.to_string())?;
    write(dir, "records.json", &json)?;
    write(dir, "unbound-local.conf", unbound.as_bytes())?;
    write(dir, "cluster.queries", queries.as_bytes())?;
    // Forwarded names: the upstream (unbound) holds them as local data.
    let mut upstream = String::from("server:\n    local-zone: \"bench.test.\" static\n");
    let mut forward = String::new();
    for n in 0..services {
        let name = format!("host{n}.bench.test");
        let _ = writeln!(
            upstream,
            "    local-data: \"{name}. 300 IN A 192.0.2.{}\"",
            n % 250 + 1
        );
        let _ = writeln!(forward, "{name} A");
    }
    write(dir, "forward-local.conf", upstream.as_bytes())?;
    write(dir, "forward.queries", forward.as_bytes())
}

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(dir.join(name), bytes).map_err(|e| format!("{}: {e}", dir.join(name).display()))
}
