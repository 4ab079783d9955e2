//! Deploys: a parsed stack becomes a numbered release, the scheduler places
//! its replicas, and every node whose containers change gets a new plan.
//!
//! This first version applies a release to all nodes at once: each agent
//! replaces what changed on its host (stop-first). Rolling updates across
//! hosts, health gates and automatic rollback build on the same pieces.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use skiff_shared::placement::NodeAttrs;
use skiff_shared::stack::Stack;
use skiff_shared::workload::ContainerSpec;
use tracing::info;

use crate::scheduler::{self, Host, HostStatus, Placement, Resources, Slot};
use crate::state::{AppState, NodePlan, now_ms};
use crate::store::StoreError;

pub mod resolve;

use resolve::{GLOBAL_SLOT, ServiceDef};

/// Why a deploy was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(
        "invalid stack name {0:?}: use 1-63 lowercase letters, digits or '-', starting with a letter or digit"
    )]
    Name(String),
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
    #[error("{}", .0.join("\n"))]
    Placement(Vec<String>),
    #[error("no stack {0:?}")]
    NoStack(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// One change a deploy makes, for dry runs and progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Start {
        container: String,
        node: String,
    },
    Stop {
        container: String,
        node: String,
        reason: String,
    },
    Replace {
        container: String,
        node: String,
    },
}

/// What a deploy did (or, for a dry run, would do).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub release: Option<i64>,
    pub steps: Vec<Step>,
    pub warnings: Vec<String>,
}

/// Checks a stack name: it becomes part of container and DNS names.
pub fn check_stack_name(name: &str) -> Result<(), DeployError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(DeployError::Name(name.to_owned()))
    }
}

/// The cluster's live nodes as the scheduler sees them, with each one's
/// current plan. A node counts as up while connected or within the grace
/// period since it was last seen.
async fn hosts(state: &AppState) -> Result<Vec<(Host, Arc<NodePlan>)>, StoreError> {
    let now = now_ms();
    let grace = i64::try_from(state.config.host_lost_grace.as_millis()).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    for n in state.store.nodes(false).await? {
        let up = state.sessions.get(&n.id).is_some()
            || n.last_seen_at
                .is_some_and(|seen| now.saturating_sub(seen) <= grace);
        let plan = state.plans.get(&n.id);
        out.push((
            Host {
                attrs: NodeAttrs {
                    id: n.id.clone(),
                    hostname: n.name.clone(),
                    os: "linux".into(),
                    arch: n.facts.arch.clone(),
                    labels: n.labels.clone(),
                },
                status: if up { HostStatus::Up } else { HostStatus::Down },
                capacity: Resources {
                    cpu_millis: u64::from(n.facts.cpus).saturating_mul(1000),
                    memory_bytes: n.facts.memory_bytes,
                },
                images: BTreeSet::new(),
            },
            plan,
        ));
    }
    Ok(out)
}

fn slot_of(c: &ContainerSpec) -> Slot {
    if c.slot == GLOBAL_SLOT {
        Slot::Global
    } else {
        Slot::Replica(c.slot)
    }
}

/// Deploys `stack` as `name` (or plans it, with `dry_run`).
pub async fn deploy(
    state: &AppState,
    name: &str,
    stack: &Stack,
    compose: &str,
    dry_run: bool,
) -> Result<Outcome, DeployError> {
    check_stack_name(name)?;
    let (defs, warnings) = resolve::resolve(name, stack)
        .map_err(|errors| DeployError::Invalid(errors.iter().map(ToString::to_string).collect()))?;
    // One deploy at a time: each reads and rewrites node plans.
    let _guard = state.deploy_lock.lock().await;
    let hosts = hosts(state).await?;
    let (steps, new_plans) = place(name, &defs, &hosts, false)?;
    if dry_run {
        return Ok(Outcome {
            release: None,
            steps,
            warnings,
        });
    }
    let services = serde_json::to_string(&defs).unwrap_or_default();
    let release = state
        .store
        .insert_release(name, compose, &services, now_ms())
        .await?;
    apply(state, new_plans).await?;
    info!(
        stack = name,
        release,
        steps = steps.len(),
        "Stack deployed."
    );
    Ok(Outcome {
        release: Some(release),
        steps,
        warnings,
    })
}

