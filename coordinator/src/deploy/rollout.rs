//! Rolling updates: replicas whose spec changed are replaced in batches of
//! `update_config.parallelism`, start-first or stop-first, each batch
//! waiting until its new containers run (and are healthy, when they have
//! a health check) for `monitor`. A batch that fails triggers
//! `failure_action`: by default every replaced replica goes back to what it
//! ran before, by itself, and the release is marked rolled back.
//!
//! One rollout per stack runs at a time; a new deploy of the stack cancels
//! the one in progress and starts from what then runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skiff_shared::workload::ContainerSpec;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::resolve::{ServiceDef, UpdatePolicy};
use super::{Update, edit_node_plan};
use crate::state::{AppState, now_ms};

/// How often the rollout looks at the agents' reports.
const POLL: Duration = Duration::from_millis(200);
/// The least time a batch gets to become healthy (image pulls included).
const MIN_DEADLINE: Duration = Duration::from_secs(120);

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

/// The latest rollout of each stack.
#[derive(Debug, Default)]
pub struct RolloutBook {
    inner: Mutex<HashMap<String, (RolloutStatus, CancellationToken)>>,
}

impl RolloutBook {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (RolloutStatus, CancellationToken)>> {
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
    state: Arc<AppState>,
    stack: String,
    release: i64,
    previous: Option<i64>,
    defs: Vec<ServiceDef>,
    updates: Vec<super::Update>,
) {
    let token = CancellationToken::new();
    let status = RolloutStatus {
        release,
        state: RolloutState::InProgress,
        message: String::new(),
        replaced: 0,
        total: updates.len(),
        updated_at_ms: skiff_shared::unix_millis(),
    };
    if let Some((old, old_token)) = state
        .rollouts
        .lock()
        .insert(stack.clone(), (status, token.clone()))
    {
        old_token.cancel();
        let _ = old;
    }
    tokio::spawn(async move {
        let outcome = run(&state, &stack, release, &defs, updates, &token).await;
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
                "deployed"
            }
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Paused => "paused",
            RolloutState::Failed => "failed",
        };
        let message_opt = (rollout_state != RolloutState::Completed).then_some(message.as_str());
        if let Err(e) = state
            .store
            .set_release_status(&stack, release, release_status, message_opt)
            .await
        {
            warn!(error = %e, "Recording the release status failed.");
        }
        if rollout_state == RolloutState::RolledBack
            && let Some(previous) = previous
            && let Err(e) = state
                .store
                .set_current_release(&stack, previous, now_ms())
                .await
        {
            warn!(error = %e, "Recording the rolled-back release failed.");
        }
        state.events.emit(
            "rollout",
            Some(&stack),
            None,
            format!("release {release} {}: {message}", rollout_state.as_str()),
        );
        if rollout_state == RolloutState::Completed {
            info!(stack = %stack, release, "Rollout completed.");
        } else {
            warn!(stack = %stack, release, state = rollout_state.as_str(), reason = %message, "Rollout ended early.");
        }
        state.rollouts.update(&stack, release, |s| {
            s.state = rollout_state;
            s.message = message;
        });
    });
}

/// Why a rollout stopped before completing.
enum Stop {
    Superseded,
    Paused(String),
    RolledBack(String),
    Failed(String),
}

