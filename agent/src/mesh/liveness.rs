//! How long ago each WireGuard peer last completed a handshake, as the
//! agent itself remembers it. Userspace WireGuard forgets a peer's last
//! handshake once its session expires, which would make a peer that stopped
//! answering look like one that was never tried; the report must instead
//! show the age growing and say that the peer does not answer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What is remembered of one peer (by public key).
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// When the agent first set the peer.
    since: Instant,
    /// The last handshake known.
    handshake: Option<Instant>,
}

/// Every peer's last handshake.
#[derive(Debug, Default)]
pub struct Liveness {
    peers: HashMap<String, Seen>,
}

impl Liveness {
    /// The handshake age to report for the peer `key` at `now`, given the
    /// age WireGuard reports (none once a session expired), and an error
    /// once no handshake is younger than `stale`. `reach` names where the
    /// peer is tried, for the error.
    pub fn observe(
        &mut self,
        key: &str,
        reported: Option<Duration>,
        now: Instant,
        stale: Duration,
        reach: &str,
    ) -> (Option<Duration>, Option<String>) {
        let seen = self.peers.entry(key.to_owned()).or_insert(Seen {
            since: now,
            handshake: None,
        });
        if let Some(at) = reported.and_then(|age| now.checked_sub(age)) {
            seen.handshake = Some(seen.handshake.map_or(at, |h| h.max(at)));
        }
        let age = seen.handshake.map(|h| now.saturating_duration_since(h));
        let error = match age {
            Some(age) if age >= stale => Some(format!(
                "no handshake for {} s: the peer does not answer at {reach} (is it up, and is that UDP port open between the hosts?)",
                age.as_secs()
            )),
            None if now.saturating_duration_since(seen.since) >= stale => Some(format!(
                "no handshake in the {} s since the peer was added: it does not answer at {reach} (is it up, and is that UDP port open between the hosts?)",
                now.saturating_duration_since(seen.since).as_secs()
            )),
            _ => None,
        };
        (age, error)
    }

    /// Forgets the peers for which `keep` is false.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.peers.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALE: Duration = Duration::from_secs(180);

    #[test]
    fn an_expired_session_keeps_its_age_growing_and_turns_stale() {
        let mut l = Liveness::default();
        let t0 = Instant::now();
        let (age, error) = l.observe(
            "k",
            Some(Duration::from_secs(5)),
            t0,
            STALE,
            "192.0.2.1:51820",
        );
        assert_eq!(age, Some(Duration::from_secs(5)));
        assert_eq!(error, None);
        // WireGuard forgot it; the age still grows from what was seen.
        let later = t0 + Duration::from_secs(100);
        let (age, error) = l.observe("k", None, later, STALE, "192.0.2.1:51820");
        assert_eq!(age, Some(Duration::from_secs(105)));
        assert_eq!(error, None);
        let (age, error) = l.observe(
            "k",
            None,
            t0 + Duration::from_secs(200),
            STALE,
            "192.0.2.1:51820",
        );
        assert_eq!(age, Some(Duration::from_secs(205)));
        let error = error.unwrap();
        assert!(error.contains("192.0.2.1:51820"), "{error}");
        // A new handshake makes it fresh again.
        let (age, error) = l.observe(
            "k",
            Some(Duration::from_secs(1)),
            t0 + Duration::from_secs(300),
            STALE,
            "x",
        );
        assert_eq!(age, Some(Duration::from_secs(1)));
        assert_eq!(error, None);
    }

    #[test]
    fn a_peer_that_never_answered_is_reported_once_stale() {
        let mut l = Liveness::default();
        let t0 = Instant::now();
        assert_eq!(l.observe("k", None, t0, STALE, "x"), (None, None));
        let (age, error) = l.observe("k", None, t0 + STALE, STALE, "192.0.2.9:51820");
        assert_eq!(age, None);
        assert!(error.unwrap().contains("since the peer was added"));
        l.retain(|_| false);
        assert_eq!(l.observe("k", None, t0 + STALE, STALE, "x"), (None, None));
    }
}
