//! The command line: [`Cli`], its [`Command`]s, and one module per command
//! group, each with its arguments and what it does:
//! - [`login`]: `skiff login`, which checks a URL and token and saves them.
//! - [`tokens`]: `skiff token`, join tokens.
//! - [`api_tokens`]: `skiff api-token`, API tokens with roles.
//! - [`nodes`]: `skiff node`, the cluster's servers.
//! - [`deploy`]: `skiff deploy`, and following a release's progress until
//!   it is rolled out (also after a rollback or a scale).
//! - [`stacks`]: `skiff stack`, `skiff release`, `skiff rollback` and
//!   `skiff service scale`.
//! - [`secrets`]: `skiff secret`, a stack's secrets.
//! - [`registries`]: `skiff registry`, credentials for image pulls.
//! - [`certs`]: `skiff cert`, TLS certificates for HTTP routes.
//! - [`policy`]: `skiff policy`, the cluster's container policy.
//! - [`events`]: `skiff events`, the cluster's event log.
//! - [`network`]: `skiff network`, the cluster network and its mesh.
//! - [`dns`]: `skiff dns`, what a name gets and which records hosts serve.
//! - [`routes`]: `skiff route ls`, the ingress.
//! - [`logs`]: `skiff logs`, a stack's container output from every host.
//! - [`sinks`]: `skiff sink`, where the cluster's container output is shipped.
//!
//! Each command prints its result on the writer it is given (stdout) and
//! returns a [`Failure`] for the one error line on stderr.

use clap::{Parser, Subcommand};

use crate::Failure;
use crate::client::Client;
use crate::config::{self, DEFAULT_URL};

pub mod api_tokens;
pub mod certs;
pub mod deploy;
pub mod dns;
pub mod events;
pub mod login;
pub mod logs;
pub mod network;
pub mod nodes;
pub mod policy;
pub mod registries;
pub mod routes;
pub mod secrets;
pub mod sinks;
pub mod stacks;
pub mod tokens;

