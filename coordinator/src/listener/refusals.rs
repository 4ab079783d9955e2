//! Refusals counted per source, in windows: the first refusal of a
//! source's window is logged in full, the rest are counted and logged as
//! one line when the window ends ("Refused 1000 joins from 10.0.0.9 in
//! the last 60 s."); a source past its allowance is throttled until its
//! window ends.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use super::sources::Source;

/// Sources tracked at once; refusals from further sources are counted
/// together (and never throttled, so a flood of sources cannot lock out
/// one that is tracked).
pub const MAX_SOURCES: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    count: u64,
}

/// One source's refusals over a window, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// `None`: the sources beyond [`MAX_SOURCES`].
    pub source: Option<Source>,
    pub count: u64,
    /// How long the window ran.
    pub over: Duration,
}

/// Refusals of one kind, per source.
#[derive(Debug)]
pub struct Refusals {
    /// What is refused, in the plural, for the log: "joins".
    what: &'static str,
    window: Duration,
    /// Refusals a source may have in a window before it is throttled;
    /// `None`: never throttled.
    allowance: Option<u64>,
    sources: Mutex<Sources>,
}

#[derive(Debug, Default)]
struct Sources {
    windows: HashMap<Source, Window>,
    others: Option<Window>,
}

impl Refusals {
    pub fn new(what: &'static str, window: Duration, allowance: Option<u32>) -> Self {
        Self {
            what,
            window,
            allowance: allowance.map(u64::from),
            sources: Mutex::new(Sources::default()),
        }
    }

    fn sources(&self) -> MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The window refusals are counted in.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Counts a refusal from `source`. True when it is the first of the
    /// source's window: log that one in full; the rest go into the
    /// window's summary.
    pub fn refused(&self, source: Source) -> bool {
        let now = Instant::now();
        let mut s = self.sources();
        let full = s.windows.len() >= MAX_SOURCES && !s.windows.contains_key(&source);
        let window = if full {
            s.others.get_or_insert(Window {
                started: now,
                count: 0,
            })
        } else {
            s.windows.entry(source).or_insert(Window {
                started: now,
                count: 0,
            })
        };
        // A window past its end that no flush has closed yet starts over;
        // its summary is lost only if flushes stopped.
        if now - window.started >= self.window {
            *window = Window {
                started: now,
                count: 0,
            };
        }
        window.count += 1;
        window.count == 1
    }

    /// When `source` has used its allowance in the current window: how
    /// long until the window ends.
    pub fn throttled(&self, source: Source) -> Option<Duration> {
        let allowance = self.allowance?;
        let now = Instant::now();
        let s = self.sources();
        let w = s.windows.get(&source)?;
        let ends = w.started + self.window;
        (w.count >= allowance && ends > now).then(|| ends - now)
    }

    /// Closes the windows that have ended (every window when `all`, at
    /// shutdown), and returns the summaries of those with more refusals
    /// than the first, which was logged already.
    pub fn flush(&self, all: bool) -> Vec<Summary> {
        let now = Instant::now();
        let window = self.window;
        let ended = |w: &Window| all || now - w.started >= window;
        let summary = |source, w: &Window| Summary {
            source,
            count: w.count,
            over: (now - w.started).min(window),
        };
        let mut s = self.sources();
        let mut out = Vec::new();
        s.windows.retain(|source, w| {
            if !ended(w) {
                return true;
            }
            if w.count > 1 {
                out.push(summary(Some(*source), w));
            }
            false
        });
        if let Some(w) = s.others.filter(|w| ended(w)) {
            if w.count > 1 {
                out.push(summary(None, &w));
            }
            s.others = None;
        }
        out
    }

