//! Deploys: a parsed stack becomes a numbered release, the scheduler places
//! its replicas, and every node whose containers change gets a new plan.
//!
//! Scale changes and moves apply at once; replicas whose spec changed are
//! replaced by a rolling update ([`rollout`]) that waits for each batch to
//! be healthy and rolls back by itself when one is not.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use skiff_api_types::EventKind;
use skiff_compose::placement::NodeAttrs;
use skiff_compose::stack::Stack;
use skiff_shared::tasks::TaskTree;
use skiff_shared::workload::ContainerSpec;
use tracing::info;

use crate::dns::{RecordsBook, RecordsSources};
use crate::events::EventLog;
use crate::network::{ClusterNetwork, NetworkError};
use crate::now_ms;
use crate::observed::ObservedBook;
use crate::plans::{NodePlan, PlanBook};
use crate::scheduler::{Host, HostStatus, Resources};
use crate::sessions::Sessions;
use crate::store::StoreError;
use crate::store::prelude::*;

mod ops;
mod order;
mod place;
mod recover;
pub mod resolve;
pub mod rollout;
mod unpublish;
mod wait;

pub(crate) use ops::last_deployed_before;
pub use ops::{Task, current_defs, defs_of, find_stack, remove, rollback, scale, tasks};
pub use place::{Held, Update};
use place::{NodePlans, hold_dependents, place};
pub use recover::{reschedule_lost, resume};
use resolve::ServiceDef;

/// What deploys work with: small handles, each shared with the rest of
/// the coordinator, so a test can build one over an in-memory store.
#[derive(Debug, Clone)]
pub struct Deployer {
    pub store: Arc<dyn DeployStore>,
    pub plans: Arc<PlanBook>,
    pub observed: Arc<ObservedBook>,
    pub sessions: Arc<Sessions>,
    pub events: Arc<EventLog>,
    pub rollouts: Arc<rollout::RolloutBook>,
    /// How long a silent host keeps its replicas.
    pub host_lost_grace: Duration,
    /// When this coordinator started (Unix ms): no host counts as lost
    /// before the grace period has passed since then too.
    pub started_at_ms: i64,
    /// The cluster network, when it is on: every plan change first brings
    /// its leases in line.
    pub network: Option<Arc<ClusterNetwork>>,
    /// The DNS records (with the cluster network): every plan change makes
    /// them again, and rollouts unpublish replicas before removing them.
    pub dns: Option<Arc<RecordsBook>>,
    /// The stacks' own log sinks follow their current release.
    pub logs: Option<Arc<crate::logs::LogBook>>,
}

impl Deployer {
    /// Rollouts run in subtrees of `tree`.
    pub fn new(
        store: Arc<dyn DeployStore>,
        plans: Arc<PlanBook>,
        observed: Arc<ObservedBook>,
        sessions: Arc<Sessions>,
        events: Arc<EventLog>,
        tree: &TaskTree,
        host_lost_grace: Duration,
    ) -> Self {
        Self {
            store,
            plans,
            observed,
            sessions,
            events,
            rollouts: Arc::new(rollout::RolloutBook::new(tree.child())),
            host_lost_grace,
            started_at_ms: now_ms(),
            network: None,
            dns: None,
            logs: None,
        }
    }

    /// With the cluster network on.
    #[must_use]
    pub fn with_network(mut self, network: Option<Arc<ClusterNetwork>>) -> Self {
        self.network = network;
        self
    }

    /// With ElasticDNS on (it needs the cluster network).
    #[must_use]
    pub fn with_dns(mut self, dns: Option<Arc<RecordsBook>>) -> Self {
        self.dns = dns;
        self
    }

    /// With the stacks' own log sinks kept in `logs`.
    #[must_use]
    pub fn with_logs(mut self, logs: Option<Arc<crate::logs::LogBook>>) -> Self {
        self.logs = logs;
        self
    }

