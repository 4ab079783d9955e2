//! A service's `x-skiff` mapping: its domains, the Skiff probe, how its
//! name is answered (`dns`) and its drain time.

use std::time::Duration;

use crate::stack::model::*;
use crate::stack::yaml::{Node, Value, join};

use super::{Cx, index, is_extension, to_json};

impl Cx<'_, '_> {
    pub(super) fn skiff_service(&mut self, node: &Node, path: &str) -> SkiffService {
        let mut s = SkiffService::default();
        for (k, v) in self.map(node, path).unwrap_or(&[]) {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "domains" => {
                    let items = self.string_list(v, &kp, true);
                    for (i, d) in items.into_iter().enumerate() {
                        if valid_domain(&d) {
                            s.domains.push(d.to_ascii_lowercase());
                        } else {
                            let p = if matches!(v.value, Value::Seq(_)) {
                                index(&kp, i)
                            } else {
                                kp.clone()
                            };
                            let pos = match &v.value {
                                Value::Seq(items) => items.get(i).map_or(v.pos, |n| n.pos),
                                _ => v.pos,
                            };
                            self.err_fix(pos, &p, format!("invalid domain {d:?}"), "write a host name such as `app.example.com` (a leading `*.` is allowed)");
                        }
                    }
                }
                "routes" => s.routes = self.routes(v, &kp),
                "healthcheck" => s.healthcheck = self.probe(v, &kp),
                "dns" => s.dns = self.dns_options(v, &kp),
                "drain" => {
                    s.drain = self.duration(v, &kp);
                    if s.drain.is_some_and(|d| d > MAX_DRAIN) {
                        s.drain = None;
                        self.err_fix(
                            v.pos,
                            &kp,
                            "a drain time over 1h",
                            "write a shorter time such as `drain: 10s`",
                        );
                    }
                }
                _ => {
                    self.warn(k.pos, &kp, format!("unknown x-skiff setting `{}`; kept, but not used by this Skiff release", k.name));
                    s.other.insert(k.name.clone(), to_json(v));
                }
            }
        }
        s
    }

    /// `x-skiff.dns`: `policy` (`round_robin`, `closest` or `version`)
    /// and `ttl` (a duration, whole seconds, 1s to 1h).
    fn dns_options(&mut self, node: &Node, path: &str) -> Option<DnsOptions> {
        let entries = self.map(node, path)?;
        let errors_before = self.errors.len();
        let mut out = DnsOptions::default();
        for (k, v) in entries {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "policy" => match self.string(v, &kp).as_deref() {
                    Some("round_robin") => out.policy = DnsPolicy::RoundRobin,
                    Some("closest") => out.policy = DnsPolicy::Closest,
                    Some("version") => out.policy = DnsPolicy::Version,
                    Some(other) => self.err_fix(
                        v.pos,
                        &kp,
                        format!("unknown DNS policy {other:?}"),
                        "use `round_robin`, `closest` or `version`",
                    ),
                    None => {}
                },
                "ttl" => match self.duration(v, &kp) {
                    Some(d)
                        if d.subsec_nanos() == 0
                            && (Duration::from_secs(1)..=MAX_TTL).contains(&d) =>
                    {
                        out.ttl = Some(d);
                    }
                    Some(_) => self.err_fix(
                        v.pos,
                        &kp,
                        "a DNS TTL is whole seconds from 1s to 1h",
                        "write a short TTL such as `ttl: 5s`",
                    ),
                    None => {}
                },
                other if is_extension(other) => {}
                _ => self.unknown_key(k, path, &["policy", "ttl"]),
            }
        }
        (self.errors.len() == errors_before).then_some(out)
    }

    /// `x-skiff.healthcheck`: `type` (`http` or `tcp`), `port`, `path`
    /// (HTTP only, default `/`), `interval`, `timeout`, `retries`,
    /// `start_period`.
    pub(super) fn probe(&mut self, node: &Node, path: &str) -> Option<Probe> {
        let entries = self.map(node, path)?;
        let mut kind = None;
        let (mut port, mut http_path, mut path_pos) = (None, None, None);
        // A field already reported as invalid is not reported missing too.
        let errors_before = self.errors.len();
        let mut probe = Probe {
            http_path: None,
            port: 0,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            retries: 3,
            start_period: Duration::ZERO,
        };
        for (k, v) in entries {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "type" => match self.string(v, &kp).as_deref() {
                    Some(t @ ("http" | "tcp")) => kind = Some(t == "http"),
                    Some(other) => self.err_fix(
                        v.pos,
                        &kp,
                        format!("unknown check type {other:?}"),
                        "use `http` or `tcp`",
                    ),
                    None => {}
                },
                "port" => match self.uint(v, &kp) {
                    Some(n @ 1..=65535) => port = u16::try_from(n).ok(),
                    Some(n) => self.err_fix(
                        v.pos,
                        &kp,
                        format!("port {n} is out of range"),
                        "use a port from 1 to 65535",
                    ),
                    None => {}
                },
                "path" => {
                    path_pos = Some(v.pos);
                    match self.string(v, &kp) {
                        Some(p)
                            if p.starts_with('/')
                                && !p.chars().any(|c| c.is_whitespace() || c.is_control()) =>
                        {
                            http_path = Some(p)
                        }
                        Some(p) => self.err_fix(
                            v.pos,
                            &kp,
                            format!("invalid path {p:?}"),
                            "write an absolute URL path such as `/healthz`",
                        ),
                        None => {}
                    }
                }
                "interval" => probe.interval = self.duration(v, &kp).unwrap_or(probe.interval),
                "timeout" => probe.timeout = self.duration(v, &kp).unwrap_or(probe.timeout),
                "start_period" => {
                    probe.start_period = self.duration(v, &kp).unwrap_or(probe.start_period)
                }
                "retries" => probe.retries = self.u32(v, &kp).unwrap_or(probe.retries),
                other if is_extension(other) => {}
                _ => self.unknown_key(
                    k,
                    path,
                    &[
                        "type",
                        "port",
                        "path",
                        "interval",
                        "timeout",
                        "retries",
                        "start_period",
                    ],
                ),
            }
        }
        if self.errors.len() > errors_before {
            return None;
        }
        let Some(http) = kind else {
            self.err_fix(
                node.pos,
                path,
                "the check has no `type`",
                "add `type: http` or `type: tcp`",
            );
            return None;
        };
        let Some(port) = port else {
            self.err_fix(
                node.pos,
                path,
                "the check has no `port`",
                "add the container port to check, such as `port: 8080`",
            );
            return None;
        };
        if !http && let Some(pos) = path_pos {
            self.err_fix(
                pos,
                &join(path, "path"),
                "a TCP check has no path",
                "remove `path`, or use `type: http`",
            );
            return None;
        }
        if probe.interval < Duration::from_millis(100)
            || probe.timeout.is_zero()
            || probe.retries == 0
        {
            self.err_fix(
                node.pos,
                path,
                "`interval` must be at least 100ms, `timeout` above zero and `retries` at least 1",
                "raise them",
            );
            return None;
        }
        probe.port = port;
        probe.http_path = http.then(|| http_path.unwrap_or_else(|| "/".to_owned()));
        Some(probe)
    }
}

/// The longest `x-skiff.drain`.
const MAX_DRAIN: Duration = Duration::from_secs(3600);
/// The longest `x-skiff.dns.ttl`.
const MAX_TTL: Duration = Duration::from_secs(3600);

fn valid_domain(d: &str) -> bool {
    skiff_shared::sections::ingress::check_domain(&d.to_ascii_lowercase()).is_ok()
}
