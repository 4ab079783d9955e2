//! Reconcile: make the host's Skiff-labelled containers match the plan.
//!
//! [`diff`] is the one pure function that decides every change; it is
//! tested without Docker. [`docker`] lists what exists and applies the
//! actions through the Docker Engine API. The agent only ever touches
//! containers labelled with its own node id (`skiff.node`): unlabelled
//! containers, and those of other agents sharing the engine, are never
//! modified.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use skiff_shared::signing::Plan;
use skiff_shared::workload::{ContainerSpec, LABEL_NODE, ObservedState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub mod docker;
pub mod probe;

/// How often the agent re-checks the engine even when nothing happened.
const RESYNC: Duration = Duration::from_secs(30);
/// Pause before retrying after the engine failed.
const RETRY: Duration = Duration::from_secs(2);

/// Keeps the host's containers at the latest accepted plan until shutdown:
/// after every new plan, after every event on one of this node's
/// containers, and every [`RESYNC`]. With no plan yet it does nothing: an
/// agent never removes containers it has no signed plan about. After each
/// round the observed state is published on `observed` when it changed.
pub async fn run(
    engine: docker::Engine,
    mut plans: watch::Receiver<Option<Plan>>,
    observed: watch::Sender<Option<Arc<ObservedState>>>,
    shutdown: CancellationToken,
) {
    let mut events = engine.events();
    let mut failing = false;
    let prober = probe::Prober::default();
    let probes_changed = prober.changed();
    loop {
        let plan = plans.borrow_and_update().clone();
        if let Some(plan) = plan {
            let error = match reconcile_once(&engine, &plan).await {
                Ok(n) => {
                    if n > 0 {
                        info!(
                            generation = plan.generation,
                            actions = n,
                            "Host reconciled to the plan."
                        );
                    }
                    failing = false;
                    None
                }
                Err(error) => {
                    // Said once per failure streak, not every retry.
                    if !failing {
                        warn!(error = %error, "Reconcile failed; retrying.");
                    }
                    failing = true;
                    Some(error.to_string())
                }
            };
            match engine.status().await {
                Ok(mut containers) => {
                    let specs = plan
                        .containers
                        .iter()
                        .filter_map(|c| c.probe.as_ref().map(|p| (c.key(), p)))
                        .collect();
                    prober.sync(&mut containers, &specs);
                    let images = engine.images().await.unwrap_or_default();
                    let state = ObservedState {
                        plan_generation: plan.generation,
                        containers,
                        error,
                        images,
                    };
                    observed.send_if_modified(|current| {
                        if current.as_deref() == Some(&state) {
                            return false;
                        }
                        *current = Some(Arc::new(state));
                        true
                    });
                }
                Err(error) => debug!(error = %error, "Cannot read container status."),
            }
        }
        let wait = if failing { RETRY } else { RESYNC };
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = plans.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            event = events.next() => {
                if event.is_none() {
                    debug!("Docker event stream ended; reopening.");
                    tokio::time::sleep(RETRY).await;
                    events = engine.events();
                }
            }
            () = probes_changed.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// One round: observe, diff, apply. Returns how many actions were taken.
pub async fn reconcile_once(
    engine: &docker::Engine,
    plan: &Plan,
) -> Result<usize, docker::ApplyError> {
    let observed = engine.observe().await?;
    let actions = diff(&plan.containers, &observed);
    engine.apply(&actions).await?;
    engine.prune_secrets(&plan.containers);
    engine.prune_networks(&plan.containers).await;
    Ok(actions.len())
}

/// The label filter that selects one node's containers.
pub fn node_filter(node_id: &str) -> String {
    format!("{LABEL_NODE}={node_id}")
}

/// A Skiff-managed container as found on the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub id: String,
    /// `<stack>.<service>.<slot>@<revision>` from its `skiff.key` label.
    pub key: String,
    /// `<stack>.<service>.<slot>` from its `skiff.name` label.
    pub name: String,
    /// Fingerprint of the spec it was created from (`skiff.spec` label).
    pub spec: String,
    pub state: State,
}

/// The Docker states that matter to reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Created and never started.
    Created,
    /// Running, restarting or paused: left alone.
    Up,
    /// Exited or dead. Docker's restart policy decides whether it comes back.
    Down,
}

/// One change to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Stop (SIGTERM, grace, SIGKILL) and remove a container.
    Remove { id: String, name: String },
    /// Create and start a container for a spec.
    Create { spec: Box<ContainerSpec> },
    /// Start a created container.
    Start { id: String, name: String },
}

