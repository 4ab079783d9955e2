//! `skiff`: the command-line client of the coordinator's API.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    skiff_cli::run(skiff_cli::Cli::parse()).await
}
