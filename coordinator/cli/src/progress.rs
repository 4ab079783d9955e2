//! Deploy progress as the CLI shows it while following a deploy: one bar
//! per service, redrawn in place on a terminal and printed as a line per
//! change otherwise (logs, pipes, CI).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use skiff_api_types::TaskView;

const BAR: usize = 20;

/// One service's replicas: how many run the new release and are ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceProgress {
    pub service: String,
    pub ready: usize,
    pub desired: usize,
    /// Replicas still on an older spec.
    pub outdated: usize,
    /// Replicas a host could not create, and why (the first reason).
    pub failing: Option<String>,
}

/// The stack's services, by name, from its tasks.
pub fn by_service(tasks: &[TaskView]) -> Vec<ServiceProgress> {
    // Per service: its row, and the (slot, node) pairs seen.
    type Seen<'a> = (ServiceProgress, BTreeSet<(u32, &'a str)>);
    let mut rows: BTreeMap<&str, Seen<'_>> = BTreeMap::new();
    for t in tasks {
        let (row, slots) = rows.entry(t.service.as_str()).or_insert_with(|| {
            (
                ServiceProgress {
                    service: t.service.clone(),
                    ready: 0,
                    desired: 0,
                    outdated: 0,
                    failing: None,
                },
                BTreeSet::new(),
            )
        });
        // During a start-first update a slot has two containers: one replica.
        slots.insert((t.slot, t.node_id.as_str()));
        if t.is_ready() {
            row.ready += 1;
        }
        if !t.up_to_date {
            row.outdated += 1;
        }
        if row.failing.is_none() {
            row.failing.clone_from(&t.error);
        }
    }
    rows.into_values()
        .map(|(mut row, slots)| {
            row.desired = slots.len();
            row.ready = row.ready.min(row.desired);
            row
        })
        .collect()
}

/// `web    [##########----------]  2/4 ready, 2 to update`
pub fn render(rows: &[ServiceProgress]) -> Vec<String> {
    let width = rows.iter().map(|r| r.service.len()).max().unwrap_or(0);
    rows.iter()
        .map(|r| {
            let filled = (r.ready * BAR).checked_div(r.desired).unwrap_or(BAR);
            let mut line = format!(
                "{:<width$} [{}{}] {:>3}/{} ready",
                r.service,
                "#".repeat(filled),
                "-".repeat(BAR - filled),
                r.ready,
                r.desired
            );
            if r.outdated > 0 {
                line.push_str(&format!(", {} to update", r.outdated));
            }
            if let Some(e) = &r.failing {
                line.push_str(&format!(" ({e})"));
            }
            line
        })
        .collect()
}

/// Shows lines of progress: on a terminal the block is redrawn in place;
/// elsewhere each line is printed when it first appears.
#[derive(Debug)]
pub struct Screen {
    terminal: bool,
    shown: Vec<String>,
    drawn: usize,
}

impl Screen {
    pub fn new(terminal: bool) -> Self {
        Self {
            terminal,
            shown: Vec::new(),
            drawn: 0,
        }
    }

    pub fn show(&mut self, out: &mut impl Write, lines: Vec<String>) {
        if lines == self.shown {
            return;
        }
        if self.terminal {
            if self.drawn > 0 {
                // Up to the block's first line, then rewrite it.
                let _ = write!(out, "\x1b[{}A", self.drawn);
            }
            for l in &lines {
                let _ = writeln!(out, "\x1b[2K{l}");
            }
            // A shorter block leaves no stale lines below it.
            for _ in lines.len()..self.drawn {
                let _ = writeln!(out, "\x1b[2K");
            }
            self.drawn = lines.len().max(self.drawn);
        } else {
            for l in lines.iter().filter(|l| !self.shown.contains(l)) {
                let _ = writeln!(out, "{l}");
            }
        }
        let _ = out.flush();
        self.shown = lines;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(service: &str, slot: u32, up_to_date: bool, state: &str) -> TaskView {
        TaskView {
            name: format!("s.{service}.{slot}"),
            service: service.into(),
            slot,
            node: "a".into(),
            node_id: "n1".into(),
            image: "x".into(),
            state: state.into(),
            health: None,
            restart_count: 0,
            ips: Vec::new(),
            addresses: Vec::new(),
            up_to_date,
            error: None,
            serving: None,
            exit_code: None,
        }
    }

    #[test]
    fn a_running_replica_no_proxy_gives_yet_is_not_ready() {
        let mut t = task("web", 1, true, "running");
        assert!(t.is_ready());
        t.serving = Some(false);
        assert!(!t.is_ready());
        t.serving = Some(true);
        assert!(t.is_ready());
    }

    #[test]
    fn bars_count_ready_replicas_per_service() {
        let tasks = vec![
            task("web", 1, true, "running"),
            task("web", 2, false, "running"),
            // Slot 2's new container beside the old one (start-first).
            task("web", 2, true, "created"),
            task("web", 3, true, "running"),
            task("web", 4, false, "running"),
            task("db", 1, true, "running"),
        ];
        let rows = by_service(&tasks);
        assert_eq!(
            render(&rows),
            vec![
                "db  [####################]   1/1 ready".to_owned(),
                "web [##########----------]   2/4 ready, 2 to update".to_owned(),
            ]
        );
    }

    #[test]
    fn without_a_terminal_each_line_is_printed_once() {
        let mut out = Vec::new();
        let mut screen = Screen::new(false);
        screen.show(&mut out, vec!["a 0/1".into(), "b 0/1".into()]);
        screen.show(&mut out, vec!["a 0/1".into(), "b 0/1".into()]);
        screen.show(&mut out, vec!["a 1/1".into(), "b 0/1".into()]);
        assert_eq!(String::from_utf8(out).unwrap(), "a 0/1\nb 0/1\na 1/1\n");
    }

    #[test]
    fn on_a_terminal_the_block_is_redrawn_in_place() {
        let mut out = Vec::new();
        let mut screen = Screen::new(true);
        screen.show(&mut out, vec!["a 0/1".into(), "b 0/1".into()]);
        screen.show(&mut out, vec!["a 1/1".into(), "b 0/1".into()]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\x1b[2Ka 0/1\n\x1b[2Kb 0/1\n\x1b[2A\x1b[2Ka 1/1\n\x1b[2Kb 0/1\n"
        );
    }
}
