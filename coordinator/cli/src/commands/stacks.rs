//! `skiff stack` (list, replicas, remove), `skiff release ls`, `skiff
//! rollback` and `skiff service scale`.

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;
use skiff_api_types::{
    DeployView, ReleaseView, RollbackRequest, ScaleRequest, StackView, TaskView,
};

use super::deploy::follow;
use super::path_segment;
use crate::Failure;
use crate::client::{Client, Method};
use crate::output::{print_json, table};

#[derive(Debug, Subcommand)]
pub enum StackCommand {
    /// List stacks.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// List a stack's replicas: where they run and how they are.
    Ps {
        stack: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a stack: its containers are stopped and removed on every node.
    Rm { stack: String },
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// List a stack's releases, newest first.
    Ls {
        stack: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Set replica counts: STACK.SERVICE=N ...
    Scale {
        #[arg(required = true)]
        targets: Vec<String>,
        /// Return without following progress.
        #[arg(long)]
        detach: bool,
    },
}

pub(crate) async fn run(
    client: &Client,
    cmd: StackCommand,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match cmd {
        StackCommand::Ls { json } => {
            let stacks: Vec<StackView> = client.call(Method::GET, "/stacks", None::<&()>).await?;
            if json {
                print_json(out, &stacks);
            } else {
                let rows = stacks
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.release.to_string(),
                            format!("{}/{}", s.running, s.desired),
                            s.updated_at.clone(),
                        ]
                    })
                    .collect();
                table(out, &["NAME", "RELEASE", "RUNNING", "UPDATED"], rows);
            }
        }
        StackCommand::Ps { stack, json } => {
            let tasks: Vec<TaskView> = client
                .call(
                    Method::GET,
                    &format!("/stacks/{}/tasks", path_segment(&stack)?),
                    None::<&()>,
                )
                .await?;
            if json {
                print_json(out, &tasks);
            } else {
                let rows = tasks
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.node.clone(),
                            t.state.clone(),
                            t.health.clone().unwrap_or_else(|| "-".into()),
                            t.restart_count.to_string(),
                            if t.up_to_date {
                                "yes".into()
                            } else {
                                "no".into()
                            },
                            addresses(t),
                            t.image.clone(),
                        ]
                    })
                    .collect();
                table(
                    out,
                    &[
                        "NAME",
                        "NODE",
                        "STATE",
                        "HEALTH",
                        "RESTARTS",
                        "CURRENT",
                        "ADDRESSES",
                        "IMAGE",
                    ],
                    rows,
                );
            }
        }
        StackCommand::Rm { stack } => {
            let _: StackView = client
                .call(
                    Method::DELETE,
                    &format!("/stacks/{}", path_segment(&stack)?),
                    None::<&()>,
                )
                .await?;
            let _ = writeln!(out, "Stack {stack} removed.");
        }
    }
    Ok(())
}

/// Restores release `to` of `stack` (default: the one before the current),
/// following its progress unless `detach`.
pub(crate) async fn rollback(
    client: &Client,
    stack: &str,
    to: Option<i64>,
    detach: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let view: DeployView = client
        .call(
            Method::POST,
            &format!("/stacks/{}/rollback", path_segment(stack)?),
            Some(&RollbackRequest { to }),
        )
        .await?;
    let release = view.release.unwrap_or_default();
    let _ = writeln!(
        out,
        "Release {release} of {stack} restores the earlier one: {} changes.",
        view.steps.len()
    );
    if !detach {
        follow(client, stack, release, Duration::from_secs(300), out).await?;
    }
    Ok(())
}

/// Sets replica counts, one target after the other, following each
/// release's progress unless `detach`.
pub(crate) async fn service(
    client: &Client,
    cmd: ServiceCommand,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let ServiceCommand::Scale { targets, detach } = cmd;
    for t in &targets {
        let parsed = t.split_once('=').and_then(|(svc, n)| {
            let (stack, service) = svc.split_once('.')?;
            Some((stack, service, n.parse::<u32>().ok()?))
        });
        let Some((stack, service, replicas)) = parsed else {
            return Err(Failure::usage(format!(
                "invalid scale target {t:?}: expected STACK.SERVICE=N"
            )));
        };
        let view: DeployView = client
            .call(
                Method::POST,
                &format!(
                    "/stacks/{}/services/{}/scale",
                    path_segment(stack)?,
                    path_segment(service)?
                ),
                Some(&ScaleRequest { replicas }),
            )
            .await?;
        let release = view.release.unwrap_or_default();
        let _ = writeln!(
            out,
            "{stack}.{service} scaled to {replicas} (release {release})."
        );
        if !detach {
            follow(client, stack, release, Duration::from_secs(300), out).await?;
        }
    }
    Ok(())
}

pub(crate) async fn release(
    client: &Client,
    cmd: ReleaseCommand,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let ReleaseCommand::Ls { stack, json } = cmd;
    let releases: Vec<ReleaseView> = client
        .call(
            Method::GET,
            &format!("/stacks/{}/releases", path_segment(&stack)?),
            None::<&()>,
        )
        .await?;
    if json {
        print_json(out, &releases);
    } else {
        let rows = releases
            .iter()
            .map(|r| {
                vec![
                    r.number.to_string(),
                    if r.current {
                        "current".into()
                    } else {
                        String::new()
                    },
                    r.status.clone(),
                    r.created_at.clone(),
                    r.images
                        .iter()
                        .map(|(s, i)| format!("{s}={i}"))
                        .collect::<Vec<_>>()
                        .join(","),
                ]
            })
            .collect();
        table(out, &["RELEASE", "", "STATUS", "CREATED", "IMAGES"], rows);
    }
    Ok(())
}

/// A replica's addresses: `network=address` on its stack's networks, or
/// its bare IPs when none are known by network.
fn addresses(t: &TaskView) -> String {
    if t.addresses.is_empty() {
        return if t.ips.is_empty() {
            "-".into()
        } else {
            t.ips.join(",")
        };
    }
    t.addresses
        .iter()
        .map(|a| format!("{}={}", a.network, a.address))
        .collect::<Vec<_>>()
        .join(",")
}