    /// The records book and where its records come from, when DNS is on.
    pub(crate) fn records(&self) -> Option<(&RecordsBook, RecordsSources)> {
        let (book, network) = (self.dns.as_deref()?, self.network.clone()?);
        Some((
            book,
            RecordsSources {
                store: self.store.clone(),
                network,
                observed: self.observed.clone(),
            },
        ))
    }
}

/// Why a deploy was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(
        "invalid stack name {0:?}: use 1-63 lowercase letters, digits or '-', starting with a letter or digit"
    )]
    Name(String),
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
    #[error("{}", .0.join("\n"))]
    Placement(Vec<String>),
    /// The cluster's container policy refuses something the release asks
    /// for; each message names the setting that would allow it.
    #[error("{}", .0.join("\n"))]
    Policy(Vec<String>),
    #[error("no stack {0:?}")]
    NoStack(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("a plan or release cannot be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    /// The cluster network has no room for what the change needs.
    #[error("{0}")]
    Network(#[from] NetworkError),
}

/// One change a deploy makes, for dry runs and progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Start {
        container: String,
        node: String,
    },
    Stop {
        container: String,
        node: String,
        reason: String,
    },
    Replace {
        container: String,
        node: String,
    },
}

/// What a deploy did (or, for a dry run, would do).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub release: Option<i64>,
    pub steps: Vec<Step>,
    pub warnings: Vec<String>,
}

/// Checks a stack name: it becomes part of container and DNS names.
pub fn check_stack_name(name: &str) -> Result<(), DeployError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(DeployError::Name(name.to_owned()))
    }
}

/// The cluster's live nodes as the scheduler sees them, with each one's
/// current plan. A node counts as up while connected or within the grace
/// period since it was last seen, or since this coordinator started
/// (whichever is later): an outage of the coordinator loses no host.
async fn hosts(d: &Deployer) -> Result<Vec<(Host, Arc<NodePlan>)>, StoreError> {
    let now = now_ms();
    let grace = i64::try_from(d.host_lost_grace.as_millis()).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    for n in d.store.nodes(false).await? {
        let seen = n.last_seen_at.unwrap_or(0).max(d.started_at_ms);
        let up = d.sessions.get(&n.id).is_some() || now.saturating_sub(seen) <= grace;
        let plan = d.plans.get(&n.id);
        out.push((
            Host {
                attrs: NodeAttrs {
                    id: n.id.clone(),
                    hostname: n.name.clone(),
                    os: "linux".into(),
                    arch: n.facts.arch.clone(),
                    labels: n.labels.clone(),
                },
                status: if up { HostStatus::Up } else { HostStatus::Down },
                capacity: Resources {
                    cpu_millis: u64::from(n.facts.cpus).saturating_mul(1000),
                    memory_bytes: n.facts.memory_bytes,
                },
                images: d
                    .observed
                    .get(&n.id)
                    .map(|(_, o)| o.images.iter().cloned().collect())
                    .unwrap_or_default(),
            },
            plan,
        ));
    }
    Ok(out)
}

/// Deploys `stack` as `name` (or plans it, with `dry_run`).
pub async fn deploy(
    d: &Deployer,
    name: &str,
    stack: &Stack,
    compose: &str,
    dry_run: bool,
) -> Result<Outcome, DeployError> {
    check_stack_name(name)?;
    let secrets: BTreeMap<String, resolve::SecretVersion> = d
        .store
        .secrets(name)
        .await?
        .into_iter()
        .map(|s| (s.name.clone(), s.into()))
        .collect();
    let (defs, warnings) = resolve::resolve(name, stack, &secrets)
        .map_err(|errors| DeployError::Invalid(errors.iter().map(ToString::to_string).collect()))?;
    deploy_defs(d, name, defs, compose, warnings, dry_run).await
}

