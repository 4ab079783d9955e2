//! `skiff api-token`: API tokens for people and automation, each with a
//! role and, if asked, limited to stacks and a lifetime.

use std::io::Write;

use clap::Subcommand;
use skiff_api_types::{ApiRole, ApiTokenView, CreateApiToken, CreatedApiToken};

use super::path_segment;
use crate::Failure;
use crate::client::{Client, Method};
use crate::output::{print_json, table};

#[derive(Debug, Subcommand)]
pub enum ApiTokenCommand {
    /// Create an API token and print it alone on stdout (it is shown once).
    Create {
        /// admin (everything), deployer (deploys and stack secrets) or
        /// viewer (reads, never a secret).
        #[arg(long)]
        role: ApiRole,
        /// Limit the token to this stack; repeat for more (deployer and
        /// viewer tokens only).
        #[arg(long = "stack")]
        stacks: Vec<String>,
        /// Lifetime, e.g. 12h, 90d (default: no expiry).
        #[arg(long)]
        ttl: Option<String>,
        /// A name to recognise it by.
        #[arg(long)]
        name: Option<String>,
    },
    /// List API tokens (never their secrets).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API token: it is refused from now on.
    Revoke { id: String },
}

pub(crate) async fn run(
    client: &Client,
    cmd: ApiTokenCommand,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match cmd {
        ApiTokenCommand::Create {
            role,
            stacks,
            ttl,
            name,
        } => {
            if let Some(t) = &ttl {
                humantime::parse_duration(t).map_err(|e| {
                    Failure::usage(format!("invalid --ttl {t:?} ({e}); write e.g. 12h, 90d"))
                })?;
            }
            if role == ApiRole::Admin && !stacks.is_empty() {
                return Err(Failure::usage(
                    "an admin token covers every stack; drop --stack or use --role deployer or viewer",
                ));
            }
            let created: CreatedApiToken = client
                .call(
                    Method::POST,
                    "/tokens/api",
                    Some(&CreateApiToken {
                        name,
                        role,
                        stacks,
                        ttl,
                    }),
                )
                .await?;
            let _ = writeln!(out, "{}", created.token);
        }
        ApiTokenCommand::Ls { json } => {
            let tokens: Vec<ApiTokenView> =
                client.call(Method::GET, "/tokens/api", None::<&()>).await?;
            if json {
                print_json(out, &tokens);
            } else {
                let rows = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.name.clone(),
                            t.role.to_string(),
                            if t.stacks.is_empty() {
                                "all".to_owned()
                            } else {
                                t.stacks.join(",")
                            },
                            t.status.to_string(),
                            t.expires_at.clone().unwrap_or_else(|| "never".into()),
                            t.last_used_at.clone().unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                table(
                    out,
                    &[
                        "ID",
                        "NAME",
                        "ROLE",
                        "STACKS",
                        "STATUS",
                        "EXPIRES",
                        "LAST USED",
                    ],
                    rows,
                );
            }
        }
        ApiTokenCommand::Revoke { id } => {
            let t: ApiTokenView = client
                .call(
                    Method::DELETE,
                    &format!("/tokens/api/{}", path_segment(&id)?),
                    None::<&()>,
                )
                .await?;
            let _ = writeln!(out, "API token {} ({}) revoked.", t.id, t.name);
        }
    }
    Ok(())
}
