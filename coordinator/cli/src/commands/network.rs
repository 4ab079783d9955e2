//! `skiff network`: the cluster network: stack networks with their subnet
//! and each host's leases (`ls`), and the mesh with each host's view of its
//! peers (`show`).

use std::io::Write;

use clap::Subcommand;
use skiff_api_types::NetworkView;

use crate::Failure;
use crate::client::{Client, Method};
use crate::output::{print_json, table};

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// List stack networks: their cluster-wide subnet and each host's leases.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show the cluster range, the mesh, and every host's peers: endpoint,
    /// last handshake, bytes in and out, errors; and the stack networks' problems.
    Show {
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(
    client: &Client,
    cmd: NetworkCommand,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let view: NetworkView = client.call(Method::GET, "/network", None::<&()>).await?;
    match cmd {
        NetworkCommand::Ls { json: true } => print_json(out, &view.networks),
        NetworkCommand::Show { json: true } => print_json(out, &view),
        NetworkCommand::Ls { json: false } => ls(&view, out),
        NetworkCommand::Show { json: false } => show(&view, out),
    }
    Ok(())
}

const OFF: &str = "The cluster network is off: containers reach only containers on their own host ([network] enabled = false in the coordinator's config).";

fn ls(view: &NetworkView, out: &mut impl Write) {
    if !view.enabled {
        let _ = writeln!(out, "{OFF}");
        return;
    }
    let mut rows = Vec::new();
    for n in &view.networks {
        let name = format!("{}/{}", n.stack, n.name);
        if n.leases.is_empty() {
            rows.push(vec![
                name.clone(),
                n.id.to_string(),
                n.subnet.clone(),
                "-".into(),
                "-".into(),
            ]);
        }
        for l in &n.leases {
            rows.push(vec![
                name.clone(),
                n.id.to_string(),
                n.subnet.clone(),
                l.node.clone(),
                l.subnets.join(","),
            ]);
        }
    }
    table(out, &["NETWORK", "ID", "SUBNET", "NODE", "LEASES"], rows);
    problems(view, out);
}

/// One line per stack network's problem on a host.
fn problems(view: &NetworkView, out: &mut impl Write) {
    for n in &view.networks {
        for p in &n.problems {
            let _ = writeln!(
                out,
                "problem: {}/{} on {}: {}",
                n.stack, n.name, p.node, p.error
            );
        }
    }
}

/// `3s ago`, `2m ago`, `never`.
fn age(ms: Option<u64>) -> String {
    match ms {
        None => "never".into(),
        Some(ms) if ms < 120_000 => format!("{}s ago", ms / 1000),
        Some(ms) if ms < 7_200_000 => format!("{}m ago", ms / 60_000),
        Some(ms) => format!("{}h ago", ms / 3_600_000),
    }
}

/// `1.2 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn show(view: &NetworkView, out: &mut impl Write) {
    if !view.enabled {
        let _ = writeln!(out, "{OFF}");
        return;
    }
    let or_dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(out, "Range:  {}", or_dash(&view.range));
    let _ = writeln!(
        out,
        "Mesh:   {} on UDP port {}, MTU {}",
        or_dash(&view.mesh),
        view.port.map_or_else(|| "-".into(), |p| p.to_string()),
        view.mtu.map_or_else(|| "-".into(), |m| m.to_string()),
    );
    let _ = writeln!(out);
    let rows = view
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.node.clone(),
                h.address.clone(),
                or_dash(&h.endpoint),
                or_dash(&h.implementation),
                h.peers.len().to_string(),
                h.error
                    .clone()
                    .or_else(|| h.conflict.clone())
                    .or_else(|| h.firewall_error.clone())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        out,
        &[
            "NODE",
            "MESH ADDRESS",
            "ENDPOINT",
            "IMPLEMENTATION",
            "PEERS",
            "ERROR",
        ],
        rows,
    );
    for h in &view.hosts {
        if h.peers.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\nPeers of {}:", h.node);
        let rows = h
            .peers
            .iter()
            .map(|p| {
                vec![
                    p.node.clone(),
                    or_dash(&p.endpoint),
                    age(p.handshake_age_ms),
                    bytes(p.rx_bytes),
                    bytes(p.tx_bytes),
                    or_dash(&p.error),
                ]
            })
            .collect();
        table(
            out,
            &["PEER", "ENDPOINT", "HANDSHAKE", "RECEIVED", "SENT", "ERROR"],
            rows,
        );
    }
    // A host's problems with its stack networks (with Weave Net, its API
    // or bridge missing) are the host's network's too.
    if view.networks.iter().any(|n| !n.problems.is_empty()) {
        let _ = writeln!(out);
        problems(view, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_sizes_read_well() {
        assert_eq!(age(None), "never");
        assert_eq!(age(Some(3_400)), "3s ago");
        assert_eq!(age(Some(300_000)), "5m ago");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
    }
}
