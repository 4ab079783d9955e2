//! Signed plans: verified over the exact bytes received with the key
//! pinned at join, then stored (fsync + rename) before they are acted on.

use std::path::Path;

use skiff_shared::files::{PUBLIC, write_atomic};
use skiff_shared::signing::{self, Plan, PlanError, SignedPlan};

use crate::identity::Identity;

/// Why a plan was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("{0}")]
    Invalid(#[from] PlanError),
    #[error("plan generation {got} is older than the stored generation {have}")]
    Stale { got: u64, have: u64 },
    #[error("plan lists container {0} more than once")]
    Duplicate(String),
    #[error("cannot store the plan: {0}")]
    Store(std::io::Error),
}

/// Verifies a plan for this node and stores it.
pub fn accept(identity: &Identity, signed: &SignedPlan) -> Result<Plan, AcceptError> {
    let plan = signing::open(&identity.plan_key, signed, &identity.node.node_id)?;
    if let Some(have) = stored_generation(&identity.dir)
        && plan.generation < have
    {
        return Err(AcceptError::Stale {
            got: plan.generation,
            have,
        });
    }
    check(&plan)?;
    let bytes =
        serde_json::to_vec(signed).map_err(|e| AcceptError::Store(std::io::Error::other(e)))?;
    write_atomic(&identity.dir.join("plan.json"), &bytes, PUBLIC).map_err(AcceptError::Store)?;
    Ok(plan)
}

/// Refuses a plan that names a container (key) twice.
fn check(plan: &Plan) -> Result<(), AcceptError> {
    let mut keys = std::collections::HashSet::new();
    for c in &plan.containers {
        if !keys.insert(c.key()) {
            return Err(AcceptError::Duplicate(c.key()));
        }
    }
    Ok(())
}

/// The stored plan, re-verified (a file edited on disk is not trusted).
pub fn stored(identity: &Identity) -> Option<Plan> {
    let bytes = std::fs::read(identity.dir.join("plan.json")).ok()?;
    let signed: SignedPlan = serde_json::from_slice(&bytes).ok()?;
    signing::open(&identity.plan_key, &signed, &identity.node.node_id).ok()
}

/// Generation of the stored plan, without verifying it (for the hello only).
pub fn stored_generation(dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(dir.join("plan.json")).ok()?;
    let signed: SignedPlan = serde_json::from_slice(&bytes).ok()?;
    let payload = base64_decode(&signed.payload)?;
    serde_json::from_slice::<Plan>(&payload)
        .ok()
        .map(|p| p.generation)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_naming_a_container_twice_is_refused() {
        let spec: skiff_shared::workload::ContainerSpec = serde_json::from_str(
            r#"{"stack":"s","service":"web","slot":1,"revision":2,"image":"x"}"#,
        )
        .unwrap();
        let mut plan = Plan {
            node_id: "n".into(),
            generation: 1,
            issued_at_ms: 0,
            containers: vec![spec.clone()],
        };
        assert!(check(&plan).is_ok());
        let mut newer = spec.clone();
        newer.revision = 3;
        plan.containers.push(newer);
        assert!(
            check(&plan).is_ok(),
            "two revisions of a slot side by side are fine"
        );
        plan.containers.push(spec);
        assert!(matches!(check(&plan), Err(AcceptError::Duplicate(k)) if k == "s.web.1@2"));
    }
}
