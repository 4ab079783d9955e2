//! The Skiff agent: one per server. It joins the cluster with a token,
//! keeps one mutually authenticated WebSocket to the coordinator, and acts
//! only on host plans signed by the coordinator's key.
//!
//! Layout:
//! - [`config`]: the optional TOML config.
//! - [`identity`]: the data dir (key, certificate, pinned CA and plan key)
//!   and the join exchange.
//! - [`link`]: connect, hello, heartbeats, renewal, reconnect with backoff;
//!   plans, deliveries and reports pass through it by section name.
//! - [`plan`]: verifying, checking and storing signed host plans.
//! - [`controller`]: the shape of a subsystem: a section of the plan, one
//!   pure diff, observe and apply, reports.
//! - [`supervisor`]: runs controllers and routes sections to them.
//! - [`engine`]: the connection to the Docker Engine the controllers share.
//! - The controllers, one folder each, listed at the end of this file
//!   ([`start_controllers`]): [`containers`], [`networks`], [`mesh`], [`dns`], [`ingress`],
//!   [`logs`].
//! - [`facts`]: host facts from sysinfo and the Docker Engine.
//! - [`firewall`]: the agent's nftables table, which controllers add to.
//! - [`leases`]: the cluster networks' leases on this host, which the
//!   networks controller fills and the containers controller hands
//!   addresses from.
//! - [`weave`]: attaching containers to Weave Net (mesh `weave`), driven
//!   by the networks controller; the containers controller reports the
//!   addresses.
//!
//! Every task runs in one task tree ([`skiff_shared::tasks`]): [`run`]
//! cancels it and waits for every task at shutdown. The agent never talks
//! to another agent, and never acts on an unsigned plan. It keeps running,
//! and keeps enforcing its last plan, when the coordinator is away.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use skiff_shared::tasks::TaskTree;
use tracing::{info, warn};

pub mod config;
pub mod controller;
pub mod engine;
pub mod facts;
pub mod firewall;
pub mod identity;
pub mod leases;
pub mod link;
pub mod plan;
pub mod supervisor;
pub mod weave;

#[cfg(test)]
pub(crate) mod test_support {
    /// A loopback port free for both TCP and UDP (some tests listen on
    /// both with one number).
    pub(crate) fn free_port() -> u16 {
        loop {
            let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = t.local_addr().unwrap().port();
            if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
}

/// How long shutdown waits for tasks to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the agent stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Identity(#[from] identity::IdentityError),
    #[error("{0}")]
    Link(#[from] link::LinkError),
    #[error("{0}")]
    Config(#[from] config::ConfigError),
}

/// Runs the agent until `tree` is cancelled (or the node is removed from
/// the cluster), then stops every task.
///
/// # Errors
/// The identity cannot be loaded, or the link stopped for good.
pub async fn run(cfg: config::Config, tree: TaskTree) -> Result<(), RunError> {
    let result = serve(cfg, &tree).await;
    tree.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, tree.wait())
        .await
        .is_err()
    {
        warn!("Shutdown timed out; stopping anyway.");
    }
    result
}

async fn serve(cfg: config::Config, tree: &TaskTree) -> Result<(), RunError> {
    let mut identity = identity::Identity::load(&cfg.data_dir)?;
    let weave_api = cfg.weave_api()?;
    if let Some(c) = cfg.coordinator {
        identity.node.coordinator = c;
    }
    info!(node = %identity.node.node_id, name = %identity.node.name, coordinator = %identity.node.coordinator, "Agent starting.");
    let host = supervisor::Host {
        node_id: identity.node.node_id.clone(),
        data_dir: PathBuf::from(&identity.dir),
        engine: engine::EngineHandle::connect(tree),
        firewall: std::sync::Arc::default(),
        leases: std::sync::Arc::default(),
        weave: std::sync::Arc::new(weave::Weave::new(
            weave_api,
            Some(&PathBuf::from(&identity.dir)),
        )),
        mesh: mesh::MeshOptions {
            wireguard: cfg.wireguard,
            endpoint: cfg.mesh_endpoint.clone(),
        },
        dns: cfg.dns.options(),
    };
    let router = start_controllers(tree, &host);
    // The last signed plan is enforced from the start, coordinator or not.
    match plan::stored(&identity, &router) {
        Ok(Some(accepted)) => {
            let plan = accepted.publish();
            info!(generation = plan.generation, "Loaded the last signed plan.");
        }
        Ok(None) => {}
        Err(error) => {
            warn!(error = %error, "The stored plan is unusable; waiting for the coordinator's.");
        }
    }
    let options = link::LinkOptions {
        mesh_endpoint: cfg.mesh_endpoint.clone(),
        ..link::LinkOptions::default()
    };
    link::run(identity, options, router, tree.child()).await?;
    info!("Agent stopped.");
    Ok(())
}

// The controllers: one folder each, and one line in `start_controllers`.
pub mod containers;
pub mod dns;
pub mod ingress;
pub mod logs;
pub mod mesh;
pub mod networks;

/// Starts every controller in a subtree of `tree`.
pub fn start_controllers(tree: &TaskTree, host: &supervisor::Host) -> supervisor::Router {
    let mut s = supervisor::Supervisor::new(tree.child());
    s.add(containers::Controller::new(host));
    s.add(networks::Controller::new(host));
    s.add(mesh::Controller::new(host));
    s.add(dns::Controller::new(host.dns.clone()));
    s.add(logs::Controller::new(host, tree));
    s.add(ingress::Controller::new(
        &host.data_dir,
        ingress::IngressOptions::default(),
    ));
    s.router()
}
