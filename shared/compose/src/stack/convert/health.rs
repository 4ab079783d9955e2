//! `healthcheck` and its `test`.

use crate::stack::model::*;
use crate::stack::yaml::{Node, Value, join};

use super::{Cx, is_extension};

impl Cx<'_, '_> {
    pub(super) fn healthcheck(&mut self, node: &Node, path: &str) -> Option<Healthcheck> {
        let entries = self.map(node, path)?;
        let mut hc = Healthcheck {
            test: None,
            interval: None,
            timeout: None,
            start_period: None,
            start_interval: None,
            retries: None,
        };
        let mut disable = None;
        let mut test_pos = None;
        for (k, v) in entries {
            let kp = join(path, &k.name);
            match k.name.as_str() {
                "test" => {
                    test_pos = Some(k.pos);
                    hc.test = self.health_test(v, &kp);
                }
                "interval" => hc.interval = self.duration(v, &kp),
                "timeout" => hc.timeout = self.duration(v, &kp),
                "start_period" => hc.start_period = self.duration(v, &kp),
                "start_interval" => hc.start_interval = self.duration(v, &kp),
                "retries" => hc.retries = self.u32(v, &kp),
                "disable" => disable = self.boolean(v, &kp),
                other if is_extension(other) => {}
                _ => self.unknown_key(
                    k,
                    path,
                    &[
                        "test",
                        "interval",
                        "timeout",
                        "start_period",
                        "start_interval",
                        "retries",
                        "disable",
                    ],
                ),
            }
        }
        if disable == Some(true) {
            if let (Some(_), Some(tpos)) = (&hc.test, test_pos)
                && hc.test != Some(HealthTest::None)
            {
                self.err_fix(
                    tpos,
                    &join(path, "test"),
                    "`test` and `disable: true` contradict each other",
                    "keep one of them",
                );
                return None;
            }
            hc.test = Some(HealthTest::None);
        }
        Some(hc)
    }

    pub(super) fn health_test(&mut self, node: &Node, path: &str) -> Option<HealthTest> {
        match &node.value {
            Value::Scalar(s) if !s.is_null() => {
                if s.text.trim().is_empty() {
                    self.err(node.pos, path, "the health check command is empty");
                    return None;
                }
                Some(HealthTest::CmdShell(s.text.clone()))
            }
            Value::Seq(_) => {
                let items = self.string_list(node, path, false);
                match items.split_first() {
                    Some((first, rest)) if first == "NONE" => {
                        if !rest.is_empty() {
                            self.warn(node.pos, path, "items after NONE are ignored");
                        }
                        Some(HealthTest::None)
                    }
                    Some((first, rest)) if first == "CMD" && !rest.is_empty() => {
                        Some(HealthTest::Cmd(rest.to_vec()))
                    }
                    Some((first, rest)) if first == "CMD-SHELL" && !rest.is_empty() => {
                        if rest.len() > 1 {
                            self.warn_fix(
                                node.pos,
                                path,
                                "CMD-SHELL takes one string; the items are joined with spaces",
                                "write the command as one string",
                            );
                        }
                        Some(HealthTest::CmdShell(rest.join(" ")))
                    }
                    Some((first, _)) if first == "CMD" || first == "CMD-SHELL" => {
                        self.err(node.pos, path, format!("{first} needs a command after it"));
                        None
                    }
                    _ => {
                        self.err_fix(
                            node.pos,
                            path,
                            "a health check list must start with CMD, CMD-SHELL or NONE",
                            "write [\"CMD\", \"curl\", \"-f\", \"http://localhost/\"] or [\"CMD-SHELL\", \"curl -f http://localhost/ || exit 1\"]",
                        );
                        None
                    }
                }
            }
            _ => {
                self.err(
                    node.pos,
                    path,
                    format!("expected a string or a list, got {}", node.kind()),
                );
                None
            }
        }
    }
}
