//! The Skiff agent: one per server. It joins the cluster with a token,
//! keeps one mutually authenticated WebSocket to the coordinator, reports
//! its host, and acts only on plans signed by the coordinator's key.
//!
//! Layout:
//! - [`config`]: the optional TOML config.
//! - [`identity`]: the data dir (key, certificate, pinned CA and plan key)
//!   and the join exchange.
//! - [`link`]: connect, hello, heartbeats, renewal, reconnect with backoff.
//! - [`plan`]: verifying and storing signed plans.
//! - [`facts`]: host facts from sysinfo and the Docker Engine.
//! - [`secrets`]: secret values delivered for this host's containers.
//! - [`registries`]: registry credentials delivered for this host's image pulls.
//! - [`reconcile`]: the pure diff of desired against observed containers,
//!   and applying it through the Docker Engine API.
//!
//! The agent never talks to another agent, and never acts on an unsigned
//! plan. It keeps running, and keeps its last plan, when the coordinator is away.
#![forbid(unsafe_code)]

pub mod config;
pub mod facts;
pub mod identity;
pub mod link;
pub mod plan;
pub mod reconcile;
pub mod registries;
pub mod secrets;
