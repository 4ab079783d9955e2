//! The plan book: every node's plan, built here from what the deploys
//! decided for it ([`NodePlan::containers`]) by every section of
//! [`crate::sections::Sections`], each section with its own generation.
//! A session follows its node's plan through a watch channel and sends
//! each new one; intermediate plans a slow agent missed are skipped.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use skiff_shared::plan::{HostPlan, Section};
use skiff_shared::workload::ContainerSpec;
use tokio::sync::watch;

use crate::sections::Sections;

/// The generation of a node's first plan, before anything was decided.
pub const FIRST_GENERATION: u64 = 1;

/// A node's plan at a generation.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePlan {
    pub generation: u64,
    /// When this generation was made (Unix ms): part of the signed bytes,
    /// which must be the same each time a generation is sent.
    pub issued_at_ms: u64,
    /// The containers the deploys decided for the node.
    pub containers: Vec<ContainerSpec>,
    /// Every section built from them, by name.
    pub sections: BTreeMap<String, Section>,
}

/// What every plan of this coordinator run carries besides its node's
/// part: the cluster, and the epoch this start of the coordinator began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub cluster_id: String,
    pub epoch: u64,
}

impl NodePlan {
    /// The plan as sent to an agent with `capabilities`: only the sections
    /// it announced it runs.
    pub fn for_agent(
        &self,
        node_id: &str,
        stamp: &Stamp,
        sections: &Sections,
        capabilities: &[String],
    ) -> HostPlan {
        HostPlan {
            cluster_id: stamp.cluster_id.clone(),
            epoch: stamp.epoch,
            node_id: node_id.to_owned(),
            generation: self.generation,
            issued_at_ms: self.issued_at_ms,
            sections: self
                .sections
                .iter()
                .filter(|(name, _)| {
                    sections
                        .get(name)
                        .is_some_and(|s| capabilities.iter().any(|c| c == s.capability()))
                })
                .map(|(name, section)| (name.clone(), section.clone()))
                .collect(),
        }
    }
}

/// Every node's latest plan.
#[derive(Debug)]
pub struct PlanBook {
    inner: Mutex<HashMap<String, watch::Sender<Arc<NodePlan>>>>,
    sections: Arc<Sections>,
    /// Held by whoever makes a node's next plan (deploys, rollout steps,
    /// removals, a new generation for an agent's new capabilities), so
    /// two never make the same generation.
    edits: tokio::sync::Mutex<()>,
    /// The generation each node was last sent, and the capabilities it
    /// was sent for (since this coordinator started).
    sent: Mutex<HashMap<String, (u64, Vec<String>)>>,
}

impl PlanBook {
    pub fn new(sections: Arc<Sections>) -> Self {
        Self {
            inner: Mutex::default(),
            sections,
            edits: tokio::sync::Mutex::new(()),
            sent: Mutex::default(),
        }
    }

    /// Waits for the right to make plans; hold it from reading a node's
    /// plan to publishing the next.
    pub async fn edit(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.edits.lock().await
    }

    /// Records that `node_id` is sent `generation` for an agent with
    /// `capabilities`. False when that generation already went to it for
    /// other capabilities: the agent would see other bytes under a
    /// generation it has (and refuse them), so it needs a new generation
    /// ([`PlanBook::renewed`]).
    pub fn record_send(&self, node_id: &str, generation: u64, capabilities: &[String]) -> bool {
        let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        match sent.get(node_id) {
            Some((g, caps)) if *g == generation && caps.as_slice() != capabilities => false,
            _ => {
                sent.insert(node_id.to_owned(), (generation, capabilities.to_vec()));
                true
            }
        }
    }

    /// The node's current plan at the next generation, unchanged otherwise.
    /// Call it holding [`PlanBook::edit`].
    pub fn renewed(&self, node_id: &str) -> NodePlan {
        let current = self.get(node_id);
        NodePlan {
            generation: current.generation + 1,
            issued_at_ms: skiff_shared::unix_millis(),
            containers: current.containers.clone(),
            sections: current.sections.clone(),
        }
    }

    pub fn sections(&self) -> &Arc<Sections> {
        &self.sections
    }

    fn sender(&self, node_id: &str) -> watch::Sender<Arc<NodePlan>> {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(node_id.to_owned())
            .or_insert_with(|| watch::Sender::new(Arc::new(self.first(node_id))))
            .clone()
    }

    /// What a node gets before anything was decided for it: every section
    /// built for no containers.
    fn first(&self, node_id: &str) -> NodePlan {
        let sections = self
            .sections
            .build(node_id, &[])
            .unwrap_or_default()
            .into_iter()
            .map(|(name, body)| {
                (
                    name,
                    Section {
                        generation: FIRST_GENERATION,
                        body,
                    },
                )
            })
            .collect();
        NodePlan {
            generation: FIRST_GENERATION,
            issued_at_ms: skiff_shared::unix_millis(),
            containers: Vec::new(),
            sections,
        }
    }

    /// The node's current plan, and a receiver that sees every later one.
    pub fn subscribe(&self, node_id: &str) -> watch::Receiver<Arc<NodePlan>> {
        self.sender(node_id).subscribe()
    }

    /// The node's current plan.
    pub fn get(&self, node_id: &str) -> Arc<NodePlan> {
        self.sender(node_id).borrow().clone()
    }

