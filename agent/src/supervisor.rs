//! The supervisor: starts every controller in its own subtree of the task
//! tree, and gives the link a [`Router`] to reach them by section name.
//!
//! The list of controllers is in the crate root (`lib.rs`); adding one
//! changes nothing here, and nothing in the link.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use skiff_shared::plan::HostPlan;
use skiff_shared::protocol::SectionMessage;
use skiff_shared::sections::SectionKind;
use skiff_shared::tasks::TaskTree;
use tokio::sync::watch;

use crate::controller::{Context, Controller, Port, Publish, Reporter, Reports, TypedPort};
use crate::engine::EngineHandle;

/// What controllers know of their host.
#[derive(Debug, Clone)]
pub struct Host {
    pub node_id: String,
    pub data_dir: PathBuf,
    /// The Docker Engine, once it answers.
    pub engine: EngineHandle,
    /// The agent's nftables table, shared by the controllers that add to it.
    pub firewall: Arc<crate::firewall::Firewall>,
    /// The cluster networks' leases here: filled by the networks
    /// controller, asked by the containers controller.
    pub leases: Arc<crate::leases::Leases>,
    /// Weave attachment (mesh `weave`): made by the networks controller,
    /// its addresses reported by the containers controller.
    pub weave: Arc<crate::weave::Weave>,
    /// The agent's WireGuard choice and `mesh_endpoint` setting.
    pub mesh: crate::mesh::MeshOptions,
    /// The DNS server's settings (`[dns]`).
    pub dns: crate::dns::DnsOptions,
}

/// Starts controllers, each in a subtree of its own.
pub struct Supervisor {
    tree: TaskTree,
    ports: BTreeMap<&'static str, Arc<dyn Port>>,
    reports: Arc<Reports>,
}

impl Supervisor {
    /// Controllers will run in subtrees of `tree`.
    pub fn new(tree: TaskTree) -> Self {
        Self {
            tree,
            ports: BTreeMap::new(),
            reports: Arc::default(),
        }
    }

    /// Starts `controller` in a subtree of its own.
    pub fn add<C: Controller>(&mut self, controller: C) {
        let (desired_tx, desired) = watch::channel(None);
        let controller = Arc::new(controller);
        self.ports.insert(
            C::Kind::NAME,
            Arc::new(TypedPort {
                controller: controller.clone(),
                desired: desired_tx,
            }),
        );
        let cx = Context {
            desired,
            reports: Reporter::new(self.reports.clone()),
            tree: self.tree.child(),
        };
        self.tree.spawn(C::Kind::NAME, controller.run(cx));
    }

    /// What the link uses to reach the controllers.
    pub fn router(self) -> Router {
        Router {
            ports: Arc::new(self.ports),
            reports: self.reports,
        }
    }
}

/// How the link reaches the controllers: by section name, knowing nothing
/// of what sections, deliveries and reports hold.
#[derive(Clone)]
pub struct Router {
    ports: Arc<BTreeMap<&'static str, Arc<dyn Port>>>,
    reports: Arc<Reports>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.ports.keys()).finish()
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.ports.keys()).finish()
    }
}

impl Router {
    /// The capabilities of every controller.
    pub fn capabilities(&self) -> Vec<String> {
        self.ports
            .values()
            .map(|p| p.capability().to_owned())
            .collect()
    }

    /// The capability of a section's controller.
    pub fn capability_of(&self, section: &str) -> Option<&'static str> {
        self.ports.get(section).map(|p| p.capability())
    }

    /// Parses and checks every section of `plan`; the steps publish them
    /// once the plan is stored. A section no controller runs, or one that
    /// is invalid, refuses the plan.
    /// The controllers whose section the plan does not hold are told it is
    /// absent (a controller that had one may then undo what it made).
    pub fn prepare(&self, plan: &HostPlan) -> Result<Vec<Publish>, String> {
        let mut steps = plan
            .sections
            .iter()
            .map(|(name, section)| {
                let port = self.ports.get(name.as_str()).ok_or_else(|| {
                    format!("the plan has a section {name:?} this agent does not run")
                })?;
                port.prepare(section)
            })
            .collect::<Result<Vec<_>, String>>()?;
        steps.extend(
            self.ports
                .iter()
                .filter(|(name, _)| !plan.sections.contains_key(**name))
                .map(|(_, port)| port.absent()),
        );
        Ok(steps)
    }

    /// Hands a delivery to its section's controller.
    pub fn deliver(&self, message: SectionMessage) -> Result<(), String> {
        let port = self.ports.get(message.section.as_str()).ok_or_else(|| {
            format!(
                "a delivery for section {:?}, which this agent does not run",
                message.section
            )
        })?;
        port.deliver(message.body)
    }

    /// Starts a query's answer by its section's controller.
    ///
    /// # Errors
    /// No controller runs the section, or it answers no queries.
    pub fn query(
        &self,
        section: &str,
        body: serde_json::Value,
        out: tokio::sync::mpsc::Sender<serde_json::Value>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<(), String> {
        let port = self.ports.get(section).ok_or_else(|| {
            format!("a query for section {section:?}, which this agent does not run")
        })?;
        port.query(body, out, cancel)
    }

    pub fn reports(&self) -> &Reports {
        &self.reports
    }
}
