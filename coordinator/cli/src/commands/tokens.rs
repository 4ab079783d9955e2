//! `skiff token`: join tokens for adding servers.

use std::collections::BTreeMap;
use std::io::Write;

use clap::Subcommand;
use skiff_api_types::{CreateJoinToken, CreatedJoinToken, JoinTokenView};
use skiff_shared::join::names;

use super::path_segment;
use crate::Failure;
use crate::client::{Client, Method};
use crate::output::{labels_text, print_json, table};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a join token and print it alone on stdout.
    Create {
        /// Lifetime, e.g. 30m, 24h, 7d (default: the coordinator's, 24h).
        #[arg(long)]
        ttl: Option<String>,
        /// How many servers may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// A node label key=value the token grants; repeat for more. Nodes
        /// that join with it get these labels, and may ask for no other.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// List join tokens (never their secrets).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a join token.
    Revoke { id: String },
}

pub(crate) async fn run(
    client: &Client,
    cmd: TokenCommand,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match cmd {
        TokenCommand::Create { ttl, uses, labels } => {
            if let Some(t) = &ttl {
                humantime::parse_duration(t).map_err(|e| {
                    Failure::usage(format!("invalid --ttl {t:?} ({e}); write e.g. 30m, 24h"))
                })?;
            }
            let mut granted = BTreeMap::new();
            for l in &labels {
                let (k, v) = names::parse_label(l)
                    .map_err(|e| Failure::usage(format!("invalid --label: {e}")))?;
                granted.insert(k, v);
            }
            let created: CreatedJoinToken = client
                .call(
                    Method::POST,
                    "/tokens/join",
                    Some(&CreateJoinToken {
                        ttl,
                        uses: Some(uses),
                        labels: (!granted.is_empty()).then_some(granted),
                    }),
                )
                .await?;
            let _ = writeln!(out, "{}", created.token);
        }
        TokenCommand::Ls { json } => {
            let tokens: Vec<JoinTokenView> = client
                .call(Method::GET, "/tokens/join", None::<&()>)
                .await?;
            if json {
                print_json(out, &tokens);
            } else {
                let rows = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.status.to_string(),
                            format!("{}/{}", t.uses, t.uses_allowed),
                            t.expires_at.clone(),
                            t.created_at.clone(),
                            labels_text(&t.labels),
                        ]
                    })
                    .collect();
                table(
                    out,
                    &["ID", "STATUS", "USES", "EXPIRES", "CREATED", "LABELS"],
                    rows,
                );
            }
        }
        TokenCommand::Revoke { id } => {
            let t: JoinTokenView = client
                .call(
                    Method::DELETE,
                    &format!("/tokens/join/{}", path_segment(&id)?),
                    None::<&()>,
                )
                .await?;
            let _ = writeln!(out, "Join token {} revoked.", t.id);
        }
    }
    Ok(())
}
