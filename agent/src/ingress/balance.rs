//! Endpoint pools: which replica a request or a connection goes to.
//!
//! [`Pools`] holds one [`Pool`] per service (stack, service) of a section.
//! It is rebuilt from every new section ([`Pools::rebuild`]); endpoints that
//! remain keep their state (requests in flight, failures), so a new table
//! never resets what the proxy learnt. A new [`Pools`] is swapped in whole:
//! an endpoint no longer in the section gets no new request from then on.
//!
//! Choice rules ([`Pool::pick`]):
//! 1. endpoints in `skip` (those that already failed this request) are
//!    never chosen;
//! 2. endpoints ejected by passive failure detection are left out, unless
//!    every remaining endpoint is ejected (then they are tried anyway:
//!    better a likely failure than a certain one);
//! 3. with `local_first`, endpoints on this node win when there are any;
//! 4. then round robin (an atomic counter, even under concurrency), or
//!    least connections (fewest in flight through this proxy; ties taken
//!    in turn).
//!
//! Passive failure detection: [`Pool::failed`] after a failed connect (or
//! an answer the proxy made a 502 of), [`Pool::succeeded`] after a good
//! one. After [`EJECT_AFTER`] consecutive failures an endpoint is ejected
//! for a backoff that starts at [`BACKOFF_MIN`] and doubles with every
//! further failure up to [`BACKOFF_MAX`]; a success clears it.
//!
//! Draining: every endpoint has a `leaving` token, fired
//! `drain_timeout_ms` after a section no longer lists it. What is still
//! in flight to it (a TCP connection, a request, a pooled keep-alive
//! connection) watches [`Pick::leaving`] and is cut when it fires. An
//! endpoint that comes back before then is taken back as it was.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use skiff_shared::sections::ingress::{Balance, IngressSection};
use skiff_shared::tasks::TaskTree;
use tokio_util::sync::CancellationToken;

/// Consecutive failures that eject an endpoint.
pub const EJECT_AFTER: u32 = 3;
/// The first ejection's length.
pub const BACKOFF_MIN: Duration = Duration::from_secs(5);
/// The longest ejection.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// A service's key: (stack, service).
pub type ServiceKey = (String, String);

/// Passive health of one endpoint.
#[derive(Debug, Clone, Copy)]
struct Health {
    consecutive: u32,
    ejected_until: Option<Instant>,
    backoff: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            consecutive: 0,
            ejected_until: None,
            backoff: BACKOFF_MIN,
        }
    }
}

/// One endpoint's state, shared by every pool generation that lists it.
#[derive(Debug)]
struct EndpointState {
    ip: Ipv4Addr,
    node: Arc<str>,
    in_flight: AtomicUsize,
    health: Mutex<Health>,
    /// Whether `health` is not the default (a failure since the last
    /// success): while false, requests neither lock nor change it.
    troubled: AtomicBool,
    /// Fired `drain_timeout_ms` after the endpoint left the section.
    leaving: CancellationToken,
    /// Cancels the pending drain timer when it comes back in time.
    reprieve: Mutex<Option<CancellationToken>>,
}

