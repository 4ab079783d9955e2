//! The placement algorithm behind [`schedule`].
//!
//! Hosts are numbered: the known hosts first (input order, duplicates
//! dropped), then hosts that only appear in the current placements (gone
//! from the cluster; treated as down). Everything inside works on these
//! numbers and borrows the input; strings are built once, for the output.
//!
//! 1. Classify each service's current copies: keep one copy per replica
//!    slot, drop the copies over the desired count, and note what must move.
//! 2. Account what stays: stateful replicas first (they cannot move), then
//!    global copies, then the other stateless replicas, evicting those that
//!    no longer fit.
//! 3. Place what is missing, global services first, then the largest
//!    reservations first, each replica on the best host from a heap of the
//!    service's eligible hosts.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use skiff_compose::placement::Constraint;

use super::{
    Change, Constraints, Host, HostStatus, Mode, Placement, Plan, Resources, ScheduleError,
    Service, Slot, StopReason,
};

mod unplaced;
use unplaced::unplaced_error;

type Ix = u32;

/// How a current copy stands for its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// On an up host that matches the constraints.
    Good,
    /// Stateful, on a host that is down, gone, or no longer matches.
    Stuck,
    /// Stateless, on a host that is down, gone, or no longer matches.
    Move,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    slot: u32,
    /// Where the replica runs now and why it must leave, if it runs.
    from: Option<(Ix, StopReason)>,
}

#[derive(Debug)]
enum Raw<'a> {
    Start(&'a str, Slot, Ix),
    Stop(&'a str, Slot, Ix, StopReason),
    Move(&'a str, Slot, Ix, Ix),
}

struct Eligible {
    /// Matching hosts in any state.
    matching: usize,
    /// Matching known hosts (any state), by host number.
    mask: Vec<bool>,
    /// Matching up hosts, by rank.
    up: Vec<Ix>,
}

#[derive(Default)]
struct Work {
    /// Index into the eligibility cache.
    elig: usize,
    /// Current copies, before classification.
    copies: Vec<(Slot, Ix)>,
    /// Stateful replicas that stay (they never move).
    fixed: Vec<(Slot, Ix)>,
    /// Stateless replicas that stay if they still fit.
    soft: Vec<(Slot, Ix)>,
    /// Replicas to place.
    pending: Vec<Pending>,
    /// Global services: hosts whose copy was evicted for lack of room.
    no_room: Vec<Ix>,
    /// The result.
    kept: Vec<(Slot, Ix)>,
}

struct Cluster<'a> {
    /// Host ids; the first `known` are in `hosts`.
    names: Vec<&'a str>,
    known: usize,
    /// For each known host, its entry in the input.
    host: Vec<&'a Host>,
    rank: Vec<u32>,
    cap: Vec<Resources>,
    used: Vec<Resources>,
    up: Vec<bool>,
}

impl Cluster<'_> {
    fn is_up(&self, h: Ix) -> bool {
        self.up.get(h as usize).copied().unwrap_or(false)
    }

    fn is_known(&self, h: Ix) -> bool {
        (h as usize) < self.known
    }

    fn fits(&self, h: Ix, r: Resources) -> bool {
        let (Some(used), Some(cap)) = (self.used.get(h as usize), self.cap.get(h as usize)) else {
            return false;
        };
        used.cpu_millis.saturating_add(r.cpu_millis) <= cap.cpu_millis
            && used.memory_bytes.saturating_add(r.memory_bytes) <= cap.memory_bytes
    }

    fn free(&self, h: Ix) -> Resources {
        match (self.used.get(h as usize), self.cap.get(h as usize)) {
            (Some(used), Some(cap)) => Resources {
                cpu_millis: cap.cpu_millis.saturating_sub(used.cpu_millis),
                memory_bytes: cap.memory_bytes.saturating_sub(used.memory_bytes),
            },
            _ => Resources::default(),
        }
    }

    fn reserve(&mut self, h: Ix, r: Resources) {
        if let Some(used) = self.used.get_mut(h as usize) {
            used.cpu_millis = used.cpu_millis.saturating_add(r.cpu_millis);
            used.memory_bytes = used.memory_bytes.saturating_add(r.memory_bytes);
        }
    }

    /// The larger of the reserved CPU and memory fractions, in millionths.
    fn load(&self, h: Ix) -> u64 {
        match (self.used.get(h as usize), self.cap.get(h as usize)) {
            (Some(used), Some(cap)) => load(*used, *cap),
            _ => 0,
        }
    }

    fn rank(&self, h: Ix) -> u32 {
        self.rank.get(h as usize).copied().unwrap_or(u32::MAX)
    }

    fn name(&self, h: Ix) -> String {
        self.names
            .get(h as usize)
            .copied()
            .unwrap_or_default()
            .to_owned()
    }
}