/// Decides what to do so that exactly the desired containers exist.
/// Containers are matched by key (`<name>@<revision>`), so during a
/// start-first update the old and new revision of a slot are two keys.
///
/// - a desired spec with no container: create it;
/// - a container whose spec fingerprint differs from the desired one:
///   remove it, then create the new one (the coordinator orders rolling
///   updates across hosts; within a host replacement is stop-first);
/// - a created, never-started container: start it;
/// - more than one container for a key: keep the one matching the spec
///   (preferring one that is up), remove the rest;
/// - a container no spec asks for: remove it.
///
/// Removals come first so ports and names are free for what is created.
/// The result is deterministic for a given input.
pub fn diff(desired: &[ContainerSpec], observed: &[Observed]) -> Vec<Action> {
    let mut by_name: BTreeMap<&str, Vec<&Observed>> = BTreeMap::new();
    for o in observed {
        by_name.entry(o.key.as_str()).or_default().push(o);
    }
    let mut removals = Vec::new();
    let mut starts = Vec::new();
    let mut creates = Vec::new();
    let mut wanted: BTreeMap<String, &ContainerSpec> = BTreeMap::new();
    for spec in desired {
        wanted.insert(spec.key(), spec);
    }
    for (name, spec) in &wanted {
        let fingerprint = spec.fingerprint();
        let mut found: Vec<&Observed> = by_name.remove(name.as_str()).unwrap_or_default();
        // The keeper: matching spec, up before created before down, then by id.
        found.sort_by_key(|o| (o.spec != fingerprint, rank(o.state), o.id.clone()));
        let mut rest = found.into_iter();
        match rest.next() {
            Some(keep) if keep.spec == fingerprint => {
                if keep.state == State::Created {
                    starts.push(Action::Start {
                        id: keep.id.clone(),
                        name: name.clone(),
                    });
                }
            }
            Some(stale) => {
                removals.push(Action::Remove {
                    id: stale.id.clone(),
                    name: name.clone(),
                });
                creates.push(Action::Create {
                    spec: Box::new((*spec).clone()),
                });
            }
            None => creates.push(Action::Create {
                spec: Box::new((*spec).clone()),
            }),
        }
        for extra in rest {
            removals.push(Action::Remove {
                id: extra.id.clone(),
                name: name.clone(),
            });
        }
    }
    for (name, left) in by_name {
        for o in left {
            removals.push(Action::Remove {
                id: o.id.clone(),
                name: name.to_owned(),
            });
        }
    }
    removals.extend(starts);
    removals.extend(creates);
    removals
}