/// Gives the secret mounts of a release made before secret versions had
/// ids (a rollback to it, a scale of it) their version's id and check
/// value ([`resolve::key_secret_mounts`]).
async fn key_secret_mounts(
    d: &Deployer,
    name: &str,
    defs: &mut [ServiceDef],
) -> Result<(), DeployError> {
    let mut versions = BTreeMap::new();
    for (secret, version) in resolve::unkeyed_secret_mounts(defs) {
        let stored = d
            .store
            .secret_version(name, &secret, i64::try_from(version).unwrap_or(i64::MAX))
            .await?;
        if let Some(row) = stored {
            versions.insert((secret, version), row.into());
        }
    }
    resolve::key_secret_mounts(name, defs, &versions)
        .map_err(|errors| DeployError::Invalid(errors.iter().map(ToString::to_string).collect()))
}

/// Deploys resolved services as a new release of `name`: scale changes
/// and moves apply at once; replicas whose spec changed are replaced by a
/// rolling update in the background ([`rollout`]). Every deploy, rollback
/// and scale comes here, and is refused, changing nothing, when the
/// cluster's container policy does not allow what it asks for.
pub async fn deploy_defs(
    d: &Deployer,
    name: &str,
    defs: Vec<ServiceDef>,
    compose: &str,
    warnings: Vec<String>,
    dry_run: bool,
) -> Result<Outcome, DeployError> {
    let mut defs = defs;
    let mut warnings = warnings;
    key_secret_mounts(d, name, &mut defs).await?;
    if d.dns.is_some() {
        warnings.extend(dns_names(&mut defs));
    } else {
        warnings.extend(ports_on_hosts(&mut defs));
    }
    // One deploy at a time: each reads and rewrites node plans.
    let guard = d.plans.edit().await;
    if let Some(book) = &d.dns {
        let taken = crate::ingress::conflicts(name, &defs, &book.ingress());
        if !taken.is_empty() {
            return Err(DeployError::Invalid(taken));
        }
    }
    let allowed = crate::policy::parse_allowances(&d.store.stack_allowances(name).await?)?;
    let refused = crate::policy::check(name, &defs, &allowed);
    if !refused.is_empty() {
        info!(
            stack = name,
            refusals = refused.len(),
            "Release refused by the container policy."
        );
        return Err(DeployError::Policy(refused));
    }
    let hosts = hosts(d).await?;
    let releases = d.store.releases(name).await?;
    let revision = releases.first().map_or(1, |r| r.number + 1);
    let previous = d
        .store
        .stacks()
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| s.current_release);
    let mut transition = place(
        name,
        &defs,
        &hosts,
        false,
        u64::try_from(revision).unwrap_or(0),
    )?;
    warnings.extend(order::stop_first_warnings(
        &defs,
        &hosts,
        &transition.updates,
    ));
    if dry_run {
        return Ok(Outcome {
            release: None,
            steps: transition.steps,
            warnings,
        });
    }
    // The cluster network's leases first: a range with no room left
    // refuses the deploy before anything is recorded.
    sync_network(d, &transition.immediate).await?;
    let services = serde_json::to_string(&defs)?;
    let release = d
        .store
        .insert_release(name, compose, &services, now_ms())
        .await?;
    // A rollout still replacing replicas of this stack stops here; this
    // deploy starts from what runs now.
    d.rollouts.cancel(name);
    let held = hold_dependents(name, &defs, &hosts, &mut transition);
    if let Some(book) = &d.dns {
        book.set_services(name, &defs);
    }
    if let Some(logs) = &d.logs {
        logs.set_stack(name, crate::logs::release_sinks(&defs));
    }
    // Replicas a scale-down removes leave DNS on every host, and are
    // drained, before they are stopped.
    let leaving = unpublish::removed(name, &transition.immediate, |node| d.plans.get(node));
    unpublish::unpublish_now(d, &leaving).await?;
    apply(d, transition.immediate).await?;
    unpublish::forget(d, &leaving);
    drop(guard);
    info!(
        stack = name,
        release,
        steps = transition.steps.len(),
        "Stack deployed."
    );
    d.events.emit(
        EventKind::Deploy,
        Some(name),
        None,
        format!(
            "release {release} recorded: {} changes, {} to roll out",
            transition.steps.len(),
            transition.updates.len()
        ),
    );
    rollout::start(
        d.clone(),
        name.to_owned(),
        release,
        previous,
        defs,
        held,
        transition.updates,
    );
    Ok(Outcome {
        release: Some(release),
        steps: transition.steps,
        warnings,
    })
}