/// New containers per node id, for the nodes whose containers change.
type NodePlans = BTreeMap<String, Vec<ContainerSpec>>;

/// Schedules the stack and computes each changed node's new containers.
/// With `partial`, what could be placed is kept even when some replicas
/// could not be (after a host loss); otherwise any shortfall refuses it all.
fn place(
    name: &str,
    defs: &[ServiceDef],
    hosts: &[(Host, Arc<NodePlan>)],
    partial: bool,
) -> Result<(Vec<Step>, NodePlans), DeployError> {
    let current: Vec<Placement> = hosts
        .iter()
        .flat_map(|(h, plan)| {
            plan.containers
                .iter()
                .filter(|c| c.stack == name)
                .map(|c| Placement {
                    service: c.service.clone(),
                    slot: slot_of(c),
                    host: h.attrs.id.clone(),
                })
        })
        .collect();
    let host_list: Vec<Host> = hosts.iter().map(|(h, _)| h.clone()).collect();
    let services: Vec<scheduler::Service> = defs.iter().map(ServiceDef::to_scheduler).collect();
    let plan = scheduler::schedule(&host_list, &services, &current);
    if !partial && !plan.is_complete() {
        return Err(DeployError::Placement(
            plan.errors.iter().map(ToString::to_string).collect(),
        ));
    }
    let by_name: BTreeMap<&str, &ServiceDef> = defs.iter().map(|d| (d.name.as_str(), d)).collect();
    let mut steps = Vec::new();
    let mut new_plans = BTreeMap::new();
    for (host, plan_now) in hosts {
        let id = &host.attrs.id;
        let mut containers: Vec<ContainerSpec> = plan_now
            .containers
            .iter()
            .filter(|c| c.stack != name)
            .cloned()
            .collect();
        for p in plan.placements.iter().filter(|p| &p.host == id) {
            if let Some(def) = by_name.get(p.service.as_str()) {
                containers.push(def.container(p.slot));
            }
        }
        containers.sort_by_key(ContainerSpec::name);
        let before: BTreeMap<String, &ContainerSpec> = plan_now
            .containers
            .iter()
            .filter(|c| c.stack == name)
            .map(|c| (c.name(), c))
            .collect();
        let after: BTreeMap<String, &ContainerSpec> = containers
            .iter()
            .filter(|c| c.stack == name)
            .map(|c| (c.name(), c))
            .collect();
        for (cname, spec) in &after {
            match before.get(cname) {
                None => steps.push(Step::Start {
                    container: cname.clone(),
                    node: host.attrs.hostname.clone(),
                }),
                Some(old) if old.fingerprint() != spec.fingerprint() => {
                    steps.push(Step::Replace {
                        container: cname.clone(),
                        node: host.attrs.hostname.clone(),
                    });
                }
                Some(_) => {}
            }
        }
        for cname in before.keys().filter(|c| !after.contains_key(*c)) {
            steps.push(Step::Stop {
                container: cname.clone(),
                node: host.attrs.hostname.clone(),
                reason: "no longer in the stack's placements".into(),
            });
        }
        if containers != plan_now.containers {
            new_plans.insert(id.clone(), containers);
        }
    }
    Ok((steps, new_plans))
}

/// Stores and publishes new node plans.
async fn apply(
    state: &AppState,
    new_plans: BTreeMap<String, Vec<ContainerSpec>>,
) -> Result<(), StoreError> {
    for (node, containers) in new_plans {
        let generation = state
            .store
            .put_node_plan(&node, &containers, now_ms())
            .await?;
        let generation = u64::try_from(generation).unwrap_or(1);
        state.plans.publish(
            &node,
            NodePlan {
                generation,
                containers,
            },
        );
    }
    Ok(())
}

