//! The containers controller's one pure diff: from the `containers`
//! section and what exists on the host (this node's labelled containers,
//! the engine's networks, the delivered secret files) to the changes that
//! make them match. Tested without Docker.

use std::collections::{BTreeMap, BTreeSet};

use skiff_shared::sections::networks::engine_name;
use skiff_shared::workload::{ContainerSpec, RestartSpec};

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
    /// Exited or dead. Docker's restart policy decides whether it comes
    /// back, except that a container Docker left down under `always` (it
    /// was stopped or killed by hand) is started again.
    Down,
}

/// What exists on the host that the section decides about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    /// The node whose containers these are (networks are named after it).
    pub node_id: String,
    /// This node's labelled containers.
    pub containers: Vec<Observed>,
    /// The names of the networks on the engine.
    pub networks: BTreeSet<String>,
    /// The names of the delivered secret files (version ids).
    pub secrets: BTreeSet<String>,
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
    /// A container not created yet because a network it joins is not on
    /// the host: a stack network until the networks controller made it, an
    /// external one until someone does (an error until then).
    Wait {
        name: String,
        network: String,
        external: bool,
    },
    /// Remove a delivered secret no desired container mounts, by file name.
    DropSecret { file: String },
}

/// Decides what to do so that exactly the desired containers exist.
/// Containers are matched by key (`<name>@<revision>`), so during a
/// start-first update the old and new revision of a slot are two keys.
///
/// - a desired spec with no container: create it;
/// - a container whose spec fingerprint differs from the desired one:
///   remove it, then create the new one (the coordinator orders rolling
///   updates across hosts; within a host replacement is stop-first);
/// - a created, never-started container: start it, and so an exited one
///   whose policy is `always` (Docker left it down: stopped by hand);
/// - more than one container for a key: keep the one matching the spec
///   (preferring one that is up), remove the rest;
/// - a container no spec asks for: remove it;
/// - a container to create whose network is not on the host: wait;
/// - a delivered secret no desired container mounts: drop it.
///
/// Removals come first so ports and names are free for what is created;
/// secrets are dropped last. The result is deterministic for a given input.
pub fn diff(desired: &[ContainerSpec], host: &Host) -> Vec<Action> {
    let mut by_name: BTreeMap<&str, Vec<&Observed>> = BTreeMap::new();
    for o in &host.containers {
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
                // Docker restarts an `always` container by itself (it is
                // `restarting` meanwhile) unless someone stopped it; the
                // plan still wants it, so it is started again, as Swarm
                // replaces a stopped task. `unless-stopped` keeps Docker's
                // meaning: stopped by hand stays stopped.
                let abandoned = keep.state == State::Down && spec.restart == RestartSpec::Always;
                if keep.state == State::Created || abandoned {
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
    let (creates, waits): (Vec<Action>, Vec<Action>) = creates
        .into_iter()
        .map(|a| match a {
            Action::Create { spec } => match missing_network(&spec, host) {
                Some((network, external)) => Action::Wait {
                    name: spec.name(),
                    network,
                    external,
                },
                None => Action::Create { spec },
            },
            other => other,
        })
        .partition(|a| matches!(a, Action::Create { .. }));
    let mounted: BTreeSet<&str> = desired
        .iter()
        .flat_map(|c| c.secrets.iter().map(|s| s.file_name()))
        .collect();
    let drops = host
        .secrets
        .iter()
        .filter(|f| !mounted.contains(f.as_str()))
        .map(|f| Action::DropSecret { file: f.clone() });
    removals.extend(starts);
    removals.extend(creates);
    removals.extend(waits);
    removals.extend(drops);
    removals
}

/// The engine name of a network a container joins: a stack network's is
/// unique per node, an external one keeps its own.
pub fn network_name(
    node_id: &str,
    stack: &str,
    net: &skiff_shared::workload::NetworkAttach,
) -> String {
    if net.external {
        net.name.clone()
    } else {
        engine_name(stack, &net.name, node_id)
    }
}

/// The first network `spec` joins that is not on the host, and whether it
/// is external.
fn missing_network(spec: &ContainerSpec, host: &Host) -> Option<(String, bool)> {
    spec.networks.iter().find_map(|net| {
        let name = network_name(&host.node_id, &spec.stack, net);
        (!host.networks.contains(&name)).then_some((name, net.external))
    })
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

    fn spec(service: &str, slot: u32, image: &str) -> ContainerSpec {
        ContainerSpec::new("shop", service, slot, image)
    }

    fn host_with(containers: Vec<Observed>) -> Host {
        Host {
            node_id: "n1".into(),
            containers,
            ..Host::default()
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
        let actions = diff(
            &[web1.clone(), web2.clone(), db.clone()],
            &host_with(observed),
        );
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
            diff(&[web1, web2], &host_with(observed)),
            vec![Action::Start {
                id: "b".into(),
                name: "shop.web.2@0".into()
            }]
        );
    }

    #[test]
    fn exited_containers_are_left_to_their_restart_policy_but_always_comes_back() {
        let mut web1 = spec("web", 1, "img:1");
        for policy in [
            RestartSpec::No,
            RestartSpec::UnlessStopped,
            RestartSpec::OnFailure { max_attempts: 3 },
        ] {
            web1.restart = policy;
            assert!(
                diff(
                    std::slice::from_ref(&web1),
                    &host_with(vec![obs("a", &web1, State::Down)])
                )
                .is_empty(),
                "{policy:?}"
            );
        }
        web1.restart = RestartSpec::Always;
        assert_eq!(
            diff(
                std::slice::from_ref(&web1),
                &host_with(vec![obs("a", &web1, State::Down)])
            ),
            vec![Action::Start {
                id: "a".into(),
                name: "shop.web.1@0".into()
            }]
        );
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
            diff(&[web1], &host_with(observed)),
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

    #[test]
    fn a_container_waits_for_its_networks_and_unused_secrets_are_dropped() {
        use skiff_shared::workload::{NetworkAttach, SecretMount};
        let net = |name: &str, external: bool| NetworkAttach {
            name: name.into(),
            external,
            internal: false,
            aliases: vec![],
        };
        let mut web = spec("web", 1, "img:1");
        web.networks = vec![net("front", false), net("shared", true)];
        web.secrets = vec![SecretMount {
            name: "key".into(),
            version: 1,
            digest: String::new(),
            id: "i1".into(),
            check: "c1".into(),
            target: "/run/secrets/key".into(),
        }];
        // A mount planned before ids keeps its file, named by digest.
        let mut old = spec("old", 1, "img:1");
        old.secrets = vec![SecretMount {
            name: "key".into(),
            version: 1,
            digest: "d1".into(),
            id: String::new(),
            check: String::new(),
            target: "/run/secrets/key".into(),
        }];
        let mut host = host_with(vec![]);
        host.secrets = ["i1", "d1", "i0"].map(String::from).into();
        assert_eq!(
            diff(&[web.clone(), old], &host)[1..],
            [
                Action::Wait {
                    name: "shop.web.1".into(),
                    network: "skiff.shop.front.n1".into(),
                    external: false
                },
                Action::DropSecret { file: "i0".into() },
            ]
        );
        host.networks.insert("skiff.shop.front.n1".into());
        assert!(matches!(
            &diff(std::slice::from_ref(&web), &host)[0],
            Action::Wait { network, external: true, .. } if network == "shared"
        ));
        host.networks.insert("shared".into());
        assert!(matches!(
            &diff(std::slice::from_ref(&web), &host)[0],
            Action::Create { .. }
        ));
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
            let actions = diff(&desired, &host_with(observed.clone()));
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
                    Action::Wait { .. } | Action::DropSecret { .. } => {
                        prop_assert!(false, "no networks or secrets here: {a:?}");
                    }
                }
            }
            prop_assert_eq!(after.len(), desired.len());
            for d in &desired {
                let matching: Vec<_> = after.iter().filter(|o| o.key == d.key()).collect();
                prop_assert_eq!(matching.len(), 1);
                prop_assert_eq!(&matching[0].spec, &d.fingerprint());
            }
            prop_assert!(diff(&desired, &host_with(after)).is_empty());
            // Removals always come before creates.
            let first_create = actions.iter().position(|a| matches!(a, Action::Create { .. })).unwrap_or(actions.len());
            let only_creates_after = actions[first_create..].iter().all(|a| matches!(a, Action::Create { .. }));
            prop_assert!(only_creates_after);
        }
    }
}