    /// Nodes whose plan runs at least one container.
    pub fn nodes_with_containers(&self) -> Vec<String> {
        let map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .filter(|(_, tx)| !tx.borrow().containers.is_empty())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The plan the node gets if its containers become `containers`: every
    /// section built again, and each one that changed, like the plan
    /// itself, at the next generation. `None` when nothing changes.
    ///
    /// # Errors
    /// When a section cannot be serialised.
    pub fn next(
        &self,
        node_id: &str,
        containers: Vec<ContainerSpec>,
    ) -> serde_json::Result<Option<NodePlan>> {
        let current = self.get(node_id);
        let built = self.sections.build(node_id, &containers)?;
        let generation = current.generation + 1;
        let sections: BTreeMap<String, Section> = built
            .into_iter()
            .map(|(name, body)| {
                let section = match current.sections.get(&name) {
                    Some(old) if old.body == body => old.clone(),
                    _ => Section { generation, body },
                };
                (name, section)
            })
            .collect();
        if sections == current.sections && containers == current.containers {
            return Ok(None);
        }
        Ok(Some(NodePlan {
            generation,
            issued_at_ms: skiff_shared::unix_millis(),
            containers,
            sections,
        }))
    }

    /// Publishes a node's new plan (already stored) to its session.
    pub fn publish(&self, node_id: &str, plan: NodePlan) {
        self.sender(node_id).send_replace(Arc::new(plan));
    }
}

/// A plan as stored.
pub fn row(node_id: &str, plan: &NodePlan) -> crate::store::NodePlanRow {
    crate::store::NodePlanRow {
        node_id: node_id.to_owned(),
        generation: i64::try_from(plan.generation).unwrap_or(i64::MAX),
        containers: plan.containers.clone(),
        sections: plan.sections.clone(),
    }
}

impl PlanBook {
    /// Restores a stored plan at start-up. Its sections are built again
    /// from its containers; when one comes out different (this release
    /// builds it otherwise), the plan that results is returned to be
    /// stored, already published.
    ///
    /// # Errors
    /// When a section cannot be serialised.
    pub fn restore(&self, row: crate::store::NodePlanRow) -> serde_json::Result<Option<NodePlan>> {
        let stored = NodePlan {
            generation: u64::try_from(row.generation).unwrap_or(FIRST_GENERATION),
            issued_at_ms: skiff_shared::unix_millis(),
            containers: row.containers,
            sections: row.sections,
        };
        let containers = stored.containers.clone();
        self.publish(&row.node_id, stored);
        let next = self.next(&row.node_id, containers)?;
        if let Some(plan) = &next {
            self.publish(&row.node_id, plan.clone());
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sections::networks::NetworksFeature;

    fn spec(service: &str, network: &str) -> ContainerSpec {
        serde_json::from_value(serde_json::json!({
            "stack": "shop", "service": service, "slot": 1, "image": "x",
            "networks": [{"name": network, "aliases": [service]}]
        }))
        .unwrap()
    }

    #[test]
    fn a_section_keeps_its_generation_until_it_changes() {
        let mut sections = Sections::empty();
        sections.add(NetworksFeature { network: None });
        let book = PlanBook::new(Arc::new(sections));
        let first = book.get("n1");
        assert_eq!(first.generation, 1);
        assert_eq!(first.sections["networks"].generation, 1);

        let p2 = book
            .next("n1", vec![spec("web", "front")])
            .unwrap()
            .unwrap();
        assert_eq!((p2.generation, p2.sections["networks"].generation), (2, 2));
        book.publish("n1", p2);

        // Another container on the same network: the plan changes, its
        // networks section does not.
        let both = vec![spec("web", "front"), spec("api", "front")];
        let p3 = book.next("n1", both.clone()).unwrap().unwrap();
        assert_eq!((p3.generation, p3.sections["networks"].generation), (3, 2));
        book.publish("n1", p3);

        assert!(book.next("n1", both).unwrap().is_none(), "nothing changed");
    }

    #[test]
    fn an_agent_gets_only_the_sections_it_announced() {
        let mut sections = Sections::empty();
        sections.add(NetworksFeature { network: None });
        let sections = Arc::new(sections);
        let book = PlanBook::new(sections.clone());
        let plan = book
            .next("n1", vec![spec("web", "front")])
            .unwrap()
            .unwrap();
        let caps = |c: &[&str]| c.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let stamp = Stamp {
            cluster_id: "c1".into(),
            epoch: 7,
        };
        let wire = plan.for_agent("n1", &stamp, &sections, &caps(&["networks.v1"]));
        assert_eq!(wire.sections.keys().collect::<Vec<_>>(), ["networks"]);
        assert_eq!((wire.node_id.as_str(), wire.generation), ("n1", 2));
        assert_eq!((wire.cluster_id.as_str(), wire.epoch), ("c1", 7));
        let again = plan.for_agent("n1", &stamp, &sections, &caps(&["networks.v1"]));
        assert_eq!(
            serde_json::to_vec(&again).unwrap(),
            serde_json::to_vec(&wire).unwrap(),
            "a generation is the same bytes each time it is sent"
        );
        let wire = plan.for_agent("n1", &stamp, &sections, &caps(&["cert-renewal.v1"]));
        assert!(wire.sections.is_empty(), "no capability, no section");

        assert!(book.record_send("n1", 2, &caps(&["networks.v1"])));
        assert!(
            book.record_send("n1", 2, &caps(&["networks.v1"])),
            "the same again"
        );
        assert!(
            !book.record_send("n1", 2, &caps(&["networks.v1", "dns.v1"])),
            "other capabilities need a new generation"
        );
        assert!(book.record_send("n1", 3, &caps(&["networks.v1", "dns.v1"])));
    }
}