async fn run(
    state: &AppState,
    stack: &str,
    release: i64,
    defs: &[ServiceDef],
    updates: Vec<Update>,
    token: &CancellationToken,
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
            let result = replace_batch(state, batch, &def.update, token).await;
            match result {
                Ok(()) => {
                    for u in batch {
                        state.events.emit(
                            "rollout",
                            Some(stack),
                            Some(&u.node),
                            format!("{} updated", u.new.name()),
                        );
                    }
                    done.extend(batch.iter().cloned().map(|u| (u, def.update.start_first)));
                    state
                        .rollouts
                        .update(stack, release, |s| s.replaced += batch.len());
                }
                Err(Stop::Superseded) => return Err(Stop::Superseded),
                Err(Stop::Paused(why) | Stop::RolledBack(why) | Stop::Failed(why)) => {
                    // The failed batch is rolled back with the others.
                    done.extend(batch.iter().cloned().map(|u| (u, def.update.start_first)));
                    match def.update.failure_action.as_str() {
                        "continue" => {
                            warn!(stack, reason = %why, "Update batch failed; continuing as configured.");
                        }
                        "pause" => return Err(Stop::Paused(why)),
                        _ => {
                            warn!(stack, reason = %why, "Update batch failed; rolling back.");
                            state.rollouts.update(stack, release, |s| {
                                s.message = format!("rolling back: {why}")
                            });
                            return match roll_back(state, defs, done, token).await {
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
    state: &AppState,
    defs: &[ServiceDef],
    done: Vec<(Update, bool)>,
    token: &CancellationToken,
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
            replace_batch(state, batch, &def.rollback, token).await?;
        }
    }
    Ok(())
}

/// Replaces one batch and waits until the new containers are ready.
async fn replace_batch(
    state: &AppState,
    batch: &[Update],
    policy: &UpdatePolicy,
    token: &CancellationToken,
) -> Result<(), Stop> {
    let store_err = |e: crate::store::StoreError| Stop::Failed(e.to_string());
    for u in batch {
        let (old_key, new) = (u.old.key(), u.new.clone());
        let start_first = policy.start_first;
        edit_node_plan(state, &u.node_id, move |c| {
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
    let ready = wait_ready(
        state,
        batch,
        Duration::from_millis(policy.monitor_ms),
        token,
    )
    .await;
    if policy.start_first {
        // Whether the new ones came up or not, the old ones stay until the
        // batch succeeded; on failure the rollback removes the new ones.
        if ready.is_ok() {
            for u in batch {
                let old_key = u.old.key();
                edit_node_plan(state, &u.node_id, move |c| c.retain(|x| x.key() != old_key))
                    .await
                    .map_err(store_err)?;
            }
        }
    }
    ready
}

fn deadline_for(spec: &ContainerSpec) -> Duration {
    let from_check = spec.healthcheck.as_ref().map_or(Duration::ZERO, |h| {
        Duration::from_millis(
            h.start_period_ms
                .saturating_add(h.interval_ms.saturating_mul(u64::from(h.retries) + 2))
                .saturating_add(h.timeout_ms),
        )
    });
    (from_check + Duration::from_secs(30)).max(MIN_DEADLINE)
}

/// Waits until every new container of the batch is running (and healthy,
/// if it has a health check) continuously for `monitor`. Fails at once on
/// a container that exited or turned unhealthy.
async fn wait_ready(
    state: &AppState,
    batch: &[Update],
    monitor: Duration,
    token: &CancellationToken,
) -> Result<(), Stop> {
    let deadline = Instant::now()
        + batch
            .iter()
            .map(|u| deadline_for(&u.new))
            .max()
            .unwrap_or(MIN_DEADLINE);
    let mut healthy_since: Option<Instant> = None;
    loop {
        let mut all = true;
        for u in batch {
            let key = u.new.key();
            let report = state.observed.get(&u.node_id);
            let status = report
                .as_ref()
                .and_then(|(_, r)| r.containers.iter().find(|c| c.key == key).cloned());
            let checked = u
                .new
                .healthcheck
                .as_ref()
                .is_some_and(|h| h.test.first().is_some_and(|t| t != "NONE"));
            match status {
                None => all = false,
                Some(c) if c.state == "exited" || c.state == "dead" => {
                    return Err(Stop::RolledBack(format!(
                        "{} on {} exited (code {})",
                        u.new.name(),
                        u.node,
                        c.exit_code
                            .map_or_else(|| "?".to_owned(), |c| c.to_string())
                    )));
                }
                Some(c) if c.health.as_deref() == Some("unhealthy") => {
                    return Err(Stop::RolledBack(format!(
                        "{} on {} is unhealthy",
                        u.new.name(),
                        u.node
                    )));
                }
                Some(c) => {
                    let ok = c.state == "running"
                        && (!checked || c.health.as_deref() == Some("healthy"));
                    all &= ok;
                }
            }
        }
        if all {
            let since = *healthy_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= monitor {
                return Ok(());
            }
        } else {
            healthy_since = None;
        }
        if Instant::now() >= deadline {
            let names: Vec<String> = batch
                .iter()
                .map(|u| format!("{} on {}", u.new.name(), u.node))
                .collect();
            return Err(Stop::RolledBack(format!(
                "{} not ready in time",
                names.join(", ")
            )));
        }
        pause_for(POLL, token).await?;
    }
}

async fn pause_for(d: Duration, token: &CancellationToken) -> Result<(), Stop> {
    tokio::select! {
        () = token.cancelled() => Err(Stop::Superseded),
        () = tokio::time::sleep(d) => Ok(()),
    }
}
