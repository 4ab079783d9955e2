//! `skiff login`: checks a URL and token against the coordinator, then
//! saves them (see [`crate::config`]) for later commands.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use skiff_api_types::LoginView;

use crate::Failure;
use crate::client::{Client, Method};
use crate::config::{self, CliConfig};

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Coordinator API URL (default: --url, SKIFF_URL or http://127.0.0.1:7070).
    #[arg(long = "api-url")]
    pub api_url: Option<String>,
    /// Read the token from this file instead of --token/SKIFF_TOKEN.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

/// Logs in to `url` (unless `--api-url` names another) with the token from
/// `--token-file`, else `flag_token` (`--token` or `SKIFF_TOKEN`; a saved
/// token is not reused).
pub(crate) async fn run(
    args: LoginArgs,
    url: String,
    flag_token: Option<String>,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let url = args.api_url.unwrap_or(url);
    let token = match args.token_file {
        Some(p) => std::fs::read_to_string(&p)
            .map_err(|e| Failure::usage(format!("cannot read token file {}: {e}", p.display())))?
            .trim()
            .to_owned(),
        None => flag_token
            .ok_or_else(|| Failure::usage("login needs --token, SKIFF_TOKEN or --token-file"))?,
    };
    let client = Client::new(&url, Some(token.clone()))?;
    let path = config::path()
        .ok_or_else(|| Failure::usage("cannot find a config dir: set HOME or SKIFF_CONFIG"))?;
    // The coordinator replaces its initial admin token at the first login.
    let who: LoginView = client.call(Method::POST, "/login", None::<&()>).await?;
    let rotated = who.rotated_token.is_some();
    config::save(
        &path,
        &CliConfig {
            url: Some(url.clone()),
            token: Some(who.rotated_token.unwrap_or(token)),
        },
    )?;
    let scope = if who.stacks.is_empty() {
        String::new()
    } else {
        format!(", limited to {}", who.stacks.join(", "))
    };
    let _ = writeln!(
        out,
        "Logged in to cluster {} at {url} as a {}{scope}; saved to {}.",
        who.cluster_id,
        who.role,
        path.display()
    );
    if rotated {
        let _ = writeln!(
            out,
            "The initial admin token was replaced by a new one, saved there; the old one is revoked and its file removed."
        );
    }
    Ok(())
}
