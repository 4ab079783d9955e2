//! The cluster's event log: deploys, rollouts, rollbacks, nodes coming and
//! going. The last [`KEEP`] events are kept in memory; followers get every
//! new one as it happens (`GET /api/v1/events?follow=true`, `skiff events
//! --follow`).

use std::collections::VecDeque;
use std::sync::Mutex;

use skiff_api_types::{Event, EventKind};
use tokio::sync::broadcast;

/// Events kept for late readers.
pub const KEEP: usize = 1000;

/// The in-memory event log.
#[derive(Debug)]
pub struct EventLog {
    inner: Mutex<(u64, VecDeque<Event>)>,
    tx: broadcast::Sender<Event>,
}

impl Default for EventLog {
    fn default() -> Self {
        Self {
            inner: Mutex::new((0, VecDeque::new())),
            tx: broadcast::channel(256).0,
        }
    }
}

impl EventLog {
    /// Records an event.
    pub fn emit(
        &self,
        kind: EventKind,
        stack: Option<&str>,
        node: Option<&str>,
        message: impl Into<String>,
    ) {
        let mut guard = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.0 += 1;
        let event = Event {
            id: guard.0,
            at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            kind,
            stack: stack.map(str::to_owned),
            node: node.map(str::to_owned),
            message: message.into(),
        };
        if guard.1.len() == KEEP {
            guard.1.pop_front();
        }
        guard.1.push_back(event.clone());
        // No followers is fine.
        let _ = self.tx.send(event);
    }

    /// The kept events, and a receiver of every later one (subscribed under
    /// the same lock, so none falls between the two).
    pub fn subscribe(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let guard = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (guard.1.iter().cloned().collect(), self.tx.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_events_and_numbers_them() {
        let log = EventLog::default();
        for i in 0..(KEEP + 5) {
            log.emit(EventKind::Deploy, Some("s"), None, format!("{i}"));
        }
        let (kept, mut rx) = log.subscribe();
        assert_eq!(kept.len(), KEEP);
        assert_eq!(kept[0].id, 6);
        log.emit(EventKind::Rollout, Some("s"), None, "x");
        assert_eq!(rx.try_recv().map(|e| e.id).ok(), Some(KEEP as u64 + 6));
    }
}
