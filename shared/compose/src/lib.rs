//! Compose files as Skiff reads them: what the coordinator and the `skiff`
//! command-line client need to turn a Compose file into a stack and to
//! place its services. The agent never sees Compose files and does not
//! depend on this crate.
//!
//! Layout:
//! - [`stack`]: stack files: Compose files parsed into a typed, normalized
//!   model with positioned diagnostics.
//! - [`placement`]: the placement constraint language of Compose files
//!   (`node.labels.zone == eu`), parsed and matched against a host.
#![forbid(unsafe_code)]

pub mod placement;
pub mod stack;
