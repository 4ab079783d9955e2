//! From what runs to what should run: the pure part of a deploy. [`place`]
//! schedules a stack's services over the hosts (leaving out hosts where
//! another stack publishes one of a service's ports) and works out, per
//! node, the containers to add and remove at once and the replicas to
//! replace by a rolling update; [`hold_dependents`] takes new replicas of
//! services with `depends_on` out, for the rollout to start in order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use skiff_compose::placement::Constraint;
use skiff_shared::workload::ContainerSpec;

use super::resolve::{GLOBAL_SLOT, ServiceDef};
use super::{DeployError, Step};
use crate::plans::NodePlan;
use crate::scheduler::{self, Host, Placement, Slot};

pub(crate) fn slot_of(c: &ContainerSpec) -> Slot {
    if c.slot == GLOBAL_SLOT {
        Slot::Global
    } else {
        Slot::Replica(c.slot)
    }
}

/// New containers per node id, for the nodes whose containers change.
pub(crate) type NodePlans = BTreeMap<String, Vec<ContainerSpec>>;

/// A replica to replace on a host: the container running now and the one
/// that should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub node_id: String,
    pub node: String,
    pub old: ContainerSpec,
    pub new: ContainerSpec,
}

/// From what runs to what should run.
#[derive(Debug, Default)]
pub(crate) struct Transition {
    /// For dry runs and progress.
    pub(crate) steps: Vec<Step>,
    /// Node plans with replicas added and removed, but replaced ones still old.
    pub(crate) immediate: NodePlans,
    /// Replicas to replace, rolled out afterwards.
    pub(crate) updates: Vec<Update>,
}

/// Schedules the stack and works out the transition. New containers get
/// `revision`; replicas whose spec is unchanged keep theirs. With
/// `partial`, what could be placed is kept even when some replicas could
/// not be (after a host loss); otherwise any shortfall refuses it all.
pub(crate) fn place(
    name: &str,
    defs: &[ServiceDef],
    hosts: &[(Host, Arc<NodePlan>)],
    partial: bool,
    revision: u64,
) -> Result<Transition, DeployError> {
    let current: Vec<Placement> = hosts
        .iter()
        .flat_map(|(h, plan)| {
            // During a rolling update a slot may have two revisions on a host: one placement.
            let slots: BTreeSet<(String, Slot)> = plan
                .containers
                .iter()
                .filter(|c| c.stack == name)
                .map(|c| (c.service.clone(), slot_of(c)))
                .collect();
            slots.into_iter().map(|(service, slot)| Placement {
                service,
                slot,
                host: h.attrs.id.clone(),
            })
        })
        .collect();
    let host_list: Vec<Host> = hosts.iter().map(|(h, _)| h.clone()).collect();
    let mut services: Vec<scheduler::Service> = defs.iter().map(ServiceDef::to_scheduler).collect();
    // Hosts where another stack publishes one of a service's ports are
    // left out for it, and said so if that leaves too few.
    let mut port_notes: BTreeMap<String, (Vec<Constraint>, Vec<String>)> = BTreeMap::new();
    for (def, service) in defs.iter().zip(services.iter_mut()) {
        for (host, plan_now) in hosts {
            let Some((port, other)) = port_taken(name, &def.template, plan_now) else {
                continue;
            };
            let Ok(exclude) = format!("node.id != {}", host.attrs.id).parse::<Constraint>() else {
                continue;
            };
            service.constraints.push(exclude.clone());
            let notes = port_notes.entry(def.name.clone()).or_default();
            notes.0.push(exclude);
            notes.1.push(format!(
                "port {port} is published on {} by {}",
                host.attrs.hostname,
                other.name()
            ));
        }
    }
    let plan = scheduler::schedule(&host_list, &services, &current);
    if !partial && !plan.is_complete() {
        return Err(DeployError::Placement(
            plan.errors
                .iter()
                .map(|e| {
                    let notes = e.service().and_then(|s| port_notes.get(s));
                    let Some((hidden, notes)) = notes else {
                        return e.to_string();
                    };
                    let mut e = e.clone();
                    e.hide_constraints(hidden);
                    format!(
                        "{e}; {}: use another port or remove the other stack",
                        notes.join(", ")
                    )
                })
                .collect(),
        ));
    }
    let by_name: BTreeMap<&str, &ServiceDef> = defs.iter().map(|d| (d.name.as_str(), d)).collect();
    let mut t = Transition::default();
    for (host, plan_now) in hosts {
        let id = &host.attrs.id;
        let node = host.attrs.hostname.clone();
        // This stack's containers on the host by slot; the newest revision first.
        let mut before: BTreeMap<(String, u32), Vec<&ContainerSpec>> = BTreeMap::new();
        for c in plan_now.containers.iter().filter(|c| c.stack == name) {
            before
                .entry((c.service.clone(), c.slot))
                .or_default()
                .push(c);
        }
        for v in before.values_mut() {
            v.sort_by_key(|c| std::cmp::Reverse(c.revision));
        }
        let mut containers: Vec<ContainerSpec> = plan_now
            .containers
            .iter()
            .filter(|c| c.stack != name)
            .cloned()
            .collect();
        let mut kept_slots = BTreeSet::new();
        for p in plan.placements.iter().filter(|p| &p.host == id) {
            let Some(def) = by_name.get(p.service.as_str()) else {
                continue;
            };
            let mut want = def.container(p.slot);
            want.revision = revision;
            let slot_key = (want.service.clone(), want.slot);
            kept_slots.insert(slot_key.clone());
            match before.get(&slot_key).map(Vec::as_slice) {
                None | Some([]) => {
                    t.steps.push(Step::Start {
                        container: want.name(),
                        node: node.clone(),
                    });
                    containers.push(want);
                }
                Some([newest, ..]) if same_spec(newest, &want) => {
                    // Unchanged: keep it (an older revision still beside it goes).
                    containers.push((*newest).clone());
                }
                Some([newest, ..]) => {
                    t.steps.push(Step::Replace {
                        container: want.name(),
                        node: node.clone(),
                    });
                    containers.push((*newest).clone());
                    t.updates.push(Update {
                        node_id: id.clone(),
                        node: node.clone(),
                        old: (*newest).clone(),
                        new: want,
                    });
                }
            }
        }
        for ((service, slot), _) in before.iter().filter(|(k, _)| !kept_slots.contains(*k)) {
            t.steps.push(Step::Stop {
                container: format!("{name}.{service}.{slot}"),
                node: node.clone(),
                reason: "no longer in the stack's placements".into(),
            });
        }
        containers.sort_by_key(ContainerSpec::key);
        if containers != plan_now.containers {
            t.immediate.insert(id.clone(), containers);
        }
    }
    Ok(t)
}

