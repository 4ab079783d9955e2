//! End-to-end tests: real coordinator and agent processes, real TLS, the
//! real Docker Engine. One test binary for the crate (link time matters).

// Test support: a failed expectation here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access;
mod acme;
mod api_cli;
mod bootstrap;
mod certs;
mod checks;
mod configs;
mod depends;
mod dns;
mod dns_server;
mod harness;
mod host_ports;
mod ingress;
mod joins;
mod leaks;
mod link;
mod listeners;
mod logs;
mod logs_hosts;
mod mesh;
mod networks;
mod plans;
mod policy;
mod reconcile;
mod registry;
mod security;
mod stacks;
mod tokens;
mod weave;
