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
use skiff_shared::workload::{ContainerSpec, ContainerState, Health};
use tokio::time::Instant;
use tracing::{info, warn};

use super::resolve::{ServiceDef, UpdatePolicy};
use super::unpublish::{self, Leaving};
use super::{Deployer, Held, Update, edit_node_plan};
use crate::now_ms;
use crate::store::ReleaseStatus;

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
            let result = replace_batch(d, batch, &def.update, token).await;
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
                            return match roll_back(d, defs, done, token).await {
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
            replace_batch(d, batch, &def.rollback, token).await?;
        }
    }
    Ok(())
}

/// Replaces one batch and waits until the new containers are ready.
async fn replace_batch(
    d: &Deployer,
    batch: &[Update],
    policy: &UpdatePolicy,
    token: &TaskTree,
) -> Result<(), Stop> {
    let store_err = |e: super::DeployError| Stop::Failed(e.to_string());
    let leaving: Vec<Leaving> = batch
        .iter()
        .map(|u| Leaving {
            node_id: u.node_id.clone(),
            key: u.old.key(),
            stack: u.old.stack.clone(),
            service: u.old.service.clone(),
        })
        .collect();
    if !policy.start_first {
        // The old ones leave DNS, and drain, before they stop.
        unpublish::unpublish(d, &leaving, token).await?;
    }
    for u in batch {
        let (old_key, new) = (u.old.key(), u.new.clone());
        let start_first = policy.start_first;
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
    if !policy.start_first {
        unpublish::forget(d, &leaving);
    }
    let ready = wait_ready(d, batch, Duration::from_millis(policy.monitor_ms), token).await;
    if policy.start_first {
        // Whether the new ones came up or not, the old ones stay until the
        // batch succeeded; on failure the rollback removes the new ones.
        if ready.is_ok() {
            // Every host answers with the new ones, then without the old
            // ones, which drain and only then stop.
            unpublish::publish(d, &batch[0].new.stack, token).await?;
            unpublish::unpublish(d, &leaving, token).await?;
            for u in batch {
                let old_key = u.old.key();
                edit_node_plan(d, &u.node_id, move |c| c.retain(|x| x.key() != old_key))
                    .await
                    .map_err(store_err)?;
            }
            unpublish::forget(d, &leaving);
        }
    } else if ready.is_ok() {
        unpublish::publish(d, &batch[0].new.stack, token).await?;
    }
    ready
}

fn deadline_for(spec: &ContainerSpec) -> Duration {
    // Long enough for a check to pass after its start period and a few
    // failed tries.
    let span = |start_period_ms: u64, interval_ms: u64, retries: u32, timeout_ms: u64| {
        Duration::from_millis(
            start_period_ms
                .saturating_add(interval_ms.saturating_mul(u64::from(retries) + 2))
                .saturating_add(timeout_ms),
        )
    };
    let from_check = spec.healthcheck.as_ref().map_or(Duration::ZERO, |h| {
        span(h.start_period_ms, h.interval_ms, h.retries, h.timeout_ms)
    });
    let from_probe = spec.probe.as_ref().map_or(Duration::ZERO, |p| {
        span(p.start_period_ms, p.interval_ms, p.retries, p.timeout_ms)
    });
    (from_check.max(from_probe) + Duration::from_secs(30)).max(MIN_DEADLINE)
}

/// What a container must be for a wait to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Running, and healthy if it has a health check (rollout batches).
    Ready,
    /// Running (`service_started`).
    Started,
    /// Running and healthy (`service_healthy`).
    Healthy,
    /// Exited with code 0 (`service_completed_successfully`).
    Completed,
}

impl Want {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Started => "started",
            Self::Healthy => "healthy",
            Self::Completed => "completed successfully",
        }
    }
}

/// A container on a node to wait for.
#[derive(Debug, Clone, Copy)]
struct Target<'a> {
    node_id: &'a str,
    node: &'a str,
    spec: &'a ContainerSpec,
}

/// Whether one container, as last reported, is what `want` asks:
/// `Ok(true)` yes, `Ok(false)` not yet, `Err` never will be.
fn check(
    want: Want,
    t: Target<'_>,
    c: &skiff_shared::workload::ContainerStatus,
) -> Result<bool, String> {
    let exited = c.state.is_down();
    let code = || {
        c.exit_code
            .map_or_else(|| "?".to_owned(), |c| c.to_string())
    };
    let who = || format!("{} on {}", t.spec.name(), t.node);
    if want == Want::Completed {
        return match (exited, c.exit_code) {
            (true, Some(0)) => Ok(true),
            (true, _) => Err(format!("{} exited (code {})", who(), code())),
            (false, _) => Ok(false),
        };
    }
    if exited {
        return Err(format!("{} exited (code {})", who(), code()));
    }
    let health = c.health;
    if want != Want::Started && health == Some(Health::Unhealthy) {
        return Err(format!("{} is unhealthy", who()));
    }
    let running = c.state == ContainerState::Running;
    Ok(match want {
        Want::Started => running,
        Want::Healthy if running && health.is_none() => {
            return Err(format!(
                "{} has no health check, so it never becomes healthy; give it a healthcheck or use `condition: service_started`",
                who()
            ));
        }
        Want::Healthy => running && health == Some(Health::Healthy),
        Want::Ready | Want::Completed => running && health.is_none_or(|h| h == Health::Healthy),
    })
}

