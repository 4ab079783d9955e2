//! `skiff`: the command-line client of the Skiff coordinator's HTTP API.
//!
//! It speaks to the coordinator only through the API, with the API's own
//! types ([`skiff_api_types`]), and uses `skiff-shared` only for the
//! Compose parser and a few input checks: it knows nothing of the
//! coordinator's modules, its store or its HTTP server.
//!
//! The coordinator URL and API token come from `--url`/`--token`, else
//! `SKIFF_URL`/`SKIFF_TOKEN`, else the config file written by `skiff login`
//! (`$SKIFF_CONFIG`, or `~/.config/skiff/config.toml`), else the URL
//! defaults to `http://127.0.0.1:7070`.
//!
//! Exit codes: 0 success, 1 the coordinator refused the request, 2 bad
//! usage or input, 3 the coordinator could not be reached, 4 the token was
//! refused or may not do what was asked (its role or stacks).
//!
//! Layout:
//! - [`commands`]: the command line ([`Cli`]) and one module per command
//!   group (login, tokens, nodes, deploy, stacks, secrets, registries,
//!   policy, events).
//! - [`client`]: a small HTTP client of the API; the test harness uses it
//!   too.
//! - [`config`]: the URL and token `skiff login` saves.
//! - [`output`]: tables, JSON and text helpers.
//! - [`progress`]: per-service deploy progress bars.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use client::ClientError;

pub mod client;
pub mod commands;
pub mod config;
pub mod output;
pub mod progress;

pub use commands::{Cli, Command};

/// A failed command: a message for stderr and an exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    /// Bad usage or input (exit code 2).
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 2,
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Connect { .. } => 3,
            e if e.is_unauthorized() => 4,
            ClientError::Url { .. } => 2,
            ClientError::Api { status: 400, .. } => 2,
            _ => 1,
        };
        Self {
            message: e.to_string(),
            code,
        }
    }
}

/// Runs the CLI; prints results on stdout and one error line on stderr.
pub async fn run(cli: Cli) -> ExitCode {
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("skiff: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
