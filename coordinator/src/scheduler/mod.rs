//! Placement: which replica of which service runs on which host.
//!
//! [`schedule`] is a pure function: no I/O, no clock, no randomness. Given
//! the cluster's hosts, a stack's services and what runs where now, it
//! returns the desired placements, the changes that get there, the stateful
//! replicas waiting for their host, and a precise error for every service it
//! could not place in full. The caller decides what to do with a partial
//! [`Plan`]: a deploy refuses it (nothing changes), the host-lost reconcile
//! applies what could be placed.
//!
//! Rules:
//! - Eligible hosts are the up hosts matching all of a service's
//!   constraints. The sum of the reservations on a host never exceeds its
//!   capacity (the one exception, reported as an error, is a stateful
//!   replica that already runs there and no longer fits).
//! - A replica goes to the eligible host with room that has the fewest
//!   replicas of this service, then the least reserved (the larger of its
//!   CPU and memory fractions), then already has the image, then the
//!   smallest host id.
//! - `global`: one copy on every eligible up host.
//! - Stability: valid placements stay. Scheduling again with the plan's own
//!   placements changes nothing; scaling up adds without moving others;
//!   scaling down first drops replicas that would have to move, then takes
//!   from the hosts with the most replicas of the service.
//! - A down host (the caller decides when one counts as lost): its stateless
//!   replicas move to up hosts; stateful ones (with volumes) stay, and are
//!   listed as waiting for their host. A stateful replica is never moved.
//! - Copies of one replica on several hosts (a lost host came back after its
//!   replicas were moved) are reduced to one, so exactly the desired count
//!   runs. The scheduler does not know which copy is newer; it keeps the one
//!   that best fits the spreading rule.
//!
//! What it deliberately does not know: timing (grace periods), health,
//! rolling-update order, and ports.

mod engine;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt;

use skiff_compose::placement::{Constraint, NodeAttrs};

pub use engine::schedule;

/// CPU in millicores and memory in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostStatus {
    Up,
    /// Lost past its grace period, or drained: nothing new goes there.
    Down,
}

/// A host as the scheduler sees it. Its id is `attrs.id`.
#[derive(Debug, Clone)]
pub struct Host {
    pub attrs: NodeAttrs,
    pub status: HostStatus,
    /// What may be reserved on the host in total.
    pub capacity: Resources,
    /// Images present on the host, by digest and/or reference.
    pub images: BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Replicated(u32),
    /// One copy on every eligible up host.
    Global,
}

/// A service of the stack, as far as placement goes.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub mode: Mode,
    pub constraints: Vec<Constraint>,
    /// `deploy.placement.max_replicas_per_node`.
    pub max_per_host: Option<u32>,
    /// `deploy.resources.reservations`.
    pub reservations: Resources,
    /// The image reference; a host that lists it has the image.
    pub image: String,
    /// The resolved digest, when known; a host that lists it has the image.
    pub image_digest: Option<String>,
    /// The service has volumes: its replicas are never moved.
    pub stateful: bool,
}

/// Which replica of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// Replica number `n` of a replicated service (numbers are stable and
    /// need not be contiguous after a scale-down).
    Replica(u32),
    /// The copy of a global service on the placement's host.
    Global,
}

/// One replica on one host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Placement {
    pub service: String,
    pub slot: Slot,
    /// Host id.
    pub host: String,
}

/// Why a replica stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The service has fewer replicas now.
    ScaledDown,
    /// Another copy of the same replica is kept.
    Duplicate,
    /// The service is no longer in the stack.
    ServiceRemoved,
    /// The service changed between replicated and global.
    ModeChanged,
    /// The host no longer matches the service's constraints, and the replica
    /// could not be placed elsewhere (or is a global copy).
    HostNotEligible,
    /// The host is down, and the replica could not be placed elsewhere (or
    /// is a global copy, which is not moved).
    HostDown,
    /// The host no longer has room for it, and it could not be placed
    /// elsewhere.
    NoRoom,
}

/// One step from what runs to what should run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    Start {
        service: String,
        slot: Slot,
        host: String,
    },
    Stop {
        service: String,
        slot: Slot,
        host: String,
        reason: StopReason,
    },
    /// A stateless replica leaves a host that is down, no longer eligible,
    /// or out of room.
    Move {
        service: String,
        slot: Slot,
        from: String,
        to: String,
    },
}