impl EndpointState {
    fn new(ip: Ipv4Addr, node: &str) -> Self {
        Self {
            ip,
            node: node.into(),
            in_flight: AtomicUsize::new(0),
            health: Mutex::new(Health::default()),
            troubled: AtomicBool::new(false),
            leaving: CancellationToken::new(),
            reprieve: Mutex::new(None),
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ejected(&self, now: Instant) -> bool {
        self.troubled.load(Ordering::Acquire)
            && self.health().ejected_until.is_some_and(|until| now < until)
    }

    fn failed(&self, now: Instant) {
        let mut h = self.health();
        self.troubled.store(true, Ordering::Release);
        h.consecutive = h.consecutive.saturating_add(1);
        if h.consecutive >= EJECT_AFTER {
            h.ejected_until = Some(now + h.backoff);
            h.backoff = (h.backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn succeeded(&self) {
        if !self.troubled.load(Ordering::Acquire) {
            return;
        }
        let mut h = self.health();
        *h = Health::default();
        self.troubled.store(false, Ordering::Release);
    }
}

/// A chosen endpoint. While it lives the endpoint counts one more in
/// flight (for least connections); dropping it releases that.
#[derive(Debug)]
pub struct Pick {
    pub ip: Ipv4Addr,
    /// The node the endpoint runs on.
    pub node: Arc<str>,
    state: Arc<EndpointState>,
}

impl Pick {
    /// Fires once the endpoint has left the section and its drain time has
    /// passed: cut what is in flight to it then.
    pub fn leaving(&self) -> CancellationToken {
        self.state.leaving.clone()
    }

    /// Marks the endpoint failed (a connect failed, or timed out).
    pub fn failed(&self) {
        self.state.failed(Instant::now());
    }

    /// Marks the endpoint healthy again.
    pub fn succeeded(&self) {
        self.state.succeeded();
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The endpoints of one service.
#[derive(Debug, Default)]
pub struct Pool {
    endpoints: Vec<Arc<EndpointState>>,
    /// Round robin's turn; shared by the generations of the pool.
    turn: Arc<AtomicUsize>,
}

impl Pool {
    /// Chooses an endpoint (see the module's rules); `None` when every
    /// endpoint is in `skip` or there is none.
    pub fn pick(
        &self,
        balance: Balance,
        local_first: bool,
        local_node: &str,
        skip: &[Ipv4Addr],
    ) -> Option<Pick> {
        self.pick_at(balance, local_first, local_node, skip, Instant::now())
    }

    fn pick_at(
        &self,
        balance: Balance,
        local_first: bool,
        local_node: &str,
        skip: &[Ipv4Addr],
        now: Instant,
    ) -> Option<Pick> {
        // No allocation for the common pool sizes: whether each endpoint is
        // ejected is read once, into a bit set on the stack.
        let n = self.endpoints.len();
        let mut small = [0_u64; 4];
        let mut large = Vec::new();
        let ejected: &mut [u64] = if n <= 256 {
            &mut small
        } else {
            large.resize(n.div_ceil(64), 0);
            &mut large
        };
        let (mut open, mut healthy) = (0_usize, 0_usize);
        for (i, e) in self.endpoints.iter().enumerate() {
            if skip.contains(&e.ip) {
                continue;
            }
            open += 1;
            if e.ejected(now) {
                ejected[i / 64] |= 1 << (i % 64);
            } else {
                healthy += 1;
            }
        }
        if open == 0 {
            return None;
        }
        let healthy_only = healthy > 0;
        let eligible = |i: usize, e: &EndpointState| {
            let left_out = healthy_only && ejected[i / 64] & (1 << (i % 64)) != 0;
            !left_out && !skip.contains(&e.ip)
        };
        let local_only = local_first
            && self
                .endpoints
                .iter()
                .enumerate()
                .any(|(i, e)| eligible(i, e) && &*e.node == local_node);
        let candidates = || {
            self.endpoints
                .iter()
                .enumerate()
                .filter(move |(i, e)| eligible(*i, e) && (!local_only || &*e.node == local_node))
                .map(|(_, e)| e)
        };
        let count = candidates().count();
        if count == 0 {
            return None;
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let chosen = match balance {
            Balance::RoundRobin => candidates().nth(turn % count)?,
            Balance::LeastConnections => {
                // Ties are taken in turn: among the fewest in flight, the
                // first at or after the turn's place.
                let start = turn % count;
                candidates()
                    .enumerate()
                    .min_by_key(|(k, e)| {
                        (
                            e.in_flight.load(Ordering::Acquire),
                            (k + count - start) % count,
                        )
                    })
                    .map(|(_, e)| e)?
            }
        };
        chosen.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(Pick {
            ip: chosen.ip,
            node: chosen.node.clone(),
            state: chosen.clone(),
        })
    }

    /// Marks `ip` failed (a failed or timed-out connect).
    pub fn failed(&self, ip: Ipv4Addr) {
        if let Some(e) = self.find(ip) {
            e.failed(Instant::now());
        }
    }

    /// Marks `ip` healthy again.
    pub fn succeeded(&self, ip: Ipv4Addr) {
        if let Some(e) = self.find(ip) {
            e.succeeded();
        }
    }

    /// Whether the pool lists `ip`.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.find(ip).is_some()
    }

    /// The endpoints' addresses, in the section's order.
    pub fn ips(&self) -> Vec<Ipv4Addr> {
        self.endpoints.iter().map(|e| e.ip).collect()
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Requests or connections in flight to `ip` through this proxy.
    pub fn in_flight(&self, ip: Ipv4Addr) -> usize {
        self.find(ip)
            .map_or(0, |e| e.in_flight.load(Ordering::Acquire))
    }

    fn find(&self, ip: Ipv4Addr) -> Option<&Arc<EndpointState>> {
        self.endpoints.iter().find(|e| e.ip == ip)
    }
}

/// Every service's pool, as of one section.
#[derive(Debug, Default)]
pub struct Pools {
    pools: BTreeMap<ServiceKey, Arc<Pool>>,
    /// Endpoints that left and are draining, by service and address: taken
    /// back if a section lists them again before their drain ends.
    draining: Mutex<HashMap<(ServiceKey, Ipv4Addr), Arc<EndpointState>>>,
}

impl Pools {
    /// The pool of a service; `None` when the section has no such backend.
    pub fn get(&self, stack: &str, service: &str) -> Option<Arc<Pool>> {
        self.pools
            .get(&(stack.to_owned(), service.to_owned()))
            .cloned()
    }

    /// The services with a pool.
    pub fn services(&self) -> impl Iterator<Item = &ServiceKey> {
        self.pools.keys()
    }

    /// The pools of `section`, keeping the state of endpoints that remain.
    /// Every endpoint that left starts its drain: its `leaving` token fires
    /// after `section.settings.drain_timeout_ms` (at once when `tree` is
    /// cancelled). Timers run on `tree`.
    pub fn rebuild(&self, section: &IngressSection, tree: &TaskTree) -> Self {
        let drain = Duration::from_millis(section.settings.drain_timeout_ms);
        let mut draining = self
            .draining
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        draining.retain(|_, e| !e.leaving.is_cancelled());
        let mut pools = BTreeMap::new();
        for backend in &section.backends {
            let key = (backend.stack.clone(), backend.service.clone());
            let old = self.pools.get(&key);
            let mut endpoints: Vec<Arc<EndpointState>> = Vec::new();
            for ep in &backend.endpoints {
                if endpoints.iter().any(|e| e.ip == ep.ip) {
                    continue;
                }
                let kept = old
                    .and_then(|p| p.find(ep.ip))
                    .filter(|e| *e.node == *ep.node)
                    .cloned();
                let state = kept.or_else(|| {
                    let back = draining.remove(&(key.clone(), ep.ip))?;
                    if *back.node != *ep.node {
                        return None;
                    }
                    if let Some(r) = back
                        .reprieve
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take()
                    {
                        r.cancel();
                    }
                    Some(back)
                });
                endpoints
                    .push(state.unwrap_or_else(|| Arc::new(EndpointState::new(ep.ip, &ep.node))));
            }
            let turn = old.map(|p| p.turn.clone()).unwrap_or_default();
            pools
                .entry(key)
                .or_insert_with(|| Arc::new(Pool { endpoints, turn }));
        }
        // What the old pools had and the new ones do not: drain it.
        for (key, old) in &self.pools {
            for e in &old.endpoints {
                let stays = pools
                    .get(key)
                    .is_some_and(|p| p.endpoints.iter().any(|n| Arc::ptr_eq(n, e)));
                if stays {
                    continue;
                }
                start_drain(e, drain, tree);
                draining.insert((key.clone(), e.ip), e.clone());
            }
        }
        Self {
            pools,
            draining: Mutex::new(draining),
        }
    }

    /// Fires every endpoint's `leaving` at once (the listeners are gone).
    pub fn cut_all(&self) {
        for pool in self.pools.values() {
            for e in &pool.endpoints {
                e.leaving.cancel();
            }
        }
        for e in self
            .draining
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            e.leaving.cancel();
        }
    }
}

fn start_drain(e: &Arc<EndpointState>, drain: Duration, tree: &TaskTree) {
    let reprieve = CancellationToken::new();
    {
        let mut slot = e.reprieve.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = slot.replace(reprieve.clone()) {
            old.cancel();
        }
    }
    let leaving = e.leaving.clone();
    let t = tree.clone();
    tree.spawn("ingress endpoint drain", async move {
        tokio::select! {
            biased;
            () = reprieve.cancelled() => {}
            () = tokio::time::sleep(drain) => leaving.cancel(),
            () = t.cancelled() => leaving.cancel(),
        }
    });
}

#[cfg(test)]
#[path = "balance_tests.rs"]
mod tests;
