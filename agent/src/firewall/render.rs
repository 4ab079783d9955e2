//! The table as nftables text: a pure function of both parts, tested
//! without the kernel.
//!
//! - `forward` (before Docker's own filter): inside the cluster range two
//!   addresses talk only when on the same network subnet, or when one is a
//!   host's mesh address; a network that is not internal may leave the
//!   range, an internal one may not. What it accepts gets [`MARK`], which
//!   the `DOCKER-USER` rule lets past Docker's `FORWARD` drop. Connections
//!   to published ports (destination NAT) are left to Docker's rules, as
//!   on any Docker host.
//! - `postrouting`: masquerades what leaves the range from networks that
//!   are not internal (Docker's own masquerade is off on these bridges).
//! - `input`: the DNS server's port on a network's gateway answers only
//!   that network's bridge (and the host itself, over `lo`): containers
//!   ask their gateway, nothing from another interface (the mesh, the
//!   outside) may. With a mesh whose port only peers may use (VXLAN),
//!   its UDP port accepts the peers' underlay addresses and drops the
//!   rest.

use std::fmt::Write as _;

use super::{MeshRules, NetworkRules};

/// The table's family and name.
pub const TABLE: &str = "inet skiff";

/// The packet mark of accepted cluster traffic.
pub const MARK: u32 = 0x0010_0000;

/// The `nft -f` script that replaces the table with one rendered from
/// both parts in one transaction (creating it first, so that deleting it
/// cannot fail), or only removes it when both are none.
pub fn script(networks: Option<&NetworkRules>, mesh: Option<&MeshRules>) -> String {
    let mut out = format!("table {TABLE} {{}}\ndelete table {TABLE}\n");
    if let Some(table) = render(networks, mesh) {
        out.push_str(&table);
    }
    out
}

/// The whole table; none when both parts are none.
pub fn render(networks: Option<&NetworkRules>, mesh: Option<&MeshRules>) -> Option<String> {
    if networks.is_none() && mesh.is_none() {
        return None;
    }
    let mut out = format!("table {TABLE} {{\n");
    if let Some(n) = networks.filter(|n| n.weave) {
        forward_weave(&mut out, n);
    } else if let Some(n) = networks {
        forward(&mut out, n);
        postrouting(&mut out, n, mesh);
    }
    let dns = networks.filter(|n| !n.networks.is_empty());
    let peers = mesh.filter(|m| m.peers_only);
    if dns.is_some() || peers.is_some() {
        input(&mut out, dns, peers);
    }
    out.push_str("}\n");
    Some(out)
}

fn forward(out: &mut String, n: &NetworkRules) {
    let (range, hosts) = (n.range, n.hosts);
    let accept = format!("meta mark set meta mark | {MARK:#010x} accept");
    out.push_str("\tchain forward {\n");
    out.push_str("\t\ttype filter hook forward priority filter - 10; policy accept;\n");
    // Published ports (and their replies): Docker's own rules decide.
    out.push_str("\t\tct status dnat accept comment \"published ports\"\n");
    for net in &n.networks {
        let _ = writeln!(
            out,
            "\t\tip saddr {s} ip daddr {s} {accept} comment \"{b}\"",
            s = net.subnet,
            b = net.bridge
        );
    }
    let _ = writeln!(
        out,
        "\t\tip saddr {hosts} ip daddr {range} {accept} comment \"hosts\""
    );
    let _ = writeln!(
        out,
        "\t\tip saddr {range} ip daddr {hosts} {accept} comment \"hosts\""
    );
    let _ = writeln!(
        out,
        "\t\tip saddr {range} ip daddr {range} drop comment \"across networks\""
    );
    for net in &n.networks {
        let verdict = if net.internal {
            "drop"
        } else {
            accept.as_str()
        };
        let _ = writeln!(
            out,
            "\t\tip saddr {s} ip daddr != {range} {verdict} comment \"{b}\"",
            s = net.subnet,
            b = net.bridge
        );
    }
    out.push_str("\t}\n");
}

/// With Weave Net, what the host forwards into the cluster range (routed
/// traffic, and bridged traffic on `weave` when `br_netfilter` hands it to
/// the forward hook) passes only within one network's subnet. Nothing is
/// masqueraded: a container leaves by its engine bridge, under Docker's
/// own masquerade.
fn forward_weave(out: &mut String, n: &NetworkRules) {
    let accept = format!("meta mark set meta mark | {MARK:#010x} accept");
    out.push_str("\tchain forward {\n");
    out.push_str("\t\ttype filter hook forward priority filter - 10; policy accept;\n");
    out.push_str("\t\tct status dnat accept comment \"published ports\"\n");
    for net in &n.networks {
        let _ = writeln!(
            out,
            "\t\tip saddr {s} ip daddr {s} {accept} comment \"{b}\"",
            s = net.subnet,
            b = net.bridge
        );
    }
    let _ = writeln!(
        out,
        "\t\tip daddr {} drop comment \"weave: across networks\"",
        n.range
    );
    let _ = writeln!(
        out,
        "\t\tip saddr {} drop comment \"weave: across networks\"",
        n.range
    );
    out.push_str("\t}\n");
}

