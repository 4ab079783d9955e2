//! `ports` (short and long syntax, ranges) and `expose`.

use std::net::IpAddr;

use crate::stack::model::*;
use crate::stack::yaml::{Key, Node, Pos, Value, join};

use super::{Cx, is_extension};

impl Cx<'_, '_> {
    pub(super) fn protocol(&mut self, text: &str, pos: Pos, path: &str) -> Option<Protocol> {
        match text.to_ascii_lowercase().as_str() {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => {
                self.err(
                    pos,
                    path,
                    format!("unknown protocol {text:?} (use tcp, udp or sctp)"),
                );
                None
            }
        }
    }

    /// A port number or a range `a-b`, as an inclusive range.
    pub(super) fn port_range(&mut self, text: &str, pos: Pos, path: &str) -> Option<(u16, u16)> {
        let one = |cx: &mut Self, t: &str| -> Option<u16> {
            match t.trim().parse::<u32>() {
                Ok(n) if (1..=65535).contains(&n) => u16::try_from(n).ok(),
                Ok(n) => {
                    cx.err(pos, path, format!("port {n} is out of range (1-65535)"));
                    None
                }
                Err(_) => {
                    cx.err(pos, path, format!("expected a port number, got {t:?}"));
                    None
                }
            }
        };
        match text.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (one(self, a)?, one(self, b)?);
                if a > b {
                    self.err(pos, path, format!("port range {text:?} runs backwards"));
                    return None;
                }
                Some((a, b))
            }
            None => one(self, text).map(|p| (p, p)),
        }
    }

    pub(super) fn expand_ports(
        &mut self,
        published: Option<(u16, u16)>,
        target: (u16, u16),
        base: &Port,
        pos: Pos,
        path: &str,
    ) -> Vec<Port> {
        let count = usize::from(target.1 - target.0) + 1;
        match published {
            Some(p) if p.0 != p.1 || target.0 != target.1 => {
                let pcount = usize::from(p.1 - p.0) + 1;
                if pcount != count {
                    self.err_fix(
                        pos,
                        path,
                        format!(
                            "published range has {pcount} ports but the container range has {count}"
                        ),
                        "give ranges of the same length, or one published port per container port",
                    );
                    return Vec::new();
                }
                (0..=target.1 - target.0)
                    .map(|i| Port {
                        target: target.0 + i,
                        published: Some(p.0 + i),
                        ..base.clone()
                    })
                    .collect()
            }
            Some(p) => vec![Port {
                target: target.0,
                published: Some(p.0),
                ..base.clone()
            }],
            None => (target.0..=target.1)
                .map(|t| Port {
                    target: t,
                    ..base.clone()
                })
                .collect(),
        }
    }

    pub(super) fn port(&mut self, node: &Node, path: &str) -> Vec<Port> {
        let base = Port {
            target: 0,
            published: None,
            host_ip: None,
            protocol: Protocol::Tcp,
            mode: PortMode::Ingress,
            name: None,
            app_protocol: None,
        };
        match &node.value {
            Value::Scalar(s) if !s.is_null() => self.port_short(&s.text, node.pos, path, base),
            Value::Map(entries) => self.port_long(entries, node, path, base),
            _ => {
                self.err(
                    node.pos,
                    path,
                    format!(
                        "expected a port (\"8080:80\") or a mapping with `target`, got {}",
                        node.kind()
                    ),
                );
                Vec::new()
            }
        }
    }

    pub(super) fn port_short(
        &mut self,
        text: &str,
        pos: Pos,
        path: &str,
        mut base: Port,
    ) -> Vec<Port> {
        let (spec, proto) = match text.rsplit_once('/') {
            Some((s, p)) => (s, Some(p)),
            None => (text, None),
        };
        if let Some(p) = proto {
            match self.protocol(p, pos, path) {
                Some(p) => base.protocol = p,
                None => return Vec::new(),
            }
        }
        // [host_ip:][published:]target, host_ip possibly in brackets.
        let (ip, rest) = if let Some(after) = spec.strip_prefix('[') {
            match after.split_once("]:") {
                Some((ip, rest)) => (Some(ip.to_string()), rest.to_string()),
                None => {
                    self.err(
                        pos,
                        path,
                        format!("invalid port {text:?}: `[` without `]:`"),
                    );
                    return Vec::new();
                }
            }
        } else {
            let parts: Vec<&str> = spec.split(':').collect();
            if parts.len() > 2 {
                let ip = parts[..parts.len() - 2].join(":");
                (Some(ip), parts[parts.len() - 2..].join(":"))
            } else {
                (None, spec.to_string())
            }
        };
        if let Some(ip) = ip {
            match ip.parse::<IpAddr>() {
                Ok(ip) => base.host_ip = Some(ip),
                Err(_) => {
                    self.err_fix(
                        pos,
                        path,
                        format!("invalid host address {ip:?} in port {text:?}"),
                        "write `IP:PUBLISHED:TARGET`, with IPv6 addresses in brackets",
                    );
                    return Vec::new();
                }
            }
        }
        let (published, target) = match rest.split_once(':') {
            Some((p, t)) => (
                if p.is_empty() {
                    None
                } else {
                    Some(p.to_string())
                },
                t.to_string(),
            ),
            None => (None, rest.clone()),
        };
        let Some(target) = self.port_range(&target, pos, path) else {
            return Vec::new();
        };
        let published = match published {
            Some(p) => match self.port_range(&p, pos, path) {
                Some(r) => Some(r),
                None => return Vec::new(),
            },
            None => None,
        };
        if let Some(p) = published
            && p.0 != p.1
            && target.0 == target.1
        {
            self.err_fix(
                pos,
                path,
                format!(
                    "published range {}-{} for the single container port {}",
                    p.0, p.1, target.0
                ),
                format!("publish one port, e.g. \"{}:{}\"", p.0, target.0),
            );
            return Vec::new();
        }
        self.expand_ports(published, target, &base, pos, path)
    }

    pub(super) fn port_long(
        &mut self,
        entries: &[(Key, Node)],
        node: &Node,
        path: &str,
        mut base: Port,
    ) -> Vec<Port> {
        let mut target = None;
        let mut published = None;
        let mut ok = true;
        for (k, v) in entries {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "target" => match self.string(v, &kp) {
                    Some(t) if !t.contains('-') => target = self.port_range(&t, v.pos, &kp),
                    Some(t) => {
                        self.err(v.pos, &kp, format!("expected a single port, got {t:?}"));
                        ok = false;
                    }
                    None => ok = false,
                },
                "published" => match self.string(v, &kp) {
                    Some(t) if t.is_empty() => {}
                    Some(t) => match self.port_range(&t, v.pos, &kp) {
                        Some(r) => published = Some((r, v.pos)),
                        None => ok = false,
                    },
                    None => ok = false,
                },
                "host_ip" => match self.string(v, &kp).map(|s| (s.parse::<IpAddr>(), s)) {
                    Some((Ok(ip), _)) => base.host_ip = Some(ip),
                    Some((Err(_), s)) => {
                        self.err(v.pos, &kp, format!("invalid IP address {s:?}"));
                        ok = false;
                    }
                    None => ok = false,
                },
                "protocol" => match self
                    .string(v, &kp)
                    .and_then(|s| self.protocol(&s, v.pos, &kp))
                {
                    Some(p) => base.protocol = p,
                    None => ok = false,
                },
                "mode" => match self.string(v, &kp).as_deref() {
                    Some("ingress") => base.mode = PortMode::Ingress,
                    Some("host") => base.mode = PortMode::Host,
                    Some(other) => {
                        self.err(
                            v.pos,
                            &kp,
                            format!("unknown port mode {other:?} (use ingress or host)"),
                        );
                        ok = false;
                    }
                    None => ok = false,
                },
                "name" => base.name = self.non_empty_string(v, &kp),
                "app_protocol" => base.app_protocol = self.non_empty_string(v, &kp),
                other if is_extension(other) => {}
                _ => self.unknown_key(
                    k,
                    path,
                    &[
                        "target",
                        "published",
                        "host_ip",
                        "protocol",
                        "mode",
                        "name",
                        "app_protocol",
                    ],
                ),
            }
        }
        let Some(target) = target else {
            if ok {
                self.err(
                    node.pos,
                    path,
                    "a port needs `target:` (the port inside the container)",
                );
            }
            return Vec::new();
        };
        if !ok {
            return Vec::new();
        }
        match published {
            Some((p, pos)) if p.0 != p.1 => {
                self.err_fix(
                    pos,
                    &join(path, "published"),
                    format!(
                        "published range {}-{} for the single container port {}",
                        p.0, p.1, target.0
                    ),
                    format!("publish one port, e.g. {}", p.0),
                );
                Vec::new()
            }
            _ => self.expand_ports(published.map(|(p, _)| p), target, &base, node.pos, path),
        }
    }

    pub(super) fn expose(&mut self, node: &Node, path: &str) -> Vec<ExposedPort> {
        let Some(text) = self.string(node, path) else {
            return Vec::new();
        };
        let (spec, proto) = match text.rsplit_once('/') {
            Some((s, p)) => (s.to_string(), self.protocol(p, node.pos, path)),
            None => (text.clone(), Some(Protocol::Tcp)),
        };
        let (Some(protocol), Some((a, b))) = (proto, self.port_range(&spec, node.pos, path)) else {
            return Vec::new();
        };
        (a..=b).map(|port| ExposedPort { port, protocol }).collect()
    }
}