/// Waits until every new container of the batch is running (and healthy,
/// if it has a health check) continuously for `monitor`. Fails at once on
/// a container that exited or turned unhealthy.
async fn wait_ready(
    d: &Deployer,
    batch: &[Update],
    monitor: Duration,
    token: &TaskTree,
) -> Result<(), Stop> {
    let targets: Vec<Target<'_>> = batch
        .iter()
        .map(|u| Target {
            node_id: &u.node_id,
            node: &u.node,
            spec: &u.new,
        })
        .collect();
    wait_for(d, &targets, Want::Ready, monitor, token).await
}

/// Waits until every target is what `want` asks, continuously for
/// `monitor`. Fails at once on a container that never will be, and at
/// the targets' deadline.
async fn wait_for(
    d: &Deployer,
    targets: &[Target<'_>],
    want: Want,
    monitor: Duration,
    token: &TaskTree,
) -> Result<(), Stop> {
    let deadline = Instant::now()
        + targets
            .iter()
            .map(|t| deadline_for(t.spec))
            .max()
            .unwrap_or(MIN_DEADLINE);
    let mut since: Option<Instant> = None;
    let mut reports = d.observed.watch();
    loop {
        let mut all = true;
        for t in targets {
            let key = t.spec.key();
            let report = d.observed.get(t.node_id);
            let status = report
                .as_ref()
                .and_then(|(_, r)| r.containers.iter().find(|c| c.key == key).cloned());
            match status {
                None => all = false,
                Some(c) => all &= check(want, *t, &c).map_err(Stop::RolledBack)?,
            }
        }
        let mut wake = deadline;
        if all {
            let since = *since.get_or_insert_with(Instant::now);
            if since.elapsed() >= monitor {
                return Ok(());
            }
            wake = wake.min(since + monitor);
        } else {
            since = None;
        }
        if Instant::now() >= deadline {
            let names: Vec<String> = targets
                .iter()
                .map(|t| format!("{} on {}", t.spec.name(), t.node))
                .collect();
            return Err(Stop::RolledBack(format!(
                "{} not {} in time",
                names.join(", "),
                want.as_str()
            )));
        }
        // Look again at the next report, or when `monitor` or the
        // deadline runs out.
        tokio::select! {
            () = token.cancelled() => return Err(Stop::Superseded),
            changed = reports.changed() => {
                if changed.is_err() {
                    return Err(Stop::Superseded);
                }
            }
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

async fn pause_for(d: Duration, token: &TaskTree) -> Result<(), Stop> {
    tokio::select! {
        () = token.cancelled() => Err(Stop::Superseded),
        () = tokio::time::sleep(d) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use skiff_shared::workload::ContainerStatus;

    use super::*;

    fn status(state: &str, health: Option<&str>, exit_code: Option<i64>) -> ContainerStatus {
        ContainerStatus {
            name: "s.db.1".into(),
            key: "s.db.1@1".into(),
            id: "c1".into(),
            state: ContainerState::from_engine(state),
            health: health.and_then(Health::from_engine),
            restart_count: 0,
            addresses: Vec::new(),
            started_at: None,
            exit_code,
            ips: Vec::new(),
            image_id: String::new(),
            spec: String::new(),
        }
    }

    #[test]
    fn each_condition_waits_for_what_it_names() {
        let spec: ContainerSpec = serde_json::from_value(serde_json::json!({
            "stack": "s", "service": "db", "slot": 1, "image": "x"
        }))
        .unwrap();
        let t = Target {
            node_id: "n1",
            node: "host-a",
            spec: &spec,
        };
        let running = status("running", None, None);
        let starting = status("running", Some("starting"), None);
        let healthy = status("running", Some("healthy"), None);
        let unhealthy = status("running", Some("unhealthy"), None);
        let done = status("exited", None, Some(0));
        let crashed = status("exited", None, Some(3));

        assert_eq!(check(Want::Started, t, &running), Ok(true));
        assert_eq!(check(Want::Started, t, &unhealthy), Ok(true));
        assert_eq!(
            check(Want::Started, t, &status("created", None, None)),
            Ok(false)
        );
        assert!(
            check(Want::Started, t, &crashed)
                .unwrap_err()
                .contains("exited (code 3)")
        );

        assert_eq!(check(Want::Healthy, t, &starting), Ok(false));
        assert_eq!(check(Want::Healthy, t, &healthy), Ok(true));
        assert!(
            check(Want::Healthy, t, &unhealthy)
                .unwrap_err()
                .contains("s.db.1 on host-a is unhealthy")
        );
        assert!(
            check(Want::Healthy, t, &running)
                .unwrap_err()
                .contains("no health check")
        );

        assert_eq!(check(Want::Ready, t, &running), Ok(true));
        assert_eq!(check(Want::Ready, t, &starting), Ok(false));
        assert_eq!(check(Want::Ready, t, &healthy), Ok(true));
        assert!(check(Want::Ready, t, &unhealthy).is_err());

        assert_eq!(check(Want::Completed, t, &running), Ok(false));
        assert_eq!(check(Want::Completed, t, &done), Ok(true));
        assert!(check(Want::Completed, t, &crashed).is_err());
    }
}
