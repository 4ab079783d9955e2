//! The containers controller: makes the host's Skiff-labelled containers
//! match the `containers` section of the plan.
//!
//! - [`diff`]: the one pure function that decides every change (containers
//!   to create, start and remove; creates that wait for their networks;
//!   delivered secrets no container mounts any more).
//! - [`engine`]: lists what exists and applies the actions through the
//!   Docker Engine API; `images` pulls, `spec` builds the create request
//!   and writes config files.
//! - [`probe`]: the agent's own HTTP/TCP health checks.
//! - `failures`: containers that could not be pulled, created or started,
//!   with the engine's message, reported until they run.
//! - `mounts`: the check that refuses a section whose containers would
//!   bind-mount the agent's own data dir.
//! - [`secrets`], [`registries`]: what the coordinator delivers for this
//!   host's containers (secret values, registry credentials).
//!
//! The controller only ever touches containers labelled with its own node
//! id (`skiff.node`): unlabelled containers, and those of other agents
//! sharing the engine, are never modified. It runs a round after every
//! new section, every event on one of this node's containers, every
//! network created, every health change and every 30 s, and reports the
//! containers' observed state after each.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use skiff_shared::sections::containers::{Containers, ContainersDelivery, ContainersSection};
use skiff_shared::workload::ObservedState;
use tracing::debug;

use crate::controller::{Context, Pace, Reconcile, Reporter, Versioned, drive, round};
use crate::engine::EngineHandle;
use crate::supervisor::Host;

pub mod diff;
pub mod engine;
mod failures;
mod images;
mod mounts;
pub mod probe;
pub mod registries;
pub mod secrets;
mod spec;

pub use diff::{Action, Observed, State, diff};
pub use engine::{ApplyError, Engine};

/// The containers controller.
#[derive(Debug)]
pub struct Controller {
    node_id: String,
    data_dir: PathBuf,
    /// The data dir as written and with its links resolved: what no
    /// container may bind-mount.
    own_dirs: Vec<PathBuf>,
    engine: EngineHandle,
    leases: Arc<crate::leases::Leases>,
    weave: Arc<crate::weave::Weave>,
}

impl Controller {
    pub fn new(host: &Host) -> Self {
        Self {
            node_id: host.node_id.clone(),
            data_dir: host.data_dir.clone(),
            own_dirs: mounts::own_dirs(&host.data_dir),
            engine: host.engine.clone(),
            leases: host.leases.clone(),
            weave: host.weave.clone(),
        }
    }
}

impl crate::controller::Controller for Controller {
    type Kind = Containers;

    fn check(&self, desired: &ContainersSection) -> Result<(), String> {
        check_unique(desired)?;
        check_dns(desired)?;
        check_secret_mounts(desired)?;
        mounts::check(desired, &self.own_dirs)
    }

    fn deliver(&self, delivery: ContainersDelivery) -> Result<(), String> {
        match delivery {
            ContainersDelivery::Secrets { values } => {
                let n = secrets::store(&self.data_dir, &values).map_err(|e| e.to_string())?;
                debug!(stored = n, "Secrets delivered.");
            }
            ContainersDelivery::RegistryAuth { registries } => {
                registries::store(&self.data_dir, &registries).map_err(|e| e.to_string())?;
                debug!(
                    registries = registries.len(),
                    "Registry credentials delivered."
                );
            }
        }
        Ok(())
    }

    async fn run(self: Arc<Self>, cx: Context<Containers>) {
        let Some(docker) = self.engine.get(&cx.tree).await else {
            return;
        };
        let engine = Engine::new(docker, self.node_id.clone())
            .with_secrets_from(&self.data_dir)
            .with_registry_credentials_from(&self.data_dir)
            .with_leases(self.leases.clone())
            .with_weave(self.weave.clone());
        let prober = probe::Prober::new(cx.tree.child());
        let wake = prober.changed();
        let r = Reconciler {
            engine,
            report: Some((prober, cx.reports)),
        };
        drive(&r, cx.desired, &cx.tree, Pace::default(), Some(wake)).await;
    }
}

/// Refuses a section that names a container (key) twice.
/// A container's DNS servers are IP addresses, a few at most (the
/// engine writes them into its resolv.conf).
fn check_dns(section: &ContainersSection) -> Result<(), String> {
    for c in &section.containers {
        if c.dns.len() > 3 {
            return Err(format!(
                "container {} lists {} DNS servers: resolv.conf takes 3 at most",
                c.key(),
                c.dns.len()
            ));
        }
        if let Some(bad) = c
            .dns
            .iter()
            .find(|d| d.parse::<std::net::IpAddr>().is_err())
        {
            return Err(format!(
                "container {}: DNS server {bad:?} is not an IP address",
                c.key()
            ));
        }
    }
    Ok(())
}

fn check_unique(section: &ContainersSection) -> Result<(), String> {
    let mut keys = HashSet::new();
    for c in &section.containers {
        if !keys.insert(c.key()) {
            return Err(format!("plan lists container {} more than once", c.key()));
        }
    }
    Ok(())
}

