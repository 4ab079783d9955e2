//! Operations on a deployed stack: its replicas as desired and observed,
//! removal, rollback to an earlier release, and scaling a service.

use std::collections::BTreeMap;

use skiff_api_types::EventKind;
use skiff_shared::workload::{ContainerSpec, ContainerState, FailureStage};
use tracing::info;

use super::place::{same_spec, slot_of};
use super::resolve::ServiceDef;
use super::{DeployError, Deployer, Outcome, apply, deploy_defs};
use crate::now_ms;
use crate::store::{ReleaseStatus, StoreError};

/// Removes a stack: its containers leave every node's plan.
pub async fn remove(d: &Deployer, name: &str) -> Result<usize, DeployError> {
    let _guard = d.plans.edit().await;
    d.rollouts.cancel(name);
    if !d.store.remove_stack(name, now_ms()).await? {
        return Err(DeployError::NoStack(name.to_owned()));
    }
    let mut new_plans = BTreeMap::new();
    let mut removed = 0;
    for n in d.store.nodes(false).await? {
        let plan = d.plans.get(&n.id);
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
    if let Some(book) = &d.dns {
        book.remove_stack(name);
    }
    if let Some(logs) = &d.logs {
        logs.set_stack(name, None);
    }
    apply(d, new_plans).await?;
    info!(stack = name, containers = removed, "Stack removed.");
    d.events.emit(
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
    /// Whether every connected host's DNS server and proxy give it (the
    /// records publish it and every such host serves them); `None` without
    /// the cluster's records or for a service with none.
    pub serving: Option<bool>,
}

/// The stack's replicas across the cluster.
pub async fn tasks(d: &Deployer, name: &str) -> Result<Vec<Task>, DeployError> {
    let stack = find_stack(d, name).await?;
    let defs = current_defs(d, name, stack.current_release).await?;
    let mut out = Vec::new();
    let records = d.dns.as_ref().map(|book| {
        let records = book.current();
        let served = book.behind(records.generation, &d.sessions).is_empty();
        (records, served)
    });
    for n in d.store.nodes(false).await? {
        let plan = d.plans.get(&n.id);
        let report = d.observed.get(&n.id);
        for c in plan.containers.iter().filter(|c| c.stack == name) {
            let key = c.key();
            let observed = report
                .as_ref()
                .and_then(|(_, r)| r.containers.iter().find(|o| o.key == key).cloned());
            let current = defs
                .iter()
                .find(|d| d.name == c.service)
                .is_some_and(|d| same_spec(c, &d.container(slot_of(c))));
            let up_to_date =
                current && observed.as_ref().is_some_and(|o| o.spec == c.fingerprint());
            let running = observed
                .as_ref()
                .is_some_and(|o| o.state == ContainerState::Running);
            let failure = report
                .as_ref()
                .and_then(|(_, r)| r.failure(&key))
                .filter(|_| !running)
                .map(|f| match f.stage {
                    FailureStage::Pull => f.message.clone(),
                    stage => format!("could not {stage}: {}", f.message),
                });
            // Agents before typed failures: the round's error, if it names it.
            let error = failure.or_else(|| match (&observed, &report) {
                (None, Some((_, r))) => r
                    .error
                    .clone()
                    .filter(|e| e.contains(&c.image) || e.contains(&c.name())),
                _ => None,
            });
            let serving = records.as_ref().and_then(|(records, served)| {
                records
                    .is_published(name, &c.service, c.slot, &n.name, c.revision)
                    .map(|published| published && *served)
            });
            out.push(Task {
                error,
                serving,
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
pub async fn find_stack(d: &Deployer, name: &str) -> Result<crate::store::StackRow, DeployError> {
    d.store
        .stacks()
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| DeployError::NoStack(name.to_owned()))
}

/// The resolved services recorded with a release.
pub fn defs_of(r: &crate::store::ReleaseRow) -> Result<Vec<ServiceDef>, DeployError> {
    serde_json::from_str(&r.services).map_err(|e| {
        DeployError::Store(StoreError::Corrupt(format!(
            "release {} of {}: {e}",
            r.number, r.stack
        )))
    })
}

/// The resolved services of a stack's release.
pub async fn current_defs(
    d: &Deployer,
    name: &str,
    release: i64,
) -> Result<Vec<ServiceDef>, DeployError> {
    let Some(r) = d
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
pub(crate) fn last_deployed_before(
    releases: &[crate::store::ReleaseRow],
    number: i64,
) -> Option<&crate::store::ReleaseRow> {
    releases
        .iter()
        .find(|r| r.number < number && r.status == ReleaseStatus::Deployed)
}

/// Deploys release `to` of a stack again (default: the release before the
/// current one), as a new release: what it ran is restored exactly.
pub async fn rollback(d: &Deployer, name: &str, to: Option<i64>) -> Result<Outcome, DeployError> {
    let stack = find_stack(d, name).await?;
    let releases = d.store.releases(name).await?;
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
    deploy_defs(d, name, defs, &target.compose, Vec::new(), false).await
}

/// Sets a service's replica count, as a new release of the current spec.
pub async fn scale(
    d: &Deployer,
    name: &str,
    service: &str,
    replicas: u32,
) -> Result<Outcome, DeployError> {
    let stack = find_stack(d, name).await?;
    let mut defs = current_defs(d, name, stack.current_release).await?;
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
    let compose = d
        .store
        .releases(name)
        .await?
        .into_iter()
        .find(|r| r.number == stack.current_release)
        .map(|r| r.compose)
        .unwrap_or_default();
    deploy_defs(d, name, defs, &compose, Vec::new(), false).await
}
