//! Per-route counters, kept for the agent's lifetime (a route that leaves
//! and comes back keeps counting).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use skiff_shared::sections::ingress::{LATENCY_BUCKETS_MS, RouteStats};

/// A route's counters.
#[derive(Debug, Default)]
pub(crate) struct RouteCounters {
    requests: AtomicU64,
    statuses: [AtomicU64; 5],
    failed: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
}

impl RouteCounters {
    /// Counts one answered request: its status, whether the proxy failed
    /// it (no endpoint, or the endpoint failed), and its latency to the
    /// answer's head.
    pub fn record(&self, status: u16, failed: bool, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let class = usize::from(status / 100).saturating_sub(1);
        if let Some(c) = self.statuses.get(class) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self, domain: &str, path: &str) -> RouteStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RouteStats {
            domain: domain.to_owned(),
            path: path.to_owned(),
            requests: load(&self.requests),
            statuses: [
                load(&self.statuses[0]),
                load(&self.statuses[1]),
                load(&self.statuses[2]),
                load(&self.statuses[3]),
                load(&self.statuses[4]),
            ],
            failed: load(&self.failed),
            latency: self.latency.iter().map(load).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_latencies_land_in_their_buckets() {
        let c = RouteCounters::default();
        c.record(200, false, Duration::from_millis(1));
        c.record(503, true, Duration::from_millis(7));
        c.record(404, false, Duration::from_secs(60));
        let s = c.snapshot("a.io", "/");
        assert_eq!(s.requests, 3);
        assert_eq!(s.statuses, [0, 1, 0, 1, 1]);
        assert_eq!(s.failed, 1);
        assert_eq!(s.latency.len(), LATENCY_BUCKETS_MS.len() + 1);
        assert_eq!(s.latency[0], 1);
        assert_eq!(s.latency[3], 1, "7 ms is in the 10 ms bucket");
        assert_eq!(s.latency[LATENCY_BUCKETS_MS.len()], 1);
    }
}