/// Moves the stateless replicas of nodes lost past the grace period to
/// other nodes. The lost node's plan loses them too, so when it comes back
/// it removes its copies and exactly the desired count runs. Returns how
/// many changes were made.
pub async fn reschedule_lost(state: &AppState) -> Result<usize, DeployError> {
    let _guard = state.deploy_lock.lock().await;
    let hosts = hosts(state).await?;
    let down: BTreeSet<&str> = hosts
        .iter()
        .filter(|(h, _)| h.status == HostStatus::Down)
        .map(|(h, _)| h.attrs.id.as_str())
        .collect();
    if down.is_empty() {
        return Ok(0);
    }
    let mut changed = 0;
    for stack in state.store.stacks().await? {
        let affected = hosts.iter().any(|(h, p)| {
            down.contains(h.attrs.id.as_str()) && p.containers.iter().any(|c| c.stack == stack.name)
        });
        if !affected {
            continue;
        }
        let Some(release) = state
            .store
            .releases(&stack.name)
            .await?
            .into_iter()
            .find(|r| r.number == stack.current_release)
        else {
            continue;
        };
        let defs: Vec<ServiceDef> = serde_json::from_str(&release.services).map_err(|e| {
            DeployError::Store(StoreError::Corrupt(format!(
                "release {}: {e}",
                release.number
            )))
        })?;
        let (steps, new_plans) = place(&stack.name, &defs, &hosts, true)?;
        if new_plans.is_empty() {
            continue;
        }
        for step in &steps {
            info!(stack = %stack.name, ?step, "Host lost: rescheduling.");
        }
        changed += steps.len();
        apply(state, new_plans).await?;
    }
    Ok(changed)
}

/// Removes a stack: its containers leave every node's plan.
pub async fn remove(state: &AppState, name: &str) -> Result<usize, DeployError> {
    let _guard = state.deploy_lock.lock().await;
    if !state.store.remove_stack(name, now_ms()).await? {
        return Err(DeployError::NoStack(name.to_owned()));
    }
    let mut new_plans = BTreeMap::new();
    let mut removed = 0;
    for n in state.store.nodes(false).await? {
        let plan = state.plans.get(&n.id);
        let kept: Vec<ContainerSpec> = plan
            .containers
            .iter()
            .filter(|c| c.stack != name)
            .cloned()
            .collect();
        if kept.len() != plan.containers.len() {
            removed += plan.containers.len() - kept.len();
            new_plans.insert(n.id.clone(), kept);
        }
    }
    apply(state, new_plans).await?;
    info!(stack = name, containers = removed, "Stack removed.");
    Ok(removed)
}

/// One replica of a stack as desired and as observed.
#[derive(Debug, Clone)]
pub struct Task {
    pub container: String,
    pub service: String,
    pub slot: u32,
    pub node_id: String,
    pub node: String,
    pub image: String,
    /// The agent's report for it, if any.
    pub observed: Option<skiff_shared::workload::ContainerStatus>,
    /// Whether the running container was created from the desired spec.
    pub up_to_date: bool,
}

/// The stack's replicas across the cluster.
pub async fn tasks(state: &AppState, name: &str) -> Result<Vec<Task>, DeployError> {
    if !state.store.stacks().await?.iter().any(|s| s.name == name) {
        return Err(DeployError::NoStack(name.to_owned()));
    }
    let mut out = Vec::new();
    for n in state.store.nodes(false).await? {
        let plan = state.plans.get(&n.id);
        let report = state.observed.get(&n.id);
        for c in plan.containers.iter().filter(|c| c.stack == name) {
            let cname = c.name();
            let observed = report
                .as_ref()
                .and_then(|(_, r)| r.containers.iter().find(|o| o.name == cname).cloned());
            let up_to_date = observed.as_ref().is_some_and(|o| o.spec == c.fingerprint());
            out.push(Task {
                container: cname,
                service: c.service.clone(),
                slot: c.slot,
                node_id: n.id.clone(),
                node: n.name.clone(),
                image: c.image.clone(),
                observed,
                up_to_date,
            });
        }
    }
    out.sort_by(|a, b| (&a.service, a.slot, &a.node).cmp(&(&b.service, b.slot, &b.node)));
    Ok(out)
}

/// How long a host may be silent before its replicas are placed elsewhere.
pub const DEFAULT_HOST_LOST_GRACE: Duration = Duration::from_secs(60);
