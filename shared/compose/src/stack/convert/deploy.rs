//! `deploy`: mode and replicas, `placement`, `resources`, `restart_policy`
//! and `update_config`.

use crate::stack::model::*;
use crate::stack::units;
use crate::stack::yaml::{Node, join};

use super::{Cx, index, is_extension, suggest};

impl Cx<'_, '_> {
    pub(super) fn deploy(&mut self, node: &Node, path: &str) -> Deploy {
        let mut d = Deploy::default();
        let Some(entries) = self.map(node, path) else {
            return d;
        };
        let mut replicas = None;
        let mut global = None;
        for (k, v) in entries {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "mode" => match self.string(v, &kp).as_deref() {
                    Some("replicated") => {}
                    Some("global") => global = Some(v.pos),
                    Some(m @ ("replicated-job" | "global-job")) => {
                        self.err(v.pos, &kp, format!("mode `{m}` is not supported yet (use replicated or global)"));
                    }
                    Some(other) => {
                        self.err(v.pos, &kp, format!("unknown mode {other:?} (use replicated or global)"));
                    }
                    None => {}
                },
                "replicas" => replicas = self.uint(v, &kp).map(|r| (r, k.pos)),
                "placement" => d.placement = self.placement(v, &kp),
                "resources" => d.resources = self.resources(v, &kp),
                "restart_policy" => d.restart_policy = self.restart_policy(v, &kp),
                "update_config" => d.update_config = self.update_config(v, &kp, UpdateConfig::update_default()),
                "rollback_config" => d.rollback_config = self.update_config(v, &kp, UpdateConfig::rollback_default()),
                "labels" => {
                    d.labels = self.string_map(v, &kp);
                    self.reserved_labels(&d.labels, v.pos, &kp);
                }
                "endpoint_mode" => match self.string(v, &kp).as_deref() {
                    Some("vip") | None => {}
                    Some("dnsrr") => self.err_fix(v.pos, &kp, "`endpoint_mode: dnsrr` is not supported: Skiff's DNS decides how service names resolve", "remove it"),
                    Some(other) => self.err(v.pos, &kp, format!("unknown endpoint_mode {other:?}")),
                },
                other if is_extension(other) => {}
                _ => self.unknown_key(k, path, &["mode", "replicas", "placement", "resources", "restart_policy", "update_config", "rollback_config", "labels", "endpoint_mode"]),
            }
        }
        match (global, replicas) {
            (Some(_), Some((_, pos))) => self.err_fix(
                pos,
                &join(path, "replicas"),
                "`replicas` cannot be used with `mode: global`",
                "remove `replicas` (global runs one replica per eligible host) or the mode",
            ),
            (Some(_), None) => d.mode = DeployMode::Global,
            (None, Some((r, _))) => d.mode = DeployMode::Replicated { replicas: r },
            (None, None) => {}
        }
        d
    }

    pub(super) fn placement(&mut self, node: &Node, path: &str) -> Placement {
        let mut pl = Placement::default();
        for (k, v) in self.map(node, path).unwrap_or(&[]) {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "constraints" => {
                    if let Some(items) = self.seq(v, &kp) {
                        for (i, item) in items.iter().enumerate() {
                            if let Some(c) = self.non_empty_string(item, &index(&kp, i)) {
                                pl.constraints.push(c);
                            }
                        }
                    }
                }
                "preferences" => self.warn_key(
                    k,
                    path,
                    "is ignored: Skiff spreads replicas over hosts by default",
                ),
                "max_replicas_per_node" => pl.max_replicas_per_node = self.uint(v, &kp),
                other if is_extension(other) => {}
                _ => self.unknown_key(
                    k,
                    path,
                    &["constraints", "preferences", "max_replicas_per_node"],
                ),
            }
        }
        pl
    }

    pub(super) fn resources(&mut self, node: &Node, path: &str) -> Resources {
        let mut r = Resources::default();
        for (k, v) in self.map(node, path).unwrap_or(&[]) {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "limits" => r.limits = self.resource_spec(v, &kp, false),
                "reservations" => r.reservations = self.resource_spec(v, &kp, true),
                other if is_extension(other) => {}
                _ => self.unknown_key(k, path, &["limits", "reservations"]),
            }
        }
        if let (Some(l), Some(res)) = (r.limits.memory_bytes, r.reservations.memory_bytes)
            && res > l
        {
            self.err(
                node.pos,
                path,
                format!("the memory reservation ({res} bytes) is above the limit ({l} bytes)"),
            );
        }
        if let (Some(l), Some(res)) = (r.limits.nano_cpus, r.reservations.nano_cpus)
            && res > l
        {
            self.err(node.pos, path, "the CPU reservation is above the limit");
        }
        r
    }

    pub(super) fn resource_spec(
        &mut self,
        node: &Node,
        path: &str,
        reservation: bool,
    ) -> ResourceSpec {
        let mut s = ResourceSpec::default();
        for (k, v) in self.map(node, path).unwrap_or(&[]) {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "cpus" => {
                    if let Some(text) = self.string(v, &kp) {
                        match units::parse_nano_cpus(&text) {
                            Ok(0) => self.err(v.pos, &kp, "cpus must be above 0"),
                            Ok(n) => s.nano_cpus = Some(n),
                            Err(why) => self.err_fix(
                                v.pos,
                                &kp,
                                format!("expected a number of CPUs, got {text:?}: {why}"),
                                "write a number such as 0.5 or 2",
                            ),
                        }
                    }
                }
                "memory" => s.memory_bytes = self.bytes(v, &kp),
                "pids" if !reservation => s.pids = self.uint(v, &kp),
                "devices" | "generic_resources" if reservation => {
                    self.err_fix(
                        k.pos,
                        &kp,
                        format!(
                            "`{}` is not supported: the scheduler cannot reserve devices yet",
                            k.name
                        ),
                        format!("remove `{}`", k.name),
                    );
                }
                other if is_extension(other) => {}
                _ => {
                    let known: &[&str] = if reservation {
                        &["cpus", "memory", "devices", "generic_resources"]
                    } else {
                        &["cpus", "memory", "pids"]
                    };
                    self.unknown_key(k, path, known)
                }
            }
        }
        s
    }

    pub(super) fn restart_policy(&mut self, node: &Node, path: &str) -> RestartPolicy {
        let mut rp = RestartPolicy::default();
        for (k, v) in self.map(node, path).unwrap_or(&[]) {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "condition" => match self.string(v, &kp).as_deref() {
                    Some("none") => rp.condition = RestartCondition::None,
                    Some("on-failure") => rp.condition = RestartCondition::OnFailure,
                    Some("any") => rp.condition = RestartCondition::Any,
                    Some(other) => {
                        let fix = suggest(other, ["none", "on-failure", "any"])
                            .map_or("use none, on-failure or any".to_string(), |s| {
                                format!("did you mean `{s}`?")
                            });
                        self.err_fix(
                            v.pos,
                            &kp,
                            format!("unknown restart condition {other:?}"),
                            fix,
                        );
                    }
                    None => {}
                },
                "delay" => {
                    if let Some(d) = self.duration(v, &kp) {
                        rp.delay = d;
                    }
                }
                "max_attempts" => rp.max_attempts = self.uint(v, &kp).filter(|n| *n > 0),
                "window" => rp.window = self.duration(v, &kp),
                other if is_extension(other) => {}
                _ => self.unknown_key(k, path, &["condition", "delay", "max_attempts", "window"]),
            }
        }
        rp
    }

    pub(super) fn update_config(
        &mut self,
        node: &Node,
        path: &str,
        mut u: UpdateConfig,
    ) -> UpdateConfig {
        for (k, v) in self.map(node, path).unwrap_or(&[]) {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "parallelism" => {
                    if let Some(n) = self.uint(v, &kp) {
                        u.parallelism = n;
                    }
                }
                "delay" => {
                    if let Some(d) = self.duration(v, &kp) {
                        u.delay = d;
                    }
                }
                "monitor" => {
                    if let Some(d) = self.duration(v, &kp) {
                        u.monitor = d;
                    }
                }
                "failure_action" => match self.string(v, &kp).as_deref() {
                    Some("continue") => u.failure_action = FailureAction::Continue,
                    Some("pause") => u.failure_action = FailureAction::Pause,
                    Some("rollback") => u.failure_action = FailureAction::Rollback,
                    Some(other) => {
                        let fix = suggest(other, ["continue", "pause", "rollback"])
                            .map_or("use continue, pause or rollback".to_string(), |s| {
                                format!("did you mean `{s}`?")
                            });
                        self.err_fix(v.pos, &kp, format!("unknown failure_action {other:?}"), fix);
                    }
                    None => {}
                },
                "max_failure_ratio" => {
                    if let Some(t) = self.string(v, &kp) {
                        match t.trim().parse::<f64>() {
                            Ok(r) if (0.0..=1.0).contains(&r) => u.max_failure_ratio = r,
                            _ => self.err(
                                v.pos,
                                &kp,
                                format!("expected a ratio between 0 and 1, got {t:?}"),
                            ),
                        }
                    }
                }
                "order" => match self.string(v, &kp).as_deref() {
                    Some("stop-first") => u.order = UpdateOrder::StopFirst,
                    Some("start-first") => u.order = UpdateOrder::StartFirst,
                    Some(other) => {
                        let fix = suggest(other, ["stop-first", "start-first"])
                            .map_or("use start-first or stop-first".to_string(), |s| {
                                format!("did you mean `{s}`?")
                            });
                        self.err_fix(v.pos, &kp, format!("unknown order {other:?}"), fix);
                    }
                    None => {}
                },
                other if is_extension(other) => {}
                _ => self.unknown_key(
                    k,
                    path,
                    &[
                        "parallelism",
                        "delay",
                        "failure_action",
                        "monitor",
                        "max_failure_ratio",
                        "order",
                    ],
                ),
            }
        }
        u
    }
}
