//! The mesh controller: joins this host to the other hosts as the `mesh`
//! section says, so that the stack networks' subnets on other hosts are
//! routed to them.
//!
//! - WireGuard (`skw0`): the kernel's where it has the module and `wg` is
//!   installed (agent config `wireguard = "auto"|"kernel"`), else gotatun in
//!   the agent over a persistent TUN device ([`wireguard`]).
//! - VXLAN (`skv0`, VNI 4242): kernel VXLAN; each peer gets a forwarding
//!   entry and a permanent neighbour whose MAC is derived from its mesh
//!   address ([`diff::vxlan_mac`]), and its subnets are routed via its mesh
//!   address.
//! - Weave: nothing is made here; the mesh only reports it.
//!
//! Routes are the agent's own: `proto 242` in the main table, plus one
//! `unreachable <range> metric 4242` so cluster traffic never leaves by
//! the default route when a peer's route is missing. Only those, and the
//! two mesh devices, are ever listed or changed. A plan without a `mesh`
//! section removes them all, and the mesh's part of the firewall.
//!
//! One pure diff ([`diff`]); [`ip`] does the kernel side.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_shared::sections::mesh::{
    Implementation, Mesh, MeshMode, MeshReport, MeshSection, PeerStatus, WIREGUARD_DEVICE,
};
use skiff_shared::tasks::TaskTree;
use tokio::sync::{Mutex, watch};
use tracing::{debug, info};

use crate::config::WireguardChoice;
use crate::controller::{Context, Desired, Pace, Reconcile, Reporter, Versioned, drive};
use crate::firewall::{Firewall, MeshRules};
use crate::supervisor::Host;

pub mod diff;
pub mod ip;
mod liveness;
pub mod wireguard;

pub use diff::{Action, Observed};

use diff::{Environment, LinkKind, Wireguard};
use wireguard::{Keys, PeerCounters, Userspace};

/// The agent's mesh settings.
#[derive(Debug, Clone, Default)]
pub struct MeshOptions {
    pub wireguard: WireguardChoice,
    /// `mesh_endpoint`: the address other hosts reach this one at.
    pub endpoint: Option<String>,
}

/// How often the mesh is checked and reported with nothing else going on;
/// reports in between are sent only when something changed meaningfully.
const RESYNC: Duration = Duration::from_secs(10);
/// A report is sent at least this often while counters move.
const REPORT_EVERY: Duration = Duration::from_secs(30);
/// A handshake older than this is stale: WireGuard renews every two
/// minutes while traffic flows, and keepalives make traffic.
const STALE_HANDSHAKE: Duration = Duration::from_secs(180);

/// Why the mesh is not as the plan says.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("{0}")]
    Command(String),
    #[error("WireGuard key: {0}")]
    Key(String),
    #[error("userspace WireGuard: {0}")]
    Tun(String),
    #[error("{0}")]
    Firewall(String),
    #[error("{0}")]
    Plan(String),
}

/// The mesh controller.
#[derive(Debug)]
pub struct Controller {
    host: Host,
}

impl Controller {
    pub fn new(host: &Host) -> Self {
        Self { host: host.clone() }
    }
}

impl crate::controller::Controller for Controller {
    type Kind = Mesh;

    fn check(&self, desired: &MeshSection) -> Result<(), String> {
        diff::target(
            desired,
            &Environment {
                wireguard: Wireguard::Userspace,
                underlay: None,
            },
        )
        .map(drop)
    }

    async fn run(self: Arc<Self>, cx: Context<Mesh>) {
        let endpoint = self
            .host
            .mesh
            .endpoint
            .as_deref()
            .and_then(|e| crate::config::mesh_endpoint(e).ok());
        let mut r = Reconciler {
            desired: watch::channel(None).1,
            data_dir: self.host.data_dir.clone(),
            choice: self.host.mesh.wireguard,
            endpoint,
            firewall: self.host.firewall.clone(),
            reports: cx.reports,
            state: Mutex::new(State::default()),
        };
        let desired = leave_when_absent(cx.desired, &cx.tree);
        r.desired = desired.clone();
        drive(
            &r,
            desired,
            &cx.tree,
            Pace {
                resync: RESYNC,
                retry: Pace::default().retry,
            },
            None,
        )
        .await;
        if let Some(u) = r.state.lock().await.userspace.take() {
            u.stop().await;
        }
    }
}

