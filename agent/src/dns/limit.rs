//! The per-source rate limit: a token bucket per source address, with a
//! bounded table (spoofed sources cannot grow it without end).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// The most sources tracked at once; past it, the buckets that are full
/// again are forgotten, and if none is, every one is (a flood of sources).
const MAX_SOURCES: usize = 65_536;

/// Queries per second and burst allowed per source; a rate of 0 turns the
/// limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Default for Rate {
    fn default() -> Self {
        Self {
            per_second: 2000,
            burst: 4000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by source address.
#[derive(Debug)]
pub struct Limiter {
    rate: Rate,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl Limiter {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: Mutex::default(),
        }
    }

    /// Whether a query from `source` at `now` is within its rate (and
    /// takes a token if so).
    pub fn allow(&self, source: IpAddr, now: Instant) -> bool {
        if self.rate.per_second == 0 {
            return true;
        }
        let burst = f64::from(self.rate.burst.max(1));
        let per_second = f64::from(self.rate.per_second);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_SOURCES && !buckets.contains_key(&source) {
            buckets.retain(|_, b| {
                let refilled =
                    b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_second;
                refilled < burst
            });
            if buckets.len() >= MAX_SOURCES {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(source).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let l = Limiter::new(Rate {
            per_second: 10,
            burst: 5,
        });
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let b: IpAddr = "10.0.0.3".parse().unwrap();
        let t = Instant::now();
        assert_eq!((0..8).filter(|_| l.allow(a, t)).count(), 5);
        // Another source has its own bucket.
        assert!(l.allow(b, t));
        // 10 per second: one more token after 100 ms.
        assert!(l.allow(a, t + Duration::from_millis(100)));
        assert!(!l.allow(a, t + Duration::from_millis(100)));
        // Refilled to the burst, no more.
        let later = t + Duration::from_secs(60);
        assert_eq!((0..8).filter(|_| l.allow(a, later)).count(), 5);
    }

    #[test]
    fn a_rate_of_zero_is_no_limit() {
        let l = Limiter::new(Rate {
            per_second: 0,
            burst: 0,
        });
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let t = Instant::now();
        assert!((0..100_000).all(|_| l.allow(a, t)));
    }

    #[test]
    fn the_table_stays_bounded() {
        let l = Limiter::new(Rate::default());
        let t = Instant::now();
        for n in 0..(MAX_SOURCES as u32 + 10) {
            l.allow(IpAddr::from(n.to_be_bytes()), t);
        }
        assert!(l.buckets.lock().unwrap().len() <= MAX_SOURCES);
    }
}
