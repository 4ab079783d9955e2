//! The `demo` section: greets every node, and logs what it echoes back.

use skiff_shared::sections::demo::{Demo, DemoSection};
use skiff_shared::workload::ContainerSpec;

#[derive(Debug, Clone, Copy)]
pub struct DemoFeature;

impl super::Section for DemoFeature {
    type Kind = Demo;

    fn build(&self, node_id: &str, containers: &[ContainerSpec]) -> Option<DemoSection> {
        Some(DemoSection {
            greeting: format!("hello {node_id}, {} containers", containers.len()),
        })
    }

    fn report(&self, node_id: &str, report: DemoSection) {
        tracing::info!(node = node_id, greeting = %report.greeting, "Demo report.");
    }
}
