//! The networks controller's one pure diff: from the `networks` section
//! and the networks this node's agent made to the networks to create and
//! remove. Tested without Docker.

use std::collections::BTreeSet;

use skiff_shared::sections::networks::{NetworkSpec, NetworksSection};

/// A network this node's agent made, as found on the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Its name on the engine.
    pub name: String,
    /// The stack and the stack's name for it, from its labels.
    pub stack: String,
    pub network: String,
}

/// One change to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create(NetworkSpec),
    /// Remove a network no longer wanted; one still in use (its containers
    /// are being removed) is left for a later round.
    Remove {
        name: String,
    },
}

/// Creates the wanted networks that are missing and removes the ones no
/// longer wanted, creates first. Deterministic for a given input.
pub fn diff(desired: &NetworksSection, observed: &[Observed]) -> Vec<Action> {
    let have: BTreeSet<(&str, &str)> = observed
        .iter()
        .map(|o| (o.stack.as_str(), o.network.as_str()))
        .collect();
    let want: BTreeSet<(&str, &str)> = desired
        .networks
        .iter()
        .map(|n| (n.stack.as_str(), n.name.as_str()))
        .collect();
    let mut creates: Vec<&NetworkSpec> = desired
        .networks
        .iter()
        .filter(|n| !have.contains(&(n.stack.as_str(), n.name.as_str())))
        .collect();
    creates.sort();
    creates.dedup();
    let mut removes: Vec<&Observed> = observed
        .iter()
        .filter(|o| !want.contains(&(o.stack.as_str(), o.network.as_str())))
        .collect();
    removes.sort_by(|a, b| a.name.cmp(&b.name));
    creates
        .into_iter()
        .map(|n| Action::Create(n.clone()))
        .chain(removes.into_iter().map(|o| Action::Remove {
            name: o.name.clone(),
        }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(stack: &str, name: &str) -> NetworkSpec {
        NetworkSpec::local(stack, name, false)
    }

    fn seen(stack: &str, name: &str) -> Observed {
        Observed {
            name: format!("skiff.{stack}.{name}.n1"),
            stack: stack.into(),
            network: name.into(),
        }
    }

    #[test]
    fn creates_missing_and_removes_unwanted_networks() {
        let desired = NetworksSection {
            networks: vec![spec("shop", "default"), spec("shop", "back")],
            cluster: None,
        };
        let observed = vec![seen("shop", "default"), seen("old", "default")];
        assert_eq!(
            diff(&desired, &observed),
            vec![
                Action::Create(spec("shop", "back")),
                Action::Remove {
                    name: "skiff.old.default.n1".into()
                },
            ]
        );
    }

    proptest! {
        /// After the actions exactly the desired networks exist, and a
        /// second diff changes nothing.
        #[test]
        fn converges_in_one_round(
            want in proptest::collection::vec((0u8..3, 0u8..3), 0..6),
            have in proptest::collection::vec((0u8..3, 0u8..3), 0..6),
        ) {
            let desired = NetworksSection {
                networks: want.iter().map(|(s, n)| spec(&format!("s{s}"), &format!("n{n}"))).collect(),
                cluster: None,
            };
            let mut observed: Vec<Observed> =
                have.iter().map(|(s, n)| seen(&format!("s{s}"), &format!("n{n}"))).collect();
            observed.sort_by(|a, b| a.name.cmp(&b.name));
            observed.dedup();
            for a in diff(&desired, &observed) {
                match a {
                    Action::Create(n) => observed.push(seen(&n.stack, &n.name)),
                    Action::Remove { name } => observed.retain(|o| o.name != name),
                }
            }
            prop_assert!(diff(&desired, &observed).is_empty());
            let names: BTreeSet<_> = observed.iter().map(|o| (o.stack.clone(), o.network.clone())).collect();
            let wanted: BTreeSet<_> = desired.networks.iter().map(|n| (n.stack.clone(), n.name.clone())).collect();
            prop_assert_eq!(names, wanted);
        }
    }
}