/// The command line. `Debug` leaves the token out.
#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Manage a Skiff cluster through its coordinator's API."
)]
pub struct Cli {
    /// Coordinator API URL.
    #[arg(long, env = "SKIFF_URL", global = true)]
    pub url: Option<String>,
    /// API token.
    #[arg(long, env = "SKIFF_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

impl std::fmt::Debug for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cli")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("command", &self.command)
            .finish()
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a URL and token, then save them for later commands.
    Login(login::LoginArgs),
    /// Join tokens for adding servers.
    #[command(subcommand)]
    Token(tokens::TokenCommand),
    /// API tokens for people and automation: roles, stacks, lifetimes.
    #[command(subcommand, name = "api-token")]
    ApiToken(api_tokens::ApiTokenCommand),
    /// The cluster's servers.
    #[command(subcommand)]
    Node(nodes::NodeCommand),
    /// Deploy a Compose file as a stack (a new release).
    Deploy(deploy::DeployArgs),
    /// Stacks and their replicas.
    #[command(subcommand)]
    Stack(stacks::StackCommand),
    /// A stack's releases.
    #[command(subcommand)]
    Release(stacks::ReleaseCommand),
    /// Restore an earlier release of a stack exactly (default: the one before the current).
    Rollback {
        stack: String,
        /// The release number to restore.
        #[arg(long)]
        to: Option<i64>,
        /// Return without following progress.
        #[arg(long)]
        detach: bool,
    },
    /// Services of a stack.
    #[command(subcommand)]
    Service(stacks::ServiceCommand),
    /// A stack's secrets (values are never shown).
    #[command(subcommand)]
    Secret(secrets::SecretCommand),
    /// Credentials for pulling images from private registries (passwords are never shown).
    #[command(subcommand)]
    Registry(registries::RegistryCommand),
    /// TLS certificates for HTTP routes (private keys are never shown).
    #[command(subcommand)]
    Cert(certs::CertCommand),
    /// The cluster's container policy: what containers may do beyond the
    /// defaults, per stack.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// The cluster network: stack networks across hosts, and the mesh
    /// between hosts.
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Cluster DNS: what a name gets from a container, and which records
    /// each host serves.
    #[command(subcommand)]
    Dns(dns::DnsCommand),
    /// The ingress: ports and HTTP routes served on every edge host.
    #[command(subcommand)]
    Route(routes::RouteCommand),
    /// A stack's container output from every host it runs on, merged in
    /// time order (`STACK`, `STACK.SERVICE` or `STACK.SERVICE.N`).
    Logs(logs::LogsArgs),
    /// Where the cluster's container output is shipped: syslog, JSON
    /// lines over HTTP, OpenTelemetry.
    #[command(subcommand)]
    Sink(sinks::SinkCommand),
    /// The cluster's recent events: deploys, rollouts, nodes.
    Events {
        /// Keep printing new events as they happen.
        #[arg(long)]
        follow: bool,
        /// Only this stack's events.
        #[arg(long)]
        stack: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// Runs one command: the URL and token resolved from the flags, the
/// environment and the saved config, in that order.
pub(crate) async fn run(cli: Cli) -> Result<(), Failure> {
    let saved = config::load()?;
    let url = cli
        .url
        .clone()
        .or(saved.url.clone())
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let token = cli.token.clone().or(saved.token.clone());
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Login(args) => login::run(args, url, cli.token, &mut out).await?,
        Command::Token(cmd) => {
            let client = Client::new(&url, token)?;
            tokens::run(&client, cmd, &mut out).await?;
        }
        Command::ApiToken(cmd) => {
            let client = Client::new(&url, token)?;
            api_tokens::run(&client, cmd, &mut out).await?;
        }
        Command::Node(cmd) => {
            let client = Client::new(&url, token)?;
            nodes::run(&client, cmd, &mut out).await?;
        }
        Command::Deploy(args) => {
            let client = Client::new(&url, token)?;
            deploy::run(&client, args, &mut out).await?;
        }
        Command::Stack(cmd) => {
            let client = Client::new(&url, token)?;
            stacks::run(&client, cmd, &mut out).await?;
        }
        Command::Rollback { stack, to, detach } => {
            let client = Client::new(&url, token)?;
            stacks::rollback(&client, &stack, to, detach, &mut out).await?;
        }
        Command::Service(cmd) => {
            let client = Client::new(&url, token)?;
            stacks::service(&client, cmd, &mut out).await?;
        }
        Command::Secret(cmd) => {
            let client = Client::new(&url, token)?;
            secrets::run(&client, cmd, &mut out).await?;
        }
        Command::Registry(cmd) => {
            let client = Client::new(&url, token)?;
            registries::run(&client, cmd, &mut out).await?;
        }
        Command::Cert(cmd) => {
            let client = Client::new(&url, token)?;
            certs::run(&client, cmd, &mut out).await?;
        }
        Command::Policy(cmd) => {
            let client = Client::new(&url, token)?;
            policy::run(&client, cmd, &mut out).await?;
        }
        Command::Network(cmd) => {
            let client = Client::new(&url, token)?;
            network::run(&client, cmd, &mut out).await?;
        }
        Command::Dns(cmd) => {
            let client = Client::new(&url, token)?;
            dns::run(&client, cmd, &mut out).await?;
        }
        Command::Route(cmd) => {
            let client = Client::new(&url, token)?;
            routes::run(&client, cmd, &mut out).await?;
        }
        Command::Logs(args) => {
            let client = Client::new(&url, token)?;
            logs::run(&client, args, &mut out).await?;
        }
        Command::Sink(cmd) => {
            let client = Client::new(&url, token)?;
            sinks::run(&client, cmd, &mut out).await?;
        }
        Command::Events {
            follow,
            stack,
            json,
        } => {
            let client = Client::new(&url, token)?;
            events::run(&client, follow, stack.as_deref(), json, &mut out).await?;
        }
        Command::Release(cmd) => {
            let client = Client::new(&url, token)?;
            stacks::release(&client, cmd, &mut out).await?;
        }
    }
    Ok(())
}

/// Refuses ids that would change the URL's path.
pub(crate) fn path_segment(id: &str) -> Result<&str, Failure> {
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(Failure::usage(format!("invalid id or name {id:?}")));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_cannot_change_the_path() {
        for ok in ["web", "my-stack_2", "n1.example", "0f3a"] {
            assert_eq!(path_segment(ok).map_err(|f| f.message), Ok(ok));
        }
        for bad in ["", "a/b", "..%2f", "a b", "a?b", "é"] {
            let f = path_segment(bad).unwrap_err();
            assert_eq!(
                (f.code, f.message),
                (2, format!("invalid id or name {bad:?}"))
            );
        }
    }
}
