//! Whether a replica configured to update start-first can be: its new
//! container binds its published ports on the host (Compose `mode: host`),
//! and cannot while the replica it replaces, or another container there,
//! holds one of them. Such a replica is replaced stop-first instead, and
//! the deploy says so. Pure: the rollout asks it with the host's plan.

use std::sync::Arc;

use skiff_shared::workload::{ContainerSpec, PortSpec};

use super::Update;
use super::resolve::ServiceDef;
use crate::plans::NodePlan;
use crate::scheduler::Host;

/// A host port the new container needs and another container on its
/// host holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortClash {
    /// `18090/tcp`.
    pub port: String,
    /// The container holding it, `<stack>.<service>.<slot>`.
    pub holder: String,
}

impl PortClash {
    /// The line for the deploy's progress and the warning event.
    pub fn warning(&self, service: &str, host: &str) -> String {
        format!(
            "{service}: start-first needs the port free: updated stop-first on {host} (port {} is held by {}); give the service fewer replicas than hosts to keep start-first",
            self.port, self.holder
        )
    }
}

/// The deploy's warning for each replica configured start-first that will
/// be replaced stop-first, its port being held on its host.
pub(super) fn stop_first_warnings(
    defs: &[ServiceDef],
    hosts: &[(Host, Arc<NodePlan>)],
    updates: &[Update],
) -> Vec<String> {
    updates
        .iter()
        .filter(|u| {
            defs.iter()
                .any(|d| d.name == u.new.service && d.update.start_first)
        })
        .filter_map(|u| {
            let (host, plan) = hosts.iter().find(|(h, _)| h.attrs.id == u.node_id)?;
            let clash = port_clash(&u.new, &plan.containers)?;
            Some(clash.warning(&u.new.service, &host.attrs.hostname))
        })
        .collect()
}

/// The first port `new` binds on its host that another container planned
/// there (`on_host`, the host's containers; `new` itself is skipped)
/// binds too. The ports of a [`ContainerSpec`] are the ones the engine
/// binds on the host.
pub fn port_clash(new: &ContainerSpec, on_host: &[ContainerSpec]) -> Option<PortClash> {
    let key = new.key();
    new.ports.iter().find_map(|p| {
        on_host
            .iter()
            .filter(|c| c.key() != key)
            .find(|c| c.ports.iter().any(|q| overlap(p, q)))
            .map(|c| PortClash {
                port: format!("{}/{}", p.published, protocol(p)),
                holder: c.name(),
            })
    })
}

/// Whether two bindings want the same host port: same number and
/// protocol, on addresses that meet (none or a wildcard meets any).
fn overlap(a: &PortSpec, b: &PortSpec) -> bool {
    let any = |ip: &Option<String>| {
        ip.as_deref()
            .is_none_or(|ip| ip.is_empty() || ip == "0.0.0.0" || ip == "::")
    };
    a.published == b.published
        && a.protocol == b.protocol
        && (any(&a.host_ip) || any(&b.host_ip) || a.host_ip == b.host_ip)
}

fn protocol(p: &PortSpec) -> &'static str {
    match p.protocol {
        skiff_shared::workload::Protocol::Tcp => "tcp",
        skiff_shared::workload::Protocol::Udp => "udp",
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use skiff_shared::workload::Protocol;

    use super::*;

    fn port(published: u16, protocol: Protocol, host_ip: Option<&str>) -> PortSpec {
        PortSpec {
            target: 8080,
            published,
            protocol,
            host_ip: host_ip.map(str::to_owned),
        }
    }

    fn web(revision: u64, ports: Vec<PortSpec>) -> ContainerSpec {
        let mut c = ContainerSpec::new("shop", "web", 1, "busybox");
        c.revision = revision;
        c.ports = ports;
        c
    }

    #[test]
    fn the_replaced_replica_holding_the_port_is_a_clash() {
        let old = web(1, vec![port(18090, Protocol::Tcp, None)]);
        let new = web(2, vec![port(18090, Protocol::Tcp, None)]);
        let clash = port_clash(&new, &[old.clone(), new.clone()]).unwrap();
        assert_eq!(
            clash,
            PortClash {
                port: "18090/tcp".into(),
                holder: "shop.web.1".into(),
            }
        );
        let line = clash.warning("web", "host-a");
        assert!(
            line.starts_with("web: start-first needs the port free: updated stop-first on host-a")
                && line.contains("18090/tcp")
                && line.ends_with("give the service fewer replicas than hosts to keep start-first"),
            "{line}"
        );
        // Once the old one is gone from the host, nothing holds it.
        assert_eq!(port_clash(&new, std::slice::from_ref(&new)), None);
    }

    #[test]
    fn another_container_of_the_host_holding_it_is_a_clash_too() {
        let mut other = ContainerSpec::new("shop", "admin", 1, "busybox");
        other.ports = vec![port(18090, Protocol::Tcp, Some("127.0.0.1"))];
        let new = web(
            2,
            vec![
                port(9000, Protocol::Tcp, None),
                port(18090, Protocol::Tcp, None),
            ],
        );
        assert_eq!(
            port_clash(&new, &[other]).map(|c| c.holder),
            Some("shop.admin.1".into())
        );
    }

    #[test]
    fn other_ports_protocols_and_addresses_do_not_clash() {
        let new = web(2, vec![port(18090, Protocol::Tcp, Some("10.0.0.1"))]);
        for held in [
            port(18091, Protocol::Tcp, None),
            port(18090, Protocol::Udp, None),
            port(18090, Protocol::Tcp, Some("10.0.0.2")),
        ] {
            let old = web(1, vec![held.clone()]);
            assert_eq!(port_clash(&new, &[old]), None, "{held:?}");
        }
        let old = web(1, vec![port(18090, Protocol::Tcp, Some("0.0.0.0"))]);
        assert!(
            port_clash(&new, &[old]).is_some(),
            "a wildcard meets any address"
        );
        // A replica without published ports never clashes.
        assert_eq!(port_clash(&web(2, vec![]), &[web(1, vec![])]), None);
    }

    proptest! {
        /// A clash is found exactly when another container binds the same
        /// port and protocol on an address that meets the new one's.
        #[test]
        fn a_clash_is_exactly_a_shared_binding(
            new_ports in proptest::collection::vec((1u16..6, any::<bool>(), 0usize..3), 0..4),
            held_ports in proptest::collection::vec((1u16..6, any::<bool>(), 0usize..3), 0..4),
        ) {
            let ips = [None, Some("10.0.0.1"), Some("10.0.0.2")];
            let to_ports = |v: &[(u16, bool, usize)]| -> Vec<PortSpec> {
                v.iter()
                    .map(|&(n, udp, ip)| {
                        port(n, if udp { Protocol::Udp } else { Protocol::Tcp }, ips[ip])
                    })
                    .collect()
            };
            let new = web(2, to_ports(&new_ports));
            let old = web(1, to_ports(&held_ports));
            let expected = new.ports.iter().any(|p| {
                old.ports.iter().any(|q| {
                    p.published == q.published
                        && p.protocol == q.protocol
                        && (p.host_ip.is_none() || q.host_ip.is_none() || p.host_ip == q.host_ip)
                })
            });
            prop_assert_eq!(port_clash(&new, &[old, new.clone()]).is_some(), expected);
        }
    }
}
