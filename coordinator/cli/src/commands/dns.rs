//! `skiff dns`: what a name gets, asked from a replica (`query`, with its
//! service's policy applied), and which records each host serves
//! (`status`).

use std::io::Write;

use clap::Subcommand;
use skiff_api_types::validate::{check_dns_name, parse_replica};
use skiff_api_types::{DnsQueryView, DnsView};

use super::path_segment;
use crate::Failure;
use crate::client::{Client, Method};
use crate::output::{print_json, table};

#[derive(Debug, Subcommand)]
pub enum DnsCommand {
    /// What NAME gets when a container (or, without --from, a host) asks:
    /// `web`, `web.shop.skiff`, `tasks.web`, `_80._tcp.web.shop.skiff`,
    /// `NODE.nodes.skiff`.
    Query {
        name: String,
        /// The replica asking, STACK.SERVICE.N (as `skiff stack tasks`
        /// lists them); without it, the host of the first node by name.
        #[arg(long)]
        from: Option<String>,
        /// A or SRV.
        #[arg(long = "type", default_value = "A")]
        kind: String,
        #[arg(long)]
        json: bool,
    },
    /// The records' generation and each host's server: the generation it
    /// serves, its addresses, its counters.
    Status {
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(
    client: &Client,
    cmd: DnsCommand,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match cmd {
        DnsCommand::Query {
            name,
            from,
            kind,
            json,
        } => {
            check_dns_name(&name).map_err(Failure::usage)?;
            let kind = kind.to_ascii_uppercase();
            if kind != "A" && kind != "SRV" {
                return Err(Failure::usage(format!(
                    "unknown record type {kind:?}: use A or SRV"
                )));
            }
            let mut path = format!("/dns/query?name={}&type={kind}", path_segment(&name)?);
            if let Some(from) = &from {
                parse_replica(from).map_err(Failure::usage)?;
                path.push_str(&format!("&from={}", path_segment(from)?));
            }
            let view: DnsQueryView = client.call(Method::GET, &path, None::<&()>).await?;
            if json {
                print_json(out, &view);
            } else {
                print_query(&view, out);
            }
        }
        DnsCommand::Status { json } => {
            let view: DnsView = client.call(Method::GET, "/dns", None::<&()>).await?;
            if json {
                print_json(out, &view);
            } else {
                print_status(&view, out);
            }
        }
    }
    Ok(())
}

fn print_query(v: &DnsQueryView, out: &mut impl Write) {
    let who = v
        .from
        .clone()
        .unwrap_or_else(|| format!("the host {}", v.node));
    let _ = writeln!(
        out,
        "{} {} asked by {who} (records {}):",
        v.name, v.kind, v.generation
    );
    match v.outcome.as_str() {
        "records" => {
            let rows = v
                .records
                .iter()
                .map(|r| {
                    let mut data = r.data.clone();
                    if let Some(a) = &r.address {
                        data.push_str(&format!(" ({a})"));
                    }
                    vec![r.name.clone(), r.ttl.to_string(), r.kind.clone(), data]
                })
                .collect();
            table(out, &["NAME", "TTL", "TYPE", "DATA"], rows);
        }
        "nodata" => {
            let _ = writeln!(
                out,
                "no record of this type (or no healthy replica right now)"
            );
        }
        "nxdomain" => {
            let _ = writeln!(out, "no such name (NXDOMAIN)");
        }
        "forward" => {
            let _ = writeln!(out, "not a cluster name: the host's resolvers answer it");
        }
        "refused" => {
            let _ = writeln!(out, "refused: the asker is not a listed container");
        }
        other => {
            let _ = writeln!(out, "{other}");
        }
    }
}

fn print_status(v: &DnsView, out: &mut impl Write) {
    if !v.enabled {
        let _ = writeln!(
            out,
            "DNS is off: it runs with the cluster network ([network] enabled = false in the coordinator's config)."
        );
        return;
    }
    let _ = writeln!(out, "records: generation {}", v.generation);
    let rows = v
        .hosts
        .iter()
        .map(|h| {
            let state = match (&h.error, h.connected, h.generation >= v.generation) {
                (Some(e), _, _) => format!("error: {e}"),
                (None, false, _) => "disconnected".into(),
                (None, true, true) => "current".into(),
                (None, true, false) => "behind".into(),
            };
            vec![
                h.node.clone(),
                h.generation.to_string(),
                state,
                h.listening.join(","),
                h.queries.to_string(),
                h.forwarded.to_string(),
                h.malformed.to_string(),
                h.rate_limited.to_string(),
                h.refused.to_string(),
            ]
        })
        .collect();
    table(
        out,
        &[
            "NODE",
            "GENERATION",
            "STATE",
            "LISTENING",
            "QUERIES",
            "FORWARDED",
            "MALFORMED",
            "RATE-LIMITED",
            "REFUSED",
        ],
        rows,
    );
}
