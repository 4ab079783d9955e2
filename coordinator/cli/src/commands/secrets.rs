//! `skiff secret`: a stack's secrets; values go in, never come out.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use skiff_api_types::{SecretView, SetSecret};

use super::path_segment;
use crate::Failure;
use crate::client::{Client, Method};
use crate::output::{print_json, table};

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set a secret from standard input or --file; a changed value takes effect at the next deploy.
    Set {
        stack: String,
        name: String,
        /// Read the value from this file instead of standard input.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// List a stack's secrets: names and versions.
    Ls {
        stack: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a secret (releases that used it keep their version).
    Rm { stack: String, name: String },
}

/// Sets one secret of `stack` (also used by deploy for the stack file's secrets).
pub(crate) async fn set_secret(
    client: &Client,
    stack: &str,
    name: &str,
    value: &[u8],
) -> Result<SecretView, Failure> {
    use base64::Engine as _;
    let body = SetSecret {
        value: base64::engine::general_purpose::STANDARD.encode(value),
    };
    Ok(client
        .call(
            Method::PUT,
            &format!(
                "/stacks/{}/secrets/{}",
                path_segment(stack)?,
                path_segment(name)?
            ),
            Some(&body),
        )
        .await?)
}

pub(crate) async fn run(
    client: &Client,
    cmd: SecretCommand,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match cmd {
        SecretCommand::Set { stack, name, file } => {
            let value = match &file {
                Some(p) => std::fs::read(p)
                    .map_err(|e| Failure::usage(format!("cannot read {}: {e}", p.display())))?,
                None => {
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map_err(|e| {
                        Failure::usage(format!("cannot read the secret from standard input: {e}"))
                    })?;
                    buf
                }
            };
            if value.is_empty() {
                return Err(Failure::usage(
                    "the secret is empty; pipe it in or pass --file",
                ));
            }
            let v = set_secret(client, &stack, &name, &value).await?;
            let _ = writeln!(out, "Secret {name} of {stack} is at version {}.", v.version);
        }
        SecretCommand::Ls { stack, json } => {
            let list: Vec<SecretView> = client
                .call(
                    Method::GET,
                    &format!("/stacks/{}/secrets", path_segment(&stack)?),
                    None::<&()>,
                )
                .await?;
            if json {
                print_json(out, &list);
            } else {
                let rows = list
                    .iter()
                    .map(|s| vec![s.name.clone(), s.version.to_string(), s.created_at.clone()])
                    .collect();
                table(out, &["NAME", "VERSION", "CREATED"], rows);
            }
        }
        SecretCommand::Rm { stack, name } => {
            let _: SecretView = client
                .call(
                    Method::DELETE,
                    &format!(
                        "/stacks/{}/secrets/{}",
                        path_segment(&stack)?,
                        path_segment(&name)?
                    ),
                    None::<&()>,
                )
                .await?;
            let _ = writeln!(out, "Secret {name} of {stack} removed.");
        }
    }
    Ok(())
}