fn postrouting(out: &mut String, n: &NetworkRules, mesh: Option<&MeshRules>) {
    out.push_str("\tchain postrouting {\n");
    out.push_str("\t\ttype nat hook postrouting priority srcnat; policy accept;\n");
    let device = mesh
        .map(|m| format!(" oifname != \"{}\"", m.device))
        .unwrap_or_default();
    for net in n.networks.iter().filter(|net| !net.internal) {
        let _ = writeln!(
            out,
            "\t\tip saddr {s} ip daddr != {range}{device} masquerade comment \"{b}\"",
            s = net.subnet,
            range = n.range,
            b = net.bridge
        );
    }
    out.push_str("\t}\n");
}

fn input(out: &mut String, n: Option<&NetworkRules>, m: Option<&MeshRules>) {
    out.push_str("\tchain input {\n");
    out.push_str("\t\ttype filter hook input priority filter - 10; policy accept;\n");
    for net in n.iter().flat_map(|n| &n.networks) {
        let dns = format!(
            "ip daddr {} meta l4proto {{ tcp, udp }} th dport {}",
            net.subnet,
            skiff_shared::sections::dns::PORT
        );
        let _ = writeln!(
            out,
            "\t\tiifname {{ \"{b}\", \"lo\" }} {dns} accept comment \"dns {b}\"",
            b = net.bridge
        );
        let _ = writeln!(out, "\t\t{dns} drop comment \"dns {}\"", net.bridge);
    }
    let Some(m) = m else {
        out.push_str("\t}\n");
        return;
    };
    if !m.peers.is_empty() {
        let peers: Vec<String> = m.peers.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "\t\tudp dport {} ip saddr {{ {} }} accept comment \"mesh peers\"",
            m.port,
            peers.join(", ")
        );
    }
    let _ = writeln!(out, "\t\tudp dport {} drop comment \"mesh\"", m.port);
    out.push_str("\t}\n");
}

