//! Recovery: replicas of hosts lost past the grace period move elsewhere,
//! and rollouts a stopped coordinator left unfinished carry on.

use std::collections::BTreeSet;

use skiff_api_types::EventKind;
use tracing::info;

use super::place::{hold_dependents, place};
use super::{
    DeployError, Deployer, Step, apply, current_defs, defs_of, hosts, last_deployed_before, rollout,
};
use crate::scheduler::HostStatus;
use crate::store::ReleaseStatus;

/// Moves the stateless replicas of nodes lost past the grace period to
/// other nodes. The lost node's plan loses them too, so when it comes back
/// it removes its copies and exactly the desired count runs. Returns how
/// many changes were made.
pub async fn reschedule_lost(d: &Deployer) -> Result<usize, DeployError> {
    // The usual case, decided from memory: every node that runs something is connected.
    if d.plans
        .nodes_with_containers()
        .iter()
        .all(|id| d.sessions.get(id).is_some())
    {
        return Ok(0);
    }
    let _guard = d.plans.edit().await;
    let hosts = hosts(d).await?;
    let down: BTreeSet<&str> = hosts
        .iter()
        .filter(|(h, _)| h.status == HostStatus::Down)
        .map(|(h, _)| h.attrs.id.as_str())
        .collect();
    if down.is_empty() {
        return Ok(0);
    }
    let mut changed = 0;
    for stack in d.store.stacks().await? {
        let affected = hosts.iter().any(|(h, p)| {
            down.contains(h.attrs.id.as_str()) && p.containers.iter().any(|c| c.stack == stack.name)
        });
        if !affected {
            continue;
        }
        let defs = current_defs(d, &stack.name, stack.current_release).await?;
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
            d.events
                .emit(EventKind::HostLost, Some(&stack.name), Some(node), what);
        }
        changed += t.steps.len();
        apply(d, t.immediate).await?;
    }
    Ok(changed)
}

/// Carries on, after a coordinator restart, with every rollout that was
/// under way: each stack whose current release is still `deploying` is
/// brought to it again. Replicas already replaced stay; the others are
/// replaced by a new rolling update, and held dependents start in order.
/// Returns how many stacks it resumed.
pub async fn resume(d: &Deployer) -> Result<usize, DeployError> {
    let mut resumed = 0;
    for stack in d.store.stacks().await? {
        let releases = d.store.releases(&stack.name).await?;
        let Some(current) = releases
            .iter()
            .find(|r| r.number == stack.current_release && r.status == ReleaseStatus::Deploying)
        else {
            continue;
        };
        let defs = defs_of(current)?;
        let guard = d.plans.edit().await;
        let hosts = hosts(d).await?;
        let revision = u64::try_from(current.number).unwrap_or(0);
        let mut t = place(&stack.name, &defs, &hosts, true, revision)?;
        let held = hold_dependents(&stack.name, &defs, &hosts, &mut t);
        apply(d, t.immediate).await?;
        drop(guard);
        let previous = last_deployed_before(&releases, current.number).map(|r| r.number);
        info!(
            stack = %stack.name,
            release = current.number,
            to_replace = t.updates.len(),
            "Resuming the rollout."
        );
        d.events.emit(
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
            d.clone(),
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
