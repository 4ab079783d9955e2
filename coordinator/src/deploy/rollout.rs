//! Rolling updates: replicas whose spec changed are replaced in batches of
//! `update_config.parallelism`, start-first or stop-first, each batch
//! waiting until its new containers run (and are healthy, when they have
//! a health check) for `monitor`. A batch that fails triggers
//! `failure_action`: by default every replaced replica goes back to what it
//! ran before, by itself, and the release is marked rolled back.
//!
//! Before replacing anything, new replicas of services with `depends_on`
//! are started in the stack's start order, each service once the services
//! it depends on are started, healthy or completed, as its condition says.
//!
//! One rollout per stack runs at a time; a new deploy of the stack cancels
//! the one in progress and starts from what then runs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use skiff_api_types::EventKind;
use skiff_compose::stack::{DependsCondition, FailureAction};
use skiff_shared::tasks::TaskTree;
use skiff_shared::workload::ContainerSpec;
use tracing::{info, warn};

use super::resolve::{ServiceDef, UpdatePolicy};
use super::unpublish::{self, Leaving};
use super::wait::{Target, Want, wait_for, wait_ready};
use super::{Deployer, Held, Update, edit_node_plan, order};
use crate::now_ms;
use crate::store::ReleaseStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutState {
    InProgress,
    Completed,
    /// A batch failed and every replaced replica went back.
    RolledBack,
    /// A batch failed and `failure_action` is `pause`.
    Paused,
    /// Cancelled by a newer deploy of the stack.
    Superseded,
    /// The rollback itself failed.
    Failed,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::RolledBack => "rolled_back",
            Self::Paused => "paused",
            Self::Superseded => "superseded",
            Self::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        self != Self::InProgress
    }
}

/// Where a stack's latest rollout is.
#[derive(Debug, Clone)]
pub struct RolloutStatus {
    pub release: i64,
    pub state: RolloutState,
    pub message: String,
    pub replaced: usize,
    pub total: usize,
    pub updated_at_ms: u64,
}

/// The latest rollout of each stack; each runs in its own subtree.
#[derive(Debug)]
pub struct RolloutBook {
    tree: TaskTree,
    inner: Mutex<HashMap<String, (RolloutStatus, TaskTree)>>,
}

