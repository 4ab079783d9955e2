//! The Skiff cluster test harness, used by every end-to-end test.
//!
//! Layout:
//! - [`cluster`]: launch a coordinator and agents as real processes on free
//!   loopback ports with temp data dirs; kill, restart, and partition them
//!   (each agent reaches the coordinator through a [`proxy::Proxy`] the test
//!   controls).
//! - [`proxy`]: a TCP forwarder that can cut and heal a link.
//! - [`image`]: builds the busybox-static test image and imports it into
//!   the Docker Engine (no registry can be reached).
//! - [`wait`]: wait on a condition with a deadline; never sleep to synchronise.
//! - [`tier2`]: clusters of tier-2 hosts (containers with their own Docker
//!   Engine, `scripts/test-host.sh`), agents installed by the install script,
//!   for the cluster network across hosts; packet captures of their network.
//!
//! The binaries come from the workspace's target dir: run
//! `cargo build --workspace --bins` before the tests (`scripts/test.sh` does).

// Test support: a failed expectation here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;
pub mod image;
pub mod proxy;
pub mod tier2;
pub mod wait;
pub mod weave_fake;

pub use cluster::{
    Agent, Cluster, Coordinator, CoordinatorOptions, ListenerLimits, ProcessOptions,
    launch_cluster, launch_cluster_with,
};
pub use wait::{wait_for, wait_until};

use std::path::PathBuf;

/// Path of a workspace binary next to the running test executable.
pub fn target_bin(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps; binaries in target/<profile>.
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before the end-to-end tests",
        path.display()
    );
    path
}
