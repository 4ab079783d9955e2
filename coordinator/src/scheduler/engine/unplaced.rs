//! Why a service's remaining replicas found no host: the most precise of
//! the scheduler's errors that applies.

use super::{Cluster, Eligible, Ix};
use crate::scheduler::{Constraints, ScheduleError, Service, Shortage};

/// Why the remaining replicas of a service found no host.
pub(super) fn unplaced_error(
    cl: &Cluster<'_>,
    s: &Service,
    el: &Eligible,
    desired: u32,
    unplaced: u32,
    under_max: impl Fn(Ix) -> bool,
) -> ScheduleError {
    let constraints = Constraints(s.constraints.clone());
    let service = s.name.clone();
    if el.matching == 0 {
        return ScheduleError::NoMatchingHost {
            service,
            constraints,
            hosts: cl.known,
        };
    }
    if el.up.is_empty() {
        return ScheduleError::MatchingHostsDown {
            service,
            desired,
            unplaced,
            constraints,
            matching: el.matching,
        };
    }
    let open: Vec<Ix> = el.up.iter().copied().filter(|h| under_max(*h)).collect();
    if open.is_empty() {
        return ScheduleError::TooFewHosts {
            service,
            desired,
            unplaced,
            constraints,
            up: el.up.len(),
            max_per_host: s.max_per_host.unwrap_or(u32::MAX),
        };
    }
    let need = s.reservations;
    let most_cpu = open
        .iter()
        .map(|h| cl.free(*h).cpu_millis)
        .max()
        .unwrap_or(0);
    let most_memory = open
        .iter()
        .map(|h| cl.free(*h).memory_bytes)
        .max()
        .unwrap_or(0);
    let shortage = if most_memory < need.memory_bytes {
        Shortage::Memory {
            needed: need.memory_bytes,
            largest_free: most_memory,
        }
    } else if most_cpu < need.cpu_millis {
        Shortage::Cpu {
            needed: need.cpu_millis,
            largest_free: most_cpu,
        }
    } else {
        Shortage::Both {
            needed: need,
            most_cpu,
            most_memory,
        }
    };
    ScheduleError::NoRoom {
        service,
        desired,
        unplaced,
        constraints,
        shortage,
    }
}
