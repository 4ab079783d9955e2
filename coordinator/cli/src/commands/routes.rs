//! `skiff route ls`: what edge hosts serve (published ports and HTTP
//! routes), to how many healthy replicas, and each edge host's proxy.

use std::io::Write;

use clap::Subcommand;
use skiff_api_types::IngressView;

use crate::Failure;
use crate::client::{Client, Method};
use crate::output::{print_json, table};

#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Published ports and HTTP routes, with their endpoints and
    /// counters, and what each edge host listens on.
    Ls {
        #[arg(long)]
        json: bool,
    },
}

pub(crate) async fn run(
    client: &Client,
    cmd: RouteCommand,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match cmd {
        RouteCommand::Ls { json } => {
            let view: IngressView = client.call(Method::GET, "/routes", None::<&()>).await?;
            if json {
                print_json(out, &view);
            } else {
                print_ls(&view, out);
            }
        }
    }
    Ok(())
}

fn print_ls(v: &IngressView, out: &mut impl Write) {
    if !v.enabled {
        let _ = writeln!(
            out,
            "The ingress is off: it runs with the cluster network ([network] enabled = false in the coordinator's config); published ports are bound on the hosts that run the replicas."
        );
        return;
    }
    if v.ports.is_empty() && v.routes.is_empty() {
        let _ = writeln!(
            out,
            "No published ports or routes: add `ports` or `x-skiff.routes` to a service."
        );
    }
    if !v.ports.is_empty() {
        let rows = v
            .ports
            .iter()
            .map(|p| {
                vec![
                    format!("{}/{}", p.port, p.protocol),
                    format!("{}/{}:{}", p.stack, p.service, p.target),
                    p.endpoints.to_string(),
                    p.connections.to_string(),
                    p.failed.to_string(),
                ]
            })
            .collect();
        table(
            out,
            &["PORT", "SERVICE", "ENDPOINTS", "CONNECTIONS", "FAILED"],
            rows,
        );
    }
    if !v.routes.is_empty() {
        if !v.ports.is_empty() {
            let _ = writeln!(out);
        }
        let rows = v
            .routes
            .iter()
            .map(|r| {
                vec![
                    format!("{}{}", r.domain, r.path),
                    format!("{}/{}:{}", r.stack, r.service, r.port),
                    r.endpoints.to_string(),
                    match (&r.certificate, r.tls.as_str()) {
                        (_, "off") => "off".to_owned(),
                        (Some(c), t) => format!("{t} ({c})"),
                        (None, t) => format!("{t} (no certificate yet)"),
                    },
                    r.requests.to_string(),
                    format!("{}/{}", r.statuses[4], r.failed),
                ]
            })
            .collect();
        table(
            out,
            &[
                "ROUTE",
                "SERVICE",
                "ENDPOINTS",
                "TLS",
                "REQUESTS",
                "5XX/FAILED",
            ],
            rows,
        );
    }
    let problems: Vec<String> = v
        .edges
        .iter()
        .filter(|e| e.edge)
        .flat_map(|e| {
            e.problems
                .iter()
                .chain(e.error.as_ref())
                .map(move |p| format!("{}: {p}", e.node))
        })
        .collect();
    let edges: Vec<&str> = v
        .edges
        .iter()
        .filter(|e| e.edge)
        .map(|e| e.node.as_str())
        .collect();
    let _ = writeln!(out, "\nedge hosts: {}", edges.join(", "));
    for p in problems {
        let _ = writeln!(out, "problem: {p}");
    }
}
