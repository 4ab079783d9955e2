//! Deploys without SQLite and without processes: [`place`] as the pure
//! function it is, and whole rollouts over an in-memory store with
//! simulated agents that report what their plans ask for, in paused time.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_api_types::EventKind;
use skiff_shared::protocol::HostFacts;
use skiff_shared::tasks::TaskTree;
use skiff_shared::workload::{
    ContainerSpec, ContainerState, ContainerStatus, Health, ObservedState,
};

use super::place::{hold_dependents, place};
use super::resolve::{self, ServiceDef};
use super::rollout::RolloutState;
use super::*;
use crate::sections::Sections;
use crate::store::memory::MemoryStore;
use crate::store::{NodeRow, ReleaseStatus};

fn defs(compose: &str) -> Vec<ServiceDef> {
    let env = BTreeMap::new();
    let files: BTreeMap<std::path::PathBuf, String> = BTreeMap::new();
    let input = skiff_compose::stack::Input::new(compose, "compose.yml", Path::new("/srv"), &env)
        .with_files(&files);
    let stack = match skiff_compose::stack::parse(&input) {
        Ok(p) => p.stack,
        Err(e) => panic!("{e}"),
    };
    resolve::resolve("shop", &stack, &BTreeMap::new())
        .unwrap()
        .0
}

fn web(image: &str, replicas: u32, extra: &str) -> Vec<ServiceDef> {
    defs(&format!(
        "services:\n  web:\n    image: {image}\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: 1s\n    deploy:\n      replicas: {replicas}\n{extra}"
    ))
}

pub(super) fn node(id: &str) -> NodeRow {
    NodeRow {
        id: id.into(),
        name: format!("host-{id}"),
        labels: BTreeMap::new(),
        facts: HostFacts {
            cpus: 4,
            memory_bytes: 8 << 30,
            arch: "x86_64".into(),
            ..HostFacts::default()
        },
        agent_version: String::new(),
        remote_addr: None,
        joined_at: 0,
        last_seen_at: None,
        cert_serial: String::new(),
        cert_not_after: 0,
        plan_generation: None,
        plan_error: None,
        removed_at: None,
    }
}

fn host(id: &str, containers: Vec<ContainerSpec>) -> (Host, Arc<NodePlan>) {
    (
        Host {
            attrs: NodeAttrs {
                id: id.into(),
                hostname: format!("host-{id}"),
                os: "linux".into(),
                arch: "x86_64".into(),
                labels: BTreeMap::new(),
            },
            status: HostStatus::Up,
            capacity: Resources {
                cpu_millis: 4000,
                memory_bytes: 8 << 30,
            },
            images: Default::default(),
        },
        Arc::new(NodePlan {
            generation: 2,
            issued_at_ms: 0,
            containers,
            sections: BTreeMap::new(),
        }),
    )
}

fn count(t: &place::Transition, f: impl Fn(&Step) -> bool) -> usize {
    t.steps.iter().filter(|s| f(s)).count()
}

#[test]
fn a_new_stack_is_spread_over_the_hosts_and_started_at_once() {
    let hosts = vec![host("a", vec![]), host("b", vec![])];
    let t = place("shop", &web("app:1", 4, ""), &hosts, false, 1).unwrap();
    assert_eq!(count(&t, |s| matches!(s, Step::Start { .. })), 4);
    assert!(t.updates.is_empty());
    assert_eq!(t.immediate["a"].len(), 2, "two per host");
    assert_eq!(t.immediate["b"].len(), 2);
    assert!(t.immediate.values().flatten().all(|c| c.revision == 1));
}

