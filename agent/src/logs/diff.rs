//! The logs controller's one decision: which containers to follow, which
//! followers to reap, what to forget, and whether the section's settings
//! must be put in force. Pure.

use std::collections::{BTreeMap, BTreeSet};

use skiff_shared::sections::logs::LogsSection;

/// What the controller sees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// This node's labelled containers, by engine id: running or not.
    pub containers: BTreeMap<String, bool>,
    /// Followers started, by container id: whether each has ended.
    pub following: BTreeMap<String, bool>,
    /// Stopped containers whose output was read to its end.
    pub drained: BTreeSet<String>,
    /// Containers with a checkpoint on disk.
    pub checkpoints: BTreeSet<String>,
    /// The section last put in force.
    pub configured: Option<LogsSection>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Put the section's files settings and sinks in force.
    Configure,
    /// A follower ended: forget it; `drained` when its container is not
    /// running (its output was read to the end).
    Reap { id: String, drained: bool },
    /// Start following a container (from its checkpoint).
    Follow(String),
    /// A container is gone: stop its follower, drop its checkpoint.
    Forget(String),
}

/// Every change, in order: configure, reap, follow, forget.
pub fn diff(desired: &LogsSection, observed: &Observed) -> Vec<Action> {
    let mut actions = Vec::new();
    if observed.configured.as_ref() != Some(desired) {
        actions.push(Action::Configure);
    }
    let running = |id: &str| observed.containers.get(id).copied().unwrap_or(false);
    let mut drained = observed.drained.clone();
    let mut active = BTreeSet::new();
    for (id, ended) in &observed.following {
        if *ended {
            let done = !running(id);
            if done {
                drained.insert(id.clone());
            }
            actions.push(Action::Reap {
                id: id.clone(),
                drained: done,
            });
        } else {
            active.insert(id.as_str());
        }
    }
    for (id, is_running) in &observed.containers {
        // A stopped container is read once to its end; a running one
        // (started again, too) always.
        if !active.contains(id.as_str()) && (*is_running || !drained.contains(id)) {
            actions.push(Action::Follow(id.clone()));
        }
    }
    let known: BTreeSet<&String> = observed
        .following
        .keys()
        .chain(&observed.drained)
        .chain(&observed.checkpoints)
        .collect();
    for id in known {
        if !observed.containers.contains_key(id) {
            actions.push(Action::Forget(id.clone()));
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use skiff_shared::sections::logs::FileSettings;

    use super::*;

    fn section() -> LogsSection {
        LogsSection {
            host: "h1".into(),
            files: FileSettings::default(),
            sinks: Vec::new(),
            stack_sinks: BTreeMap::new(),
        }
    }

    fn ids(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn new_settings_are_configured_first() {
        let o = Observed::default();
        assert_eq!(diff(&section(), &o), vec![Action::Configure]);
        let o = Observed {
            configured: Some(section()),
            ..Observed::default()
        };
        assert!(diff(&section(), &o).is_empty());
    }

    #[test]
    fn running_and_unread_stopped_containers_are_followed() {
        let o = Observed {
            containers: BTreeMap::from([
                ("a".into(), true),
                ("b".into(), false),
                ("c".into(), false),
            ]),
            drained: ids(&["c"]),
            configured: Some(section()),
            ..Observed::default()
        };
        assert_eq!(
            diff(&section(), &o),
            vec![Action::Follow("a".into()), Action::Follow("b".into())]
        );
    }

    #[test]
    fn an_ended_follower_is_reaped_and_a_restarted_container_followed_again() {
        let o = Observed {
            containers: BTreeMap::from([("a".into(), true), ("b".into(), false)]),
            following: BTreeMap::from([("a".into(), true), ("b".into(), true)]),
            configured: Some(section()),
            ..Observed::default()
        };
        assert_eq!(
            diff(&section(), &o),
            vec![
                Action::Reap {
                    id: "a".into(),
                    drained: false
                },
                Action::Reap {
                    id: "b".into(),
                    drained: true
                },
                Action::Follow("a".into()),
            ]
        );
    }

    #[test]
    fn gone_containers_are_forgotten() {
        let o = Observed {
            following: BTreeMap::from([("a".into(), false)]),
            drained: ids(&["b"]),
            checkpoints: ids(&["a", "c"]),
            configured: Some(section()),
            ..Observed::default()
        };
        assert_eq!(
            diff(&section(), &o),
            vec![
                Action::Forget("a".into()),
                Action::Forget("b".into()),
                Action::Forget("c".into()),
            ]
        );
    }

    proptest! {
        /// Every running container ends the round with one live follower,
        /// and nothing is followed twice.
        #[test]
        fn every_running_container_is_followed_once(
            containers in prop::collection::btree_map("[a-e]", any::<bool>(), 0..5),
            following in prop::collection::btree_map("[a-e]", any::<bool>(), 0..5),
            drained in prop::collection::btree_set("[a-e]", 0..5),
        ) {
            let o = Observed { containers: containers.clone(), following: following.clone(), drained, configured: Some(section()), ..Observed::default() };
            let actions = diff(&section(), &o);
            for (id, running) in &containers {
                let live = following.get(id) == Some(&false);
                let starts = actions.iter().filter(|a| **a == Action::Follow(id.clone())).count();
                prop_assert!(starts <= 1);
                prop_assert!(!(live && starts == 1));
                if *running {
                    prop_assert!(live || starts == 1);
                }
            }
        }
    }
}