/// Passes sections on; a stored plan without one becomes an empty
/// section, which [`diff`] reads as "leave the mesh" (also at start, when
/// the agent was away as the host left the mesh).
fn leave_when_absent(
    mut rx: watch::Receiver<Option<Versioned<MeshSection>>>,
    tree: &TaskTree,
) -> watch::Receiver<Option<Versioned<MeshSection>>> {
    // Not marked seen: a plan published before this task ran (the stored
    // one, at start) still counts as a change below.
    let (tx, out) = watch::channel(rx.borrow().clone());
    let tree2 = tree.clone();
    tree.spawn("mesh-sections", async move {
        loop {
            tokio::select! {
                () = tree2.cancelled() => return,
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            let next = rx.borrow_and_update().clone();
            tx.send_if_modified(|current| match next {
                Some(v) => {
                    *current = Some(v);
                    true
                }
                None if current.as_ref().is_none_or(|c| !diff::is_leave(&c.value)) => {
                    *current = Some(Versioned {
                        generation: 0,
                        value: Arc::new(MeshSection::default()),
                    });
                    true
                }
                None => false,
            });
        }
    });
    out
}

#[derive(Debug, Default)]
struct State {
    keys: Option<Arc<Keys>>,
    /// Which WireGuard, decided once.
    wireguard: Option<Wireguard>,
    userspace: Option<Userspace>,
    /// The firewall part last set.
    firewall: Option<MeshRules>,
    /// The environment seen by the last observation.
    env: Option<Environment>,
    last_report: Option<(MeshReport, Instant)>,
    /// Each WireGuard peer's last handshake, as the agent remembers it.
    liveness: liveness::Liveness,
    /// The mesh was left and nothing of it remained: later rounds with no
    /// section look at nothing (a host without the mesh runs no commands).
    left: bool,
}

struct Reconciler {
    /// The section being reconciled (observing depends on its mode).
    desired: watch::Receiver<Option<Versioned<MeshSection>>>,
    data_dir: std::path::PathBuf,
    choice: WireguardChoice,
    endpoint: Option<Ipv4Addr>,
    firewall: Arc<Firewall>,
    reports: Reporter<Mesh>,
    state: Mutex<State>,
}

impl Reconciler {
    fn keys(&self, state: &mut State) -> Result<Arc<Keys>, MeshError> {
        if let Some(k) = &state.keys {
            return Ok(k.clone());
        }
        let keys = Arc::new(Keys::load_or_create(&self.data_dir)?);
        state.keys = Some(keys.clone());
        Ok(keys)
    }

    /// Which WireGuard: decided on the first round and kept.
    async fn wireguard(&self, state: &mut State, existing: Option<&LinkKind>) -> Wireguard {
        if let Some(w) = state.wireguard {
            return w;
        }
        let w = match (self.choice, existing) {
            (WireguardChoice::Userspace, _) => Wireguard::Userspace,
            (WireguardChoice::Kernel, _) => Wireguard::Kernel,
            (WireguardChoice::Auto, Some(LinkKind::Wireguard)) => Wireguard::Kernel,
            (WireguardChoice::Auto, Some(LinkKind::Tun)) => Wireguard::Userspace,
            (WireguardChoice::Auto, _) => {
                if wireguard::kernel::available().await {
                    Wireguard::Kernel
                } else {
                    Wireguard::Userspace
                }
            }
        };
        info!(wireguard = ?w, "WireGuard chosen for the mesh.");
        state.wireguard = Some(w);
        w
    }

    async fn counters(&self, state: &State) -> Vec<PeerCounters> {
        match (&state.userspace, state.wireguard, &state.keys) {
            (Some(u), _, _) => u.counters().await,
            (None, Some(Wireguard::Kernel), Some(keys)) => wireguard::kernel::state(keys)
                .await
                .ok()
                .flatten()
                .map(|(_, c)| c)
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    async fn apply_one(&self, state: &mut State, action: &Action) -> Result<(), MeshError> {
        match action {
            Action::RemoveLink(name) => {
                if name == WIREGUARD_DEVICE
                    && let Some(u) = state.userspace.take()
                {
                    u.stop().await;
                }
                ip::remove_link(name).await?;
                info!(device = %name, "Removed the mesh device.");
            }
            Action::CreateLink(spec) => {
                if spec.kind == LinkKind::Tun && !std::path::Path::new("/dev/net/tun").exists() {
                    return Err(MeshError::Tun(
                        "no /dev/net/tun: load the tun module (modprobe tun), or give the agent's container --device /dev/net/tun".into(),
                    ));
                }
                ip::create_link(spec).await.map_err(|e| match (&spec.kind, e) {
                    (LinkKind::Wireguard, MeshError::Command(e)) if e.contains("Unknown device type") => {
                        MeshError::Command(format!(
                            "the kernel has no WireGuard ({e}): load it (modprobe wireguard), or set wireguard = \"userspace\" (or \"auto\") in the agent's config"
                        ))
                    }
                    (LinkKind::Vxlan { .. }, MeshError::Command(e)) if e.contains("Unknown device type") => {
                        MeshError::Command(format!(
                            "the kernel has no VXLAN ({e}): load it (modprobe vxlan)"
                        ))
                    }
                    (_, e) => e,
                })?;
                info!(device = %spec.name, kind = ?spec.kind, mtu = spec.mtu, "Created the mesh device.");
            }
            Action::SetMtu { dev, mtu } => ip::set_mtu(dev, *mtu).await?,
            Action::SetMac { dev, mac } => ip::set_mac(dev, mac).await?,
            Action::SetRpFilter { dev, value } => ip::set_rp_filter(dev, *value).await?,
            Action::AddAddress { dev, address } => {
                ip::address(true, dev, *address).await?;
                info!(device = %dev, address = %address, "Mesh address set.");
            }
            Action::RemoveAddress { dev, address } => ip::address(false, dev, *address).await?,
            Action::SetUp(dev) => ip::set_up(dev).await?,
            Action::StartWireguard { port } => {
                let keys = self.keys(state)?;
                if state.wireguard == Some(Wireguard::Kernel) {
                    wireguard::kernel::start(&keys, *port).await?;
                } else {
                    if let Some(u) = state.userspace.take() {
                        u.stop().await;
                    }
                    state.userspace = Some(Userspace::start(&keys, *port).await?);
                }
                info!(port, public_key = %keys.public, "WireGuard started.");
            }
            Action::SetListenPort(port) => match &mut state.userspace {
                Some(u) => u.set_port(*port).await?,
                None => wireguard::kernel::set_port(*port).await?,
            },
            Action::SetPeer(p) => {
                match &mut state.userspace {
                    Some(u) => u.set_peer(p).await?,
                    None => wireguard::kernel::set_peer(p).await?,
                }
                info!(peer = %p.key, endpoint = ?p.endpoint, allowed_ips = ?p.allowed_ips, "Mesh peer set.");
            }
            Action::RemovePeer(key) => {
                match &mut state.userspace {
                    Some(u) => u.remove_peer(key).await?,
                    None => wireguard::kernel::remove_peer(key).await?,
                }
                info!(peer = %key, "Mesh peer removed.");
            }
            Action::SetFdb(f) => {
                ip::fdb(true, f).await?;
                info!(mac = %f.mac, endpoint = %f.dst, "Mesh peer added.");
            }
            Action::RemoveFdb(f) => {
                ip::fdb(false, f).await?;
                info!(mac = %f.mac, endpoint = %f.dst, "Mesh peer removed.");
            }
            Action::SetNeighbour(n) => ip::set_neighbour(n).await?,
            Action::RemoveNeighbour(a) => ip::remove_neighbour(*a).await?,
            Action::AddRoute(r) => {
                ip::add_route(r).await?;
                debug!(route = ?r, "Mesh route set.");
            }
            Action::RemoveRoute(r) => {
                ip::remove_route(r).await?;
                debug!(route = ?r, "Mesh route removed.");
            }
            Action::Firewall(rules) => {
                self.firewall
                    .set_mesh(rules.clone())
                    .await
                    .map_err(|e| MeshError::Firewall(e.to_string()))?;
                state.firewall = rules.clone();
            }
        }
        Ok(())
    }

    /// The report for this round.
    async fn report(&self, desired: &MeshSection, error: Option<String>) -> MeshReport {
        let mut state = self.state.lock().await;
        if diff::is_leave(desired) {
            return MeshReport {
                error,
                ..MeshReport::default()
            };
        }
        let implementation = match (desired.mode, state.wireguard) {
            (MeshMode::Weave, _) => Implementation::Weave,
            (MeshMode::Vxlan, _) => Implementation::Vxlan,
            (MeshMode::Wireguard, Some(Wireguard::Kernel)) => Implementation::KernelWireguard,
            (MeshMode::Wireguard, _) => Implementation::UserspaceWireguard,
        };
        let counters = self.counters(&state).await;
        let env = state.env.clone().unwrap_or(Environment {
            wireguard: Wireguard::Userspace,
            underlay: None,
        });
        let skipped = diff::target(desired, &env)
            .map(|t| t.skipped)
            .unwrap_or_default();
        let now = Instant::now();
        let wireguard = desired.mode == MeshMode::Wireguard;
        if wireguard {
            state.liveness.retain(|k| {
                desired
                    .peers
                    .iter()
                    .any(|p| p.public_key.as_deref() == Some(k))
            });
        }
        let liveness = &mut state.liveness;
        let mut peers: Vec<PeerStatus> = if desired.mode == MeshMode::Weave {
            Vec::new()
        } else {
            desired
                .peers
                .iter()
                .map(|p| {
                    let c = p
                        .public_key
                        .as_ref()
                        .and_then(|k| counters.iter().find(|c| &c.key == k));
                    let skip = skipped.iter().find(|(id, _)| *id == p.node_id);
                    let (age, stale) = match (&p.public_key, c) {
                        (Some(key), Some(c)) if wireguard && skip.is_none() => liveness.observe(
                            key,
                            c.handshake_age,
                            now,
                            STALE_HANDSHAKE,
                            &format!("{}:{}", p.endpoint, desired.port),
                        ),
                        _ => (c.and_then(|c| c.handshake_age), None),
                    };
                    PeerStatus {
                        node_id: p.node_id.clone(),
                        handshake_age_ms: age
                            .map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
                        rx_bytes: c.map_or(0, |c| c.rx_bytes),
                        tx_bytes: c.map_or(0, |c| c.tx_bytes),
                        error: skip.map(|(_, why)| why.clone()).or(stale),
                    }
                })
                .collect()
        };
        peers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        peers.truncate(skiff_shared::sections::mesh::MAX_REPORTED_PEERS);
        MeshReport {
            public_key: (desired.mode == MeshMode::Wireguard)
                .then(|| state.keys.as_ref().map(|k| k.public.clone()))
                .flatten(),
            implementation: Some(implementation),
            underlay_mtu: env.underlay.as_ref().map(|u| u.mtu).filter(|m| *m > 0),
            peers,
            error: error.map(|mut e| {
                skiff_shared::bounds::truncate(
                    &mut e,
                    skiff_shared::bounds::MAX_REPORT_ERROR_BYTES,
                );
                e
            }),
        }
    }
}

/// What a report says apart from its moving counters: a report is sent
/// when this changes, and at most every [`REPORT_EVERY`] otherwise.
fn shape(r: &MeshReport) -> MeshReport {
    MeshReport {
        peers: r
            .peers
            .iter()
            .map(|p| PeerStatus {
                handshake_age_ms: p
                    .handshake_age_ms
                    .map(|a| u64::from(Duration::from_millis(a) < STALE_HANDSHAKE)),
                rx_bytes: 0,
                tx_bytes: 0,
                ..p.clone()
            })
            .collect(),
        ..r.clone()
    }
}

impl Reconcile for Reconciler {
    type Kind = Mesh;
    type Observed = Observed;
    type Action = Action;
    type Error = MeshError;

    async fn observe(&self) -> Result<Observed, MeshError> {
        let leaving = self
            .desired
            .borrow()
            .as_ref()
            .is_some_and(|v| diff::is_leave(&v.value));
        if leaving && self.state.lock().await.left {
            return Ok(Observed {
                env: diff_env_placeholder(),
                links: Vec::new(),
                wireguard: None,
                fdb: Vec::new(),
                neighbours: Vec::new(),
                routes: Vec::new(),
                firewall: None,
            });
        }
        let links = ip::links().await?;
        let mut state = self.state.lock().await;
        let skw = links
            .iter()
            .find(|l| l.name == WIREGUARD_DEVICE)
            .map(|l| l.kind.clone());
        let mode = self
            .desired
            .borrow()
            .as_ref()
            .filter(|v| !diff::is_leave(&v.value))
            .map(|v| v.value.mode);
        let (wireguard, running) = if mode == Some(MeshMode::Wireguard) {
            let wireguard = self.wireguard(&mut state, skw.as_ref()).await;
            // The key is made before the device: the public key is
            // reported (and reaches the peers) even while the device
            // cannot be made.
            let keys = self.keys(&mut state)?;
            let running = match (&state.userspace, wireguard, skw.as_ref()) {
                (Some(u), _, Some(LinkKind::Tun)) => Some(u.state().await),
                (None, Wireguard::Kernel, Some(LinkKind::Wireguard)) => {
                    wireguard::kernel::state(&keys).await?.map(|(s, _)| s)
                }
                _ => None,
            };
            (wireguard, running)
        } else {
            // No WireGuard wanted: whatever `skw0` is, it goes.
            (state.wireguard.unwrap_or(Wireguard::Userspace), None)
        };
        let vxlan_present = links
            .iter()
            .any(|l| matches!(l.kind, LinkKind::Vxlan { .. }));
        let (fdb, neighbours) = ip::vxlan_state(vxlan_present).await?;
        let env = Environment {
            wireguard,
            underlay: ip::underlay(self.endpoint).await?,
        };
        state.env = Some(env.clone());
        Ok(Observed {
            env,
            links,
            wireguard: running,
            fdb,
            neighbours,
            routes: ip::routes().await?,
            firewall: state.firewall.clone(),
        })
    }

    fn diff(desired: &MeshSection, observed: &Observed) -> Vec<Action> {
        diff::diff(desired, observed)
    }

    async fn apply(&self, actions: &[Action]) -> Result<(), MeshError> {
        let mut state = self.state.lock().await;
        for a in actions {
            self.apply_one(&mut state, a).await?;
        }
        Ok(())
    }

    fn wakeups(&self) -> futures_util::stream::BoxStream<'static, ()> {
        Box::pin(futures_util::stream::pending())
    }

    async fn after_round(&self, desired: &Versioned<Desired<Mesh>>, error: Option<String>) {
        let error = error.or_else(|| {
            diff::target(&desired.value, &diff_env_placeholder())
                .err()
                .map(|e| format!("the mesh section is unusable: {e}"))
        });
        let report = self.report(&desired.value, error).await;
        let mut state = self.state.lock().await;
        // Once a round with no section succeeded, everything is gone.
        state.left = diff::is_leave(&desired.value) && report.error.is_none();
        let due = match &state.last_report {
            None => true,
            Some((last, at)) => shape(last) != shape(&report) || at.elapsed() >= REPORT_EVERY,
        };
        if due {
            self.reports.send(&report);
            state.last_report = Some((report, Instant::now()));
        }
    }
}

fn diff_env_placeholder() -> Environment {
    Environment {
        wireguard: Wireguard::Userspace,
        underlay: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(age_ms: Option<u64>, rx: u64) -> MeshReport {
        MeshReport {
            public_key: None,
            implementation: Some(Implementation::UserspaceWireguard),
            underlay_mtu: Some(1500),
            peers: vec![PeerStatus {
                node_id: "n2".into(),
                handshake_age_ms: age_ms,
                rx_bytes: rx,
                tx_bytes: rx,
                error: None,
            }],
            error: None,
        }
    }

    #[test]
    fn counters_alone_are_not_a_change_but_handshakes_are() {
        assert_eq!(
            shape(&report(Some(1_000), 10)),
            shape(&report(Some(90_000), 99_999))
        );
        assert_ne!(shape(&report(None, 0)), shape(&report(Some(1_000), 0)));
        assert_ne!(
            shape(&report(Some(1_000), 0)),
            shape(&report(Some(200_000), 0))
        );
        let mut failing = report(Some(1_000), 0);
        failing.error = Some("no /dev/net/tun".into());
        assert_ne!(shape(&failing), shape(&report(Some(1_000), 0)));
    }
}