impl RolloutBook {
    pub fn new(tree: TaskTree) -> Self {
        Self {
            tree,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (RolloutStatus, TaskTree)>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, stack: &str) -> Option<RolloutStatus> {
        self.lock().get(stack).map(|(s, _)| s.clone())
    }

    fn update(&self, stack: &str, release: i64, f: impl FnOnce(&mut RolloutStatus)) {
        if let Some((s, _)) = self.lock().get_mut(stack)
            && s.release == release
        {
            f(s);
            s.updated_at_ms = skiff_shared::unix_millis();
        }
    }

    /// Cancels the stack's rollout in progress, if any.
    pub fn cancel(&self, stack: &str) {
        if let Some((_, token)) = self.lock().get(stack) {
            token.cancel();
        }
    }
}

/// Starts the rollout of `release` in the background; `previous` is the
/// release the stack ran before, to go back to on failure.
pub fn start(
    d: Deployer,
    stack: String,
    release: i64,
    previous: Option<i64>,
    defs: Vec<ServiceDef>,
    held: Vec<Held>,
    updates: Vec<super::Update>,
) {
    let token = d.rollouts.tree.child();
    let status = RolloutStatus {
        release,
        state: RolloutState::InProgress,
        message: String::new(),
        replaced: 0,
        total: updates.len(),
        updated_at_ms: skiff_shared::unix_millis(),
    };
    if let Some((old, old_token)) = d
        .rollouts
        .lock()
        .insert(stack.clone(), (status, token.clone()))
    {
        old_token.cancel();
        let _ = old;
    }
    let tree = token.clone();
    tree.spawn("rollout", async move {
        let outcome = match start_in_order(&d, &stack, release, &defs, held, &token).await {
            Ok(()) => run(&d, &stack, release, &defs, updates, &token).await,
            Err(stop) => Err(stop),
        };
        if matches!(outcome, Err(Stop::Superseded)) && d.rollouts.tree.is_cancelled() {
            // The coordinator is stopping: the release stays `deploying`,
            // and the next start carries on with it.
            info!(stack = %stack, release, "Rollout interrupted by shutdown.");
            return;
        }
        let (rollout_state, message) = match outcome {
            Ok(()) => (RolloutState::Completed, "all replicas updated".to_owned()),
            Err(Stop::Superseded) => (
                RolloutState::Superseded,
                "superseded by a newer deploy".to_owned(),
            ),
            Err(Stop::Paused(why)) => (RolloutState::Paused, why),
            Err(Stop::RolledBack(why)) => (RolloutState::RolledBack, why),
            Err(Stop::Failed(why)) => (RolloutState::Failed, why),
        };
        let release_status = match rollout_state {
            RolloutState::Completed | RolloutState::Superseded | RolloutState::InProgress => {
                ReleaseStatus::Deployed
            }
            RolloutState::RolledBack => ReleaseStatus::RolledBack,
            RolloutState::Paused => ReleaseStatus::Paused,
            RolloutState::Failed => ReleaseStatus::Failed,
        };
        let message_opt = (rollout_state != RolloutState::Completed).then_some(message.as_str());
        if let Err(e) = d
            .store
            .set_release_status(&stack, release, release_status, message_opt)
            .await
        {
            warn!(error = %e, "Recording the release status failed.");
        }
        if rollout_state == RolloutState::RolledBack
            && let Some(previous) = previous
            && let Err(e) = d
                .store
                .set_current_release(&stack, previous, now_ms())
                .await
        {
            warn!(error = %e, "Recording the rolled-back release failed.");
        }
        d.events.emit(
            EventKind::Rollout,
            Some(&stack),
            None,
            format!("release {release} {}: {message}", rollout_state.as_str()),
        );
        if rollout_state == RolloutState::Completed {
            info!(stack = %stack, release, "Rollout completed.");
        } else {
            warn!(stack = %stack, release, state = rollout_state.as_str(), reason = %message, "Rollout ended early.");
        }
        d.rollouts.update(&stack, release, |s| {
            s.state = rollout_state;
            s.message = message;
        });
    });
}

/// Why a rollout stopped before completing.
pub(super) enum Stop {
    Superseded,
    Paused(String),
    RolledBack(String),
    Failed(String),
}

/// Starts the held replicas service by service, each once its
/// dependencies meet their condition. A required dependency that does not
/// fails the release and its dependents stay stopped.
async fn start_in_order(
    d: &Deployer,
    stack: &str,
    release: i64,
    defs: &[ServiceDef],
    held: Vec<Held>,
    token: &TaskTree,
) -> Result<(), Stop> {
    for def in defs {
        let mine: Vec<&Held> = held.iter().filter(|h| h.spec.service == def.name).collect();
        if mine.is_empty() {
            continue;
        }
        for (dep, condition) in &def.depends_on {
            let want = match condition.condition {
                DependsCondition::ServiceStarted => Want::Started,
                DependsCondition::ServiceHealthy => Want::Healthy,
                DependsCondition::ServiceCompletedSuccessfully => Want::Completed,
            };
            d.rollouts.update(stack, release, |s| {
                s.message = format!("{}: waiting until {dep} is {}", def.name, want.as_str());
            });
            let planned = super::planned(d, stack, dep)
                .await
                .map_err(|e| Stop::Failed(e.to_string()))?;
            let targets = newest_per_slot(&planned);
            match wait_for(d, &targets, want, Duration::ZERO, token).await {
                Ok(()) => {}
                Err(Stop::Superseded) => return Err(Stop::Superseded),
                Err(Stop::Paused(why) | Stop::RolledBack(why) | Stop::Failed(why)) => {
                    let why = format!(
                        "{} not started: it depends on {dep} being {}, but {why}",
                        def.name,
                        want.as_str()
                    );
                    if condition.required {
                        return Err(Stop::Failed(why));
                    }
                    warn!(stack, reason = %why, "Optional dependency not ready; starting anyway.");
                    d.events.emit(
                        EventKind::Deploy,
                        Some(stack),
                        None,
                        format!("{why}; starting anyway (not required)"),
                    );
                }
            }
        }
        for h in mine {
            let spec = h.spec.clone();
            edit_node_plan(d, &h.node_id, move |c| {
                if !c.iter().any(|x| x.key() == spec.key()) {
                    c.push(spec);
                }
            })
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?;
            d.events.emit(
                EventKind::Deploy,
                Some(stack),
                Some(&h.node),
                format!("{} started after its dependencies", h.spec.name()),
            );
        }
    }
    Ok(())
}

/// Per replica slot, the container of the newest revision.
fn newest_per_slot(planned: &[(String, String, ContainerSpec)]) -> Vec<Target<'_>> {
    let mut by_slot: HashMap<u32, &(String, String, ContainerSpec)> = HashMap::new();
    for p in planned {
        let e = by_slot.entry(p.2.slot).or_insert(p);
        if p.2.revision > e.2.revision {
            *e = p;
        }
    }
    let mut out: Vec<Target<'_>> = by_slot
        .into_values()
        .map(|(node_id, node, spec)| Target {
            node_id,
            node,
            spec,
        })
        .collect();
    out.sort_by_key(|t| (t.spec.slot, t.node_id));
    out
}

