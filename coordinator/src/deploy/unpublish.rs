//! ElasticDNS in a rollout: a replica leaves DNS before it is stopped.
//! New replicas are given in answers once healthy (the records' rule);
//! before old ones are removed from their hosts' plans, the rollout waits
//! until every host serves records with the new ones, then marks the old
//! ones leaving, waits until every host serves records without them, and
//! gives their connections in flight the service's drain time. Without
//! DNS (no cluster network) none of this applies.

use std::time::Duration;

use skiff_api_types::EventKind;
use skiff_shared::tasks::TaskTree;
use tokio::time::Instant;
use tracing::warn;

use super::Deployer;
use super::rollout::Stop;

/// How long a rollout waits for every host to serve new records before it
/// goes on anyway (with a warning event).
pub const SERVED_DEADLINE: Duration = Duration::from_secs(10);

/// A replica leaving DNS: its node id and container key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaving {
    pub node_id: String,
    pub key: String,
    pub stack: String,
    pub service: String,
}

/// Makes the records again and waits until every connected host serves
/// them (new replicas that became healthy are in them).
pub(super) async fn publish(d: &Deployer, stack: &str, token: &TaskTree) -> Result<(), Stop> {
    let Some(book) = &d.dns else {
        return Ok(());
    };
    super::refresh_records(d)
        .await
        .map_err(|e| Stop::Failed(e.to_string()))?;
    served(d, stack, book.generation(), token).await
}

/// Unpublishes `leaving`, waits until every connected host serves records
/// without them, then waits the longest drain time of their services.
/// On any stop the marks are taken back (the next records give them again).
pub(super) async fn unpublish(
    d: &Deployer,
    leaving: &[Leaving],
    token: &TaskTree,
) -> Result<(), Stop> {
    let Some(book) = &d.dns else {
        return Ok(());
    };
    if leaving.is_empty() {
        return Ok(());
    }
    for l in leaving {
        book.leave(&l.node_id, &l.key);
    }
    let result = async {
        super::refresh_records(d)
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?;
        served(d, &leaving[0].stack, book.generation(), token).await?;
        let drain = drain_of(book, leaving);
        tokio::select! {
            () = token.cancelled() => Err(Stop::Superseded),
            () = tokio::time::sleep(drain) => Ok(()),
        }
    }
    .await;
    if result.is_err() {
        forget(d, leaving);
    }
    result
}

/// The replicas of `stack` that `new_plans` take off their nodes (a
/// scale-down, a move): in the node's current plan, not in its new one.
pub(super) fn removed(
    stack: &str,
    new_plans: &super::NodePlans,
    current: impl Fn(&str) -> std::sync::Arc<crate::plans::NodePlan>,
) -> Vec<Leaving> {
    let mut out = Vec::new();
    for (node, containers) in new_plans {
        for c in current(node).containers.iter().filter(|c| c.stack == stack) {
            if !containers.iter().any(|n| n.key() == c.key()) {
                out.push(Leaving {
                    node_id: node.clone(),
                    key: c.key(),
                    stack: c.stack.clone(),
                    service: c.service.clone(),
                });
            }
        }
    }
    out
}

/// Unpublishes `leaving` from a deploy that holds the plan book's lock
/// (a scale-down): waits until every connected host serves records
/// without them (at most [`SERVED_DEADLINE`], then a warning event), then
/// their services' longest drain time. The caller removes them from their
/// plans next, and then forgets the marks.
///
/// # Errors
/// The store failed while the records were made.
pub(super) async fn unpublish_now(
    d: &Deployer,
    leaving: &[Leaving],
) -> Result<(), super::DeployError> {
    let Some(book) = &d.dns else {
        return Ok(());
    };
    if leaving.is_empty() {
        return Ok(());
    }
    for l in leaving {
        book.leave(&l.node_id, &l.key);
    }
    if let Err(e) = super::refresh_records_locked(d).await {
        forget(d, leaving);
        return Err(e);
    }
    confirmed(d, book, &leaving[0].stack, book.generation()).await;
    tokio::time::sleep(drain_of(book, leaving)).await;
    Ok(())
}

/// The longest drain time of the services of `leaving`.
fn drain_of(book: &crate::dns::RecordsBook, leaving: &[Leaving]) -> Duration {
    leaving
        .iter()
        .map(|l| Duration::from_millis(book.settings(&l.stack, &l.service).drain_ms))
        .max()
        .unwrap_or_default()
}

/// Forgets the marks of replicas removed from their plans.
pub(super) fn forget(d: &Deployer, leaving: &[Leaving]) {
    if let Some(book) = &d.dns {
        for l in leaving {
            book.forget(&l.node_id, &l.key);
        }
    }
}

/// Waits until every connected host serves `generation`, or the rollout
/// stops.
async fn served(d: &Deployer, stack: &str, generation: u64, token: &TaskTree) -> Result<(), Stop> {
    let Some(book) = &d.dns else {
        return Ok(());
    };
    tokio::select! {
        () = token.cancelled() => Err(Stop::Superseded),
        () = confirmed(d, book, stack, generation) => Ok(()),
    }
}

/// Waits until every connected host serves `generation`; past
/// [`SERVED_DEADLINE`], a warning event names the hosts behind and the
/// deploy goes on.
async fn confirmed(d: &Deployer, book: &crate::dns::RecordsBook, stack: &str, generation: u64) {
    let deadline = Instant::now() + SERVED_DEADLINE;
    let Err(behind) = book.wait_served(generation, &d.sessions, deadline).await else {
        return;
    };
    warn!(stack, generation, hosts = ?behind, "Hosts did not confirm the new DNS records in time; going on.");
    d.events.emit(
        EventKind::Rollout,
        Some(stack),
        None,
        format!(
            "DNS records {generation} not confirmed within {}s by {}; going on",
            SERVED_DEADLINE.as_secs(),
            behind.join(", ")
        ),
    );
}
