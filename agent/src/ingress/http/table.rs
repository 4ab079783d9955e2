//! The routing table: what a request's host and path lead to. Built whole
//! by [`Table::build`] at each update and swapped in at once.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use skiff_shared::sections::ingress::{IngressSection, ProxySettings, Route, Tls};

use super::stats::RouteCounters;
use crate::ingress::balance::{Pool, Pools};

/// One route with what serving it needs.
#[derive(Debug)]
pub(super) struct Entry {
    pub route: Route,
    /// The service's endpoints (none: the section lists no backend).
    pub pool: Option<Arc<Pool>>,
    pub stats: Arc<RouteCounters>,
}

/// The routes of one generation, indexed by domain.
#[derive(Debug, Default)]
pub(super) struct Table {
    pub generation: u64,
    pub node: String,
    pub settings: ProxySettings,
    /// Domain (exact, or `*.suffix`) to its routes, longest path first.
    by_domain: HashMap<String, Vec<Entry>>,
    /// ACME HTTP-01 token to its key authorization.
    pub challenges: HashMap<String, String>,
}

impl Table {
    /// Builds the table of `section`; `counters` gives each route its
    /// (long-lived) counters.
    pub fn build(
        section: &IngressSection,
        pools: &Pools,
        mut counters: impl FnMut(&Route) -> Arc<RouteCounters>,
    ) -> Self {
        let mut by_domain: HashMap<String, Vec<Entry>> = HashMap::new();
        for r in &section.routes {
            by_domain.entry(r.domain.clone()).or_default().push(Entry {
                route: r.clone(),
                pool: pools.get(&r.stack, &r.service),
                stats: counters(r),
            });
        }
        for routes in by_domain.values_mut() {
            routes.sort_by_key(|e| std::cmp::Reverse(e.route.path.len()));
        }
        Self {
            generation: section.generation,
            node: section.node.clone(),
            settings: section.settings.clone(),
            by_domain,
            challenges: section
                .challenges
                .iter()
                .map(|c| (c.token.clone(), c.key_authorization.clone()))
                .collect(),
        }
    }

    /// The route for a request: `host` lower case without port; the exact
    /// domain before a wildcard, then the longest path prefix. On the
    /// HTTPS port (`tls`), routes with `tls: off` do not exist.
    pub fn find(&self, host: &str, path: &str, tls: bool) -> Option<&Entry> {
        let usable =
            |e: &&Entry| path_matches(&e.route.path, path) && !(tls && e.route.tls == Tls::Off);
        if let Some(e) = self.by_domain.get(host).and_then(|v| v.iter().find(usable)) {
            return Some(e);
        }
        let (_, parent) = host.split_once('.')?;
        if parent.is_empty() {
            return None;
        }
        self.by_domain
            .get(&format!("*.{parent}"))
            .and_then(|v| v.iter().find(usable))
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.by_domain.values().flatten()
    }
}

