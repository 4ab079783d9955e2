//! The coordinator's side of each plan section: how a host's section is
//! built from what was decided for it, what is delivered to the agent
//! before the plan (secret values, credentials), and what is done with the
//! agent's reports. One module per section; [`Sections::new`] lists them.
//!
//! The link knows sections only through [`Sections`]: by name and
//! capability, with bodies as JSON.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use skiff_shared::sections::SectionKind;
use skiff_shared::workload::ContainerSpec;
use tokio::sync::watch;

pub mod containers;
pub mod dns;
pub mod ingress;
pub mod logs;
pub mod mesh;
pub mod networks;

/// One section, typed.
#[async_trait]
pub trait Section: Send + Sync + 'static {
    type Kind: SectionKind;

    /// The section of node `node_id`'s plan, from the containers decided
    /// for it; `None` leaves the section out.
    fn build(
        &self,
        node_id: &str,
        containers: &[ContainerSpec],
    ) -> Option<<Self::Kind as SectionKind>::Desired>;

    /// What the agent needs before a plan whose containers are
    /// `containers`, each delivery complete (it replaces what the agent
    /// held of its kind).
    async fn deliveries(
        &self,
        _node_id: &str,
        _containers: &[ContainerSpec],
    ) -> Vec<<Self::Kind as SectionKind>::Delivery> {
        Vec::new()
    }

    /// An agent's report.
    fn report(&self, _node_id: &str, _report: <Self::Kind as SectionKind>::Report) {}
}

/// A section with its types erased, as the link and the plan book use it.
#[async_trait]
pub trait AnySection: Send + Sync {
    fn name(&self) -> &'static str;
    fn capability(&self) -> &'static str;
    fn build(
        &self,
        node_id: &str,
        containers: &[ContainerSpec],
    ) -> serde_json::Result<Option<serde_json::Value>>;
    async fn deliveries(
        &self,
        node_id: &str,
        containers: &[ContainerSpec],
    ) -> serde_json::Result<Vec<serde_json::Value>>;
    /// Parses, checks against its bounds and takes a report; an error means
    /// the agent sent something that is not one, and nothing of it is kept.
    fn report(&self, node_id: &str, body: serde_json::Value) -> Result<(), String>;
}

#[async_trait]
impl<S: Section> AnySection for S {
    fn name(&self) -> &'static str {
        S::Kind::NAME
    }

    fn capability(&self) -> &'static str {
        S::Kind::CAPABILITY
    }

    fn build(
        &self,
        node_id: &str,
        containers: &[ContainerSpec],
    ) -> serde_json::Result<Option<serde_json::Value>> {
        Section::build(self, node_id, containers)
            .map(|d| serde_json::to_value(&d))
            .transpose()
    }

    async fn deliveries(
        &self,
        node_id: &str,
        containers: &[ContainerSpec],
    ) -> serde_json::Result<Vec<serde_json::Value>> {
        Section::deliveries(self, node_id, containers)
            .await
            .iter()
            .map(serde_json::to_value)
            .collect()
    }

    fn report(&self, node_id: &str, body: serde_json::Value) -> Result<(), String> {
        let report = serde_json::from_value(body)
            .map_err(|e| format!("a {} report is invalid: {e}", S::Kind::NAME))?;
        S::Kind::check_report(&report)
            .map_err(|e| format!("a {} report is over its bounds: {e}", S::Kind::NAME))?;
        Section::report(self, node_id, report);
        Ok(())
    }
}

/// Every section, by name, and the signal that deliveries changed outside
/// a plan change (a registry login).
pub struct Sections {
    list: BTreeMap<&'static str, Arc<dyn AnySection>>,
    deliveries_changed: watch::Sender<u64>,
}

impl std::fmt::Debug for Sections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.list.keys()).finish()
    }
}

/// What the sections need from the rest of the coordinator.
#[derive(Debug, Clone)]
pub struct SectionHandles {
    pub store: Arc<dyn crate::store::Store>,
    pub secret_key: Arc<crate::secrets::SecretKey>,
    pub observed: Arc<crate::observed::ObservedBook>,
    /// The cluster network, when it is on.
    pub network: Option<Arc<crate::network::ClusterNetwork>>,
    /// The DNS records, with the cluster network.
    pub dns: Option<Arc<crate::dns::RecordsBook>>,
    /// The edge hosts' proxy settings.
    pub ingress: skiff_shared::sections::ingress::ProxySettings,
    /// The certificates edge hosts serve.
    pub certs: Option<Arc<dyn ingress::CertSource>>,
    /// The log files' settings, the sinks and the hosts' reports.
    pub logs: Option<Arc<crate::logs::LogBook>>,
}

impl Sections {
    /// The coordinator's sections: adding a subsystem adds one line here.
    pub fn new(h: &SectionHandles) -> Self {
        let mut s = Self::empty();
        s.add(containers::ContainersFeature::new(h));
        s.add(networks::NetworksFeature {
            network: h.network.clone(),
        });
        if let Some(book) = &h.logs {
            s.add(logs::LogsFeature { book: book.clone() });
        }
        if let Some(network) = &h.network {
            s.add(mesh::MeshFeature {
                network: network.clone(),
            });
            if let Some(book) = &h.dns {
                s.add(dns::DnsFeature {
                    book: book.clone(),
                    network: network.clone(),
                });
                s.add(ingress::IngressFeature {
                    book: book.clone(),
                    settings: h.ingress.clone(),
                    certs: h.certs.clone(),
                });
            }
        }
        s
    }

    /// No sections (for tests).
    pub fn empty() -> Self {
        Self {
            list: BTreeMap::new(),
            deliveries_changed: watch::Sender::new(0),
        }
    }

    pub fn add<S: Section>(&mut self, section: S) {
        self.list.insert(S::Kind::NAME, Arc::new(section));
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn AnySection>> {
        self.list.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn AnySection>> {
        self.list.values()
    }

    /// Every section's body for a node with `containers`.
    ///
    /// # Errors
    /// When a section cannot be serialised.
    pub fn build(
        &self,
        node_id: &str,
        containers: &[ContainerSpec],
    ) -> serde_json::Result<BTreeMap<String, serde_json::Value>> {
        let mut out = BTreeMap::new();
        for s in self.list.values() {
            if let Some(body) = s.build(node_id, containers)? {
                out.insert(s.name().to_owned(), body);
            }
        }
        Ok(out)
    }

    /// Says that deliveries changed: sessions send them again.
    pub fn deliveries_changed(&self) {
        self.deliveries_changed.send_modify(|n| *n += 1);
    }

    pub fn watch_deliveries(&self) -> watch::Receiver<u64> {
        self.deliveries_changed.subscribe()
    }
}
