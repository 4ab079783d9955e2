//! `skiff policy`: the cluster's container policy. What no container may
//! do unless an admin allows it for its stack (privileged containers, the
//! host's namespaces, added capabilities, devices, security options, bind
//! mounts of `/`, `/etc`, `/var/lib/skiff` or the Docker socket, ...),
//! and the allowances per stack. The coordinator checks every deploy,
//! rollback and scale against it.

use std::io::Write;

use clap::Subcommand;
use skiff_api_types::policy::PolicySetting;
use skiff_api_types::{PolicyAllowanceView, PolicyChange, PolicyView};

use crate::Failure;
use crate::client::{Client, Method};
use crate::output::{print_json, table};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Show what the policy refuses by default and what each stack is allowed.
    Show {
        /// Only this stack's allowances.
        stack: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Allow a stack's containers something the policy refuses by default
    /// (admins only). It applies from the stack's next deploy, rollback or
    /// scale.
    Allow {
        stack: String,
        /// One or more of: privileged, host-network, host-pid, host-ipc,
        /// host-uts, cap-add[:CAP], device[:/dev/PATH], device-cgroup-rule,
        /// security-opt[:OPT], bind:/PATH.
        #[arg(required = true)]
        settings: Vec<String>,
    },
    /// Take allowances back (admins only). Running containers keep running;
    /// the stack's next deploy, rollback or scale is checked without them.
    Revoke {
        stack: String,
        /// Settings as `skiff policy show` lists them.
        #[arg(required = true)]
        settings: Vec<String>,
    },
}

/// The settings as written, each checked and normalized.
fn settings(written: &[String]) -> Result<Vec<String>, Failure> {
    written
        .iter()
        .map(|s| {
            s.parse::<PolicySetting>()
                .map(|p| p.to_string())
                .map_err(Failure::usage)
        })
        .collect()
}

pub(crate) async fn run(
    client: &Client,
    cmd: PolicyCommand,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match cmd {
        PolicyCommand::Show { stack, json } => {
            let mut view: PolicyView = client.call(Method::GET, "/policy", None::<&()>).await?;
            if let Some(stack) = &stack {
                view.allowances.retain(|a| &a.stack == stack);
            }
            if json {
                print_json(out, &view);
                return Ok(());
            }
            let _ = writeln!(out, "Refused unless allowed for a stack:");
            table(
                out,
                &["SETTING", "WHAT IT ALLOWS"],
                view.refused_by_default
                    .into_iter()
                    .map(|r| vec![r.setting, r.description])
                    .collect(),
            );
            let _ = writeln!(out);
            if view.allowances.is_empty() {
                let _ = match &stack {
                    Some(s) => writeln!(out, "Stack {s} is allowed nothing beyond the defaults."),
                    None => writeln!(out, "No stack is allowed anything beyond the defaults."),
                };
            } else {
                let _ = writeln!(out, "Allowed:");
                table(
                    out,
                    &["STACK", "SETTING", "SINCE"],
                    view.allowances
                        .into_iter()
                        .map(|a| vec![a.stack, a.setting, a.created_at])
                        .collect(),
                );
            }
        }
        PolicyCommand::Allow { stack, settings: s } => {
            let settings = settings(&s)?;
            let _: Vec<PolicyAllowanceView> = client
                .call(
                    Method::POST,
                    "/policy/allow",
                    Some(&PolicyChange {
                        stack: stack.clone(),
                        settings: settings.clone(),
                    }),
                )
                .await?;
            let _ = writeln!(
                out,
                "Stack {stack} is allowed {}; this applies from its next deploy, rollback or scale.",
                settings.join(", ")
            );
        }
        PolicyCommand::Revoke { stack, settings: s } => {
            let settings = settings(&s)?;
            let _: Vec<PolicyAllowanceView> = client
                .call(
                    Method::POST,
                    "/policy/revoke",
                    Some(&PolicyChange {
                        stack: stack.clone(),
                        settings: settings.clone(),
                    }),
                )
                .await?;
            let _ = writeln!(
                out,
                "Revoked {} for stack {stack}; running containers keep running, and its next deploy, rollback or scale is checked without it.",
                settings.join(", ")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use skiff_api_types::policy::SETTINGS_HELP;

    use super::*;

    #[test]
    fn settings_are_checked_before_anything_is_sent() {
        assert_eq!(
            settings(&[
                "bind:/var/run//docker.sock/".into(),
                "cap-add:net_admin".into()
            ])
            .map_err(|f| f.message),
            Ok(vec![
                "bind:/var/run/docker.sock".to_owned(),
                "cap-add:NET_ADMIN".to_owned()
            ])
        );
        let f = settings(&["privileged".into(), "root".into()]).unwrap_err();
        assert_eq!(f.code, 2);
        assert_eq!(
            f.message,
            format!("unknown policy setting \"root\"; use {SETTINGS_HELP}")
        );
    }
}
