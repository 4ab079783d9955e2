//! The ingress controller (`ingress` section): what an edge host serves
//! to the outside.
//!
//! On an edge host the agent listens on every published port and forwards
//! it at layer 4 ([`l4`]) to a published replica of the service, and on
//! the HTTP and HTTPS ports when there are routes ([`http`]). Both choose
//! replicas from the same endpoint pools ([`balance`]).
//!
//! - [`diff`]: the pure decision (a new table in force, listeners to close
//!   and open).
//! - [`certs`]: delivered certificates, kept on disk so that HTTPS keeps
//!   working after a restart with the coordinator away.
//! - [`proxy_protocol`]: the PROXY protocol header a load balancer sends.
//! - [`holder`]: what holds a port the proxy cannot bind.
//!
//! A new section is put in force whole (endpoints, rules, routes,
//! certificates) before its generation is reported: from then on no new
//! connection or request goes to an endpoint it does not list, and what is
//! in flight to such an endpoint is cut once `drain_timeout_ms` has passed.
//! A host that is not an edge (or a plan without the section) listens on
//! nothing, but still reports the generation (deploys wait for every host).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use skiff_shared::sections::ingress::{
    CertificatesDelivery, Ingress, IngressReport, IngressSection, Listener, Protocol, check_domain,
    check_path, routes_overlap,
};
use skiff_shared::tasks::TaskTree;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::controller::{Context, Pace, Reporter, Versioned};

pub mod balance;
pub mod certs;
pub mod diff;
pub mod holder;
pub mod http;
pub mod l4;
pub mod proxy_protocol;

#[cfg(test)]
mod check_tests;
#[cfg(test)]
mod live_tests;

pub use diff::{Action, Listen, Observed};

/// The agent's ingress settings.
#[derive(Debug, Clone)]
pub struct IngressOptions {
    /// The address every listener binds (all of the host's by default).
    pub bind: IpAddr,
    pub limits: l4::Limits,
}

impl Default for IngressOptions {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            limits: l4::Limits::default(),
        }
    }
}

/// The ingress controller.
#[derive(Debug)]
pub struct Controller {
    options: IngressOptions,
    certs: Arc<certs::Store>,
    /// Rung by a delivery that changed the certificates.
    wake: Arc<Notify>,
    /// The forwarders' shared state once running (tests reach it here).
    shared: Mutex<Option<Arc<l4::Shared>>>,
}

impl Controller {
    /// The controller of the agent whose data dir is `data_dir`; the
    /// certificates stored there serve from the start.
    pub fn new(data_dir: &Path, options: IngressOptions) -> Self {
        let certs = certs::Store::new(certs::Store::dir_in(data_dir));
        certs.load();
        Self {
            options,
            certs: Arc::new(certs),
            wake: Arc::default(),
            shared: Mutex::default(),
        }
    }