/// Whether a planned container runs what `want` asks for. The DNS servers
/// and search domains are left out: they are set when the plan is applied, for its host.
pub(crate) fn same_spec(planned: &ContainerSpec, want: &ContainerSpec) -> bool {
    let mut planned = planned.clone();
    planned.dns.clone_from(&want.dns);
    planned.dns_search.clone_from(&want.dns_search);
    planned.fingerprint() == want.fingerprint()
}

/// A new replica held back until the services it depends on are ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub node_id: String,
    pub node: String,
    pub spec: ContainerSpec,
}

/// Takes the new replicas of services with `depends_on` out of the plans
/// about to be applied: [`rollout`] starts them once what they depend on
/// is ready, in the stack's start order.
pub(crate) fn hold_dependents(
    name: &str,
    defs: &[ServiceDef],
    hosts: &[(Host, Arc<NodePlan>)],
    t: &mut Transition,
) -> Vec<Held> {
    let dependent: BTreeSet<&str> = defs
        .iter()
        .filter(|d| !d.depends_on.is_empty())
        .map(|d| d.name.as_str())
        .collect();
    let mut held = Vec::new();
    if dependent.is_empty() {
        return held;
    }
    for (host, plan_now) in hosts {
        let id = &host.attrs.id;
        let Some(containers) = t.immediate.get_mut(id) else {
            continue;
        };
        let before: BTreeSet<String> = plan_now.containers.iter().map(ContainerSpec::key).collect();
        containers.retain(|c| {
            let hold = c.stack == name
                && dependent.contains(c.service.as_str())
                && !before.contains(&c.key());
            if hold {
                held.push(Held {
                    node_id: id.clone(),
                    node: host.attrs.hostname.clone(),
                    spec: c.clone(),
                });
            }
            !hold
        });
        if *containers == plan_now.containers {
            t.immediate.remove(id);
        }
    }
    held
}

/// A port `spec` publishes that a container of another stack on the host
/// publishes too, and that container.
fn port_taken<'a>(
    stack: &str,
    spec: &ContainerSpec,
    plan: &'a NodePlan,
) -> Option<(String, &'a ContainerSpec)> {
    spec.ports.iter().find_map(|p| {
        plan.containers
            .iter()
            .filter(|c| c.stack != stack)
            .find(|c| {
                c.ports
                    .iter()
                    .any(|q| q.published == p.published && q.protocol == p.protocol)
            })
            .map(|c| {
                let proto = format!("{:?}", p.protocol).to_lowercase();
                (format!("{}/{proto}", p.published), c)
            })
    })
}
