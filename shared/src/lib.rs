//! What the Skiff agent and the coordinator must agree on, and nothing else.
//!
//! Layout:
//! - [`protocol`]: the agent link's versioned JSON envelope and the messages
//!   each side may send, with the size limits both sides enforce.
//! - [`bounds`]: the size and shape bounds of what an agent says about
//!   itself (hello, host facts, reports): checked by the coordinator,
//!   fitted to by the agent.
//! - [`join`]: the join token format and the join request and response.
//! - [`plan`]: the host plan, one section per agent subsystem, each with
//!   its own generation.
//! - [`sections`]: the sections: their names, capabilities and wire types
//!   (desired state, reports, deliveries); one module per subsystem.
//! - [`signing`]: ed25519 signing and verification of plans over the exact
//!   bytes sent.
//! - [`tasks`]: the task tree both daemons run their tasks in.
//! - [`tls`]: certificate fingerprints, the CA-pinning verifier used at join,
//!   and the rustls configurations of the link (TLS 1.3 only, ring backend).
//! - [`files`]: crash-safe writes of state and key material.
//! - [`logging`] (feature `logging`): the daemons' logging setup, with
//!   the link's, TLS and HTTP libraries capped at `info` whatever
//!   `SKIFF_LOG` says.
//! - [`registry`]: the registry host of an image reference (as Docker
//!   decides it), the check of a registry host, and the registry
//!   credentials delivered to agents.
//! - [`workload`]: the container specs the `containers` section carries,
//!   the labels the agent puts on the containers it manages, and what it
//!   reports about them.
//!
//! Types here are the wire format; each side converts them to its own
//! internal types at the edge. Compose files (the stack model and parser,
//! and the placement constraint language) live in `skiff-compose`, which
//! only the coordinator uses.
#![forbid(unsafe_code)]

pub mod bounds;
pub mod files;
pub mod join;
#[cfg(feature = "logging")]
pub mod logging;
pub mod plan;
pub mod protocol;
pub mod registry;
pub mod sections;
pub mod signing;
pub mod tasks;
pub mod tls;
pub mod workload;

/// The version of the Skiff release these crates belong to.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Fills a buffer with bytes from the operating system's secure random source.
///
/// # Errors
/// Fails only when the system random source is unavailable.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], ring::error::Unspecified> {
    use ring::rand::SecureRandom;
    let mut buf = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut buf)?;
    Ok(buf)
}

/// The SHA-256 digest of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Milliseconds since the Unix epoch, by the wall clock.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
