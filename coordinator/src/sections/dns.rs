//! The `dns` section: the cluster's records (the same on every host, at
//! one generation), the host's name and zone, and the gateways its server
//! listens on; and what each host's server reports (the generation it
//! serves, its counters).

use std::net::Ipv4Addr;
use std::sync::Arc;

use async_trait::async_trait;
use skiff_shared::sections::dns::{Dns, DnsReport, DnsSection};
use skiff_shared::workload::ContainerSpec;

use crate::dns::RecordsBook;
use crate::network::ClusterNetwork;

/// Builds each host's `dns` section from the records book.
#[derive(Debug, Clone)]
pub struct DnsFeature {
    pub book: Arc<RecordsBook>,
    pub network: Arc<ClusterNetwork>,
}

#[async_trait]
impl super::Section for DnsFeature {
    type Kind = Dns;

    fn build(&self, node_id: &str, containers: &[ContainerSpec]) -> Option<DnsSection> {
        let gateways = self.network.gateways(node_id);
        let mut listen: Vec<Ipv4Addr> = containers
            .iter()
            .flat_map(|c| {
                c.networks
                    .iter()
                    .filter(|n| !n.external)
                    .map(move |n| (c.stack.clone(), n.name.clone()))
            })
            .filter_map(|k| gateways.get(&k).copied())
            .collect();
        listen.sort();
        listen.dedup();
        Some(crate::dns::section(&self.book.current(), node_id, listen))
    }

    fn report(&self, node_id: &str, report: DnsReport) {
        self.book.report(node_id, report);
    }
}
