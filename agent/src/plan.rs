//! Signed host plans: verified over the exact bytes received with the key
//! pinned at join, checked against the position of the last plan accepted
//! (no replays, no rollbacks), every section parsed and checked by its
//! controller, then stored (fsync + rename, 0600) before anything acts on
//! them.
//!
//! Plans are ordered by `(epoch, generation)` ([`HostPlan::position`]).
//! A plan is accepted when it is later than the last one, or is that same
//! plan byte for byte (sent again after a reconnect). The last position is
//! kept in its own file, `plan-position.json`, so a lost or deleted
//! `plan.json` does not lift the check.

use std::path::Path;

use serde::{Deserialize, Serialize};
use skiff_shared::files::{PRIVATE, write_atomic};
use skiff_shared::plan::HostPlan;
use skiff_shared::signing::{self, PlanError, SignedPlan};

use crate::controller::Publish;
use crate::identity::Identity;
use crate::supervisor::Router;

/// The stored plan's file in the data dir.
const FILE: &str = "plan.json";
/// The last accepted plan's position.
const POSITION: &str = "plan-position.json";

/// Why a plan was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("{0}")]
    Invalid(#[from] PlanError),
    #[error("plan is for cluster {got}, but this node belongs to cluster {want}")]
    OtherCluster { got: String, want: String },
    #[error(
        "plan generation {got} (epoch {got_epoch}) is older than the last accepted, generation {have} (epoch {have_epoch}); a replayed or out-of-date plan"
    )]
    Stale {
        got: u64,
        got_epoch: u64,
        have: u64,
        have_epoch: u64,
    },
    #[error(
        "plan generation {generation} (epoch {epoch}) was already accepted with other contents; a replayed or forged plan"
    )]
    Changed { generation: u64, epoch: u64 },
    #[error("{0}")]
    Section(String),
    #[error("cannot store the plan: {0}")]
    Store(std::io::Error),
}

/// Where the last accepted plan stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub cluster_id: String,
    pub epoch: u64,
    pub generation: u64,
    /// SHA-256 of the signed payload, hex.
    pub digest: String,
}

/// What to do with a plan at `candidate`, given the last accepted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Later than the last: take it.
    Newer,
    /// The last plan again, byte for byte: acknowledge it, change nothing.
    Same,
}