    /// Logs the summaries [`Refusals::flush`] returns, one line each.
    pub fn log_summaries(&self, all: bool) {
        for s in self.flush(all) {
            let secs = s.over.as_secs_f64().ceil();
            match s.source {
                Some(source) => warn!(
                    source = %source,
                    count = s.count,
                    "Refused {} {} from {} in the last {} s.",
                    s.count,
                    self.what,
                    source,
                    secs
                ),
                None => warn!(
                    count = s.count,
                    "Refused {} {} from sources beyond the {} tracked in the last {} s.",
                    s.count,
                    self.what,
                    MAX_SOURCES,
                    secs
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    fn ip(last: u8) -> Source {
        Source::from(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_thousand_refusals_make_one_full_line_and_one_summary() {
        let r = Refusals::new("joins", WINDOW, Some(30));
        let logged_in_full = (0..1000).filter(|_| r.refused(ip(9))).count();
        assert_eq!(logged_in_full, 1);
        assert!(r.flush(false).is_empty(), "the window is still open");
        tokio::time::advance(WINDOW).await;
        assert_eq!(
            r.flush(false),
            vec![Summary {
                source: Some(ip(9)),
                count: 1000,
                over: WINDOW
            }]
        );
        assert!(r.flush(false).is_empty(), "each window is summed up once");
        assert!(
            r.refused(ip(9)),
            "a new window logs its first refusal again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_refusal_needs_no_summary() {
        let r = Refusals::new("joins", WINDOW, Some(30));
        assert!(r.refused(ip(9)));
        tokio::time::advance(WINDOW).await;
        assert!(r.flush(false).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn sources_are_counted_apart() {
        let r = Refusals::new("joins", WINDOW, Some(3));
        for _ in 0..3 {
            r.refused(ip(9));
        }
        assert!(r.refused(ip(10)), "another source's first refusal");
        assert!(r.throttled(ip(9)).is_some());
        assert_eq!(r.throttled(ip(10)), None);
        tokio::time::advance(WINDOW / 2).await;
        r.refused(ip(10));
        tokio::time::advance(WINDOW / 2).await;
        let mut summaries = r.flush(false);
        assert_eq!(summaries.len(), 2);
        summaries.sort_by_key(|s| s.count);
        assert_eq!((summaries[0].source, summaries[0].count), (Some(ip(10)), 2));
        assert_eq!((summaries[1].source, summaries[1].count), (Some(ip(9)), 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_past_its_allowance_is_throttled_until_its_window_ends() {
        let r = Refusals::new("joins", WINDOW, Some(3));
        for _ in 0..2 {
            r.refused(ip(9));
            assert_eq!(r.throttled(ip(9)), None);
        }
        tokio::time::advance(Duration::from_secs(20)).await;
        r.refused(ip(9));
        assert_eq!(r.throttled(ip(9)), Some(Duration::from_secs(40)));
        tokio::time::advance(Duration::from_secs(40)).await;
        assert_eq!(r.throttled(ip(9)), None, "the window ended");
        r.log_summaries(false);
        assert_eq!(r.throttled(ip(9)), None);
        assert!(r.refused(ip(9)));
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_allowance_nothing_is_throttled() {
        let r = Refusals::new("connections", WINDOW, None);
        for _ in 0..100 {
            r.refused(ip(9));
        }
        assert_eq!(r.throttled(ip(9)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn at_shutdown_every_open_window_is_summed_up() {
        let r = Refusals::new("joins", WINDOW, Some(30));
        for _ in 0..5 {
            r.refused(ip(9));
        }
        tokio::time::advance(Duration::from_secs(12)).await;
        assert_eq!(
            r.flush(true),
            vec![Summary {
                source: Some(ip(9)),
                count: 5,
                over: Duration::from_secs(12)
            }]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sources_beyond_the_tracked_ones_are_counted_together_and_never_throttled() {
        let r = Refusals::new("joins", WINDOW, Some(1));
        for i in 0..MAX_SOURCES {
            let [a, b, c, d] = u32::try_from(i).unwrap().to_be_bytes();
            r.refused(Source::from(IpAddr::V4(Ipv4Addr::new(a + 11, b, c, d))));
        }
        assert!(r.refused(ip(9)), "the first of the others is logged");
        assert!(!r.refused(ip(10)));
        assert_eq!(r.throttled(ip(9)), None);
        tokio::time::advance(WINDOW).await;
        let others: Vec<_> = r
            .flush(false)
            .into_iter()
            .filter(|s| s.source.is_none())
            .collect();
        assert_eq!(others.len(), 1);
        assert_eq!(others[0].count, 2);
    }
}