fn rank(s: State) -> u8 {
    match s {
        State::Up => 0,
        State::Created => 1,
        State::Down => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use skiff_shared::workload::{ResourceSpec, RestartSpec};

    fn spec(service: &str, slot: u32, image: &str) -> ContainerSpec {
        ContainerSpec {
            stack: "shop".into(),
            service: service.into(),
            slot,
            revision: 0,
            image: image.into(),
            command: None,
            entrypoint: None,
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            ports: vec![],
            mounts: vec![],
            healthcheck: None,
            restart: RestartSpec::default(),
            resources: ResourceSpec::default(),
            stop_grace_ms: None,
            user: None,
            working_dir: None,
            secrets: vec![],
            probe: None,
            configs: vec![],
            networks: vec![],
        }
    }

    fn obs(id: &str, s: &ContainerSpec, state: State) -> Observed {
        Observed {
            id: id.into(),
            key: s.key(),
            name: s.name(),
            spec: s.fingerprint(),
            state,
        }
    }

    #[test]
    fn creates_missing_keeps_matching_replaces_changed_removes_unwanted() {
        let web1 = spec("web", 1, "img:1");
        let web2 = spec("web", 2, "img:1");
        let db = spec("db", 1, "pg:1");
        let old_db = spec("db", 1, "pg:0");
        let gone = spec("old", 1, "x:1");
        let observed = vec![
            obs("a", &web1, State::Up),
            obs("b", &old_db, State::Up),
            obs("c", &gone, State::Down),
        ];
        let actions = diff(&[web1.clone(), web2.clone(), db.clone()], &observed);
        assert_eq!(
            actions,
            vec![
                Action::Remove {
                    id: "b".into(),
                    name: "shop.db.1@0".into()
                },
                Action::Remove {
                    id: "c".into(),
                    name: "shop.old.1@0".into()
                },
                Action::Create { spec: Box::new(db) },
                Action::Create {
                    spec: Box::new(web2)
                },
            ]
        );
    }

    #[test]
    fn adopts_running_containers_and_starts_created_ones() {
        let web1 = spec("web", 1, "img:1");
        let web2 = spec("web", 2, "img:1");
        let observed = vec![obs("a", &web1, State::Up), obs("b", &web2, State::Created)];
        assert_eq!(
            diff(&[web1, web2], &observed),
            vec![Action::Start {
                id: "b".into(),
                name: "shop.web.2@0".into()
            }]
        );
    }

    #[test]
    fn exited_containers_are_left_to_their_restart_policy() {
        let web1 = spec("web", 1, "img:1");
        assert!(diff(std::slice::from_ref(&web1), &[obs("a", &web1, State::Down)]).is_empty());
    }

    #[test]
    fn duplicates_are_removed_keeping_the_running_match() {
        let web1 = spec("web", 1, "img:1");
        let observed = vec![
            obs("z", &web1, State::Down),
            obs("a", &web1, State::Up),
            obs("m", &web1, State::Up),
        ];
        assert_eq!(
            diff(&[web1], &observed),
            vec![
                Action::Remove {
                    id: "m".into(),
                    name: "shop.web.1@0".into()
                },
                Action::Remove {
                    id: "z".into(),
                    name: "shop.web.1@0".into()
                },
            ]
        );
    }

    fn arb_state() -> impl Strategy<Value = State> {
        prop_oneof![Just(State::Created), Just(State::Up), Just(State::Down)]
    }

    proptest! {
        /// Applying the actions to the observed set yields exactly one container
        /// per desired spec, each with the desired fingerprint, and diffing
        /// again changes nothing but starts already accounted for.
        #[test]
        fn converges_in_one_round(
            want in proptest::collection::btree_map((0u8..4, 1u32..4), 0u8..2, 0..8),
            have in proptest::collection::vec(((0u8..5, 1u32..4, 0u8..3), arb_state()), 0..12),
        ) {
            let name = |s: u8| format!("svc{s}");
            let desired: Vec<ContainerSpec> =
                want.iter().map(|((s, slot), v)| spec(&name(*s), *slot, &format!("img:{v}"))).collect();
            let observed: Vec<Observed> = have
                .iter()
                .enumerate()
                .map(|(i, ((s, slot, v), st))| obs(&format!("id{i}"), &spec(&name(*s), *slot, &format!("img:{v}")), *st))
                .collect();
            let actions = diff(&desired, &observed);
            let mut after: Vec<Observed> = observed.clone();
            let mut next = 0;
            for a in &actions {
                match a {
                    Action::Remove { id, .. } => after.retain(|o| &o.id != id),
                    Action::Start { id, .. } => {
                        if let Some(o) = after.iter_mut().find(|o| &o.id == id) {
                            o.state = State::Up;
                        }
                    }
                    Action::Create { spec } => {
                        next += 1;
                        after.push(obs(&format!("new{next}"), spec, State::Up));
                    }
                }
            }
            prop_assert_eq!(after.len(), desired.len());
            for d in &desired {
                let matching: Vec<_> = after.iter().filter(|o| o.key == d.key()).collect();
                prop_assert_eq!(matching.len(), 1);
                prop_assert_eq!(&matching[0].spec, &d.fingerprint());
            }
            prop_assert!(diff(&desired, &after).is_empty());
            // Removals always come before creates.
            let first_create = actions.iter().position(|a| matches!(a, Action::Create { .. })).unwrap_or(actions.len());
            let only_creates_after = actions[first_create..].iter().all(|a| matches!(a, Action::Create { .. }));
            prop_assert!(only_creates_after);
        }
    }
}
