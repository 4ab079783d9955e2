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
        let drain = leaving
            .iter()
            .map(|l| Duration::from_millis(book.settings(&l.stack, &l.service).drain_ms))
            .max()
            .unwrap_or_default();
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

/// Forgets the marks of replicas removed from their plans.
pub(super) fn forget(d: &Deployer, leaving: &[Leaving]) {
    if let Some(book) = &d.dns {
        for l in leaving {
            book.forget(&l.node_id, &l.key);
        }
    }
}

/// Waits until every connected host serves `generation`; past
/// [`SERVED_DEADLINE`], a warning event names the hosts behind and the
/// rollout goes on.
async fn served(d: &Deployer, stack: &str, generation: u64, token: &TaskTree) -> Result<(), Stop> {
    let Some(book) = &d.dns else {
        return Ok(());
    };
    let deadline = Instant::now() + SERVED_DEADLINE;
    let behind = tokio::select! {
        () = token.cancelled() => return Err(Stop::Superseded),
        r = book.wait_served(generation, &d.sessions, deadline) => match r {
            Ok(()) => return Ok(()),
            Err(behind) => behind,
        },
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
    Ok(())
}