async fn run(
    d: &Deployer,
    stack: &str,
    release: i64,
    defs: &[ServiceDef],
    updates: Vec<Update>,
    token: &TaskTree,
) -> Result<(), Stop> {
    let mut done: Vec<(Update, bool)> = Vec::new();
    for def in defs {
        let mine: Vec<Update> = updates
            .iter()
            .filter(|u| u.new.service == def.name)
            .cloned()
            .collect();
        let batch_size = usize::try_from(def.update.parallelism).unwrap_or(1);
        let batch_size = if batch_size == 0 {
            mine.len().max(1)
        } else {
            batch_size
        };
        for (i, batch) in mine.chunks(batch_size).enumerate() {
            if i > 0 && def.update.delay_ms > 0 {
                pause_for(Duration::from_millis(def.update.delay_ms), token).await?;
            }
            let result = replace_batch(d, (stack, release), batch, &def.update, token).await;
            match result {
                Ok(()) => {
                    for u in batch {
                        d.events.emit(
                            EventKind::Rollout,
                            Some(stack),
                            Some(&u.node),
                            format!("{} updated", u.new.name()),
                        );
                    }
                    done.extend(batch.iter().cloned().map(|u| (u, def.update.start_first)));
                    d.rollouts
                        .update(stack, release, |s| s.replaced += batch.len());
                }
                Err(Stop::Superseded) => return Err(Stop::Superseded),
                Err(Stop::Paused(why) | Stop::RolledBack(why) | Stop::Failed(why)) => {
                    // The failed batch is rolled back with the others.
                    done.extend(batch.iter().cloned().map(|u| (u, def.update.start_first)));
                    match def.update.failure_action {
                        FailureAction::Continue => {
                            warn!(stack, reason = %why, "Update batch failed; continuing as configured.");
                        }
                        FailureAction::Pause => return Err(Stop::Paused(why)),
                        FailureAction::Rollback => {
                            warn!(stack, reason = %why, "Update batch failed; rolling back.");
                            d.rollouts.update(stack, release, |s| {
                                s.message = format!("rolling back: {why}")
                            });
                            return match roll_back(d, (stack, release), defs, done, token).await {
                                Ok(()) => Err(Stop::RolledBack(why)),
                                Err(Stop::Superseded) => Err(Stop::Superseded),
                                Err(Stop::Paused(e) | Stop::RolledBack(e) | Stop::Failed(e)) => {
                                    Err(Stop::Failed(format!(
                                        "{why}; the rollback failed too: {e}"
                                    )))
                                }
                            };
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Puts every replaced replica back on its previous spec, with each
/// service's `rollback_config`.
async fn roll_back(
    d: &Deployer,
    at: (&str, i64),
    defs: &[ServiceDef],
    done: Vec<(Update, bool)>,
    token: &TaskTree,
) -> Result<(), Stop> {
    for def in defs {
        let back: Vec<Update> = done
            .iter()
            .filter(|(u, _)| u.new.service == def.name)
            .map(|(u, _)| Update {
                node_id: u.node_id.clone(),
                node: u.node.clone(),
                old: u.new.clone(),
                new: u.old.clone(),
            })
            .collect();
        let size = usize::try_from(def.rollback.parallelism).unwrap_or(1);
        let size = if size == 0 { back.len().max(1) } else { size };
        for batch in back.chunks(size) {
            replace_batch(d, at, batch, &def.rollback, token).await?;
        }
    }
    Ok(())
}

/// Replaces one batch and waits until the new containers are ready.
/// Start-first replicas whose new container needs a host port held on
/// its host are replaced stop-first, with a warning.
async fn replace_batch(
    d: &Deployer,
    at: (&str, i64),
    batch: &[Update],
    policy: &UpdatePolicy,
    token: &TaskTree,
) -> Result<(), Stop> {
    let store_err = |e: super::DeployError| Stop::Failed(e.to_string());
    let start_first: Vec<bool> = batch
        .iter()
        .map(|u| policy.start_first && !forced_stop_first(d, at, u))
        .collect();
    let leaving = |first: bool| -> Vec<Leaving> {
        batch
            .iter()
            .zip(&start_first)
            .filter(|(_, sf)| **sf == first)
            .map(|(u, _)| Leaving {
                node_id: u.node_id.clone(),
                key: u.old.key(),
                stack: u.old.stack.clone(),
                service: u.old.service.clone(),
            })
            .collect()
    };
    let (stopping, staying) = (leaving(false), leaving(true));
    if !stopping.is_empty() {
        // The old ones leave DNS, and drain, before they stop.
        unpublish::unpublish(d, &stopping, token).await?;
    }
    for (u, &start_first) in batch.iter().zip(&start_first) {
        let (old_key, new) = (u.old.key(), u.new.clone());
        edit_node_plan(d, &u.node_id, move |c| {
            if !start_first {
                c.retain(|x| x.key() != old_key);
            }
            if !c.iter().any(|x| x.key() == new.key()) {
                c.push(new);
            }
        })
        .await
        .map_err(store_err)?;
    }
    if !stopping.is_empty() {
        unpublish::forget(d, &stopping);
    }
    let ready = wait_ready(d, batch, Duration::from_millis(policy.monitor_ms), token).await;
    // Start-first: whether the new ones came up or not, the old ones stay
    // until the batch succeeded; on failure the rollback removes the new ones.
    if ready.is_ok() {
        // Every host answers with the new ones, then without the old
        // ones, which drain and only then stop.
        unpublish::publish(d, &batch[0].new.stack, token).await?;
        if !staying.is_empty() {
            unpublish::unpublish(d, &staying, token).await?;
            for (u, _) in batch.iter().zip(&start_first).filter(|(_, sf)| **sf) {
                let old_key = u.old.key();
                edit_node_plan(d, &u.node_id, move |c| c.retain(|x| x.key() != old_key))
                    .await
                    .map_err(store_err)?;
            }
            unpublish::forget(d, &staying);
        }
    }
    ready
}

/// Whether `u`, configured start-first, must be replaced stop-first: its
/// new container needs a host port that a container planned on its host
/// holds (the replica it replaces, most often). Says so in the rollout's
/// progress, the log and the event log.
fn forced_stop_first(d: &Deployer, (stack, release): (&str, i64), u: &Update) -> bool {
    let plan = d.plans.get(&u.node_id);
    let Some(clash) = order::port_clash(&u.new, &plan.containers) else {
        return false;
    };
    let line = clash.warning(&u.new.service, &u.node);
    warn!(stack, release, port = %clash.port, node = %u.node, "Start-first update blocked by a host port; updating stop-first.");
    d.rollouts
        .update(stack, release, |s| s.message.clone_from(&line));
    d.events.emit(
        EventKind::Rollout,
        Some(stack),
        Some(&u.node),
        format!("warning: {line}"),
    );
    true
}

async fn pause_for(d: Duration, token: &TaskTree) -> Result<(), Stop> {
    tokio::select! {
        () = token.cancelled() => Err(Stop::Superseded),
        () = tokio::time::sleep(d) => Ok(()),
    }
}