/// Decides whether a plan may be accepted after `last`.
///
/// # Errors
/// A plan of another cluster, an earlier one, or another plan under the
/// last one's position.
pub fn judge(
    last: Option<&Position>,
    cluster_id: Option<&str>,
    candidate: &Position,
) -> Result<Verdict, AcceptError> {
    let want = cluster_id.or(last.map(|l| l.cluster_id.as_str()));
    if let Some(want) = want
        && want != candidate.cluster_id
    {
        return Err(AcceptError::OtherCluster {
            got: candidate.cluster_id.clone(),
            want: want.to_owned(),
        });
    }
    let Some(last) = last else {
        return Ok(Verdict::Newer);
    };
    let (have, got) = (
        (last.epoch, last.generation),
        (candidate.epoch, candidate.generation),
    );
    if got > have {
        Ok(Verdict::Newer)
    } else if got == have && last.digest == candidate.digest {
        Ok(Verdict::Same)
    } else if got == have {
        Err(AcceptError::Changed {
            generation: got.1,
            epoch: got.0,
        })
    } else {
        Err(AcceptError::Stale {
            got: got.1,
            got_epoch: got.0,
            have: have.1,
            have_epoch: have.0,
        })
    }
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

/// Verifies a plan for this node, checks its position, has every section
/// checked, and stores it and its position. The same plan again is
/// accepted without being stored again.
pub fn accept(
    identity: &Identity,
    router: &Router,
    signed: &SignedPlan,
) -> Result<Accepted, AcceptError> {
    let (plan, bytes) =
        signing::open_with_bytes(&identity.plan_key, signed, &identity.node.node_id)?;
    let position = Position {
        cluster_id: plan.cluster_id.clone(),
        epoch: plan.epoch,
        generation: plan.generation,
        digest: hex::encode(skiff_shared::sha256(&bytes)),
    };
    let verdict = judge(
        last_position(&identity.dir).as_ref(),
        identity.node.cluster_id.as_deref(),
        &position,
    )?;
    let steps = router.prepare(&plan).map_err(AcceptError::Section)?;
    if verdict == Verdict::Newer {
        let signed_bytes =
            serde_json::to_vec(signed).map_err(|e| AcceptError::Store(std::io::Error::other(e)))?;
        write_atomic(&identity.dir.join(FILE), &signed_bytes, PRIVATE)
            .map_err(AcceptError::Store)?;
        let position_bytes = serde_json::to_vec(&position)
            .map_err(|e| AcceptError::Store(std::io::Error::other(e)))?;
        write_atomic(&identity.dir.join(POSITION), &position_bytes, PRIVATE)
            .map_err(AcceptError::Store)?;
    }
    Ok(Accepted { plan, steps })
}

/// The position of the last accepted plan; none before the first.
pub fn last_position(dir: &Path) -> Option<Position> {
    let bytes = std::fs::read(dir.join(POSITION)).ok()?;
    serde_json::from_slice(&bytes).ok()
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

/// Generation of the last accepted plan (for the hello only).
pub fn stored_generation(dir: &Path) -> Option<u64> {
    last_position(dir).map(|p| p.generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: u64, generation: u64, digest: &str) -> Position {
        Position {
            cluster_id: "c1".into(),
            epoch,
            generation,
            digest: digest.into(),
        }
    }

    #[test]
    fn only_later_plans_or_the_same_plan_again_are_accepted() {
        let last = at(5, 10, "aa");
        assert_eq!(
            judge(None, Some("c1"), &at(1, 1, "x")).unwrap(),
            Verdict::Newer
        );
        assert_eq!(
            judge(Some(&last), None, &at(5, 11, "bb")).unwrap(),
            Verdict::Newer
        );
        assert_eq!(
            judge(Some(&last), None, &at(5, 10, "aa")).unwrap(),
            Verdict::Same
        );
        assert!(matches!(
            judge(Some(&last), None, &at(5, 10, "bb")),
            Err(AcceptError::Changed {
                generation: 10,
                epoch: 5
            })
        ));
        assert!(matches!(
            judge(Some(&last), None, &at(5, 9, "aa")),
            Err(AcceptError::Stale {
                got: 9,
                have: 10,
                ..
            })
        ));
        assert!(matches!(
            judge(Some(&last), None, &at(4, 99, "aa")),
            Err(AcceptError::Stale { .. })
        ));
        // A coordinator restored from a backup: a new epoch, an older generation.
        assert_eq!(
            judge(Some(&last), None, &at(6, 3, "cc")).unwrap(),
            Verdict::Newer
        );
    }

    /// Plans signed with a real key, accepted by a real identity in a temp
    /// data dir, with no controllers.
    #[test]
    fn a_replay_under_a_seen_generation_is_refused_even_without_plan_json() {
        let dir = tempfile::tempdir().unwrap();
        let key = signing::generate_key().unwrap();
        let identity = Identity {
            dir: dir.path().to_owned(),
            node: crate::identity::NodeFile {
                node_id: "n1".into(),
                name: "host".into(),
                coordinator: "127.0.0.1:1".into(),
                cluster_id: Some("c1".into()),
            },
            key_pem: String::new(),
            ca: rustls::pki_types::CertificateDer::from(vec![0u8]),
            plan_key: key.verifying_key(),
        };
        let router =
            crate::supervisor::Supervisor::new(skiff_shared::tasks::TaskTree::root()).router();
        let plan = |epoch, generation, issued_at_ms| {
            let p = HostPlan {
                cluster_id: "c1".into(),
                epoch,
                node_id: "n1".into(),
                generation,
                issued_at_ms,
                sections: Default::default(),
            };
            signing::sign(&key, &serde_json::to_vec(&p).unwrap())
        };
        accept(&identity, &router, &plan(3, 7, 100))
            .unwrap()
            .publish();
        accept(&identity, &router, &plan(3, 7, 100))
            .expect("the same plan again is fine")
            .publish();
        assert!(matches!(
            accept(&identity, &router, &plan(3, 7, 200)),
            Err(AcceptError::Changed { .. })
        ));
        assert!(matches!(
            accept(&identity, &router, &plan(3, 6, 100)),
            Err(AcceptError::Stale { .. })
        ));
        std::fs::remove_file(dir.path().join(FILE)).unwrap();
        assert!(
            matches!(
                accept(&identity, &router, &plan(3, 7, 200)),
                Err(AcceptError::Changed { .. })
            ),
            "losing plan.json does not lift the check"
        );
        accept(&identity, &router, &plan(4, 1, 300))
            .expect("a new epoch")
            .publish();
        use std::os::unix::fs::PermissionsExt;
        for f in [FILE, POSITION] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }

    #[test]
    fn a_plan_of_another_cluster_is_refused() {
        let mut other = at(9, 9, "x");
        other.cluster_id = "c2".into();
        assert!(matches!(
            judge(None, Some("c1"), &other),
            Err(AcceptError::OtherCluster { .. })
        ));
        assert!(matches!(
            judge(Some(&at(1, 1, "y")), None, &other),
            Err(AcceptError::OtherCluster { .. })
        ));
    }
}