/// The outcome of [`schedule`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every replica that should run, sorted by service, slot and host.
    /// Includes the waiting ones.
    pub placements: Vec<Placement>,
    /// Sorted by service, slot and host.
    pub changes: Vec<Change>,
    /// Stateful replicas kept on a host that is down (or gone).
    pub waiting: Vec<Placement>,
    /// Services that could not be placed in full, and other problems; sorted
    /// by service.
    pub errors: Vec<ScheduleError>,
}

impl Plan {
    /// Whether every service got its desired count and nothing is wrong.
    pub fn is_complete(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Constraints as written, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraints(pub Vec<Constraint>);

impl fmt::Display for Constraints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{c}")?;
        }
        f.write_str("]")
    }
}

/// The resource a replica does not find enough of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortage {
    /// No eligible host has this much CPU free; the most is `largest_free`.
    Cpu { needed: u64, largest_free: u64 },
    /// No eligible host has this much memory free; the most is `largest_free`.
    Memory { needed: u64, largest_free: u64 },
    /// Enough of each exists, but never on the same host.
    Both {
        needed: Resources,
        most_cpu: u64,
        most_memory: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "service {service}: no host matches constraints {constraints} (of {hosts} hosts); label a host to match or change the constraints"
    )]
    NoMatchingHost {
        service: String,
        constraints: Constraints,
        hosts: usize,
    },
    #[error(
        "service {service}: {}{}",
        shortfall(*desired, *unplaced),
        match (*matching, constraints.0.is_empty()) {
            (1, true) => "the only host is down".to_owned(),
            (n, true) => format!("all {n} hosts are down"),
            (1, false) => format!("the only host matching constraints {constraints} is down"),
            (n, false) => format!("all {n} hosts matching constraints {constraints} are down"),
        }
    )]
    MatchingHostsDown {
        service: String,
        desired: u32,
        unplaced: u32,
        constraints: Constraints,
        matching: usize,
    },
    #[error(
        "service {service}: {}only {}{} (at most {max_per_host} per host)",
        shortfall(*desired, *unplaced),
        if *up == 1 { "1 host".to_owned() } else { format!("{up} hosts") },
        match (*up == 1, constraints.0.is_empty()) {
            (true, true) => " is up".to_owned(),
            (false, true) => " are up".to_owned(),
            (true, false) => format!(" matches constraints {constraints}"),
            (false, false) => format!(" match constraints {constraints}"),
        }
    )]
    TooFewHosts {
        service: String,
        desired: u32,
        unplaced: u32,
        constraints: Constraints,
        up: usize,
        max_per_host: u32,
    },
    #[error("service {service}: {}{}", shortfall(*desired, *unplaced), shortage_phrase(shortage, constraints))]
    NoRoom {
        service: String,
        desired: u32,
        unplaced: u32,
        constraints: Constraints,
        shortage: Shortage,
    },
    #[error(
        "service {service}: global: no room on {} of {eligible} eligible hosts ({}): each copy needs {} reserved",
        hosts.len(), list_hosts(hosts), fmt_resources(*needed)
    )]
    GlobalNoRoom {
        service: String,
        hosts: Vec<String>,
        eligible: usize,
        needed: Resources,
    },
    #[error(
        "service {service}: replica {slot} runs on host {host}, which no longer matches constraints {constraints}; it has volumes, so Skiff does not move it: restore the host's labels or change the constraints"
    )]
    StatefulIneligible {
        service: String,
        slot: u32,
        host: String,
        constraints: Constraints,
    },
    #[error(
        "service {service}: {} on host {host} needs {} reserved, more than the host has left ({} free before it); it has volumes, so Skiff does not move it: lower the reservation or make room on {host}",
        slot_phrase(*slot), fmt_resources(*needed), fmt_resources(*free)
    )]
    StatefulOverCapacity {
        service: String,
        slot: Slot,
        host: String,
        needed: Resources,
        free: Resources,
    },
    #[error("service {service}: defined more than once; service names must be unique")]
    DuplicateService { service: String },
    #[error("host {host}: listed more than once; the first entry is used")]
    DuplicateHost { host: String },
}