/// Whether a route's path prefix covers a request's path, at a segment
/// boundary.
pub(super) fn path_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A request's host (the URI's authority, else the Host header): lower
/// case, without port or trailing dot (borrowed when `raw` is already so).
pub(super) fn normalize_host(raw: &str) -> Cow<'_, str> {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // An IPv6 literal: keep it bracketless.
        rest.split(']').next().unwrap_or(rest)
    } else {
        raw.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(raw, |(h, _)| h)
    };
    let host = host.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use skiff_shared::sections::ingress::{Backend, Balance, Challenge, Endpoint};

    use super::*;

    fn route(domain: &str, path: &str, service: &str, tls: Tls) -> Route {
        Route {
            stack: "s".into(),
            service: service.into(),
            domain: domain.into(),
            path: path.into(),
            port: 80,
            tls,
            balance: Balance::RoundRobin,
            local_first: false,
        }
    }

    fn table() -> Table {
        let section = IngressSection {
            routes: vec![
                route("app.example.com", "/", "root", Tls::Auto),
                route("app.example.com", "/api", "api", Tls::Auto),
                route("app.example.com", "/api/v2", "v2", Tls::Auto),
                route("*.example.com", "/", "wild", Tls::Auto),
                route("plain.example.com", "/", "plain", Tls::Off),
            ],
            backends: vec![Backend {
                stack: "s".into(),
                service: "api".into(),
                endpoints: vec![Endpoint {
                    ip: "10.0.0.1".parse().unwrap(),
                    node: "n".into(),
                    slot: 1,
                }],
            }],
            challenges: vec![Challenge {
                token: "tok".into(),
                key_authorization: "tok.key".into(),
            }],
            ..IngressSection::default()
        };
        let pools = Pools::default().rebuild(&section, &skiff_shared::tasks::TaskTree::root());
        Table::build(&section, &pools, |_| Arc::default())
    }

    fn service<'a>(t: &'a Table, host: &str, path: &str, tls: bool) -> Option<&'a str> {
        t.find(host, path, tls).map(|e| e.route.service.as_str())
    }

    #[test]
    fn the_longest_prefix_at_a_segment_boundary_wins() {
        let t = table();
        assert_eq!(service(&t, "app.example.com", "/", false), Some("root"));
        assert_eq!(service(&t, "app.example.com", "/api", false), Some("api"));
        assert_eq!(service(&t, "app.example.com", "/api/x", false), Some("api"));
        assert_eq!(service(&t, "app.example.com", "/apix", false), Some("root"));
        assert_eq!(
            service(&t, "app.example.com", "/api/v2/y", false),
            Some("v2")
        );
        assert!(
            t.find("app.example.com", "/api", false)
                .unwrap()
                .pool
                .is_some()
        );
        assert!(
            t.find("app.example.com", "/", false)
                .unwrap()
                .pool
                .is_none()
        );
    }

    #[test]
    fn an_exact_domain_beats_a_wildcard_of_one_label() {
        let t = table();
        assert_eq!(service(&t, "other.example.com", "/x", false), Some("wild"));
        assert_eq!(service(&t, "a.b.example.com", "/", false), None);
        assert_eq!(service(&t, "example.com", "/", false), None);
        assert_eq!(service(&t, "nothing.io", "/", false), None);
    }

    #[test]
    fn routes_without_tls_are_absent_on_the_https_port() {
        let t = table();
        assert_eq!(service(&t, "plain.example.com", "/", false), Some("plain"));
        // The wildcard takes it instead.
        assert_eq!(service(&t, "plain.example.com", "/", true), Some("wild"));
        assert_eq!(t.challenges.get("tok").map(String::as_str), Some("tok.key"));
    }

    #[test]
    fn hosts_lose_port_case_and_trailing_dot() {
        assert_eq!(normalize_host("App.Example.com:8080"), "app.example.com");
        assert_eq!(normalize_host("app.example.com."), "app.example.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("10.0.0.1"), "10.0.0.1");
    }

    mod properties {
        use proptest::prelude::*;
        use skiff_shared::sections::ingress::domain_matches;

        use super::*;

        const DOMAINS: [&str; 4] = ["a.io", "*.a.io", "b.a.io", "*.b.a.io"];
        const PATHS: [&str; 5] = ["/", "/x", "/x/y", "/xy", "/y"];
        const HOSTS: [&str; 5] = ["a.io", "b.a.io", "c.a.io", "d.b.a.io", "io"];
        const REQUESTS: [&str; 6] = ["/", "/x", "/x/", "/x/y/z", "/xy", "/yy"];

        /// The rules written plainly: among the routes that match, exact
        /// domains before wildcards, then the longest path.
        fn reference<'a>(
            routes: &'a [Route],
            host: &str,
            path: &str,
            tls: bool,
        ) -> Option<&'a Route> {
            let matching = |exact: bool| {
                routes
                    .iter()
                    .filter(move |r| r.domain.starts_with("*.") != exact)
                    .filter(|r| domain_matches(&r.domain, host))
                    .filter(|r| path_matches(&r.path, path))
                    .filter(|r| !(tls && r.tls == Tls::Off))
                    .max_by_key(|r| r.path.len())
            };
            matching(true).or_else(|| matching(false))
        }

        proptest! {
            #[test]
            fn find_follows_the_rules(
                picks in proptest::collection::btree_set((0..DOMAINS.len(), 0..PATHS.len(), any::<bool>()), 0..12),
                host in 0..HOSTS.len(),
                path in 0..REQUESTS.len(),
                tls in any::<bool>(),
            ) {
                // One route per (domain, path), as the coordinator allows.
                let mut seen = std::collections::BTreeSet::new();
                let routes: Vec<Route> = picks
                    .into_iter()
                    .filter(|(d, p, _)| seen.insert((*d, *p)))
                    .map(|(d, p, off)| {
                        let tls = if off { Tls::Off } else { Tls::Auto };
                        route(DOMAINS[d], PATHS[p], &format!("{d}-{p}"), tls)
                    })
                    .collect();
                let section = IngressSection { routes: routes.clone(), ..IngressSection::default() };
                let pools = Pools::default().rebuild(&section, &skiff_shared::tasks::TaskTree::root());
                let t = Table::build(&section, &pools, |_| Arc::default());
                let got = t.find(HOSTS[host], REQUESTS[path], tls).map(|e| &e.route);
                let want = reference(&routes, HOSTS[host], REQUESTS[path], tls);
                prop_assert_eq!(got, want);
            }
        }
    }
}