#[test]
fn a_changed_spec_is_rolled_out_and_an_unchanged_one_is_kept() {
    let first = place(
        "shop",
        &web("app:1", 2, ""),
        &[host("a", vec![]), host("b", vec![])],
        false,
        1,
    )
    .unwrap();
    let hosts = vec![
        host("a", first.immediate["a"].clone()),
        host("b", first.immediate["b"].clone()),
    ];
    let same = place("shop", &web("app:1", 2, ""), &hosts, false, 2).unwrap();
    assert!(same.steps.is_empty() && same.immediate.is_empty() && same.updates.is_empty());

    let t = place("shop", &web("app:2", 2, ""), &hosts, false, 2).unwrap();
    assert_eq!(count(&t, |s| matches!(s, Step::Replace { .. })), 2);
    assert!(
        t.immediate.is_empty(),
        "replaced replicas change in the rollout"
    );
    assert_eq!(t.updates.len(), 2);
    for u in &t.updates {
        assert_eq!((u.old.image.as_str(), u.old.revision), ("app:1", 1));
        assert_eq!((u.new.image.as_str(), u.new.revision), ("app:2", 2));
        assert_eq!(u.old.slot, u.new.slot);
    }

    let down = place("shop", &web("app:1", 1, ""), &hosts, false, 2).unwrap();
    assert_eq!(count(&down, |s| matches!(s, Step::Stop { .. })), 1);
    assert_eq!(down.immediate.len(), 1, "one host changes at once");
    assert!(down.immediate.values().all(Vec::is_empty));
}

#[test]
fn a_port_another_stack_publishes_leaves_its_host_out_or_refuses_naming_it() {
    let mut other: ContainerSpec = serde_json::from_value(serde_json::json!({
        "stack": "other", "service": "api", "slot": 1, "image": "x",
        "ports": [{"target": 80, "published": 18080}]
    }))
    .unwrap();
    other.revision = 1;
    let published = "    ports: [{target: 8080, published: 18080, mode: host}]\n";
    let compose =
        format!("services:\n  web:\n    image: app:1\n{published}    deploy:\n      replicas: 1\n");
    let hosts = vec![host("a", vec![other.clone()]), host("b", vec![])];
    let t = place("shop", &defs(&compose), &hosts, false, 1).unwrap();
    assert!(!t.immediate.contains_key("a"), "the port is taken on a");
    assert_eq!(t.immediate["b"].len(), 1);

    let hosts = vec![host("a", vec![other])];
    let Err(DeployError::Placement(why)) = place("shop", &defs(&compose), &hosts, false, 1) else {
        panic!("placed although the only host's port is taken");
    };
    assert!(
        why[0].contains("port 18080/tcp is published on host-a by other.api.1"),
        "{why:?}"
    );
}

#[test]
fn new_replicas_of_a_dependent_service_are_held_for_the_rollout() {
    let defs =
        defs("services:\n  db:\n    image: db:1\n  web:\n    image: app:1\n    depends_on: [db]\n");
    let hosts = vec![host("a", vec![])];
    let mut t = place("shop", &defs, &hosts, false, 1).unwrap();
    let held = hold_dependents("shop", &defs, &hosts, &mut t);
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].spec.service, "web");
    assert!(t.immediate["a"].iter().all(|c| c.service == "db"));
}

/// A node and the containers of a plan it was sent.
type Sent = (String, Vec<ContainerSpec>);

/// A cluster in memory: a deployer over an in-memory store, and one
/// simulated agent per node that runs what its plan asks at once and
/// reports it; containers of an image named `bad` turn unhealthy.
struct Sim {
    d: Deployer,
    tree: TaskTree,
    /// Every plan any node was sent, in order.
    seen: Arc<Mutex<Vec<Sent>>>,
}

