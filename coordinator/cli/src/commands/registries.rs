//! `skiff registry`: credentials for pulling images from private
//! registries; the password is read from standard input only and never
//! shown.

use std::io::Write;

use clap::Subcommand;
use skiff_api_types::validate::{check_password, check_username};
use skiff_api_types::{RegistryView, SetRegistry};

use crate::Failure;
use crate::client::{Client, Method};
use crate::output::{print_json, table};

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Store credentials for a registry; the password or token is read from
    /// standard input. Nodes whose plans pull from it receive them at once.
    Login {
        /// Registry host: hostname[:port], e.g. ghcr.io or 127.0.0.1:5000; Docker Hub is docker.io.
        host: String,
        #[arg(short = 'u', long)]
        username: String,
        /// Read the password from standard input (the only way it is read;
        /// accepted for familiarity with `docker login`).
        #[arg(long)]
        password_stdin: bool,
    },
    /// List registries with credentials: host, username, when set.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a registry's credentials.
    Logout { host: String },
}

/// A registry host argument, checked and normalized.
fn registry_host(host: &str) -> Result<String, Failure> {
    skiff_shared::registry::check_host(host).map_err(Failure::usage)
}

/// Reads a registry password from standard input, without its final line
/// break. A terminal is refused: what is typed there would be echoed.
fn read_password(host: &str, username: &str) -> Result<String, Failure> {
    use std::io::IsTerminal as _;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err(Failure::usage(format!(
            "registry login reads the password from standard input; pipe it in, e.g. `printf '%s' \"$TOKEN\" | skiff registry login {host} --username {username} --password-stdin`"
        )));
    }
    let mut buf = String::new();
    std::io::Read::read_to_string(&mut stdin.lock(), &mut buf).map_err(|e| {
        Failure::usage(format!("cannot read the password from standard input: {e}"))
    })?;
    let password = buf
        .strip_suffix("\r\n")
        .or_else(|| buf.strip_suffix('\n'))
        .unwrap_or(&buf);
    if password.is_empty() {
        return Err(Failure::usage(
            "the password read from standard input is empty; pipe the password or token in",
        ));
    }
    Ok(password.to_owned())
}

pub(crate) async fn run(
    client: &Client,
    cmd: RegistryCommand,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match cmd {
        RegistryCommand::Login {
            host,
            username,
            password_stdin: _,
        } => {
            let host = registry_host(&host)?;
            check_username(&username).map_err(Failure::usage)?;
            let password = read_password(&host, &username)?;
            check_password(&password).map_err(Failure::usage)?;
            let view: RegistryView = client
                .call(
                    Method::PUT,
                    &format!("/registries/{host}"),
                    Some(&SetRegistry { username, password }),
                )
                .await?;
            let _ = writeln!(
                out,
                "Credentials for {} saved (user {}); nodes pulling from it receive them now.",
                view.host, view.username
            );
        }
        RegistryCommand::Ls { json } => {
            let list: Vec<RegistryView> =
                client.call(Method::GET, "/registries", None::<&()>).await?;
            if json {
                print_json(out, &list);
            } else {
                let rows = list
                    .iter()
                    .map(|r| vec![r.host.clone(), r.username.clone(), r.created_at.clone()])
                    .collect();
                table(out, &["HOST", "USERNAME", "CREATED"], rows);
            }
        }
        RegistryCommand::Logout { host } => {
            let host = registry_host(&host)?;
            let view: RegistryView = client
                .call(Method::DELETE, &format!("/registries/{host}"), None::<&()>)
                .await?;
            let _ = writeln!(out, "Credentials for {} removed.", view.host);
        }
    }
    Ok(())
}
