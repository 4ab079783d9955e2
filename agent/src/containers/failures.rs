//! Containers the agent could not bring up: each failed pull, create or
//! start is remembered by container key with the engine's message, and
//! reported with the containers (`ObservedState::failures`) until the
//! container runs or leaves the plan. The coordinator's rollout fails a
//! batch at once on one of its new containers' failures, rather than
//! waiting for a container that will not come.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, PoisonError};

use skiff_shared::workload::{
    ContainerFailure, ContainerSpec, ContainerState, ContainerStatus, FailureStage,
};

/// The last failure of each container key.
#[derive(Debug, Default)]
pub struct Failures {
    by_key: Mutex<BTreeMap<String, ContainerFailure>>,
}

impl Failures {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ContainerFailure>> {
        self.by_key.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers that `key` failed at `stage`, replacing what it failed with before.
    pub fn record(&self, key: &str, stage: FailureStage, message: impl Into<String>) {
        self.lock().insert(
            key.to_owned(),
            ContainerFailure {
                key: key.to_owned(),
                stage,
                message: message.into(),
            },
        );
    }

    /// `key` got past the step that failed: forget its failure.
    pub fn clear(&self, key: &str) {
        self.lock().remove(key);
    }

    /// The failures to report: those of desired containers that do not
    /// run now. The others are forgotten.
    pub fn report(
        &self,
        desired: &[ContainerSpec],
        containers: &[ContainerStatus],
    ) -> Vec<ContainerFailure> {
        let mut by_key = self.lock();
        prune(&mut by_key, desired, containers);
        by_key.values().cloned().collect()
    }
}

/// Keeps the failures of desired containers that are not running (pure).
fn prune(
    by_key: &mut BTreeMap<String, ContainerFailure>,
    desired: &[ContainerSpec],
    containers: &[ContainerStatus],
) {
    let desired: HashSet<String> = desired.iter().map(ContainerSpec::key).collect();
    let running: HashSet<&str> = containers
        .iter()
        .filter(|c| c.state == ContainerState::Running)
        .map(|c| c.key.as_str())
        .collect();
    by_key.retain(|key, _| desired.contains(key) && !running.contains(key.as_str()));
}

/// What the engine said, without bollard's wrapping ("Docker responded
/// with status code 500: ..."), for a failure's message.
pub fn engine_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        bollard::errors::Error::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(spec: &ContainerSpec, state: ContainerState) -> ContainerStatus {
        ContainerStatus {
            name: spec.name(),
            key: spec.key(),
            id: "c".into(),
            state,
            health: None,
            restart_count: 0,
            addresses: Vec::new(),
            started_at: None,
            exit_code: None,
            ips: Vec::new(),
            image_id: String::new(),
            spec: String::new(),
        }
    }

    #[test]
    fn a_failure_is_reported_until_the_container_runs_or_leaves_the_plan() {
        let mut web = ContainerSpec::new("s", "web", 1, "busybox");
        web.revision = 2;
        let mut api = ContainerSpec::new("s", "api", 1, "busybox");
        api.revision = 2;
        let f = Failures::default();
        f.record(&web.key(), FailureStage::Start, "port is already allocated");
        f.record(&api.key(), FailureStage::Pull, "denied");
        f.record(&api.key(), FailureStage::Create, "bad spec");

        let desired = [web.clone(), api.clone()];
        let created = [status(&web, ContainerState::Created)];
        let reported = f.report(&desired, &created);
        assert_eq!(
            reported,
            vec![
                ContainerFailure {
                    key: "s.api.1@2".into(),
                    stage: FailureStage::Create,
                    message: "bad spec".into(),
                },
                ContainerFailure {
                    key: "s.web.1@2".into(),
                    stage: FailureStage::Start,
                    message: "port is already allocated".into(),
                },
            ],
            "the latest failure of each container, by key"
        );

        // web runs now; api left the plan.
        let running = [status(&web, ContainerState::Running)];
        assert_eq!(f.report(&[web.clone()], &running), vec![]);
        // Forgotten, not only hidden.
        assert_eq!(f.report(&desired, &[]), vec![]);

        f.record(&web.key(), FailureStage::Start, "exec: no such file");
        f.clear(&web.key());
        assert_eq!(f.report(&desired, &[]), vec![]);
    }

    #[test]
    fn the_engine_message_is_kept_without_the_wrapping() {
        let e = bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message: "driver failed programming external connectivity: Bind for 0.0.0.0:18090 failed: port is already allocated".into(),
        };
        assert!(engine_message(&e).starts_with("driver failed"));
    }
}