impl Sim {
    fn new(nodes: &[&str]) -> Self {
        let store = Arc::new(MemoryStore::default());
        for n in nodes {
            store.add_node(node(n));
        }
        let tree = TaskTree::root();
        let observed = Arc::new(ObservedBook::default());
        let plans = Arc::new(PlanBook::new(Arc::new(Sections::empty())));
        let d = Deployer::new(
            store,
            plans.clone(),
            observed.clone(),
            Arc::new(Sessions::default()),
            Arc::new(EventLog::default()),
            &tree,
            Duration::from_secs(60),
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        for n in nodes {
            let (mut rx, observed, seen, t) = (
                plans.subscribe(n),
                observed.clone(),
                seen.clone(),
                tree.clone(),
            );
            let n = (*n).to_owned();
            tree.spawn("simulated-agent", async move {
                loop {
                    let plan = rx.borrow_and_update().clone();
                    seen.lock()
                        .unwrap()
                        .push((n.clone(), plan.containers.clone()));
                    observed.set(&n, report(&plan));
                    tokio::select! {
                        () = t.cancelled() => return,
                        r = rx.changed() => if r.is_err() { return },
                    }
                }
            });
        }
        Self { d, tree, seen }
    }

    /// Waits (in paused time) until the stack's rollout ended; its state.
    async fn rollout_end(&self) -> RolloutState {
        for _ in 0..10_000 {
            if let Some(r) = self.d.rollouts.get("shop")
                && r.state.is_terminal()
            {
                return r.state;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the rollout never ended");
    }

    /// The `web` containers across nodes, by image.
    fn running(&self) -> Vec<String> {
        let mut out: Vec<String> = ["a", "b"]
            .iter()
            .flat_map(|n| self.d.plans.get(n).containers.clone())
            .map(|c| c.image)
            .collect();
        out.sort();
        out
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.tree.cancel();
    }
}

fn report(plan: &NodePlan) -> ObservedState {
    ObservedState {
        plan_generation: plan.generation,
        containers: plan
            .containers
            .iter()
            .map(|c| ContainerStatus {
                name: c.name(),
                key: c.key(),
                id: c.key(),
                state: ContainerState::Running,
                health: Some(if c.image.contains("bad") {
                    Health::Unhealthy
                } else {
                    Health::Healthy
                }),
                restart_count: 0,
                addresses: Vec::new(),
                started_at: None,
                exit_code: None,
                ips: vec![],
                image_id: String::new(),
                spec: c.fingerprint(),
            })
            .collect(),
        error: None,
        images: vec![],
        failures: vec![],
    }
}

#[tokio::test(start_paused = true)]
async fn a_rolling_update_replaces_one_replica_at_a_time_and_never_runs_short() {
    let sim = Sim::new(&["a", "b"]);
    let v1 = web("app:1", 2, "");
    deploy_defs(&sim.d, "shop", v1, "", vec![], false)
        .await
        .unwrap();
    assert_eq!(sim.rollout_end().await, RolloutState::Completed);
    assert_eq!(sim.running(), ["app:1", "app:1"]);
    let before = sim.seen.lock().unwrap().len();

    let start_first = "      update_config: {parallelism: 1, order: start-first}\n";
    let outcome = deploy_defs(
        &sim.d,
        "shop",
        web("app:2", 2, start_first),
        "",
        vec![],
        false,
    )
    .await
    .unwrap();
    assert_eq!(outcome.release, Some(2));
    assert_eq!(sim.rollout_end().await, RolloutState::Completed);
    assert_eq!(sim.running(), ["app:2", "app:2"]);

    // Replayed plan by plan: at no point fewer than two replicas, and at
    // most one extra (one batch at a time, started first).
    let mut now: BTreeMap<String, Vec<ContainerSpec>> = BTreeMap::new();
    for (i, (node, containers)) in sim.seen.lock().unwrap().iter().enumerate() {
        now.insert(node.clone(), containers.clone());
        let total: usize = now.values().map(Vec::len).sum();
        if i >= before {
            assert!(
                (2..=3).contains(&total),
                "{total} replicas at once: {now:?}"
            );
        }
    }
    let releases = sim.d.store.releases("shop").await.unwrap();
    assert_eq!(releases[0].status, ReleaseStatus::Deployed);
    let (events, _) = sim.d.events.subscribe();
    let updated = events
        .iter()
        .filter(|e| e.kind == EventKind::Rollout && e.message.starts_with("shop.web."))
        .count();
    assert_eq!(updated, 2);
}

#[tokio::test(start_paused = true)]
async fn a_batch_that_turns_unhealthy_rolls_the_stack_back_by_itself() {
    let sim = Sim::new(&["a", "b"]);
    deploy_defs(&sim.d, "shop", web("app:1", 2, ""), "", vec![], false)
        .await
        .unwrap();
    assert_eq!(sim.rollout_end().await, RolloutState::Completed);

    deploy_defs(&sim.d, "shop", web("app:bad", 2, ""), "", vec![], false)
        .await
        .unwrap();
    assert_eq!(sim.rollout_end().await, RolloutState::RolledBack);
    assert_eq!(sim.running(), ["app:1", "app:1"], "back on the old image");
    assert!(
        sim.seen
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, c)| c)
            .filter(|c| c.image == "app:bad")
            .count()
            >= 1,
        "the new image was tried"
    );
    let releases = sim.d.store.releases("shop").await.unwrap();
    assert_eq!(releases[0].status, ReleaseStatus::RolledBack);
    assert!(
        releases[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("is unhealthy")),
        "{:?}",
        releases[0].message
    );
    let stack = find_stack(&sim.d, "shop").await.unwrap();
    assert_eq!(stack.current_release, 1, "the stack is back on release 1");
}

#[tokio::test(start_paused = true)]
async fn a_release_from_before_secret_ids_is_planned_with_ids() {
    let sim = Sim::new(&["a"]);
    let id = "0123456789abcdef0123456789abcdef";
    let seal = |_| {
        Some(crate::store::NewSecretVersion {
            id: id.into(),
            check: "c".repeat(64),
            sealed: "sealed".into(),
        })
    };
    sim.d
        .store
        .put_secret("shop", "db", "mac", &seal, 1)
        .await
        .unwrap();
    let legacy = |version| skiff_shared::workload::SecretMount {
        name: "db".into(),
        version,
        digest: "d".repeat(64),
        id: String::new(),
        check: String::new(),
        target: "/run/secrets/db".into(),
    };
    // As a rollback to a release recorded before ids would restore it.
    let mut old = web("app:1", 1, "");
    old[0].template.secrets = vec![legacy(1)];
    deploy_defs(&sim.d, "shop", old.clone(), "", vec![], false)
        .await
        .unwrap();
    let planned = &sim.d.plans.get("a").containers[0].secrets[0];
    assert_eq!(
        (planned.id.as_str(), planned.digest.as_str()),
        (id, ""),
        "{planned:?}"
    );
    let recorded = &sim.d.store.releases("shop").await.unwrap()[0].services;
    assert!(!recorded.contains(&"d".repeat(64)), "{recorded}");

    old[0].template.secrets = vec![legacy(7)];
    let e = deploy_defs(&sim.d, "shop", old, "", vec![], false)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("secret \"db\" (version 7) is no longer stored"),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_container_policy_is_checked_on_every_deploy_rollback_and_scale() {
    let sim = Sim::new(&["a", "b"]);
    let socket = "    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n";
    let with_socket = || {
        defs(&format!(
            "services:\n  web:\n    image: app:1\n{socket}    deploy:\n      replicas: 2\n"
        ))
    };
    let releases = || async { sim.d.store.releases("shop").await.unwrap().len() };
    let refused = |r: Result<Outcome, DeployError>| match r {
        Err(DeployError::Policy(m)) => m.join("\n"),
        other => panic!("expected a policy refusal, got {other:?}"),
    };

    // Refused by default, for a dry run too: nothing recorded or planned.
    let m = refused(deploy_defs(&sim.d, "shop", with_socket(), "", vec![], true).await);
    assert!(
        m.contains("`skiff policy allow shop bind:/var/run/docker.sock`"),
        "{m}"
    );
    refused(deploy_defs(&sim.d, "shop", with_socket(), "", vec![], false).await);
    assert_eq!(releases().await, 0);
    assert!(sim.running().is_empty());

    // Allowed for the stack: it deploys.
    let setting = vec!["bind:/var/run/docker.sock".to_owned()];
    sim.d.store.allow("shop", &setting, 1).await.unwrap();
    deploy_defs(&sim.d, "shop", with_socket(), "", vec![], false)
        .await
        .unwrap();
    assert_eq!(sim.rollout_end().await, RolloutState::Completed);
    deploy_defs(&sim.d, "shop", web("app:2", 2, ""), "", vec![], false)
        .await
        .unwrap();
    assert_eq!(sim.rollout_end().await, RolloutState::Completed);

    // Revoked: going back to release 1 is checked again, and refused.
    assert!(
        sim.d
            .store
            .revoke("shop", &setting)
            .await
            .unwrap()
            .is_empty()
    );
    refused(rollback(&sim.d, "shop", Some(1)).await);
    assert_eq!(releases().await, 2);
    assert_eq!(sim.running(), ["app:2", "app:2"]);

    // Scaling a release that asks for what is no longer allowed is too.
    sim.d.store.allow("shop", &setting, 2).await.unwrap();
    rollback(&sim.d, "shop", Some(1)).await.unwrap();
    assert_eq!(sim.rollout_end().await, RolloutState::Completed);
    assert_eq!(releases().await, 3);
    sim.d.store.revoke("shop", &setting).await.unwrap();
    refused(scale(&sim.d, "shop", "web", 1).await);
    assert_eq!(releases().await, 3);
    assert_eq!(sim.running(), ["app:1", "app:1"]);
}
