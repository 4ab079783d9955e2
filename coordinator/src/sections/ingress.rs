//! The `ingress` section: every host gets the ports and routes of the
//! ingress with their endpoints at the records' generation (only edge
//! hosts listen), edge hosts get the certificates' keys as deliveries,
//! and each host reports the generation its proxy routes by.

use std::sync::Arc;

use async_trait::async_trait;
use skiff_shared::sections::ingress::{
    CertificateMaterial, CertificateRef, CertificatesDelivery, Challenge, Ingress, IngressReport,
    IngressSection, ProxySettings,
};
use skiff_shared::workload::ContainerSpec;

use crate::dns::RecordsBook;

/// Where the certificates to serve and the ACME challenges to answer
/// come from.
#[async_trait]
pub trait CertSource: Send + Sync + std::fmt::Debug + 'static {
    /// The certificates edge hosts serve.
    fn refs(&self) -> Vec<CertificateRef>;
    /// Their chains and keys (edge hosts only).
    async fn materials(&self) -> Vec<CertificateMaterial>;
    /// The HTTP-01 challenges to answer.
    fn challenges(&self) -> Vec<Challenge>;
    /// The challenge tokens a host reported answering.
    fn report_challenges(&self, node_id: &str, tokens: &[String]);
}

/// Builds each host's `ingress` section from the records book.
#[derive(Debug, Clone)]
pub struct IngressFeature {
    pub book: Arc<RecordsBook>,
    pub settings: ProxySettings,
    pub certs: Option<Arc<dyn CertSource>>,
}

impl IngressFeature {
    fn is_edge(&self, node_id: &str) -> bool {
        self.book
            .current()
            .nodes
            .get(node_id)
            .is_some_and(|n| n.edge)
    }
}

#[async_trait]
impl super::Section for IngressFeature {
    type Kind = Ingress;

    fn build(&self, node_id: &str, _containers: &[ContainerSpec]) -> Option<IngressSection> {
        let services = self.book.ingress();
        let shared = crate::ingress::Shared {
            settings: self.settings.clone(),
            services: &services,
            certificates: self.certs.as_ref().map(|c| c.refs()).unwrap_or_default(),
            challenges: self
                .certs
                .as_ref()
                .map(|c| c.challenges())
                .unwrap_or_default(),
        };
        let mut section = crate::ingress::section(&self.book.current(), node_id, &shared);
        if !section.edge {
            // Only edge hosts serve certificates and challenges.
            section.certificates.clear();
            section.challenges.clear();
        }
        Some(section)
    }

    async fn deliveries(
        &self,
        node_id: &str,
        _containers: &[ContainerSpec],
    ) -> Vec<CertificatesDelivery> {
        match &self.certs {
            Some(certs) if self.is_edge(node_id) => vec![CertificatesDelivery {
                certificates: certs.materials().await,
            }],
            _ => Vec::new(),
        }
    }

    fn report(&self, node_id: &str, report: IngressReport) {
        if let Some(certs) = &self.certs {
            certs.report_challenges(node_id, &report.challenges);
        }
        self.book.report_ingress(node_id, report);
    }
}

#[async_trait]
impl CertSource for crate::certs::CertBook {
    fn refs(&self) -> Vec<CertificateRef> {
        crate::certs::CertBook::refs(self)
    }

    async fn materials(&self) -> Vec<CertificateMaterial> {
        crate::certs::CertBook::materials(self).await
    }

    fn challenges(&self) -> Vec<Challenge> {
        crate::certs::CertBook::challenges(self)
    }

    fn report_challenges(&self, node_id: &str, tokens: &[String]) {
        crate::certs::CertBook::report_challenges(self, node_id, tokens);
    }
}
