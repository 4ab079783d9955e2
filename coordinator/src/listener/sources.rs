//! Connections counted per source: the key a client is known by, and a
//! cap on the connections one source holds open at once.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Where connections come from, as limits count them: an IPv4 address, or
/// the /64 prefix of an IPv6 address (one host usually holds a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4(std::net::Ipv4Addr),
    V6Prefix(Ipv6Addr),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4),
                None => Self::V6Prefix(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V4(v4) => write!(f, "{v4}"),
            Self::V6Prefix(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Open connections per source, at most `max` each.
#[derive(Debug)]
pub struct SourceCounts {
    max: usize,
    counts: Mutex<HashMap<Source, usize>>,
}

/// One connection's place in its source's count, given back on drop.
#[derive(Debug)]
pub struct SourceSlot {
    counts: Arc<SourceCounts>,
    source: Source,
}

impl SourceCounts {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<Source, usize>> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for one more connection from `source`, or `None` when it
    /// already holds `max`.
    pub fn try_take(self: &Arc<Self>, source: Source) -> Option<SourceSlot> {
        let mut counts = self.counts();
        let n = counts.entry(source).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            counts: self.clone(),
            source,
        })
    }

    /// Connections `source` holds open.
    pub fn open(&self, source: Source) -> usize {
        self.counts().get(&source).copied().unwrap_or(0)
    }

    /// Sources with connections open.
    pub fn sources(&self) -> usize {
        self.counts().len()
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.counts();
        if let Some(n) = counts.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> Source {
        Source::from(s.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn a_source_holds_at_most_max_and_dropped_slots_are_given_back() {
        let counts = SourceCounts::new(2);
        let a = counts.try_take(src("10.0.0.9")).unwrap();
        let b = counts.try_take(src("10.0.0.9")).unwrap();
        assert!(counts.try_take(src("10.0.0.9")).is_none());
        let other = counts.try_take(src("10.0.0.10")).unwrap();
        assert_eq!(counts.open(src("10.0.0.9")), 2);
        drop(a);
        let c = counts.try_take(src("10.0.0.9")).unwrap();
        drop((b, c, other));
        assert_eq!(counts.sources(), 0, "nothing is kept for sources gone");
    }

    #[test]
    fn ipv6_sources_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(src("2001:db8:1:2::1"), src("2001:db8:1:2:ffff::9"));
        assert_ne!(src("2001:db8:1:2::1"), src("2001:db8:1:3::1"));
        assert_eq!(src("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(src("::ffff:10.0.0.9"), src("10.0.0.9"));
        assert_eq!(src("10.0.0.9").to_string(), "10.0.0.9");
    }
}
