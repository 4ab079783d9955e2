//! `skiff-link-bench`: the agent-link load tool.
//!
//! It joins N simulated agents to one coordinator through the real join
//! endpoint (one join token with N uses, a fresh key and a real client
//! certificate per agent), then holds N links exactly as the agent does:
//! TLS 1.3 with the agent's certificate, a WebSocket on `/v1/link`, `Hello`,
//! `Welcome`, signed `Plan` answered with `Ack`, and a `Heartbeat` every
//! `heartbeat_interval_ms`. It samples the coordinator's memory and CPU from
//! `/proc`, and, with `--wait-reconnect`, measures how long the agents take
//! to come back after the coordinator restarts, each reconnecting with the
//! agent's own jittered exponential backoff.
//!
//! Results go to stdout as JSON lines (`{"event": ...}`); progress and a
//! human summary go to stderr. `scripts/bench/link.sh` drives a whole run.
//!
//! Exit codes: 0 the run completed (whether or not the goals were met),
//! 1 the run failed, 2 invalid flags or environment.

mod agent;
mod identities;
mod proc;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rustls::client::Resumption;
use rustls::pki_types::CertificateDer;
use serde_json::json;
use skiff_agent::link::LinkOptions;
use skiff_cli::client::Client;
use skiff_shared::protocol::LINK_PATH;
use skiff_shared::tls::{certs_from_pem, key_from_pem, link_client_config, server_name_of};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use agent::{Shared, SimAgent, run_agent};
use identities::{cluster_view, facts_template, identities};
use proc::{Target, USER_HZ, check_fd_limit, cpu_percent, cpu_seconds, self_sample};

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "skiff-link-bench",
    about = "Connects many simulated agents with real certificates to one coordinator and measures it."
)]
struct Cli {
    /// Coordinator HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    api: String,
    /// Admin API token (the coordinator writes one to DATA_DIR/initial-admin-token).
    #[arg(long, env = "SKIFF_TOKEN", hide_env_values = true)]
    token: String,
    /// The coordinator's agent port, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:7443")]
    agent_addr: String,
    /// Number of simulated agents.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Seconds to hold all links at steady state; CPU is averaged over this window.
    #[arg(long, default_value_t = 60)]
    hold: u64,
    /// Seconds to wait after the ramp-up before the steady-state window opens.
    #[arg(long, default_value_t = 15)]
    settle: u64,
    /// PID of the coordinator, to sample VmRSS and CPU time from /proc.
    #[arg(long)]
    coordinator_pid: Option<u32>,
    /// File holding the coordinator's PID, read at every sample (follows a restart).
    #[arg(long)]
    coordinator_pid_file: Option<PathBuf>,
    /// Directory to keep the issued identities in, so a later run against
    /// the same coordinator reuses them instead of joining again.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Concurrent join requests.
    #[arg(long, default_value_t = 32)]
    join_concurrency: usize,
    /// Concurrent link handshakes during the ramp-up (reconnects are not
    /// limited, as real agents are independent).
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Seconds to wait for the ramp-up to finish.
    #[arg(long, default_value_t = 600)]
    ramp_timeout: u64,
    /// After the steady-state window, wait for the coordinator to restart
    /// and measure the time until every agent has reconnected.
    #[arg(long)]
    wait_reconnect: bool,
    /// File created when the tool is ready for the coordinator to be restarted.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Seconds to wait for the first link to drop in --wait-reconnect mode.
    #[arg(long, default_value_t = 300)]
    restart_timeout: u64,
    /// Seconds, from the first drop, to wait for every agent to reconnect.
    #[arg(long, default_value_t = 300)]
    reconnect_timeout: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.agents == 0 || cli.join_concurrency == 0 || cli.connect_concurrency == 0 {
        eprintln!("skiff-link-bench: --agents and the concurrency flags must be at least 1");
        return ExitCode::from(EXIT_USAGE);
    }
    if let Err(message) = check_fd_limit(cli.agents) {
        eprintln!("skiff-link-bench: {message}");
        return ExitCode::from(EXIT_USAGE);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("skiff-link-bench: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff-link-bench: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn emit(value: &serde_json::Value) {
    println!("{value}");
}

fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn opt_round2(x: Option<f64>) -> Option<f64> {
    x.map(round2)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let target = Target {
        pid: cli.coordinator_pid,
        pid_file: cli.coordinator_pid_file.clone(),
    };
    let start_sample = target.sample();
    let client = Client::new(&cli.api, Some(cli.token.clone()))?;
    let server_name = server_name_of(&cli.agent_addr).map_err(anyhow::Error::msg)?;

    let (meta, ids) = identities(&cli, &client).await?;
    let n = ids.len();
    let ca: CertificateDer<'static> = certs_from_pem(&meta.ca_pem, "CA")?
        .into_iter()
        .next()
        .context("no CA certificate")?;
    let plan_key = skiff_shared::signing::decode_public_key(&meta.plan_public_key)
        .map_err(anyhow::Error::msg)?;
    let mut agents = Vec::with_capacity(n);
    for id in ids {
        let chain = certs_from_pem(&id.cert_pem, "agent certificate")?;
        let key = key_from_pem(&id.key_pem, "agent key")?;
        let mut config = link_client_config(ca.clone(), chain, key)?;
        // The agent builds a new configuration for every connection, so it
        // never resumes a session; with one configuration per simulated
        // agent, resumption must be off to behave the same (and to save
        // the 256-entry session cache each configuration would allocate).
        config.resumption = Resumption::disabled();
        agents.push(SimAgent {
            node_id: id.node_id,
            name: id.name,
            config: Arc::new(config),
        });
    }

    let shared = Arc::new(Shared {
        addr: cli.agent_addr.clone(),
        url: format!("wss://{}{LINK_PATH}", cli.agent_addr),
        server_name,
        plan_key,
        link: LinkOptions::default(),
        facts: facts_template(),
        ramp: Semaphore::new(cli.connect_concurrency),
        shutdown: CancellationToken::new(),
        up: AtomicUsize::new(0),
        ever: AtomicUsize::new(0),
        connects: AtomicU64::new(0),
        failures: AtomicU64::new(0),
        drops: AtomicU64::new(0),
        removed: AtomicUsize::new(0),
        heartbeats: AtomicU64::new(0),
        plans: AtomicU64::new(0),
        armed: AtomicBool::new(false),
        first_drop: OnceLock::new(),
        reconnected: AtomicUsize::new(0),
        reconnect_ms: Mutex::new(Vec::with_capacity(n)),
        errors: Mutex::new(BTreeMap::new()),
    });

    // Let the joins' writes and freed buffers settle before the baseline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let baseline = target.sample();
    let self_baseline = self_sample();
    let link_opts = &shared.link;
    emit(&json!({
        "event": "baseline",
        "agents": n,
        "backoff_min_ms": link_opts.backoff_min.as_millis(),
        "backoff_max_ms": link_opts.backoff_max.as_millis(),
        "coordinator_rss_kib_at_start": start_sample.rss_kib,
        "coordinator_rss_kib": baseline.rss_kib,
        "tool_rss_kib": self_baseline.rss_kib,
    }));

    // Ramp-up.
    eprintln!(
        "Connecting {n} agents ({} handshakes at a time)...",
        cli.connect_concurrency
    );
    let ramp_start = Instant::now();
    let mut tasks = JoinSet::new();
    for agent in agents {
        tasks.spawn(run_agent(agent, shared.clone()));
    }
    let ramp_deadline = ramp_start + Duration::from_secs(cli.ramp_timeout);
    let mut last_report = Instant::now();
    loop {
        let ever = shared.ever.load(Ordering::Relaxed);
        if ever + shared.removed.load(Ordering::Relaxed) >= n {
            break;
        }
        if Instant::now() > ramp_deadline {
            eprintln!("Ramp-up timed out with {ever}/{n} agents connected.");
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "  {ever}/{n} connected, {} failed attempts, {:.0} s",
                shared.failures.load(Ordering::Relaxed),
                ramp_start.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ramp_secs = ramp_start.elapsed().as_secs_f64();
    let after_ramp = target.sample();
    let ramp_connected = shared.ever.load(Ordering::Relaxed);
    emit(&json!({
        "event": "ramp",
        "connected": ramp_connected,
        "seconds": round2(ramp_secs),
        "per_second": round2(ramp_connected as f64 / ramp_secs.max(1e-9)),
        "failed_attempts": shared.failures.load(Ordering::Relaxed),
        "coordinator_cpu_seconds": opt_round2(cpu_seconds(&baseline, &after_ramp)),
        "coordinator_rss_kib": after_ramp.rss_kib,
    }));
    eprintln!("Ramp-up: {ramp_connected}/{n} connected in {ramp_secs:.1} s.");

    // Steady state.
    eprintln!(
        "Settling for {} s, then holding for {} s...",
        cli.settle, cli.hold
    );
    tokio::time::sleep(Duration::from_secs(cli.settle)).await;
    let drops_before = shared.drops.load(Ordering::Relaxed);
    let hb_before = shared.heartbeats.load(Ordering::Relaxed);
    let w0 = target.sample();
    let s0 = self_sample();
    let mut min_up = shared.up.load(Ordering::Relaxed);
    let mut max_rss = w0.rss_kib;
    let hold_end = Instant::now() + Duration::from_secs(cli.hold);
    while Instant::now() < hold_end {
        tokio::time::sleep(Duration::from_secs(1).min(hold_end - Instant::now())).await;
        min_up = min_up.min(shared.up.load(Ordering::Relaxed));
        let s = target.sample();
        max_rss = max_rss.max(s.rss_kib);
    }
    let w1 = target.sample();
    let s1 = self_sample();
    let held = shared.up.load(Ordering::Relaxed);
    let seen_by_coordinator = cluster_view(&client).await.ok().map(|c| c.nodes_connected);
    let steady_rss = w1.rss_kib;
    let per_conn_bytes = match (steady_rss, baseline.rss_kib) {
        (Some(s), Some(b)) if held > 0 => Some(s.saturating_sub(b) as f64 * 1024.0 / held as f64),
        _ => None,
    };
    let cpu = cpu_percent(&w0, &w1);
    let tool_cpu = cpu_percent(&s0, &s1);
    let heartbeats = shared.heartbeats.load(Ordering::Relaxed) - hb_before;
    let window = w1.at.duration_since(w0.at).as_secs_f64();
    emit(&json!({
        "event": "steady",
        "agents": n,
        "held": held,
        "min_held_during_window": min_up,
        "coordinator_sessions": seen_by_coordinator,
        "drops_during_window": shared.drops.load(Ordering::Relaxed) - drops_before,
        "window_seconds": round2(window),
        "heartbeats_sent_per_second": round2(heartbeats as f64 / window.max(1e-9)),
        "coordinator_rss_kib_baseline": baseline.rss_kib,
        "coordinator_rss_kib_window_start": w0.rss_kib,
        "coordinator_rss_kib_steady": steady_rss,
        "coordinator_rss_kib_max_in_window": max_rss,
        "memory_per_connection_bytes": per_conn_bytes.map(f64::round),
        "coordinator_cpu_percent_of_one_core": opt_round2(cpu),
        "tool_rss_kib": s1.rss_kib,
        "tool_cpu_percent_of_one_core": opt_round2(tool_cpu),
    }));
    eprintln!(
        "Steady state: {held}/{n} held (coordinator counts {}), coordinator RSS {} -> {} MiB, CPU {}% of one core.",
        seen_by_coordinator.map_or("?".into(), |c| c.to_string()),
        baseline
            .rss_kib
            .map_or("?".into(), |k| format!("{:.1}", mib(k))),
        steady_rss.map_or("?".into(), |k| format!("{:.1}", mib(k))),
        cpu.map_or("?".into(), |c| format!("{c:.1}")),
    );

    // Restart.
    let mut reconnect = None;
    if cli.wait_reconnect {
        shared.armed.store(true, Ordering::Relaxed);
        if let Some(path) = &cli.ready_file {
            std::fs::write(path, b"ready\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
        emit(&json!({"event": "ready_for_restart"}));
        eprintln!("Ready: restart the coordinator now.");
        let wait_deadline = Instant::now() + Duration::from_secs(cli.restart_timeout);
        while shared.first_drop.get().is_none() {
            if Instant::now() > wait_deadline {
                bail!(
                    "no link dropped within {} s; was the coordinator restarted?",
                    cli.restart_timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let Some(&t0) = shared.first_drop.get() else {
            bail!("first drop vanished");
        };
        let tool_at_drop = self_sample();
        let failures_at_drop = shared.failures.load(Ordering::Relaxed);
        eprintln!("Links dropping; waiting for every agent to reconnect...");
        let deadline = t0 + Duration::from_secs(cli.reconnect_timeout);
        let mut at_60 = None;
        let mut last_report = Instant::now();
        let mut all_back = None;
        loop {
            let back = shared.reconnected.load(Ordering::Relaxed);
            let removed = shared.removed.load(Ordering::Relaxed);
            if at_60.is_none() && t0.elapsed() >= Duration::from_secs(60) {
                at_60 = Some(back);
            }
            if back + removed >= n {
                all_back = Some(t0.elapsed());
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                last_report = Instant::now();
                eprintln!(
                    "  {back}/{n} reconnected, {} up, {:.0} s after the first drop",
                    shared.up.load(Ordering::Relaxed),
                    t0.elapsed().as_secs_f64()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let back = shared.reconnected.load(Ordering::Relaxed);
        // The restarted process did nothing but start and take the links
        // back, so its whole CPU time is the cost of the reconnection.
        let restarted = target.sample();
        let tool_done = self_sample();
        let mut lat = shared
            .reconnect_ms
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        lat.sort_unstable();
        let within_60 = lat.iter().filter(|&&ms| ms <= 60_000).count();
        let secs = all_back.map(|d| round2(d.as_secs_f64()));
        emit(&json!({
            "event": "reconnect",
            "agents": n,
            "reconnected": back,
            "reconnected_within_60s": within_60,
            "all_reconnected_seconds": secs,
            "first_reconnect_ms": lat.first(),
            "p50_ms": percentile(&lat, 50.0),
            "p90_ms": percentile(&lat, 90.0),
            "p99_ms": percentile(&lat, 99.0),
            "max_ms": lat.last(),
            "failed_attempts": shared.failures.load(Ordering::Relaxed) - failures_at_drop,
            "restarted_coordinator_cpu_seconds": restarted.cpu_ticks.map(|t| round2(t as f64 / USER_HZ)),
            "restarted_coordinator_rss_kib": restarted.rss_kib,
            "tool_cpu_seconds": opt_round2(cpu_seconds(&tool_at_drop, &tool_done)),
        }));
        eprintln!(
            "Reconnect: {back}/{n} back{}; first after {} ms.",
            secs.map_or(" (not all)".into(), |s| format!(" in {s} s")),
            lat.first().map_or("?".into(), |m| m.to_string())
        );
        // The restarted coordinator with every link back, once it settles.
        tokio::time::sleep(Duration::from_secs(cli.settle)).await;
        let after = target.sample();
        emit(&json!({
            "event": "after_restart",
            "held": shared.up.load(Ordering::Relaxed),
            "coordinator_sessions": cluster_view(&client).await.ok().map(|c| c.nodes_connected),
            "coordinator_rss_kib": after.rss_kib,
        }));
        reconnect = Some((back, within_60, secs, after.rss_kib));
    }

    // Close every link politely, then stop.
    shared.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let errors = shared.errors.lock().map(|m| m.clone()).unwrap_or_default();

    let summary = json!({
        "event": "summary",
        "agents": n,
        "connections_held": held,
        "memory_per_connection_bytes": per_conn_bytes.map(f64::round),
        "coordinator_cpu_percent_of_one_core": opt_round2(cpu),
        "reconnected": reconnect.map(|r| r.0),
        "reconnected_within_60s": reconnect.map(|r| r.1),
        "all_reconnected_seconds": reconnect.and_then(|r| r.2),
        "coordinator_rss_kib_after_restart": reconnect.and_then(|r| r.3),
        "removed": shared.removed.load(Ordering::Relaxed),
        "errors": errors,
    });
    emit(&summary);

    eprintln!();
    eprintln!(
        "Agent link benchmark, {n} simulated agents -> {}",
        cli.agent_addr
    );
    eprintln!("  connections held         {held} / {n}");
    match per_conn_bytes {
        Some(b) => eprintln!(
            "  coordinator memory       {:.1} KB per connection (goal <= 50 KB; 1 KB = 1000 bytes)",
            b / 1000.0
        ),
        None => eprintln!("  coordinator memory       not measured (give --coordinator-pid)"),
    }
    match cpu {
        Some(c) => eprintln!(
            "  coordinator CPU          {c:.1}% of one core over {window:.0} s at steady state"
        ),
        None => eprintln!("  coordinator CPU          not measured"),
    }
    if let Some((back, within_60, secs, _)) = reconnect {
        eprintln!(
            "  reconnect after restart  {back} / {n} reconnected{}, {within_60} within 60 s (goal: all within 60 s)",
            secs.map_or(String::new(), |s| format!(" in {s:.1} s"))
        );
    }
    if !errors.is_empty() {
        eprintln!("  failed attempts and lost links, by kind:");
        for (kind, count) in &errors {
            eprintln!("    {count:>6}  {kind}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