/// Where a stack's replicas of `service` are meant to run: node id, node
/// name and spec, from the node plans.
pub(crate) async fn planned(
    d: &Deployer,
    stack: &str,
    service: &str,
) -> Result<Vec<(String, String, ContainerSpec)>, StoreError> {
    let mut out = Vec::new();
    for n in d.store.nodes(false).await? {
        let plan = d.plans.get(&n.id);
        out.extend(
            plan.containers
                .iter()
                .filter(|c| c.stack == stack && c.service == service)
                .map(|c| (n.id.clone(), n.name.clone(), c.clone())),
        );
    }
    Ok(out)
}

/// Every live node's planned containers.
async fn planned_containers(d: &Deployer) -> Result<NodePlans, StoreError> {
    Ok(d.store
        .nodes(false)
        .await?
        .into_iter()
        .map(|n| {
            let containers = d.plans.get(&n.id).containers.clone();
            (n.id, containers)
        })
        .collect())
}

/// Brings the cluster network's records in line with every node's
/// containers once `changes` are made. Whether anything changed.
async fn sync_network(d: &Deployer, changes: &NodePlans) -> Result<bool, DeployError> {
    let Some(network) = &d.network else {
        return Ok(false);
    };
    let mut all = planned_containers(d).await?;
    all.extend(changes.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(network.sync(&all).await?)
}

/// Builds, stores and publishes the plans of nodes whose containers
/// change; with the cluster network on, of every node whose sections
/// change with them (a new lease on one host is a new route on all).
/// Call it holding the plan book's lock.
async fn apply(d: &Deployer, new_plans: NodePlans) -> Result<(), DeployError> {
    let mut new_plans = new_plans;
    if let Some(network) = &d.network {
        sync_network(d, &new_plans).await?;
        for n in d.store.nodes(false).await? {
            let containers = d.plans.get(&n.id).containers.clone();
            new_plans.entry(n.id).or_insert(containers);
        }
        if d.dns.is_some() {
            for (node, containers) in &mut new_plans {
                set_resolvers(network, &d.plans.get(node), node, containers);
            }
        }
    }
    if let Some((book, src)) = d.records() {
        crate::dns::refresh(book, &src, &new_plans).await?;
    }
    for (node, containers) in new_plans {
        let Some(plan) = d.plans.next(&node, containers)? else {
            continue;
        };
        d.store
            .put_node_plan(&crate::plans::row(&node, &plan), now_ms())
            .await?;
        d.plans.publish(&node, plan);
    }
    Ok(())
}

/// Makes the DNS records again from every node's containers and what the
/// agents last reported; when they changed, every node gets a plan with
/// them. Whether they changed.
///
/// # Errors
/// The store failed, or the cluster network has no room left.
pub async fn refresh_records(d: &Deployer) -> Result<bool, DeployError> {
    let _guard = d.plans.edit().await;
    refresh_records_locked(d).await
}

/// [`refresh_records`] for a caller holding the plan book's lock.
async fn refresh_records_locked(d: &Deployer) -> Result<bool, DeployError> {
    let Some((book, src)) = d.records() else {
        return Ok(false);
    };
    let all = planned_containers(d).await?;
    if !crate::dns::refresh(book, &src, &all).await? {
        return Ok(false);
    }
    apply(d, all).await?;
    Ok(true)
}

/// With ElasticDNS, a container resolves through the agent's server at
/// its first stack network's gateway on its host, with `STACK.skiff` as
/// its search domain. A container already
/// planned keeps the servers it was created with (a new gateway would
/// make the agent create it again).
fn set_resolvers(
    network: &ClusterNetwork,
    current: &NodePlan,
    node_id: &str,
    containers: &mut [ContainerSpec],
) {
    let gateways = network.gateways(node_id);
    for c in containers.iter_mut() {
        if let Some(planned) = current.containers.iter().find(|p| p.key() == c.key()) {
            c.dns.clone_from(&planned.dns);
            c.dns_search.clone_from(&planned.dns_search);
            continue;
        }
        if !c.dns.is_empty() {
            continue;
        }
        let first = c.networks.iter().find(|n| !n.external);
        if let Some(gw) = first.and_then(|n| gateways.get(&(c.stack.clone(), n.name.clone()))) {
            c.dns = vec![gw.to_string()];
            c.dns_search = vec![format!("{}.{}", c.stack, skiff_shared::sections::dns::ZONE)];
        }
    }
}

/// With ElasticDNS, a service's name is answered by the agents' servers,
/// cluster-wide: containers get no Docker alias for it (Docker's resolver
/// would answer it first, with this host's replicas only). Compose
/// `aliases` stay Docker aliases, answered with this host's replicas only:
/// a warning for each service that has them.
fn dns_names(defs: &mut [ServiceDef]) -> Vec<String> {
    let mut warnings = Vec::new();
    for def in defs {
        let service = def.name.clone();
        let mut extra = Vec::new();
        for n in def.template.networks.iter_mut().filter(|n| !n.external) {
            n.aliases.retain(|a| *a != service);
            extra.extend(n.aliases.iter().cloned());
        }
        if !extra.is_empty() {
            extra.sort();
            extra.dedup();
            warnings.push(format!(
                "service {service}: network aliases {} are answered by Docker with this host's replicas only; use the service name ({service}, or {service}.<stack>.skiff) to reach replicas on every host",
                extra.join(", ")
            ));
        }
    }
    warnings
}

/// Without the cluster network there is no ingress: ports in ingress
/// mode are bound on the hosts that run the replicas, as `mode: host`
/// ports are (one replica per host). A warning says so.
fn ports_on_hosts(defs: &mut [ServiceDef]) -> Vec<String> {
    let mut warnings = Vec::new();
    for def in defs {
        if !def.ingress.ports.is_empty() {
            warnings.push(format!(
                "service {}: ports are published on the hosts running its replicas only (the ingress needs the cluster network, which is off)",
                def.name
            ));
            def.ingress.into_host_ports(&mut def.template.ports);
            def.max_per_host.get_or_insert(1);
        }
        if !def.ingress.routes.is_empty() {
            warnings.push(format!(
                "service {}: its routes are not served (the ingress needs the cluster network, which is off)",
                def.name
            ));
        }
    }
    warnings
}

/// Builds every live node's plan again from its containers (the cluster
/// network changed: a host joined, left or reported a new key), storing
/// and publishing the ones that change.
///
/// # Errors
/// The store failed, or the cluster network has no room left.
pub async fn replan_all(d: &Deployer) -> Result<(), DeployError> {
    let _guard = d.plans.edit().await;
    apply(d, NodePlans::new()).await
}

/// Changes one node's containers in place (under the deploy lock),
/// storing and publishing its plan if they changed.
pub async fn edit_node_plan(
    d: &Deployer,
    node_id: &str,
    edit: impl FnOnce(&mut Vec<ContainerSpec>),
) -> Result<(), DeployError> {
    let _guard = d.plans.edit().await;
    let current = d.plans.get(node_id);
    let mut containers = current.containers.clone();
    edit(&mut containers);
    containers.sort_by_key(ContainerSpec::key);
    if containers != current.containers {
        apply(d, BTreeMap::from([(node_id.to_owned(), containers)])).await?;
    }
    Ok(())
}

#[cfg(test)]
mod dns_tests;
#[cfg(test)]
mod tests;
