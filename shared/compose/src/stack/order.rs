//! Start order of services from `depends_on`, and cycle detection.

use std::collections::{BTreeMap, BTreeSet};

/// Orders `deps` (service -> services it depends on) so every service comes
/// after its dependencies, ties broken by name. On a cycle, returns the
/// cycle as a path that starts and ends with the same service.
/// Dependencies on names not in `deps` are ignored (reported elsewhere).
pub fn start_order(deps: &BTreeMap<String, Vec<String>>) -> Result<Vec<String>, Vec<String>> {
    let mut remaining: BTreeMap<&str, BTreeSet<&str>> = deps
        .iter()
        .map(|(name, ds)| {
            let set = ds
                .iter()
                .map(String::as_str)
                .filter(|d| deps.contains_key(*d))
                .collect();
            (name.as_str(), set)
        })
        .collect();
    let mut order = Vec::with_capacity(deps.len());
    loop {
        let ready: Vec<&str> = remaining
            .iter()
            .filter(|(_, ds)| ds.is_empty())
            .map(|(n, _)| *n)
            .collect();
        let Some(&next) = ready.first() else { break };
        remaining.remove(next);
        for ds in remaining.values_mut() {
            ds.remove(next);
        }
        order.push(next.to_string());
    }
    if remaining.is_empty() {
        return Ok(order);
    }
    // Every remaining service waits on another remaining one: walk the
    // first dependency from the smallest name until a name repeats.
    let mut path: Vec<&str> = Vec::new();
    let mut at = remaining.keys().next().copied().unwrap_or_default();
    loop {
        if let Some(i) = path.iter().position(|p| *p == at) {
            let mut cycle: Vec<String> = path[i..].iter().map(|s| s.to_string()).collect();
            cycle.push(at.to_string());
            return Err(cycle);
        }
        path.push(at);
        match remaining.get(at).and_then(|ds| ds.iter().next()) {
            Some(next) => at = next,
            None => return Err(path.iter().map(|s| s.to_string()).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn deps(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(n, ds)| (n.to_string(), ds.iter().map(|d| d.to_string()).collect()))
            .collect()
    }

    #[test]
    fn orders_and_finds_cycles() {
        let ok = start_order(&deps(&[
            ("web", &["db", "cache"]),
            ("db", &[]),
            ("cache", &[]),
            ("worker", &["db"]),
        ]));
        assert_eq!(
            ok,
            Ok(vec![
                "cache".into(),
                "db".into(),
                "web".into(),
                "worker".into()
            ])
        );
        let cyc = start_order(&deps(&[
            ("a", &["b"]),
            ("b", &["c"]),
            ("c", &["a"]),
            ("d", &[]),
        ]));
        assert_eq!(
            cyc,
            Err(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        let selfdep = start_order(&deps(&[("a", &["a"])]));
        assert_eq!(selfdep, Err(vec!["a".into(), "a".into()]));
    }

    proptest! {
        #[test]
        fn order_respects_dependencies(edges in proptest::collection::vec((0u8..8, 0u8..8), 0..20)) {
            let mut d: BTreeMap<String, Vec<String>> = (0..8).map(|i| (format!("s{i}"), Vec::new())).collect();
            for (a, b) in edges {
                if let Some(v) = d.get_mut(&format!("s{a}")) { v.push(format!("s{b}")); }
            }
            match start_order(&d) {
                Ok(order) => {
                    prop_assert_eq!(order.len(), 8);
                    for (name, ds) in &d {
                        let i = order.iter().position(|o| o == name);
                        for dep in ds {
                            let j = order.iter().position(|o| o == dep);
                            prop_assert!(j < i);
                        }
                    }
                }
                Err(cycle) => {
                    prop_assert!(cycle.len() >= 2);
                    prop_assert_eq!(cycle.first(), cycle.last());
                    for w in cycle.windows(2) {
                        prop_assert!(d[&w[0]].contains(&w[1]));
                    }
                }
            }
        }
    }
}
