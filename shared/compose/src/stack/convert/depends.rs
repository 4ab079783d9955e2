//! `depends_on`, and the checks that need every service: dependency targets
//! and conditions, the start order, and ports published twice.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::stack::model::*;
use crate::stack::order;
use crate::stack::yaml::{Node, Pos, Value, join};

use super::{Cx, ServiceMarks, index, is_extension, suggest};

impl Cx<'_, '_> {
    pub(super) fn depends_on(
        &mut self,
        node: &Node,
        path: &str,
        marks: &mut ServiceMarks,
    ) -> BTreeMap<String, Dependency> {
        let mut out = BTreeMap::new();
        let started = Dependency {
            condition: DependsCondition::ServiceStarted,
            required: true,
            restart: false,
        };
        match &node.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = index(path, i);
                    if let Some(name) = self.non_empty_string(item, &p) {
                        if out.insert(name.clone(), started.clone()).is_some() {
                            self.warn(item.pos, &p, format!("`{name}` is listed twice"));
                        }
                        marks.depends_on.push((name, item.pos));
                    }
                }
            }
            Value::Map(entries) => {
                for (k, v) in entries {
                    let p = join(path, &k.name);
                    let mut dep = started.clone();
                    for (dk, dv) in self.map(v, &p).unwrap_or(&[]) {
                        let dp = join(&p, &dk.name);
                        match dk.name.as_str() {
                            "condition" => match self.string(dv, &dp).as_deref() {
                                Some("service_started") => {
                                    dep.condition = DependsCondition::ServiceStarted
                                }
                                Some("service_healthy") => {
                                    dep.condition = DependsCondition::ServiceHealthy
                                }
                                Some("service_completed_successfully") => {
                                    dep.condition = DependsCondition::ServiceCompletedSuccessfully
                                }
                                Some(other) => {
                                    let fix = suggest(other, ["service_started", "service_healthy", "service_completed_successfully"])
                                        .map_or("use service_started, service_healthy or service_completed_successfully".to_string(), |s| format!("did you mean `{s}`?"));
                                    self.err_fix(
                                        dv.pos,
                                        &dp,
                                        format!("unknown condition {other:?}"),
                                        fix,
                                    );
                                }
                                None => {}
                            },
                            "required" => dep.required = self.boolean(dv, &dp).unwrap_or(true),
                            "restart" => {
                                dep.restart = self.boolean(dv, &dp).unwrap_or(false);
                                if dep.restart {
                                    self.warn(dv.pos, &dp, "dependents are not restarted when this service is updated; they keep running");
                                }
                            }
                            o if is_extension(o) => {}
                            _ => self.unknown_key(dk, &p, &["condition", "required", "restart"]),
                        }
                    }
                    marks.depends_on.push((k.name.clone(), k.pos));
                    out.insert(k.name.clone(), dep);
                }
            }
            _ if node.is_null() => {}
            _ => self.err(
                node.pos,
                path,
                format!(
                    "expected a list of services or a mapping, got {}",
                    node.kind()
                ),
            ),
        }
        out
    }

    pub(super) fn cross_checks(
        &mut self,
        stack: &mut Stack,
        marks: &BTreeMap<String, ServiceMarks>,
    ) {
        // depends_on names.
        let names: Vec<String> = stack.services.keys().cloned().collect();
        for (svc, m) in marks {
            for (dep, pos) in &m.depends_on {
                let p = join(&join(&join("services", svc), "depends_on"), dep);
                if dep == svc {
                    self.err(*pos, &p, format!("service `{svc}` depends on itself"));
                } else if !marks.contains_key(dep) {
                    let fix = suggest(dep, names.iter().map(String::as_str)).map_or(
                        "depend on a service defined in this file".to_string(),
                        |s| format!("did you mean `{s}`?"),
                    );
                    self.err_fix(
                        *pos,
                        &p,
                        format!("depends on `{dep}`, which is not a service of this stack"),
                        fix,
                    );
                } else if let (Some(s), Some(d)) =
                    (stack.services.get(svc), stack.services.get(dep))
                    && s.depends_on
                        .get(dep)
                        .is_some_and(|x| x.condition == DependsCondition::ServiceHealthy)
                {
                    match &d.healthcheck {
                        Some(Healthcheck { test: Some(HealthTest::None), .. }) => self.err_fix(
                            *pos,
                            &p,
                            format!("waits for `{dep}` to be healthy, but `{dep}` disables its health check"),
                            "enable the health check or use `condition: service_started`",
                        ),
                        None => self.warn(
                            *pos,
                            &p,
                            format!("waits for `{dep}` to be healthy; `{dep}` has no healthcheck here, so its image must define one"),
                        ),
                        Some(_) => {}
                    }
                }
            }
        }
        // Start order and cycles (self-dependencies are reported above).
        let graph: BTreeMap<String, Vec<String>> = stack
            .services
            .iter()
            .map(|(n, s)| {
                (
                    n.clone(),
                    s.depends_on.keys().filter(|d| *d != n).cloned().collect(),
                )
            })
            .collect();
        match order::start_order(&graph) {
            Ok(o) => stack.start_order = o,
            Err(cycle) => {
                let first = cycle.first().cloned().unwrap_or_default();
                let pos = marks.get(&first).map_or(Pos::default(), |m| m.depends_key);
                self.err_fix(
                    pos,
                    &join(&join("services", &first), "depends_on"),
                    format!("dependency cycle: {}", cycle.join(" -> ")),
                    "remove one of these dependencies",
                );
            }
        }
        // Published ports must be unique across the stack. One message per
        // port entry, even when a range clashes on many ports.
        type Publisher = (Option<IpAddr>, String, usize);
        let mut seen: BTreeMap<(u16, Protocol), Vec<Publisher>> = BTreeMap::new();
        let mut reported: BTreeSet<(String, Pos)> = BTreeSet::new();
        let mut in_file_order: Vec<(&String, &Service)> = stack.services.iter().collect();
        in_file_order.sort_by_key(|(n, _)| marks.get(*n).map(|m| m.order).unwrap_or_default());
        for (svc, s) in in_file_order {
            let Some(m) = marks.get(svc) else { continue };
            for (i, port) in s.ports.iter().enumerate() {
                let Some(published) = port.published else {
                    continue;
                };
                let pos = m.ports.get(i).copied().unwrap_or_default();
                let publishers = seen.entry((published, port.protocol)).or_default();
                let clash = publishers
                    .iter()
                    .find(|(ip, _, _)| {
                        ip.is_none() || port.host_ip.is_none() || *ip == port.host_ip
                    })
                    .map(|(_, other, line)| (other.clone(), *line));
                match clash {
                    Some((other, line)) => {
                        if reported.insert((svc.clone(), pos)) {
                            self.err_fix(
                                pos,
                                &join(&join("services", svc), "ports"),
                                format!(
                                    "port {published}/{} is already published by service `{other}` (line {line})",
                                    port.protocol.as_str()
                                ),
                                "publish a different host port",
                            );
                        }
                    }
                    None => publishers.push((port.host_ip, svc.clone(), pos.line)),
                }
            }
        }
    }
}
