//! Waiting for a rollout's containers: until each is what the wait asks
//! (ready, started, healthy, completed) continuously for `monitor`, as
//! the agents report them; failing at once on a container that never
//! will be (exited, unhealthy, or one its host could not pull, create or
//! start, with the engine's message), and at the containers' deadline.

use std::time::Duration;

use skiff_shared::tasks::TaskTree;
use skiff_shared::workload::{
    ContainerFailure, ContainerSpec, ContainerState, FailureStage, Health,
};
use tokio::time::Instant;

use super::rollout::Stop;
use super::{Deployer, Update};

/// The least time a batch gets to become healthy (image pulls included).
const MIN_DEADLINE: Duration = Duration::from_secs(120);

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
pub(super) enum Want {
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
    pub(super) fn as_str(self) -> &'static str {
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
pub(super) struct Target<'a> {
    pub(super) node_id: &'a str,
    pub(super) node: &'a str,
    pub(super) spec: &'a ContainerSpec,
}

/// Why a container its host could not bring up fails the wait, in the
/// engine's words.
fn failed(t: Target<'_>, f: &ContainerFailure) -> String {
    let what = match f.stage {
        // The message names the image and says it could not be pulled.
        FailureStage::Pull => "",
        FailureStage::Create => "could not be created",
        FailureStage::Start => "could not start",
        FailureStage::Other => "could not be brought up",
    };
    let what = if what.is_empty() {
        String::new()
    } else {
        format!(" {what}")
    };
    format!("{} on {}{what}: {}", t.spec.name(), t.node, f.message)
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
pub(super) async fn wait_ready(
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
pub(super) async fn wait_for(
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
            let running = status
                .as_ref()
                .is_some_and(|c| c.state == ContainerState::Running);
            if let Some(f) = report.as_ref().and_then(|(_, r)| r.failure(&key))
                && !running
            {
                return Err(Stop::RolledBack(failed(*t, f)));
            }
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
    fn a_container_its_host_could_not_bring_up_is_named_with_the_engine_error() {
        let spec = skiff_shared::workload::ContainerSpec::new("s", "web", 1, "x");
        let t = Target {
            node_id: "n1",
            node: "host-a",
            spec: &spec,
        };
        let f = ContainerFailure {
            key: spec.key(),
            stage: FailureStage::Start,
            message: "Bind for 0.0.0.0:18090 failed: port is already allocated".into(),
        };
        assert_eq!(
            failed(t, &f),
            "s.web.1 on host-a could not start: Bind for 0.0.0.0:18090 failed: port is already allocated"
        );
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
