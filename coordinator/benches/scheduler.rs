//! Scheduler throughput: placements per second for 1,000 simulated hosts and
//! 100,000 containers, and the cost of rescheduling after one host is lost
//! and after it returns.
//!
//! Run: `cargo bench -p skiff-coordinator --bench scheduler`.
//!
//! The cluster and the stack are generated from a fixed seed, so every run
//! places the same containers. Each scenario runs `ROUNDS` times; the
//! figures are the median and the fastest round. Time covers the whole
//! [`schedule`] call (indexing, eligibility, placement, diff, and building
//! the output strings), not the generation of the input.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use skiff_compose::placement::{Constraint, NodeAttrs};
use skiff_coordinator::scheduler::{
    Change, Host, HostStatus, Mode, Placement, Plan, Resources, Service, schedule,
};

const HOSTS: usize = 1_000;
const CONTAINERS: u32 = 100_000;
const ROUNDS: usize = 15;
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const ZONES: [&str; 4] = ["eu-1", "eu-2", "us-1", "ap-1"];

/// A small deterministic generator (SplitMix64), so the bench needs no
/// dependency and every run sees the same cluster.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn constraint(text: &str) -> Constraint {
    match text.parse() {
        Ok(c) => c,
        Err(e) => panic!("bench constraint: {e}"),
    }
}

fn hosts(rng: &mut Rng) -> Vec<Host> {
    (0..HOSTS)
        .map(|i| {
            let mut labels = BTreeMap::new();
            labels.insert("zone".to_owned(), ZONES[i % ZONES.len()].to_owned());
            if i % 3 == 0 {
                labels.insert("disk".to_owned(), "ssd".to_owned());
            }
            let mut images = BTreeSet::new();
            for _ in 0..20 {
                images.insert(format!("registry.local/app-{}:1", rng.below(1000)));
            }
            Host {
                attrs: NodeAttrs {
                    id: format!("node-{i:04}"),
                    hostname: format!("host-{i:04}.dc.example"),
                    os: "linux".to_owned(),
                    arch: if i % 10 == 0 { "aarch64" } else { "x86_64" }.to_owned(),
                    labels,
                },
                status: HostStatus::Up,
                capacity: Resources {
                    cpu_millis: 32_000,
                    memory_bytes: 128 * GIB,
                },
                images,
            }
        })
        .collect()
}

/// Two global services, then replicated ones of 1 to 400 replicas until the
/// total is exactly `CONTAINERS`: about 40% constrained (zone, disk, arch,
/// hostname), 3% stateful.
fn services(rng: &mut Rng) -> Vec<Service> {
    let mut out = Vec::new();
    for name in ["node-exporter", "log-shipper"] {
        out.push(Service {
            name: name.to_owned(),
            mode: Mode::Global,
            constraints: Vec::new(),
            max_per_host: None,
            reservations: Resources {
                cpu_millis: 50,
                memory_bytes: 64 * MIB,
            },
            image: format!("registry.local/{name}:1"),
            image_digest: None,
            stateful: false,
        });
    }
    let mut left = CONTAINERS - 2 * u32::try_from(HOSTS).unwrap_or(0);
    let mut i = 0;
    while left > 0 {
        let replicas = (1 + u32::try_from(rng.below(400)).unwrap_or(0)).min(left);
        left -= replicas;
        let constraints = match rng.below(20) {
            0..=3 => vec![constraint(&format!(
                "node.labels.zone == {}",
                ZONES[usize::try_from(rng.below(4)).unwrap_or(0)]
            ))],
            4 | 5 => vec![constraint("node.labels.disk == ssd")],
            6 => vec![constraint("node.platform.arch == arm64")],
            7 => vec![
                constraint("node.labels.zone != ap-1"),
                constraint(&format!(
                    "node.hostname != host-{:04}.dc.example",
                    rng.below(1000)
                )),
            ],
            _ => Vec::new(),
        };
        out.push(Service {
            name: format!("app-{i}"),
            mode: Mode::Replicated(replicas),
            constraints,
            max_per_host: None,
            reservations: Resources {
                cpu_millis: 50 + 25 * rng.below(15),
                memory_bytes: (64 + 64 * rng.below(8)) * MIB,
            },
            image: format!("registry.local/app-{i}:1"),
            image_digest: None,
            stateful: rng.below(100) < 3,
        });
        i += 1;
    }
    out
}

