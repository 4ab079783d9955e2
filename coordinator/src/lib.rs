//! The Skiff coordinator: cluster state, the CA, the agent link and the
//! HTTP API. The API's JSON types are in `skiff-api-types`; its
//! command-line client, `skiff`, is the `skiff-cli` crate.
//!
//! Layout:
//! - [`config`]: the TOML config, defaults and validation.
//! - [`identity`]: the data dir: cluster CA, server certificate, plan-signing key.
//! - [`pki`]: certificate issuing (server, and agents' client certificates from CSRs).
//! - [`store`]: the [`store::Store`] trait and its SQLite implementation.
//! - [`auth`]: API tokens.
//! - [`link`]: the agent port: mTLS WebSocket sessions, and the public join
//!   and install endpoints.
//! - [`api`]: the HTTP API and its OpenAPI document.
//! - [`listener`]: what bounds both ports: connection caps, per-connection
//!   deadlines and size limits, accept backoff, refusals per source.
//! - [`sessions`]: the live agent sessions and the nodes refused at TLS.
//! - [`network`]: the cluster network: the range, networks' ids, their
//!   subnets on hosts, hosts' mesh addresses and keys.
//! - [`dns`]: ElasticDNS's records book: the records every host serves,
//!   their generation, which generation each host serves.
//! - [`events`]: the in-memory event log and its followers.
//! - [`compose`]: the Compose file of a deploy request, parsed here again.
//! - [`deploy`]: stacks to releases to node plans; stack removal and status.
//! - [`scheduler`]: placement, a pure function from hosts, services and what
//!   runs where to the desired placements and the changes that get there.
//! - [`policy`]: the cluster's container policy, checked on every release.
//! - [`certs`]: TLS certificates for HTTP routes: uploaded or obtained by
//!   ACME, keys sealed at rest, handed to the ingress section.
//! - [`secrets`]: sealing stack secrets at rest.
//! - [`registries`]: registry credentials for image pulls, sealed at rest
//!   and delivered only to agents whose plans pull from those registries.
//! - [`server`]: wiring and shutdown.
//!
//! The coordinator never reaches into a host except through its agent's link.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod certs;
pub mod compose;
pub mod config;
pub mod deploy;
pub mod dns;
pub mod events;
pub mod identity;
pub mod ingress;
pub mod link;
pub mod listener;
pub mod logs;
pub mod network;
pub mod observed;
pub mod pki;
pub mod plans;
pub mod policy;
pub mod registries;
pub mod scheduler;
pub mod secrets;
pub mod sections;
pub mod server;
pub mod sessions;
pub mod store;

/// Now, in Unix milliseconds, as stored.
pub fn now_ms() -> i64 {
    i64::try_from(skiff_shared::unix_millis()).unwrap_or(i64::MAX)
}
