//! Signed host plans: verified over the exact bytes received with the key
//! pinned at join, every section parsed and checked by its controller,
//! then stored (fsync + rename, 0600) before anything acts on them.

use std::path::Path;

use skiff_shared::files::{PRIVATE, write_atomic};
use skiff_shared::plan::HostPlan;
use skiff_shared::signing::{self, PlanError, SignedPlan};

use crate::controller::Publish;
use crate::identity::Identity;
use crate::supervisor::Router;

/// The stored plan's file in the data dir.
const FILE: &str = "plan.json";

/// Why a plan was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("{0}")]
    Invalid(#[from] PlanError),
    #[error("plan generation {got} is older than the stored generation {have}")]
    Stale { got: u64, have: u64 },
    #[error("{0}")]
    Section(String),
    #[error("cannot store the plan: {0}")]
    Store(std::io::Error),
}

/// A plan that passed every check and is stored; [`Accepted::publish`]
/// hands its sections to the controllers.
#[must_use]
pub struct Accepted {
    pub plan: HostPlan,
    steps: Vec<Publish>,
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted")
            .field("generation", &self.plan.generation)
            .finish_non_exhaustive()
    }
}

impl Accepted {
    pub fn publish(self) -> HostPlan {
        for step in self.steps {
            step();
        }
        self.plan
    }
}

/// Verifies a plan for this node, has every section checked, and stores it.
pub fn accept(
    identity: &Identity,
    router: &Router,
    signed: &SignedPlan,
) -> Result<Accepted, AcceptError> {
    let plan = signing::open(&identity.plan_key, signed, &identity.node.node_id)?;
    if let Some(have) = stored_generation(&identity.dir)
        && plan.generation < have
    {
        return Err(AcceptError::Stale {
            got: plan.generation,
            have,
        });
    }
    let steps = router.prepare(&plan).map_err(AcceptError::Section)?;
    let bytes =
        serde_json::to_vec(signed).map_err(|e| AcceptError::Store(std::io::Error::other(e)))?;
    write_atomic(&identity.dir.join(FILE), &bytes, PRIVATE).map_err(AcceptError::Store)?;
    Ok(Accepted { plan, steps })
}

/// The stored plan, re-verified (a file edited on disk is not trusted)
/// and checked by the controllers, ready to publish.
pub fn stored(identity: &Identity, router: &Router) -> Result<Option<Accepted>, AcceptError> {
    let path = identity.dir.join(FILE);
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(None);
    };
    // Earlier releases wrote it 0644.
    skiff_shared::files::restrict(&path, PRIVATE).map_err(AcceptError::Store)?;
    let signed: SignedPlan =
        serde_json::from_slice(&bytes).map_err(|e| AcceptError::Invalid(PlanError::Payload(e)))?;
    let plan = signing::open(&identity.plan_key, &signed, &identity.node.node_id)?;
    let steps = router.prepare(&plan).map_err(AcceptError::Section)?;
    Ok(Some(Accepted { plan, steps }))
}

/// Generation of the stored plan, without verifying it (for the hello only).
pub fn stored_generation(dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(dir.join(FILE)).ok()?;
    let signed: SignedPlan = serde_json::from_slice(&bytes).ok()?;
    let payload = base64_decode(&signed.payload)?;
    serde_json::from_slice::<HostPlan>(&payload)
        .ok()
        .map(|p| p.generation)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}