fn time(label: &str, mut run: impl FnMut() -> Plan) -> (Plan, Duration) {
    let mut times = Vec::with_capacity(ROUNDS);
    let mut plan = Plan::default();
    for _ in 0..ROUNDS {
        let start = Instant::now();
        plan = run();
        times.push(start.elapsed());
    }
    times.sort();
    let median = times[ROUNDS / 2];
    println!(
        "{label}: median {:.1} ms, fastest {:.1} ms ({ROUNDS} rounds)",
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3
    );
    (plan, median)
}

fn count_changes(plan: &Plan) -> (usize, usize, usize) {
    plan.changes.iter().fold((0, 0, 0), |(s, t, m), c| match c {
        Change::Start { .. } => (s + 1, t, m),
        Change::Stop { .. } => (s, t + 1, m),
        Change::Move { .. } => (s, t, m + 1),
    })
}

fn main() {
    let mut rng = Rng(0x5EED_5C1F);
    let mut hosts = hosts(&mut rng);
    let services = services(&mut rng);
    let constrained = services
        .iter()
        .filter(|s| !s.constraints.is_empty())
        .count();
    let stateful = services.iter().filter(|s| s.stateful).count();
    println!(
        "cluster: {} hosts, {} services ({} global, {constrained} constrained, {stateful} stateful), {CONTAINERS} containers; {} cores",
        hosts.len(),
        services.len(),
        services.iter().filter(|s| s.mode == Mode::Global).count(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    // Cold: place everything on an empty cluster.
    let (cold, took) = time("place 100,000 on an empty cluster", || {
        schedule(&hosts, &services, &[])
    });
    let placed = cold.placements.len();
    println!(
        "  placed {placed}, errors {}: {:.0} placements/s",
        cold.errors.len(),
        placed as f64 / took.as_secs_f64()
    );
    for e in cold.errors.iter().take(3) {
        println!("  error: {e}");
    }
    let mut per_host: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &cold.placements {
        *per_host.entry(p.host.as_str()).or_default() += 1;
    }
    println!(
        "  containers per host: min {}, max {}",
        per_host.values().min().copied().unwrap_or(0),
        per_host.values().max().copied().unwrap_or(0)
    );

    // Steady state: the same stack again, nothing to do.
    let (steady, _) = time("reschedule, nothing changed", || {
        schedule(&hosts, &services, &cold.placements)
    });
    println!("  changes {}", steady.changes.len());

    // One host lost: its stateless replicas move, stateful ones wait.
    let lost = 17;
    hosts[lost].status = HostStatus::Down;
    let lost_id = hosts[lost].attrs.id.clone();
    let (after_loss, _) = time("one host lost", || {
        schedule(&hosts, &services, &cold.placements)
    });
    let (starts, stops, moves) = count_changes(&after_loss);
    println!(
        "  on the lost host: {}; moved {moves}, stopped {stops} (global copies), started {starts}, waiting {}, errors {}",
        cold.placements.iter().filter(|p| p.host == lost_id).count(),
        after_loss.waiting.len(),
        after_loss.errors.len(),
    );

    // The host returns with its old copies: duplicates are removed.
    hosts[lost].status = HostStatus::Up;
    let mut current: Vec<Placement> = after_loss.placements.clone();
    current.extend(
        cold.placements
            .iter()
            .filter(|p| p.host == lost_id)
            .cloned(),
    );
    current.sort();
    current.dedup();
    let (back, _) = time("the lost host returns", || {
        schedule(&hosts, &services, &current)
    });
    let (starts, stops, moves) = count_changes(&back);
    println!(
        "  running {} (desired {}); stopped {stops} duplicates, started {starts} (global copies), moved {moves}",
        current.len(),
        back.placements.len()
    );
}
