//! `x-skiff.routes`: HTTP routes to a service on edge hosts, checked with
//! the rules the agent's proxy matches by.

use skiff_shared::sections::ingress::{Balance, Tls, check_domain, check_path};

use crate::stack::model::*;
use crate::stack::yaml::{Node, join};

use super::{Cx, index, is_extension};

const KEYS: &[&str] = &["domain", "path", "port", "tls", "balance", "local_first"];

impl Cx<'_, '_> {
    /// The list of routes; a bad one is reported and left out.
    pub(super) fn routes(&mut self, node: &Node, path: &str) -> Vec<RouteSpec> {
        let Some(items) = self.seq(node, path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let Some(r) = self.route(item, &index(path, i)) {
                out.push(r);
            }
        }
        // The same domain and path twice in one service.
        for (i, r) in out.iter().enumerate() {
            if out[..i]
                .iter()
                .any(|o| o.domain == r.domain && o.path == r.path)
            {
                self.err_fix(
                    node.pos,
                    path,
                    format!("route {}{} is listed twice", r.domain, r.path),
                    "keep one route per domain and path",
                );
            }
        }
        out
    }

    fn route(&mut self, node: &Node, path: &str) -> Option<RouteSpec> {
        let entries = self.map(node, path)?;
        let errors_before = self.errors.len();
        let mut r = RouteSpec {
            domain: String::new(),
            path: "/".into(),
            port: None,
            tls: Tls::Auto,
            balance: Balance::RoundRobin,
            local_first: false,
        };
        for (k, v) in entries {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "domain" => {
                    if let Some(d) = self.string(v, &kp) {
                        let d = d.to_ascii_lowercase();
                        match check_domain(&d) {
                            Ok(()) => r.domain = d,
                            Err(e) => self.err(v.pos, &kp, e.to_string()),
                        }
                    }
                }
                "path" => {
                    if let Some(p) = self.string(v, &kp) {
                        match check_path(&p) {
                            Ok(()) => r.path = p,
                            Err(e) => self.err(v.pos, &kp, e),
                        }
                    }
                }
                "port" => match self.uint(v, &kp) {
                    Some(n @ 1..=65535) => r.port = u16::try_from(n).ok(),
                    Some(n) => self.err_fix(
                        v.pos,
                        &kp,
                        format!("port {n} is out of range"),
                        "use the container port, from 1 to 65535",
                    ),
                    None => {}
                },
                "tls" => {
                    if let Some(t) = self.string(v, &kp) {
                        match t.parse() {
                            Ok(t) => r.tls = t,
                            Err(e) => self.err(v.pos, &kp, e),
                        }
                    }
                }
                "balance" => {
                    if let Some(b) = self.string(v, &kp) {
                        match b.parse() {
                            Ok(b) => r.balance = b,
                            Err(e) => self.err(v.pos, &kp, e),
                        }
                    }
                }
                "local_first" => r.local_first = self.boolean(v, &kp).unwrap_or(false),
                other if is_extension(other) => {}
                _ => self.unknown_key(k, path, KEYS),
            }
        }
        if self.errors.len() > errors_before {
            return None;
        }
        if r.domain.is_empty() {
            self.err_fix(
                node.pos,
                path,
                "the route has no `domain`",
                "add the host name it answers, such as `domain: app.example.com`",
            );
            return None;
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use crate::stack::{Input, parse};

    fn routes(yaml: &str) -> Result<Vec<crate::stack::RouteSpec>, String> {
        let file = format!("services:\n  web:\n    image: x\n    x-skiff:\n{yaml}");
        let env = BTreeMap::new();
        match parse(&Input::new(&file, "compose.yaml", Path::new("/p"), &env)) {
            Ok(p) => Ok(p.stack.services["web"].skiff.routes.clone()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn a_route_reads_with_its_defaults() {
        let r = routes("      routes:\n        - domain: App.Example.com\n          port: 8080\n")
            .unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].domain, "app.example.com");
        assert_eq!(r[0].path, "/");
        assert_eq!(r[0].port, Some(8080));
        let r = routes(
            "      routes:\n        - {domain: a.io, path: /api, tls: redirect, balance: least_connections, local_first: true}\n",
        )
        .unwrap();
        assert_eq!(r[0].path, "/api");
        assert_eq!(r[0].port, None);
        assert!(r[0].local_first);
    }

    #[test]
    fn bad_routes_are_refused_with_the_fix() {
        for (yaml, expect) in [
            ("        - {domain: localhost}\n", "app.example.com"),
            ("        - {domain: a.io, path: api}\n", "/api"),
            ("        - {domain: a.io, port: 70000}\n", "out of range"),
            ("        - {domain: a.io, tls: on}\n", "redirect"),
            (
                "        - {domain: a.io, balance: random}\n",
                "least_connections",
            ),
            ("        - {path: /}\n", "no `domain`"),
            ("        - {domain: a.io, prot: 1}\n", "prot"),
            (
                "        - {domain: a.io}\n        - {domain: a.io}\n",
                "twice",
            ),
        ] {
            let e = routes(&format!("      routes:\n{yaml}")).unwrap_err();
            assert!(e.contains(expect), "{yaml}: {e}");
        }
    }
}