/// Refuses a section with a secret mount that has no valid id and check
/// value (or digest, if planned before ids): its file name must be safe.
fn check_secret_mounts(section: &ContainersSection) -> Result<(), String> {
    for c in &section.containers {
        for s in &c.secrets {
            s.validate()
                .map_err(|e| format!("container {}: {e}", c.key()))?;
        }
    }
    Ok(())
}

/// Observe, diff and apply through the engine; with `report`, also run the
/// health checks and report after each round.
struct Reconciler {
    engine: Engine,
    report: Option<(probe::Prober, Reporter<Containers>)>,
}

impl Reconcile for Reconciler {
    type Kind = Containers;
    type Observed = diff::Host;
    type Action = Action;
    type Error = ApplyError;

    async fn observe(&self) -> Result<diff::Host, ApplyError> {
        self.engine.observe_host().await
    }

    fn diff(desired: &ContainersSection, observed: &diff::Host) -> Vec<Action> {
        diff::diff(&desired.containers, observed)
    }

    async fn apply(&self, actions: &[Action]) -> Result<(), ApplyError> {
        self.engine.apply(actions).await
    }

    fn wakeups(&self) -> futures_util::stream::BoxStream<'static, ()> {
        self.engine.events()
    }

    async fn after_round(&self, desired: &Versioned<ContainersSection>, error: Option<String>) {
        let Some((prober, reporter)) = &self.report else {
            return;
        };
        match self.engine.status().await {
            Ok(mut containers) => {
                let specs: HashMap<_, _> = desired
                    .value
                    .containers
                    .iter()
                    .filter_map(|c| c.probe.as_ref().map(|p| (c.key(), p)))
                    .collect();
                prober.sync(&mut containers, &specs);
                let images = self.engine.images().await.unwrap_or_default();
                let failures = self
                    .engine
                    .failures
                    .report(&desired.value.containers, &containers);
                // Fitted into the bounds the coordinator accepts.
                reporter.send(
                    &ObservedState {
                        plan_generation: desired.generation,
                        containers,
                        error,
                        images,
                        failures,
                    }
                    .fit(),
                );
            }
            Err(error) => debug!(error = %error, "Cannot read container status."),
        }
    }
}

/// One round without reporting: observe, diff, apply. Returns how many
/// actions were taken.
///
/// # Errors
/// The first failure of the engine.
pub async fn reconcile_once(
    engine: &Engine,
    section: &ContainersSection,
) -> Result<usize, ApplyError> {
    let r = Reconciler {
        engine: engine.clone(),
        report: None,
    };
    round(&r, section).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_naming_a_container_twice_is_refused() {
        let spec: skiff_shared::workload::ContainerSpec = serde_json::from_str(
            r#"{"stack":"s","service":"web","slot":1,"revision":2,"image":"x"}"#,
        )
        .unwrap();
        let mut section = ContainersSection {
            containers: vec![spec.clone()],
        };
        assert!(check_unique(&section).is_ok());
        let mut newer = spec.clone();
        newer.revision = 3;
        section.containers.push(newer);
        assert!(
            check_unique(&section).is_ok(),
            "two revisions of a slot side by side are fine"
        );
        section.containers.push(spec);
        assert_eq!(
            check_unique(&section),
            Err("plan lists container s.web.1@2 more than once".into())
        );
    }

    #[test]
    fn a_section_with_a_malformed_secret_mount_is_refused() {
        let spec: skiff_shared::workload::ContainerSpec = serde_json::from_str(
            r#"{"stack":"s","service":"web","slot":1,"revision":2,"image":"x",
                "secrets":[{"name":"db","version":1,"id":"../../node.key","check":"00","target":"/run/secrets/db"}]}"#,
        )
        .unwrap();
        let section = ContainersSection {
            containers: vec![spec],
        };
        let e = check_secret_mounts(&section).unwrap_err();
        assert!(e.contains("s.web.1@2") && e.contains("secret db"), "{e}");
    }

    #[test]
    fn dns_servers_must_be_a_few_ip_addresses() {
        let mut spec = skiff_shared::workload::ContainerSpec::new("s", "web", 1, "x");
        spec.dns = vec!["10.66.8.1".into()];
        let mut section = ContainersSection {
            containers: vec![spec.clone()],
        };
        assert_eq!(check_dns(&section), Ok(()));
        section.containers[0].dns = vec!["gateway".into()];
        let e = check_dns(&section).unwrap_err();
        assert!(e.contains("s.web.1@0") && e.contains("\"gateway\""), "{e}");
        section.containers[0].dns = vec!["10.66.8.1".into(); 4];
        assert!(check_dns(&section).unwrap_err().contains("3 at most"));
        // Left out of the JSON when empty: old fingerprints hold.
        spec.dns.clear();
        assert!(!serde_json::to_string(&spec).unwrap().contains("dns"));
    }
}

#[cfg(test)]
mod live_tests;
