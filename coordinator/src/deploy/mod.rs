//! Deploys: a parsed stack becomes a numbered release, the scheduler places
//! its replicas, and every node whose containers change gets a new plan.
//!
//! Scale changes and moves apply at once; replicas whose spec changed are
//! replaced by a rolling update ([`rollout`]) that waits for each batch to
//! be healthy and rolls back by itself when one is not.

use skiff_api_types::EventKind;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use skiff_compose::placement::{Constraint, NodeAttrs};
use skiff_compose::stack::Stack;
use skiff_shared::workload::ContainerSpec;
use tracing::info;

use crate::plans::NodePlan;
use crate::scheduler::{self, Host, HostStatus, Placement, Resources, Slot};
use crate::state::{AppState, now_ms};
use crate::store::{ReleaseStatus, StoreError};

pub mod resolve;
pub mod rollout;

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
    #[error("a plan or release cannot be encoded: {0}")]
    Encode(#[from] serde_json::Error),
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
/// period since it was last seen, or since this coordinator started
/// (whichever is later): an outage of the coordinator loses no host.
async fn hosts(state: &AppState) -> Result<Vec<(Host, Arc<NodePlan>)>, StoreError> {
    let now = now_ms();
    let grace = i64::try_from(state.config.host_lost_grace.as_millis()).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    for n in state.store.nodes(false).await? {
        let seen = n.last_seen_at.unwrap_or(0).max(state.started_at_ms);
        let up = state.sessions.get(&n.id).is_some() || now.saturating_sub(seen) <= grace;
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
                images: state
                    .observed
                    .get(&n.id)
                    .map(|(_, o)| o.images.iter().cloned().collect())
                    .unwrap_or_default(),
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
    state: &Arc<AppState>,
    name: &str,
    stack: &Stack,
    compose: &str,
    dry_run: bool,
) -> Result<Outcome, DeployError> {
    check_stack_name(name)?;
    let secrets: BTreeMap<String, (u64, String)> = state
        .store
        .secrets(name)
        .await?
        .into_iter()
        .map(|s| (s.name, (u64::try_from(s.version).unwrap_or(0), s.digest)))
        .collect();
    let (defs, warnings) = resolve::resolve(name, stack, &secrets)
        .map_err(|errors| DeployError::Invalid(errors.iter().map(ToString::to_string).collect()))?;
    deploy_defs(state, name, defs, compose, warnings, dry_run).await
}

/// Deploys resolved services as a new release of `name`: scale changes
/// and moves apply at once; replicas whose spec changed are replaced by a
/// rolling update in the background ([`rollout`]).
pub async fn deploy_defs(
    state: &Arc<AppState>,
    name: &str,
    defs: Vec<ServiceDef>,
    compose: &str,
    warnings: Vec<String>,
    dry_run: bool,
) -> Result<Outcome, DeployError> {
    // One deploy at a time: each reads and rewrites node plans.
    let guard = state.deploy_lock.lock().await;
    let hosts = hosts(state).await?;
    let releases = state.store.releases(name).await?;
    let revision = releases.first().map_or(1, |r| r.number + 1);
    let previous = state
        .store
        .stacks()
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| s.current_release);
    let mut transition = place(
        name,
        &defs,
        &hosts,
        false,
        u64::try_from(revision).unwrap_or(0),
    )?;
    if dry_run {
        return Ok(Outcome {
            release: None,
            steps: transition.steps,
            warnings,
        });
    }
    let services = serde_json::to_string(&defs)?;
    let release = state
        .store
        .insert_release(name, compose, &services, now_ms())
        .await?;
    // A rollout still replacing replicas of this stack stops here; this
    // deploy starts from what runs now.
    state.rollouts.cancel(name);
    let held = hold_dependents(name, &defs, &hosts, &mut transition);
    apply(state, transition.immediate).await?;
    drop(guard);
    info!(
        stack = name,
        release,
        steps = transition.steps.len(),
        "Stack deployed."
    );
    state.events.emit(
        EventKind::Deploy,
        Some(name),
        None,
        format!(
            "release {release} recorded: {} changes, {} to roll out",
            transition.steps.len(),
            transition.updates.len()
        ),
    );
    rollout::start(
        state.clone(),
        name.to_owned(),
        release,
        previous,
        defs,
        held,
        transition.updates,
    );
    Ok(Outcome {
        release: Some(release),
        steps: transition.steps,
        warnings,
    })
}

/// New containers per node id, for the nodes whose containers change.
type NodePlans = BTreeMap<String, Vec<ContainerSpec>>;

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
struct Transition {
    /// For dry runs and progress.
    steps: Vec<Step>,
    /// Node plans with replicas added and removed, but replaced ones still old.
    immediate: NodePlans,
    /// Replicas to replace, rolled out afterwards.
    updates: Vec<Update>,
}

/// Schedules the stack and works out the transition. New containers get
/// `revision`; replicas whose spec is unchanged keep theirs. With
/// `partial`, what could be placed is kept even when some replicas could
/// not be (after a host loss); otherwise any shortfall refuses it all.
fn place(
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
                Some([newest, ..]) if newest.fingerprint() == want.fingerprint() => {
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
fn hold_dependents(
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

/// Where a stack's replicas of `service` are meant to run: node id, node
/// name and spec, from the node plans.
pub(crate) async fn planned(
    state: &AppState,
    stack: &str,
    service: &str,
) -> Result<Vec<(String, String, ContainerSpec)>, StoreError> {
    let mut out = Vec::new();
    for n in state.store.nodes(false).await? {
        let plan = state.plans.get(&n.id);
        out.extend(
            plan.containers
                .iter()
                .filter(|c| c.stack == stack && c.service == service)
                .map(|c| (n.id.clone(), n.name.clone(), c.clone())),
        );
    }
    Ok(out)
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

/// Builds, stores and publishes the plans of nodes whose containers change.
async fn apply(state: &AppState, new_plans: NodePlans) -> Result<(), DeployError> {
    for (node, containers) in new_plans {
        let Some(plan) = state.plans.next(&node, containers)? else {
            continue;
        };
        state
            .store
            .put_node_plan(&crate::plans::row(&node, &plan), now_ms())
            .await?;
        state.plans.publish(&node, plan);
    }
    Ok(())
}

/// Changes one node's containers in place (under the deploy lock),
/// storing and publishing its plan if they changed.
pub async fn edit_node_plan(
    state: &AppState,
    node_id: &str,
    edit: impl FnOnce(&mut Vec<ContainerSpec>),
) -> Result<(), DeployError> {
    let _guard = state.deploy_lock.lock().await;
    let current = state.plans.get(node_id);
    let mut containers = current.containers.clone();
    edit(&mut containers);
    containers.sort_by_key(ContainerSpec::key);
    if containers != current.containers {
        apply(state, BTreeMap::from([(node_id.to_owned(), containers)])).await?;
    }
    Ok(())
}

/// Moves the stateless replicas of nodes lost past the grace period to
/// other nodes. The lost node's plan loses them too, so when it comes back
/// it removes its copies and exactly the desired count runs. Returns how
/// many changes were made.
pub async fn reschedule_lost(state: &AppState) -> Result<usize, DeployError> {
    // The usual case, decided from memory: every node that runs something is connected.
    if state
        .plans
        .nodes_with_containers()
        .iter()
        .all(|id| state.sessions.get(id).is_some())
    {
        return Ok(0);
    }
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
        let defs = current_defs(state, &stack.name, stack.current_release).await?;
        if defs.is_empty() {
            continue;
        }
        let revision = u64::try_from(stack.current_release).unwrap_or(0);
        let t = place(&stack.name, &defs, &hosts, true, revision)?;
        if t.immediate.is_empty() {
            continue;
        }
        for step in t
            .steps
            .iter()
            .filter(|s| !matches!(s, Step::Replace { .. }))
        {
            info!(stack = %stack.name, ?step, "Host lost: rescheduling.");
            let (what, node) = match step {
                Step::Start { container, node } => (format!("{container} started"), node),
                Step::Stop {
                    container, node, ..
                } => (format!("{container} moved away"), node),
                Step::Replace { container, node } => (format!("{container} replaced"), node),
            };
            state
                .events
                .emit(EventKind::HostLost, Some(&stack.name), Some(node), what);
        }
        changed += t.steps.len();
        apply(state, t.immediate).await?;
    }
    Ok(changed)
}

/// Carries on, after a coordinator restart, with every rollout that was
/// under way: each stack whose current release is still `deploying` is
/// brought to it again. Replicas already replaced stay; the others are
/// replaced by a new rolling update, and held dependents start in order.
/// Returns how many stacks it resumed.
pub async fn resume(state: &Arc<AppState>) -> Result<usize, DeployError> {
    let mut resumed = 0;
    for stack in state.store.stacks().await? {
        let releases = state.store.releases(&stack.name).await?;
        let Some(current) = releases
            .iter()
            .find(|r| r.number == stack.current_release && r.status == ReleaseStatus::Deploying)
        else {
            continue;
        };
        let defs = defs_of(current)?;
        let guard = state.deploy_lock.lock().await;
        let hosts = hosts(state).await?;
        let revision = u64::try_from(current.number).unwrap_or(0);
        let mut t = place(&stack.name, &defs, &hosts, true, revision)?;
        let held = hold_dependents(&stack.name, &defs, &hosts, &mut t);
        apply(state, t.immediate).await?;
        drop(guard);
        let previous = last_deployed_before(&releases, current.number).map(|r| r.number);
        info!(
            stack = %stack.name,
            release = current.number,
            to_replace = t.updates.len(),
            "Resuming the rollout."
        );
        state.events.emit(
            EventKind::Rollout,
            Some(&stack.name),
            None,
            format!(
                "release {} resumed after a coordinator restart: {} to roll out",
                current.number,
                t.updates.len()
            ),
        );
        rollout::start(
            state.clone(),
            stack.name.clone(),
            current.number,
            previous,
            defs,
            held,
            t.updates,
        );
        resumed += 1;
    }
    Ok(resumed)
}

/// Removes a stack: its containers leave every node's plan.
pub async fn remove(state: &AppState, name: &str) -> Result<usize, DeployError> {
    let _guard = state.deploy_lock.lock().await;
    state.rollouts.cancel(name);
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
    state.events.emit(
        EventKind::StackRemoved,
        Some(name),
        None,
        format!("{removed} containers to stop"),
    );
    Ok(removed)
}

/// One replica of a stack as desired and as observed.
#[derive(Debug, Clone)]
pub struct Task {
    pub container: String,
    pub revision: u64,
    pub service: String,
    pub slot: u32,
    pub node_id: String,
    pub node: String,
    pub image: String,
    /// The agent's report for it, if any.
    pub observed: Option<skiff_shared::workload::ContainerStatus>,
    /// Whether the running container was created from the desired spec.
    pub up_to_date: bool,
    /// Why the agent could not create it (such as an image it cannot pull).
    pub error: Option<String>,
}

/// The stack's replicas across the cluster.
pub async fn tasks(state: &AppState, name: &str) -> Result<Vec<Task>, DeployError> {
    let stack = find_stack(state, name).await?;
    let defs = current_defs(state, name, stack.current_release).await?;
    let mut out = Vec::new();
    for n in state.store.nodes(false).await? {
        let plan = state.plans.get(&n.id);
        let report = state.observed.get(&n.id);
        for c in plan.containers.iter().filter(|c| c.stack == name) {
            let key = c.key();
            let observed = report
                .as_ref()
                .and_then(|(_, r)| r.containers.iter().find(|o| o.key == key).cloned());
            let current = defs
                .iter()
                .find(|d| d.name == c.service)
                .is_some_and(|d| d.container(slot_of(c)).fingerprint() == c.fingerprint());
            let up_to_date =
                current && observed.as_ref().is_some_and(|o| o.spec == c.fingerprint());
            let error = match (&observed, &report) {
                (None, Some((_, r))) => r
                    .error
                    .clone()
                    .filter(|e| e.contains(&c.image) || e.contains(&c.name())),
                _ => None,
            };
            out.push(Task {
                error,
                container: c.name(),
                revision: c.revision,
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
    out.sort_by(|a, b| {
        (&a.service, a.slot, &a.node, a.revision).cmp(&(&b.service, b.slot, &b.node, b.revision))
    });
    Ok(out)
}

/// A live stack by name.
pub async fn find_stack(
    state: &AppState,
    name: &str,
) -> Result<crate::store::StackRow, DeployError> {
    state
        .store
        .stacks()
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| DeployError::NoStack(name.to_owned()))
}

/// The resolved services recorded with a release.
fn defs_of(r: &crate::store::ReleaseRow) -> Result<Vec<ServiceDef>, DeployError> {
    serde_json::from_str(&r.services).map_err(|e| {
        DeployError::Store(StoreError::Corrupt(format!(
            "release {} of {}: {e}",
            r.number, r.stack
        )))
    })
}

/// The resolved services of a stack's release.
pub async fn current_defs(
    state: &AppState,
    name: &str,
    release: i64,
) -> Result<Vec<ServiceDef>, DeployError> {
    let Some(r) = state
        .store
        .releases(name)
        .await?
        .into_iter()
        .find(|r| r.number == release)
    else {
        return Ok(Vec::new());
    };
    defs_of(&r)
}

/// The newest release before `number` whose rollout completed (releases
/// are listed newest first): what a rollback goes back to.
fn last_deployed_before(
    releases: &[crate::store::ReleaseRow],
    number: i64,
) -> Option<&crate::store::ReleaseRow> {
    releases
        .iter()
        .find(|r| r.number < number && r.status == ReleaseStatus::Deployed)
}

/// Deploys release `to` of a stack again (default: the release before the
/// current one), as a new release: what it ran is restored exactly.
pub async fn rollback(
    state: &Arc<AppState>,
    name: &str,
    to: Option<i64>,
) -> Result<Outcome, DeployError> {
    let stack = find_stack(state, name).await?;
    let releases = state.store.releases(name).await?;
    let target = match to {
        Some(n) => releases.iter().find(|r| r.number == n),
        None => last_deployed_before(&releases, stack.current_release),
    };
    let Some(target) = target else {
        return Err(DeployError::Invalid(vec![match to {
            Some(n) => format!("stack {name} has no release {n}; see `skiff release ls {name}`"),
            None => format!("stack {name} has no earlier deployed release to roll back to"),
        }]));
    };
    let defs = defs_of(target)?;
    info!(stack = name, to = target.number, "Rolling back.");
    deploy_defs(state, name, defs, &target.compose, Vec::new(), false).await
}

/// Sets a service's replica count, as a new release of the current spec.
pub async fn scale(
    state: &Arc<AppState>,
    name: &str,
    service: &str,
    replicas: u32,
) -> Result<Outcome, DeployError> {
    let stack = find_stack(state, name).await?;
    let mut defs = current_defs(state, name, stack.current_release).await?;
    let Some(def) = defs.iter_mut().find(|d| d.name == service) else {
        return Err(DeployError::Invalid(vec![format!(
            "stack {name} has no service {service:?}"
        )]));
    };
    if def.replicas.is_none() {
        return Err(DeployError::Invalid(vec![format!(
            "service {service} is global (one per host); it cannot be scaled"
        )]));
    }
    if replicas > 10_000 {
        return Err(DeployError::Invalid(vec![format!(
            "{replicas} replicas is more than the 10000 a service may have"
        )]));
    }
    def.replicas = Some(replicas);
    let compose = state
        .store
        .releases(name)
        .await?
        .into_iter()
        .find(|r| r.number == stack.current_release)
        .map(|r| r.compose)
        .unwrap_or_default();
    deploy_defs(state, name, defs, &compose, Vec::new(), false).await
}

/// How long a host may be silent before its replicas are placed elsewhere.
pub const DEFAULT_HOST_LOST_GRACE: Duration = Duration::from_secs(60);
