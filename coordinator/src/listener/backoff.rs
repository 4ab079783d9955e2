//! Backing off after failed accepts (out of file descriptors and the
//! like): exponential, capped, and reported once per streak of failures
//! rather than once per attempt.

use std::time::Duration;

use tokio::time::Instant;

/// The first wait after a failed accept.
const FIRST: Duration = Duration::from_millis(10);
/// The longest wait between two attempts.
pub const MAX: Duration = Duration::from_secs(1);
/// How often a streak that goes on is reported again.
const REMIND: Duration = Duration::from_secs(60);

/// What to log about a streak of failed accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The first failure of a streak.
    Started,
    /// The streak goes on: `failures` so far, over `lasted`.
    Ongoing { failures: u64, lasted: Duration },
    /// The streak ended with a successful accept.
    Ended { failures: u64, lasted: Duration },
}

/// The state of one listener's accept loop.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    failures: u64,
    started: Option<Instant>,
    reported: Option<Instant>,
    delay: Duration,
}

impl AcceptBackoff {
    /// An accept failed: how long to wait before the next one, and what
    /// to log, if anything.
    pub fn failed(&mut self) -> (Duration, Option<Report>) {
        let now = Instant::now();
        self.failures += 1;
        self.delay = if self.failures == 1 {
            FIRST
        } else {
            (self.delay * 2).min(MAX)
        };
        let report = match (self.started, self.reported) {
            (None, _) | (_, None) => {
                self.started = Some(now);
                self.reported = Some(now);
                Some(Report::Started)
            }
            (Some(started), Some(reported)) if now - reported >= REMIND => {
                self.reported = Some(now);
                Some(Report::Ongoing {
                    failures: self.failures,
                    lasted: now - started,
                })
            }
            _ => None,
        };
        (self.delay, report)
    }

    /// An accept succeeded: the end of a streak, if there was one.
    pub fn succeeded(&mut self) -> Option<Report> {
        let started = self.started?;
        let report = Report::Ended {
            failures: self.failures,
            lasted: Instant::now() - started,
        };
        *self = Self::default();
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_grow_to_the_cap_and_a_streak_is_reported_at_its_start_and_end() {
        let mut b = AcceptBackoff::default();
        assert_eq!(b.succeeded(), None, "no streak, nothing to say");
        let mut waits = Vec::new();
        let mut reports = Vec::new();
        for _ in 0..20 {
            let (wait, report) = b.failed();
            waits.push(wait);
            reports.extend(report);
            tokio::time::advance(wait).await;
        }
        assert_eq!(waits[0], FIRST);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(waits.last(), Some(&MAX));
        assert_eq!(reports, vec![Report::Started], "one line for 20 failures");
        let Some(Report::Ended { failures, .. }) = b.succeeded() else {
            panic!("the streak's end is reported");
        };
        assert_eq!(failures, 20);
        assert_eq!(b.succeeded(), None);
        assert_eq!(b.failed(), (FIRST, Some(Report::Started)), "a new streak");
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_streak_is_reminded_of_once_a_minute() {
        let mut b = AcceptBackoff::default();
        let mut reports = Vec::new();
        // Five minutes of failures, one attempt a second at most.
        for _ in 0..300 {
            let (wait, report) = b.failed();
            reports.extend(report);
            tokio::time::advance(wait).await;
        }
        assert!(matches!(reports[0], Report::Started));
        assert!(
            (4..=6).contains(&reports.len()),
            "about one line a minute: {reports:?}"
        );
    }
}