    /// The forwarders' state, once running.
    pub fn shared(&self) -> Option<Arc<l4::Shared>> {
        self.shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Checks a section: ports distinct, domains and paths valid.
///
/// # Errors
/// The first problem, naming the port or route and the fix.
pub fn check(s: &IngressSection) -> Result<(), String> {
    let st = &s.settings;
    if st.http_port == 0 || st.https_port == 0 || st.http_port == st.https_port {
        return Err(format!(
            "ingress: the HTTP and HTTPS ports ({} and {}) must be two ports above 0",
            st.http_port, st.https_port
        ));
    }
    let mut seen = BTreeMap::new();
    for r in &s.ports {
        if r.port == 0 || r.target == 0 {
            return Err(format!(
                "ingress: service {}/{} publishes port {} to {}: ports must be above 0",
                r.stack, r.service, r.port, r.target
            ));
        }
        if r.protocol == Protocol::Tcp && (r.port == st.http_port || r.port == st.https_port) {
            return Err(format!(
                "ingress: service {}/{} publishes TCP port {}, which the HTTP proxy uses: publish another port, or route it by domain",
                r.stack, r.service, r.port
            ));
        }
        if let Some(other) = seen.insert((r.port, r.protocol), r) {
            return Err(format!(
                "ingress: {}/{} and {}/{} both publish {:?} port {}: publish each port once",
                other.stack, other.service, r.stack, r.service, r.protocol, r.port
            ));
        }
    }
    for (i, r) in s.routes.iter().enumerate() {
        check_domain(&r.domain)
            .map_err(|e| format!("ingress: route of {}/{}: {e}", r.stack, r.service))?;
        check_path(&r.path)
            .map_err(|e| format!("ingress: route of {}/{}: {e}", r.stack, r.service))?;
        if r.port == 0 {
            return Err(format!(
                "ingress: route {}{} of {}/{} goes to port 0",
                r.domain, r.path, r.stack, r.service
            ));
        }
        if let Some(o) = s.routes[..i]
            .iter()
            .find(|o| routes_overlap((&o.domain, &o.path), (&r.domain, &r.path)))
        {
            return Err(format!(
                "ingress: {}/{} and {}/{} both route {}{}: give one another domain or path",
                o.stack, o.service, r.stack, r.service, r.domain, r.path
            ));
        }
    }
    for c in &s.certificates {
        for d in &c.domains {
            check_domain(d).map_err(|e| format!("ingress: certificate {}: {e}", c.id))?;
        }
    }
    Ok(())
}

impl crate::controller::Controller for Controller {
    type Kind = Ingress;

    fn check(&self, desired: &IngressSection) -> Result<(), String> {
        check(desired)
    }

    fn deliver(&self, delivery: CertificatesDelivery) -> Result<(), String> {
        self.certs.deliver(&delivery)?;
        self.wake.notify_one();
        Ok(())
    }

    async fn run(self: Arc<Self>, cx: Context<Ingress>) {
        let shared = l4::Shared::new(cx.tree.child(), self.options.limits);
        *self.shared.lock().unwrap_or_else(PoisonError::into_inner) = Some(shared.clone());
        let mut r = Reconciler {
            bind: self.options.bind,
            certs: self.certs.clone(),
            http: http::HttpProxy::new(cx.tree.child()),
            shared,
            tree: cx.tree.clone(),
            observed: Observed::default(),
            listeners: BTreeMap::new(),
            errors: BTreeMap::new(),
            cert_ids: Vec::new(),
            cert_errors: Vec::new(),
        };
        let mut desired = cx.desired;
        let pace = Pace::default();
        loop {
            let current = desired.borrow_and_update().clone();
            let failing = match &current {
                Some(section) => {
                    r.round(section);
                    r.report(&section.value, &cx.reports);
                    !r.errors.is_empty()
                }
                None => {
                    r.clear();
                    false
                }
            };
            let wait = if failing { pace.retry } else { pace.resync };
            tokio::select! {
                () = cx.tree.cancelled() => return,
                changed = desired.changed() => if changed.is_err() { return },
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

struct Reconciler {
    bind: IpAddr,
    certs: Arc<certs::Store>,
    http: Arc<http::HttpProxy>,
    shared: Arc<l4::Shared>,
    tree: TaskTree,
    observed: Observed,
    /// Each open listener's stop.
    listeners: BTreeMap<Listen, CancellationToken>,
    /// The listeners that could not be bound last round, with why.
    errors: BTreeMap<Listen, String>,
    cert_ids: Vec<String>,
    cert_errors: Vec<String>,
}

impl Reconciler {
    fn round(&mut self, section: &Versioned<IngressSection>) {
        self.observed.certs_available = self.certs.version();
        let actions = diff::diff(&section.value, &self.observed);
        self.apply(&section.value, actions);
    }

    fn apply(&mut self, section: &IngressSection, actions: Vec<Action>) {
        let mut errors = BTreeMap::new();
        for action in actions {
            match action {
                Action::Serve => self.serve(section),
                Action::Close(l) => {
                    if let Some(stop) = self.listeners.remove(&l) {
                        stop.cancel();
                    }
                    self.observed.listening.remove(&l);
                    info!(listener = %l, "Ingress stopped listening.");
                }
                Action::Open(l) => match self.open(l) {
                    Ok(()) => {
                        self.observed.listening.insert(l);
                        info!(listener = %l, "Ingress listening.");
                    }
                    Err(error) => {
                        if !self.errors.contains_key(&l) {
                            warn!(listener = %l, error = %error, "Ingress cannot listen; retrying.");
                        }
                        errors.insert(l, error);
                    }
                },
            }
        }
        self.errors = errors;
    }

    /// Puts the section's table in force, for the forwarders and the HTTP
    /// proxy alike.
    fn serve(&mut self, section: &IngressSection) {
        let version = self.observed.certs_available;
        let pools = Arc::new(self.shared.table().pools.rebuild(section, &self.tree));
        let served = self.certs.served(section);
        self.http.update(section, &pools, served.keys);
        self.shared.set_table(l4::Table::new(section, pools));
        for e in &served.errors {
            if !self.cert_errors.contains(e) {
                warn!(error = %e, "A certificate does not serve.");
            }
        }
        self.cert_ids = served.ids;
        self.cert_errors = served.errors;
        self.observed.served = Some(section.clone());
        self.observed.certs_version = version;
        info!(generation = section.generation, "Ingress table in force.");
    }

    fn open(&mut self, l: Listen) -> Result<(), String> {
        let addr = SocketAddr::new(self.bind, l.port());
        let stop = self.tree.token().child_token();
        let fail = |e: std::io::Error| {
            let held = holder::holder(l.port(), l.protocol())
                .map(|h| format!("; {h} holds it"))
                .unwrap_or_default();
            format!(
                "cannot listen on {l} ({addr}): {e}{held}: stop what holds it, or publish another port"
            )
        };
        match l {
            Listen::Udp(port) => {
                let socket = std::net::UdpSocket::bind(addr)
                    .and_then(|s| {
                        s.set_nonblocking(true)?;
                        tokio::net::UdpSocket::from_std(s)
                    })
                    .map_err(fail)?;
                let shared = self.shared.clone();
                let s = stop.clone();
                self.tree
                    .spawn("ingress udp port", l4::udp::serve(socket, port, shared, s));
            }
            Listen::Tcp(_) | Listen::Http(_) | Listen::Https(_) => {
                let listener = tcp_listener(addr).map_err(fail)?;
                let s = stop.clone();
                match l {
                    Listen::Tcp(port) => {
                        let shared = self.shared.clone();
                        self.tree.spawn(
                            "ingress tcp port",
                            l4::tcp::serve(listener, port, shared, s),
                        );
                    }
                    _ => {
                        let tls = matches!(l, Listen::Https(_));
                        let http = self.http.clone();
                        self.tree
                            .spawn("ingress http port", http.serve(listener, tls, s));
                    }
                }
            }
        }
        self.listeners.insert(l, stop);
        Ok(())
    }

    fn report(&self, section: &IngressSection, reports: &Reporter<Ingress>) {
        let table = self.shared.table();
        let listeners = diff::wanted(section)
            .into_iter()
            .map(|l| Listener {
                port: l.port(),
                protocol: l.protocol(),
                error: self.errors.get(&l).cloned(),
            })
            .collect();
        let problems: Vec<String> = self
            .errors
            .values()
            .chain(&self.cert_errors)
            .cloned()
            .collect();
        let report = IngressReport {
            // Only what the table in force routes by.
            generation: table.generation,
            listeners,
            certificates: self.cert_ids.clone(),
            challenges: self.http.challenge_tokens(),
            error: (!problems.is_empty()).then(|| problems.join("; ")),
            routes: self.http.route_stats(),
            ports: self.shared.port_stats(),
        };
        reports.send(&report.fit());
    }

    /// No section: listen on nothing; what is in flight drains.
    fn clear(&mut self) {
        let actions = diff::close_all(&self.observed);
        let had = self.observed.served.is_some();
        let empty = IngressSection::default();
        self.apply(&empty, actions);
        if had {
            self.serve(&IngressSection {
                settings: self
                    .observed
                    .served
                    .as_ref()
                    .map(|s| s.settings.clone())
                    .unwrap_or_default(),
                ..empty
            });
            self.observed.served = None;
            info!("The plan has no ingress section: the proxy stopped.");
        }
        self.errors.clear();
    }
}

/// A TCP listener with `SO_REUSEADDR` (a restarted agent binds again while
/// old connections linger in TIME_WAIT).
fn tcp_listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