fn fraction(used: u64, cap: u64) -> u64 {
    if cap == 0 {
        return if used == 0 { 0 } else { u64::MAX };
    }
    u64::try_from(u128::from(used) * 1_000_000 / u128::from(cap)).unwrap_or(u64::MAX)
}

fn load(used: Resources, cap: Resources) -> u64 {
    fraction(used.cpu_millis, cap.cpu_millis).max(fraction(used.memory_bytes, cap.memory_bytes))
}

/// Computes the desired placements of `services` on `hosts`, given what
/// runs where now (`current`; it may hold several copies of one replica, and
/// hosts or services that no longer exist). Pure and deterministic: the
/// order of the inputs does not matter.
pub fn schedule(hosts: &[Host], services: &[Service], current: &[Placement]) -> Plan {
    let mut errors = Vec::new();
    let mut raw: Vec<Raw<'_>> = Vec::new();

    // Hosts.
    let mut index: HashMap<&str, Ix> = HashMap::with_capacity(hosts.len());
    let mut names = Vec::with_capacity(hosts.len());
    let mut host = Vec::with_capacity(hosts.len());
    for h in hosts {
        let id = h.attrs.id.as_str();
        if index.contains_key(id) {
            errors.push(ScheduleError::DuplicateHost {
                host: id.to_owned(),
            });
            continue;
        }
        index.insert(id, ix(names.len()));
        names.push(id);
        host.push(h);
    }
    let known = names.len();

    // Services, in name order.
    let mut order: Vec<&Service> = Vec::with_capacity(services.len());
    {
        let mut seen: HashMap<&str, ()> = HashMap::with_capacity(services.len());
        for s in services {
            if seen.insert(s.name.as_str(), ()).is_some() {
                errors.push(ScheduleError::DuplicateService {
                    service: s.name.clone(),
                });
            } else {
                order.push(s);
            }
        }
    }
    order.sort_by(|a, b| a.name.cmp(&b.name));
    let svc_ix: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut work: Vec<Work> = order.iter().map(|_| Work::default()).collect();

    // Current copies, by service; unknown hosts get numbers after the known.
    for p in current {
        let h = match index.get(p.host.as_str()) {
            Some(h) => *h,
            None => {
                let h = ix(names.len());
                index.insert(p.host.as_str(), h);
                names.push(p.host.as_str());
                h
            }
        };
        match svc_ix.get(p.service.as_str()) {
            Some(&i) => {
                if let Some(w) = work.get_mut(i) {
                    w.copies.push((p.slot, h));
                }
            }
            None => raw.push(Raw::Stop(
                p.service.as_str(),
                p.slot,
                h,
                StopReason::ServiceRemoved,
            )),
        }
    }

    let mut by_name: Vec<Ix> = (0..ix(names.len())).collect();
    by_name.sort_by(|a, b| names[*a as usize].cmp(names[*b as usize]));
    let mut rank = vec![0u32; names.len()];
    for (r, h) in by_name.iter().enumerate() {
        rank[*h as usize] = ix(r);
    }
    let mut cl = Cluster {
        known,
        cap: host.iter().map(|h| h.capacity).collect(),
        used: vec![Resources::default(); known],
        up: host.iter().map(|h| h.status == HostStatus::Up).collect(),
        host,
        names,
        rank,
    };
    let all = ix(cl.names.len());

    // Eligibility, once per distinct constraint list.
    let mut cache: HashMap<&[Constraint], usize> = HashMap::new();
    let mut eligible: Vec<Eligible> = Vec::new();
    for (s, w) in order.iter().zip(work.iter_mut()) {
        let key = s.constraints.as_slice();
        w.elig = match cache.get(key) {
            Some(e) => *e,
            None => {
                let mask: Vec<bool> = cl
                    .host
                    .iter()
                    .map(|h| key.iter().all(|c| c.matches(&h.attrs)))
                    .collect();
                let mut up: Vec<Ix> = (0..ix(known))
                    .filter(|h| mask[*h as usize] && cl.up[*h as usize])
                    .collect();
                up.sort_by_key(|h| cl.rank[*h as usize]);
                eligible.push(Eligible {
                    matching: mask.iter().filter(|m| **m).count(),
                    mask,
                    up,
                });
                cache.insert(key, eligible.len() - 1);
                eligible.len() - 1
            }
        };
    }

    // What each host carries now, for tie-breaks in steps 1.
    let mut observed = vec![Resources::default(); known];
    for (s, w) in order.iter().zip(&work) {
        for (_, h) in &w.copies {
            if let Some(o) = observed.get_mut(*h as usize) {
                o.cpu_millis = o.cpu_millis.saturating_add(s.reservations.cpu_millis);
                o.memory_bytes = o.memory_bytes.saturating_add(s.reservations.memory_bytes);
            }
        }
    }
    let observed_load: Vec<u64> = observed
        .iter()
        .zip(&cl.cap)
        .map(|(u, c)| load(*u, *c))
        .collect();
    let obs = |h: Ix| observed_load.get(h as usize).copied().unwrap_or(0);

    let mut counts = vec![0u32; all as usize];
    let mut waiting: Vec<(&str, Slot, Ix)> = Vec::new();

    // Step 1: classify.
    for (s, w) in order.iter().zip(work.iter_mut()) {
        let el = &eligible[w.elig];
        let class = |h: Ix| {
            let good = cl.is_up(h) && el.mask.get(h as usize).copied().unwrap_or(false);
            match (good, s.stateful) {
                (true, _) => Class::Good,
                (false, true) => Class::Stuck,
                (false, false) => Class::Move,
            }
        };
        let leave_reason = |h: Ix| {
            if cl.is_up(h) {
                StopReason::HostNotEligible
            } else {
                StopReason::HostDown
            }
        };
        let name = s.name.as_str();
        let copies = std::mem::take(&mut w.copies);
        match s.mode {
            Mode::Global => {
                let mut hosts: Vec<Ix> = Vec::with_capacity(copies.len());
                for (slot, h) in copies {
                    match slot {
                        Slot::Global => hosts.push(h),
                        Slot::Replica(_) => {
                            raw.push(Raw::Stop(name, slot, h, StopReason::ModeChanged))
                        }
                    }
                }
                hosts.sort_unstable_by_key(|h| cl.rank(*h));
                hosts.dedup();
                for h in hosts {
                    match class(h) {
                        Class::Good if s.stateful => w.fixed.push((Slot::Global, h)),
                        Class::Good => w.soft.push((Slot::Global, h)),
                        Class::Stuck if !cl.is_up(h) => {
                            w.fixed.push((Slot::Global, h));
                            waiting.push((name, Slot::Global, h));
                        }
                        Class::Stuck | Class::Move => {
                            raw.push(Raw::Stop(name, Slot::Global, h, leave_reason(h)))
                        }
                    }
                }
            }
            Mode::Replicated(desired) => {
                let mut reps: Vec<(u32, Ix)> = Vec::with_capacity(copies.len());
                for (slot, h) in copies {
                    match slot {
                        Slot::Replica(n) => reps.push((n, h)),
                        Slot::Global => raw.push(Raw::Stop(name, slot, h, StopReason::ModeChanged)),
                    }
                }
                reps.sort_unstable_by_key(|(n, h)| (*n, cl.rank(*h)));
                reps.dedup();
                for (_, h) in &reps {
                    counts[*h as usize] += 1;
                }
                // One copy per slot: drop the extra copies that would have
                // to move or wait first, then those on the hosts with the
                // most replicas of the service (counts change as copies go,
                // so stale heap entries are pushed back with fresh keys).
                let groups: Vec<&[(u32, Ix)]> = reps.chunk_by(|a, b| a.0 == b.0).collect();
                let mut alive: Vec<usize> = groups.iter().map(|g| g.len()).collect();
                let mut dropped = vec![false; reps.len()];
                let drop_key =
                    |h: Ix, counts: &[u32]| (class(h), counts[h as usize], obs(h), cl.rank(h));
                let mut heap: BinaryHeap<_> = BinaryHeap::new();
                let mut start = 0;
                for (g, group) in groups.iter().enumerate() {
                    if group.len() > 1 {
                        for (k, (_, h)) in group.iter().enumerate() {
                            heap.push((drop_key(*h, &counts), g, start + k));
                        }
                    }
                    start += group.len();
                }
                while let Some((key, g, k)) = heap.pop() {
                    if alive[g] <= 1 {
                        continue;
                    }
                    let (n, h) = reps[k];
                    let fresh = drop_key(h, &counts);
                    if fresh != key {
                        heap.push((fresh, g, k));
                        continue;
                    }
                    dropped[k] = true;
                    alive[g] -= 1;
                    counts[h as usize] -= 1;
                    raw.push(Raw::Stop(name, Slot::Replica(n), h, StopReason::Duplicate));
                }
                let mut primaries: Vec<(u32, Ix, Class)> = reps
                    .iter()
                    .zip(&dropped)
                    .filter(|(_, d)| !**d)
                    .map(|(&(n, h), _)| (n, h, class(h)))
                    .collect();
                // Scale down: first what would have to move or wait, then
                // from the hosts with the most replicas of the service.
                let excess = primaries.len().saturating_sub(desired as usize);
                if excess > 0 {
                    let mut remove = vec![false; primaries.len()];
                    let mut bad: Vec<usize> = (0..primaries.len())
                        .filter(|i| primaries[*i].2 != Class::Good)
                        .collect();
                    bad.sort_by_key(|i| (Reverse(primaries[*i].2), Reverse(primaries[*i].0)));
                    let mut left = excess;
                    for i in bad.into_iter().take(excess) {
                        remove[i] = true;
                        left -= 1;
                    }
                    if left > 0 {
                        let mut on_host: HashMap<Ix, Vec<usize>> = HashMap::new();
                        for (i, p) in primaries.iter().enumerate() {
                            if p.2 == Class::Good {
                                on_host.entry(p.1).or_default().push(i);
                            }
                        }
                        let mut heap: BinaryHeap<(u32, u64, u32, Ix)> = on_host
                            .keys()
                            .map(|h| (counts[*h as usize], obs(*h), cl.rank(*h), *h))
                            .collect();
                        while left > 0 {
                            let Some((c, l, r, h)) = heap.pop() else {
                                break;
                            };
                            let Some(i) = on_host.get_mut(&h).and_then(Vec::pop) else {
                                continue;
                            };
                            remove[i] = true;
                            left -= 1;
                            if c > 1 {
                                heap.push((c - 1, l, r, h));
                            }
                        }
                    }
                    let mut kept = Vec::with_capacity(desired as usize);
                    for (p, gone) in primaries.into_iter().zip(remove) {
                        if gone {
                            raw.push(Raw::Stop(
                                name,
                                Slot::Replica(p.0),
                                p.1,
                                StopReason::ScaledDown,
                            ));
                        } else {
                            kept.push(p);
                        }
                    }
                    primaries = kept;
                }
                for (_, h) in &reps {
                    counts[*h as usize] = 0;
                }
                let mut used_slots: Vec<u32> = Vec::with_capacity(desired as usize);
                for &(n, h, c) in &primaries {
                    used_slots.push(n);
                    let slot = Slot::Replica(n);
                    match c {
                        Class::Good if s.stateful => w.fixed.push((slot, h)),
                        Class::Good => w.soft.push((slot, h)),
                        Class::Stuck => {
                            w.fixed.push((slot, h));
                            if cl.is_up(h) {
                                errors.push(ScheduleError::StatefulIneligible {
                                    service: s.name.clone(),
                                    slot: n,
                                    host: cl.name(h),
                                    constraints: Constraints(s.constraints.clone()),
                                });
                            } else {
                                waiting.push((name, slot, h));
                            }
                        }
                        Class::Move => w.pending.push(Pending {
                            slot: n,
                            from: Some((h, leave_reason(h))),
                        }),
                    }
                }
                // Scale up: the lowest free slot numbers.
                let mut missing = (desired as usize).saturating_sub(primaries.len());
                let mut next = 1u32;
                let mut taken = used_slots.iter().peekable();
                while missing > 0 && next != 0 {
                    while taken.next_if(|t| **t < next).is_some() {}
                    if taken.next_if_eq(&&next).is_none() {
                        w.pending.push(Pending {
                            slot: next,
                            from: None,
                        });
                        missing -= 1;
                    }
                    next = next.wrapping_add(1);
                }
            }
        }
    }

    // Step 2: account what stays. Stateful first: they cannot go elsewhere.
    for (s, w) in order.iter().zip(work.iter_mut()) {
        for &(slot, h) in &w.fixed {
            if !cl.is_known(h) {
                continue;
            }
            if !cl.fits(h, s.reservations) {
                errors.push(ScheduleError::StatefulOverCapacity {
                    service: s.name.clone(),
                    slot,
                    host: cl.name(h),
                    needed: s.reservations,
                    free: cl.free(h),
                });
            }
            cl.reserve(h, s.reservations);
        }
        w.kept.append(&mut w.fixed);
    }
    // Then global copies, then the other stateless replicas.
    for global in [true, false] {
        for (s, w) in order.iter().zip(work.iter_mut()) {
            if (s.mode == Mode::Global) != global {
                continue;
            }
            let max = s.max_per_host.unwrap_or(u32::MAX);
            if !global {
                for (_, h) in &w.kept {
                    counts[*h as usize] += 1;
                }
            }
            for (slot, h) in std::mem::take(&mut w.soft) {
                let fits = cl.fits(h, s.reservations) && (global || counts[h as usize] < max);
                if fits {
                    cl.reserve(h, s.reservations);
                    counts[h as usize] += 1;
                    w.kept.push((slot, h));
                } else if let Slot::Replica(n) = slot {
                    w.pending.push(Pending {
                        slot: n,
                        from: Some((h, StopReason::NoRoom)),
                    });
                } else {
                    raw.push(Raw::Stop(&s.name, slot, h, StopReason::NoRoom));
                    w.no_room.push(h);
                }
            }
            for (_, h) in &w.kept {
                counts[*h as usize] = 0;
            }
        }
    }

    // Step 3: place, global services first, then the largest reservations.
    let mut place_order: Vec<usize> = (0..order.len()).collect();
    place_order.sort_by_key(|i| {
        let s = order[*i];
        (
            s.mode != Mode::Global,
            Reverse((s.reservations.memory_bytes, s.reservations.cpu_millis)),
            *i,
        )
    });
    let mut image_hosts: HashMap<&str, Vec<Ix>> = HashMap::new();
    for (h, entry) in cl.host.iter().enumerate() {
        for image in &entry.images {
            image_hosts.entry(image.as_str()).or_default().push(ix(h));
        }
    }
    let mut has_image = vec![false; known];
    let mut marked = vec![false; all as usize];
    for i in place_order {
        let s = order[i];
        let w = &mut work[i];
        let el = &eligible[w.elig];
        let name = s.name.as_str();
        if let Mode::Global = s.mode {
            for (_, h) in &w.kept {
                marked[*h as usize] = true;
            }
            for h in &w.no_room {
                marked[*h as usize] = true;
            }
            for &h in &el.up {
                if marked[h as usize] {
                    continue;
                }
                if cl.fits(h, s.reservations) {
                    cl.reserve(h, s.reservations);
                    w.kept.push((Slot::Global, h));
                    raw.push(Raw::Start(name, Slot::Global, h));
                } else {
                    w.no_room.push(h);
                }
            }
            for (_, h) in &w.kept {
                marked[*h as usize] = false;
            }
            for h in &w.no_room {
                marked[*h as usize] = false;
            }
            if el.matching == 0 {
                errors.push(ScheduleError::NoMatchingHost {
                    service: s.name.clone(),
                    constraints: Constraints(s.constraints.clone()),
                    hosts: known,
                });
            }
            if !w.no_room.is_empty() {
                w.no_room.sort_by_key(|h| cl.rank(*h));
                errors.push(ScheduleError::GlobalNoRoom {
                    service: s.name.clone(),
                    hosts: w.no_room.iter().map(|h| cl.name(*h)).collect(),
                    eligible: el.up.len(),
                    needed: s.reservations,
                });
            }
            continue;
        }
        let Mode::Replicated(desired) = s.mode else {
            continue;
        };
        if w.pending.is_empty() {
            continue;
        }
        w.pending.sort_by_key(|p| p.slot);
        let max = s.max_per_host.unwrap_or(u32::MAX);
        for (_, h) in &w.kept {
            counts[*h as usize] += 1;
        }
        for image in std::iter::once(&s.image).chain(&s.image_digest) {
            for h in image_hosts.get(image.as_str()).into_iter().flatten() {
                has_image[*h as usize] = true;
            }
        }
        let key = |cl: &Cluster<'_>, h: Ix, count: u32| {
            Reverse((count, cl.load(h), !has_image[h as usize], cl.rank(h), h))
        };
        let mut heap: BinaryHeap<_> = el
            .up
            .iter()
            .filter(|h| counts[**h as usize] < max && cl.fits(**h, s.reservations))
            .map(|h| key(&cl, *h, counts[*h as usize]))
            .collect();
        let mut unplaced: Vec<Pending> = Vec::new();
        for p in std::mem::take(&mut w.pending) {
            let slot = Slot::Replica(p.slot);
            let Some(Reverse((_, _, _, _, h))) = heap.pop() else {
                unplaced.push(p);
                continue;
            };
            cl.reserve(h, s.reservations);
            counts[h as usize] += 1;
            w.kept.push((slot, h));
            match p.from {
                Some((from, _)) if from != h => raw.push(Raw::Move(name, slot, from, h)),
                Some(_) => {}
                None => raw.push(Raw::Start(name, slot, h)),
            }
            if counts[h as usize] < max && cl.fits(h, s.reservations) {
                heap.push(key(&cl, h, counts[h as usize]));
            }
        }
        if !unplaced.is_empty() {
            for p in &unplaced {
                if let Some((from, reason)) = p.from {
                    raw.push(Raw::Stop(name, Slot::Replica(p.slot), from, reason));
                }
            }
            errors.push(unplaced_error(
                &cl,
                s,
                el,
                desired,
                u32::try_from(unplaced.len()).unwrap_or(u32::MAX),
                |h| counts[h as usize] < max,
            ));
        }
        for (_, h) in &w.kept {
            counts[*h as usize] = 0;
        }
        for image in std::iter::once(&s.image).chain(&s.image_digest) {
            for h in image_hosts.get(image.as_str()).into_iter().flatten() {
                has_image[*h as usize] = false;
            }
        }
    }

    // Output, sorted by service, slot, host.
    let mut placements = Vec::new();
    for (s, w) in order.iter().zip(work.iter_mut()) {
        w.kept
            .sort_unstable_by_key(|(slot, h)| (*slot, cl.rank(*h)));
        placements.extend(w.kept.iter().map(|(slot, h)| Placement {
            service: s.name.clone(),
            slot: *slot,
            host: cl.name(*h),
        }));
    }
    raw.sort_by(|a, b| sort_key(&cl, a).cmp(&sort_key(&cl, b)));
    let changes = raw
        .into_iter()
        .map(|c| match c {
            Raw::Start(s, slot, h) => Change::Start {
                service: s.to_owned(),
                slot,
                host: cl.name(h),
            },
            Raw::Stop(s, slot, h, reason) => Change::Stop {
                service: s.to_owned(),
                slot,
                host: cl.name(h),
                reason,
            },
            Raw::Move(s, slot, from, to) => Change::Move {
                service: s.to_owned(),
                slot,
                from: cl.name(from),
                to: cl.name(to),
            },
        })
        .collect();
    waiting.sort_by(|a, b| (a.0, a.1, cl.rank(a.2)).cmp(&(b.0, b.1, cl.rank(b.2))));
    let waiting = waiting
        .into_iter()
        .map(|(s, slot, h)| Placement {
            service: s.to_owned(),
            slot,
            host: cl.name(h),
        })
        .collect();
    errors.sort_by(|a, b| a.service().cmp(&b.service()));
    Plan {
        placements,
        changes,
        waiting,
        errors,
    }
}

fn sort_key<'a>(cl: &Cluster<'_>, c: &Raw<'a>) -> (&'a str, Slot, u32, u8) {
    match c {
        Raw::Start(s, slot, h) => (s, *slot, cl.rank(*h), 0),
        Raw::Stop(s, slot, h, _) => (s, *slot, cl.rank(*h), 1),
        Raw::Move(s, slot, from, _) => (s, *slot, cl.rank(*from), 2),
    }
}

/// Host numbers fit in `u32`: a cluster has far fewer than 4 billion hosts.
fn ix(n: usize) -> Ix {
    Ix::try_from(n).unwrap_or(Ix::MAX)
}