#[cfg(test)]
pub(super) mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::firewall::NetworkRule;

    /// Two networks, the second internal.
    pub(in crate::firewall) fn networks() -> NetworkRules {
        NetworkRules {
            range: "10.66.0.0/16".parse().unwrap(),
            hosts: "10.66.0.0/22".parse().unwrap(),
            networks: vec![
                NetworkRule {
                    subnet: "10.66.8.0/22".parse().unwrap(),
                    internal: false,
                    bridge: "sk-1".into(),
                },
                NetworkRule {
                    subnet: "10.66.12.0/22".parse().unwrap(),
                    internal: true,
                    bridge: "sk-2".into(),
                },
            ],
            weave: false,
        }
    }

    /// A VXLAN mesh with two peers.
    pub(in crate::firewall) fn vxlan() -> MeshRules {
        MeshRules {
            device: "skv0".into(),
            port: 4789,
            peers_only: true,
            peers: vec![Ipv4Addr::new(192, 0, 2, 7), Ipv4Addr::new(192, 0, 2, 8)],
        }
    }

    #[test]
    fn renders_the_whole_table_from_both_parts() {
        let text = render(Some(&networks()), Some(&vxlan())).unwrap();
        let expected = "table inet skiff {
\tchain forward {
\t\ttype filter hook forward priority filter - 10; policy accept;
\t\tct status dnat accept comment \"published ports\"
\t\tip saddr 10.66.8.0/22 ip daddr 10.66.8.0/22 meta mark set meta mark | 0x00100000 accept comment \"sk-1\"
\t\tip saddr 10.66.12.0/22 ip daddr 10.66.12.0/22 meta mark set meta mark | 0x00100000 accept comment \"sk-2\"
\t\tip saddr 10.66.0.0/22 ip daddr 10.66.0.0/16 meta mark set meta mark | 0x00100000 accept comment \"hosts\"
\t\tip saddr 10.66.0.0/16 ip daddr 10.66.0.0/22 meta mark set meta mark | 0x00100000 accept comment \"hosts\"
\t\tip saddr 10.66.0.0/16 ip daddr 10.66.0.0/16 drop comment \"across networks\"
\t\tip saddr 10.66.8.0/22 ip daddr != 10.66.0.0/16 meta mark set meta mark | 0x00100000 accept comment \"sk-1\"
\t\tip saddr 10.66.12.0/22 ip daddr != 10.66.0.0/16 drop comment \"sk-2\"
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 10.66.8.0/22 ip daddr != 10.66.0.0/16 oifname != \"skv0\" masquerade comment \"sk-1\"
\t}
\tchain input {
\t\ttype filter hook input priority filter - 10; policy accept;
\t\tiifname { \"sk-1\", \"lo\" } ip daddr 10.66.8.0/22 meta l4proto { tcp, udp } th dport 53 accept comment \"dns sk-1\"
\t\tip daddr 10.66.8.0/22 meta l4proto { tcp, udp } th dport 53 drop comment \"dns sk-1\"
\t\tiifname { \"sk-2\", \"lo\" } ip daddr 10.66.12.0/22 meta l4proto { tcp, udp } th dport 53 accept comment \"dns sk-2\"
\t\tip daddr 10.66.12.0/22 meta l4proto { tcp, udp } th dport 53 drop comment \"dns sk-2\"
\t\tudp dport 4789 ip saddr { 192.0.2.7, 192.0.2.8 } accept comment \"mesh peers\"
\t\tudp dport 4789 drop comment \"mesh\"
\t}
}
";
        assert_eq!(text, expected);
    }

    #[test]
    fn same_network_rules_come_before_the_drop_across_networks() {
        let text = render(Some(&networks()), None).unwrap();
        let drop = text.find("drop comment \"across networks\"").unwrap();
        let same = text.find("ip daddr 10.66.12.0/22 meta mark").unwrap();
        let hosts = text.rfind("comment \"hosts\"").unwrap();
        assert!(same < drop && hosts < drop, "{text}");
        // Internal networks are never masqueraded, and nothing goes out
        // without the mesh device excluded when there is none.
        assert!(!text.contains("ip saddr 10.66.12.0/22 ip daddr != 10.66.0.0/16 oifname"));
        assert!(!text.contains("oifname"), "{text}");
        // No mesh: the input chain has the DNS port's rules only.
        assert!(text.contains("chain input"), "{text}");
        assert!(!text.contains("4789"), "{text}");
    }

    #[test]
    fn the_dns_port_of_a_gateway_answers_its_bridge_and_the_host_only() {
        let text = render(Some(&networks()), None).unwrap();
        let accept = text
            .find("iifname { \"sk-1\", \"lo\" } ip daddr 10.66.8.0/22 meta l4proto { tcp, udp } th dport 53 accept")
            .unwrap();
        let drop = text
            .find("\t\tip daddr 10.66.8.0/22 meta l4proto { tcp, udp } th dport 53 drop")
            .unwrap();
        assert!(accept < drop, "{text}");
        // No network, no DNS rules.
        let empty = NetworkRules {
            networks: vec![],
            ..networks()
        };
        assert!(!render(Some(&empty), None).unwrap().contains("chain input"));
    }

    #[test]
    fn the_mesh_alone_guards_its_port_only_when_asked() {
        let mut m = vxlan();
        let text = render(None, Some(&m)).unwrap();
        assert!(!text.contains("chain forward") && !text.contains("chain postrouting"));
        assert!(text.contains("udp dport 4789 ip saddr { 192.0.2.7, 192.0.2.8 } accept"));
        m.peers.clear();
        let text = render(None, Some(&m)).unwrap();
        assert!(!text.contains("ip saddr"), "no peers: all dropped\n{text}");
        assert!(text.contains("udp dport 4789 drop"));
        m.peers_only = false;
        assert_eq!(render(None, Some(&m)).unwrap(), "table inet skiff {\n}\n");
    }

    #[test]
    fn with_weave_only_one_subnet_talks_to_itself_and_nothing_is_masqueraded() {
        let mut n = networks();
        n.weave = true;
        for net in &mut n.networks {
            net.bridge = "weave".into();
        }
        let text = render(Some(&n), None).unwrap();
        let same = text
            .find("ip saddr 10.66.12.0/22 ip daddr 10.66.12.0/22 meta mark")
            .unwrap();
        let drop = text
            .find("ip daddr 10.66.0.0/16 drop comment \"weave: across networks\"")
            .unwrap();
        assert!(same < drop, "{text}");
        assert!(text.contains("ip saddr 10.66.0.0/16 drop"), "{text}");
        assert!(!text.contains("masquerade"), "{text}");
        assert!(!text.contains("10.66.0.0/22"), "no hosts block: {text}");
    }

    #[test]
    fn the_script_replaces_the_table_or_removes_it() {
        assert_eq!(
            script(None, None),
            "table inet skiff {}\ndelete table inet skiff\n"
        );
        let s = script(Some(&networks()), None);
        assert!(
            s.starts_with("table inet skiff {}\ndelete table inet skiff\ntable inet skiff {\n")
        );
        assert_eq!(s.matches("delete").count(), 1);
        assert!(!s.contains("flush"), "never flushes anything");
    }
}
