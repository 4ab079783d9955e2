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
//! - `latency --server ADDR --queries FILE [--count N]`: asks one query
//!   at a time (the file's, in turn, type A) and prints the round trips'
//!   percentiles in microseconds as JSON: dnsperf 2.10 gives only the
//!   mean.
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
    /// Measure round trips, one query at a time.
    Latency {
        #[arg(long)]
        server: SocketAddr,
        #[arg(long)]
        queries: PathBuf,
        #[arg(long, default_value_t = 20_000)]
        count: usize,
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
        Command::Latency {
            server,
            queries,
            count,
        } => match latency(server, &queries, count) {
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

/// One query at a time to `server`; prints p50, p90, p99, p99.9 and the
/// maximum round trip (µs) and how many got no answer within 1 s.
fn latency(server: SocketAddr, queries: &std::path::Path, count: usize) -> Result<(), String> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    let text =
        std::fs::read_to_string(queries).map_err(|e| format!("{}: {e}", queries.display()))?;
    let packets: Vec<Vec<u8>> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| {
            let mut m = Message::query();
            m.metadata.recursion_desired = true;
            m.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
            m.to_vec().ok()
        })
        .collect();
    if packets.is_empty() {
        return Err(format!("{}: no query names", queries.display()));
    }
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    socket.connect(server).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    let mut rtts = Vec::with_capacity(count);
    let mut lost = 0usize;
    let mut buf = [0u8; 4096];
    for (i, packet) in packets.iter().cycle().take(count).enumerate() {
        let mut p = packet.clone();
        let id = (i as u16).to_be_bytes();
        p[0] = id[0];
        p[1] = id[1];
        let start = std::time::Instant::now();
        socket.send(&p).map_err(|e| e.to_string())?;
        loop {
            match socket.recv(&mut buf) {
                Ok(n) if n >= 2 && buf[..2] == id => {
                    rtts.push(start.elapsed().as_micros() as u64);
                    break;
                }
                Ok(_) => continue,
                Err(_) => {
                    lost += 1;
                    break;
                }
            }
        }
    }
    rtts.sort_unstable();
    let at = |q: f64| {
        rtts.get(((rtts.len() as f64 * q) as usize).min(rtts.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"count\":{},\"lost\":{lost},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
        rtts.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(0.999),
        rtts.last().copied().unwrap_or(0)
    );
    Ok(())
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