impl ScheduleError {
    /// Leaves `hidden` out of the constraints the message lists (the
    /// caller's own additions, explained separately).
    pub fn hide_constraints(&mut self, hidden: &[Constraint]) {
        match self {
            ScheduleError::NoMatchingHost { constraints, .. }
            | ScheduleError::MatchingHostsDown { constraints, .. }
            | ScheduleError::TooFewHosts { constraints, .. }
            | ScheduleError::NoRoom { constraints, .. }
            | ScheduleError::StatefulIneligible { constraints, .. } => {
                constraints.0.retain(|c| !hidden.contains(c));
            }
            _ => {}
        }
    }

    /// The service the error is about, if it is about one.
    pub fn service(&self) -> Option<&str> {
        match self {
            ScheduleError::NoMatchingHost { service, .. }
            | ScheduleError::MatchingHostsDown { service, .. }
            | ScheduleError::TooFewHosts { service, .. }
            | ScheduleError::NoRoom { service, .. }
            | ScheduleError::GlobalNoRoom { service, .. }
            | ScheduleError::StatefulIneligible { service, .. }
            | ScheduleError::StatefulOverCapacity { service, .. }
            | ScheduleError::DuplicateService { service } => Some(service),
            ScheduleError::DuplicateHost { .. } => None,
        }
    }
}

fn shortfall(desired: u32, unplaced: u32) -> String {
    if desired == 1 && unplaced == 1 {
        String::new()
    } else if unplaced == desired {
        format!("cannot place {desired} replicas: ")
    } else {
        format!("cannot place {unplaced} of {desired} replicas: ")
    }
}

fn matching_phrase(constraints: &Constraints) -> String {
    if constraints.0.is_empty() {
        String::new()
    } else {
        format!(" matching constraints {constraints}")
    }
}

fn shortage_phrase(shortage: &Shortage, constraints: &Constraints) -> String {
    let among = matching_phrase(constraints);
    match shortage {
        Shortage::Cpu {
            needed,
            largest_free,
        } => format!(
            "needs {} reserved; the largest free host{among} has {}",
            fmt_cpu(*needed),
            fmt_cpu(*largest_free)
        ),
        Shortage::Memory {
            needed,
            largest_free,
        } => format!(
            "needs {} memory reserved; the largest free host{among} has {}",
            fmt_bytes(*needed),
            fmt_bytes(*largest_free)
        ),
        Shortage::Both {
            needed,
            most_cpu,
            most_memory,
        } => format!(
            "needs {} reserved; no host{among} has both free (most free CPU: {}, most free memory: {})",
            fmt_resources(*needed),
            fmt_cpu(*most_cpu),
            fmt_bytes(*most_memory)
        ),
    }
}

fn slot_phrase(slot: Slot) -> String {
    match slot {
        Slot::Replica(n) => format!("replica {n}"),
        Slot::Global => "the global copy".to_owned(),
    }
}

fn list_hosts(hosts: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut out = hosts
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if hosts.len() > SHOWN {
        out.push_str(&format!(" and {} more", hosts.len() - SHOWN));
    }
    out
}

/// `500m` → "0.5 CPU", `2000` → "2 CPUs".
pub fn fmt_cpu(millis: u64) -> String {
    let whole = millis / 1000;
    let frac = millis % 1000;
    let mut text = if frac == 0 {
        whole.to_string()
    } else {
        let digits = format!("{frac:03}");
        format!("{whole}.{}", digits.trim_end_matches('0'))
    };
    text.push_str(if millis > 1000 { " CPUs" } else { " CPU" });
    text
}

/// Binary units, at most two decimals, rounded down: 1.5 GiB, 256 MiB.
pub fn fmt_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        let size = 1u128 << shift;
        let b = u128::from(bytes);
        if b >= size {
            let hundredths = b * 100 / size;
            let whole = hundredths / 100;
            let frac = hundredths % 100;
            return if frac == 0 {
                format!("{whole} {unit}")
            } else {
                let digits = format!("{frac:02}");
                format!("{whole}.{} {unit}", digits.trim_end_matches('0'))
            };
        }
    }
    format!("{bytes} bytes")
}

fn fmt_resources(r: Resources) -> String {
    match (r.cpu_millis, r.memory_bytes) {
        (0, 0) => "nothing".to_owned(),
        (cpu, 0) => fmt_cpu(cpu),
        (0, mem) => format!("{} memory", fmt_bytes(mem)),
        (cpu, mem) => format!("{} and {} memory", fmt_cpu(cpu), fmt_bytes(mem)),
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slot::Replica(n) => write!(f, "{n}"),
            Slot::Global => f.write_str("global"),
        }
    }
}
