//! The `logs` section: every host gets the file settings, the cluster's
//! sinks and the own sinks of the stacks it runs, and reports what it
//! follows and how each sink is doing (kept for `skiff sink ls`).

use std::sync::Arc;

use skiff_shared::sections::logs::{Logs, LogsReport, LogsSection};
use skiff_shared::workload::ContainerSpec;

use crate::logs::LogBook;

/// Builds each host's `logs` section from the log book.
#[derive(Debug, Clone)]
pub struct LogsFeature {
    pub book: Arc<LogBook>,
}

impl super::Section for LogsFeature {
    type Kind = Logs;

    fn build(&self, node_id: &str, containers: &[ContainerSpec]) -> Option<LogsSection> {
        Some(self.book.section(node_id, containers))
    }

    fn report(&self, node_id: &str, report: LogsReport) {
        self.book.report(node_id, report);
    }
}
