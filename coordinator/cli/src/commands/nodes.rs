//! `skiff node`: the cluster's servers: list, show, remove, label.

use std::io::Write;
use std::time::{Duration, SystemTime};

use clap::Subcommand;
use skiff_api_types::{LabelChange, NodeStatus, NodeView};

use super::path_segment;
use crate::Failure;
use crate::client::{Client, Method};
use crate::output::{bytes_text, dash, labels_text, print_json, table};

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show one node (by id or name).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a node: its session is closed and its certificate revoked for good.
    Rm { id: String },
    /// Set labels (key=value) or remove them (key-).
    Label {
        id: String,
        #[arg(required = true)]
        changes: Vec<String>,
    },
}

pub(crate) async fn run(
    client: &Client,
    cmd: NodeCommand,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match cmd {
        NodeCommand::Ls { json } => {
            let nodes: Vec<NodeView> = client.call(Method::GET, "/nodes", None::<&()>).await?;
            if json {
                print_json(out, &nodes);
            } else {
                let rows = nodes
                    .iter()
                    .map(|n| {
                        vec![
                            n.id.chars().take(12).collect(),
                            n.name.clone(),
                            n.status.to_string(),
                            ago(n.last_seen_at.as_deref(), n.status),
                            n.remote_addr.clone().unwrap_or_else(|| "-".into()),
                            dash(&n.agent_version),
                            n.docker_version.clone().unwrap_or_else(|| "-".into()),
                            labels_text(&n.labels),
                        ]
                    })
                    .collect();
                table(
                    out,
                    &[
                        "ID",
                        "NAME",
                        "STATUS",
                        "LAST SEEN",
                        "ADDRESS",
                        "AGENT",
                        "DOCKER",
                        "LABELS",
                    ],
                    rows,
                );
            }
        }
        NodeCommand::Show { id, json } => {
            let n: NodeView = client
                .call(
                    Method::GET,
                    &format!("/nodes/{}", path_segment(&id)?),
                    None::<&()>,
                )
                .await?;
            if json {
                print_json(out, &n);
            } else {
                show_node(out, &n);
            }
        }
        NodeCommand::Rm { id } => {
            let n: NodeView = client
                .call(
                    Method::DELETE,
                    &format!("/nodes/{}", path_segment(&id)?),
                    None::<&()>,
                )
                .await?;
            let _ = writeln!(
                out,
                "Node {} ({}) removed; its certificate is revoked.",
                n.name, n.id
            );
        }
        NodeCommand::Label { id, changes } => {
            let mut change = LabelChange::default();
            for c in &changes {
                if let Some(k) = c.strip_suffix('-').filter(|_| !c.contains('=')) {
                    skiff_shared::join::names::check_label(k, "").map_err(Failure::usage)?;
                    change.remove.push(k.to_owned());
                } else {
                    let (k, v) = skiff_shared::join::names::parse_label(c).map_err(|m| {
                        Failure::usage(format!("{m}; use key=value to set, key- to remove"))
                    })?;
                    change.set.insert(k, v);
                }
            }
            let n: NodeView = client
                .call(
                    Method::PATCH,
                    &format!("/nodes/{}/labels", path_segment(&id)?),
                    Some(&change),
                )
                .await?;
            let _ = writeln!(out, "{}", labels_text(&n.labels));
        }
    }
    Ok(())
}

/// When a node was last seen: `now` while connected, else e.g. `3m 20s ago`.
fn ago(ts: Option<&str>, status: NodeStatus) -> String {
    if status == NodeStatus::Connected {
        return "now".into();
    }
    let Some(t) = ts.and_then(|t| humantime::parse_rfc3339(t).ok()) else {
        return "never".into();
    };
    let secs = SystemTime::now()
        .duration_since(t)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let d = Duration::from_secs(secs);
    format!(
        "{} ago",
        humantime::format_duration(d)
            .to_string()
            .split(' ')
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn show_node(out: &mut impl Write, n: &NodeView) {
    let mut kv = |k: &str, v: String| {
        let _ = writeln!(out, "{:<18}{v}", format!("{k}:"));
    };
    kv("ID", n.id.clone());
    kv("Name", n.name.clone());
    kv("Status", n.status.to_string());
    kv(
        "Connected since",
        n.connected_since.clone().unwrap_or_else(|| "-".into()),
    );
    kv(
        "Last seen",
        n.last_seen_at.clone().unwrap_or_else(|| "never".into()),
    );
    kv("Joined", n.joined_at.clone());
    kv("Labels", labels_text(&n.labels));
    kv(
        "Address",
        n.remote_addr.clone().unwrap_or_else(|| "-".into()),
    );
    kv(
        "Addresses",
        if n.addresses.is_empty() {
            "-".into()
        } else {
            n.addresses.join(", ")
        },
    );
    kv("Agent", dash(&n.agent_version));
    kv(
        "Docker",
        match (&n.docker_version, &n.docker_api_version) {
            (Some(v), Some(a)) => format!("{v} (API {a})"),
            (Some(v), None) => v.clone(),
            _ => "unavailable".into(),
        },
    );
    kv("Hostname", dash(&n.host.hostname));
    kv("OS", dash(&n.host.os));
    kv("Kernel", dash(&n.host.kernel));
    kv("CPUs", format!("{} ({})", n.host.cpus, dash(&n.host.arch)));
    kv("Memory", bytes_text(n.host.memory_bytes));
    for d in &n.host.disks {
        kv(
            "Disk",
            format!(
                "{} {} {} free of {}",
                d.mount,
                d.filesystem,
                bytes_text(d.available_bytes),
                bytes_text(d.total_bytes)
            ),
        );
    }
    kv("Cert expires", n.certificate_expires_at.clone());
    kv(
        "Plan",
        match (&n.plan_generation, &n.plan_error) {
            (_, Some(e)) => format!("refused: {e}"),
            (Some(g), None) => format!("generation {g} accepted"),
            (None, None) => "none yet".into(),
        },
    );
}
