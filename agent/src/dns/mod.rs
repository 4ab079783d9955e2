//! The DNS controller (`dns` section): ElasticDNS on this host.
//!
//! The agent runs one DNS server ([`server`]) on port 53 of each address
//! the section lists (its stack networks' gateways, where its containers
//! are told to ask) and on a loopback address for the host itself (agent
//! config `[dns] loopback`). It answers from the section's records with
//! the shared resolver ([`skiff_shared::sections::dns::Records`]) and
//! forwards other names to the host's upstream resolvers ([`forward`]).
//!
//! - [`diff`]: the pure decision (serve a new generation, open and close
//!   listeners).
//! - [`reply`]: a packet in, what it gets out (hickory's codec).
//! - [`limit`]: the per-source token buckets.
//!
//! A new generation is answered from as soon as it is stored in the
//! server, and reported at once (the coordinator waits for every host's
//! report before it stops a replica it unpublished). With the coordinator
//! away, the last records (from the stored plan after a restart) keep
//! being served. A plan without the section closes every listener.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use skiff_shared::sections::dns::{Dns, DnsReport, DnsSection, Records};
use tracing::{info, warn};

use crate::controller::{Context, Pace, Versioned};

pub mod diff;
mod fast;
pub mod forward;
pub mod limit;
pub mod reply;
pub mod server;

#[cfg(test)]
mod controller_tests;
#[cfg(test)]
mod live_tests;

pub use diff::{Action, Observed};
pub use limit::Rate;
pub use server::{Limits, Server};

/// The agent's DNS settings (config `[dns]`).
#[derive(Debug, Clone)]
pub struct DnsOptions {
    /// Where the host itself asks; `None`: no loopback listener.
    pub loopback: Option<SocketAddr>,
    pub limits: Limits,
    /// The upstream resolvers; `None`: the host's `/etc/resolv.conf`.
    pub upstreams: Option<Vec<SocketAddr>>,
    /// The port of the section's addresses (53; tests use another).
    pub port: u16,
}

impl Default for DnsOptions {
    fn default() -> Self {
        Self {
            loopback: Some(SocketAddr::from((
                [127, 0, 0, 1],
                skiff_shared::sections::dns::PORT,
            ))),
            limits: Limits::default(),
            upstreams: None,
            port: skiff_shared::sections::dns::PORT,
        }
    }
}

/// The DNS controller.
#[derive(Debug)]
pub struct Controller {
    options: DnsOptions,
    /// The server once running (tests reach it here).
    server: Mutex<Option<Arc<Server>>>,
}

impl Controller {
    pub fn new(options: DnsOptions) -> Self {
        Self {
            options,
            server: Mutex::default(),
        }
    }

    /// The running server, if started.
    pub fn server(&self) -> Option<Arc<Server>> {
        self.server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl crate::controller::Controller for Controller {
    type Kind = Dns;

    async fn run(self: Arc<Self>, cx: Context<Dns>) {
        let skip: Vec<SocketAddr> = self.options.loopback.into_iter().collect();
        let upstreams = self
            .options
            .upstreams
            .clone()
            .unwrap_or_else(|| forward::system_upstreams(&skip));
        if upstreams.is_empty() {
            warn!(
                "No upstream DNS resolver in /etc/resolv.conf: names outside the cluster will get SERVFAIL."
            );
        }
        let server = Arc::new(Server::new(
            cx.tree.child(),
            self.options.limits,
            forward::Forwarder::new(upstreams),
        ));
        *self.server.lock().unwrap_or_else(PoisonError::into_inner) = Some(server.clone());
        let mut r = Reconciler {
            server,
            observed: Observed::new(self.options.loopback),
            errors: Vec::new(),
        };
        r.observed.port = self.options.port;
        let mut desired = cx.desired;
        let pace = Pace::default();
        loop {
            let current = desired.borrow_and_update().clone();
            let failing = match &current {
                Some(section) => {
                    r.round(section);
                    r.report(&cx.reports);
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
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

struct Reconciler {
    server: Arc<Server>,
    observed: Observed,
    /// The addresses that could not be bound last round, with why.
    errors: Vec<(SocketAddr, String)>,
}

impl Reconciler {
    fn round(&mut self, section: &Versioned<DnsSection>) {
        let actions = diff::diff(&section.value, &self.observed);
        let mut errors = Vec::new();
        for action in actions {
            match action {
                Action::Serve => {
                    let records = Records::new(&section.value)
                        .with_host_addresses(self.observed.loopback.map(|a| a.ip()));
                    self.server.set_records(records);
                    self.observed.generation = Some(section.value.generation);
                    info!(generation = section.value.generation, "DNS records served.");
                }
                Action::Close(addr) => {
                    self.server.close(addr);
                    self.observed.listening.remove(&addr);
                    info!(address = %addr, "DNS server stopped listening.");
                }
                Action::Open(addr) => match self.server.open(addr) {
                    Ok(_) => {
                        self.observed.listening.insert(addr);
                        info!(address = %addr, "DNS server listening.");
                    }
                    Err(error) => {
                        if !self.errors.iter().any(|(a, _)| *a == addr) {
                            warn!(address = %addr, error = %error, "The DNS server cannot listen; retrying.");
                        }
                        errors.push((addr, error.to_string()));
                    }
                },
            }
        }
        self.errors = errors;
    }

    fn report(&self, reports: &crate::controller::Reporter<Dns>) {
        let error = (!self.errors.is_empty()).then(|| {
            self.errors
                .iter()
                .map(|(a, e)| {
                    let fix = if Some(*a) == self.observed.loopback {
                        "stop what holds it, or change [dns] loopback_address or set loopback = false in the agent config"
                    } else {
                        "stop the other program listening on port 53 there"
                    };
                    format!("cannot listen on {a}: {e} ({fix})")
                })
                .collect::<Vec<_>>()
                .join("; ")
        });
        let report = DnsReport {
            generation: self.server.generation(),
            listening: self
                .observed
                .listening
                .iter()
                .filter_map(|a| match a.ip() {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                })
                .collect(),
            error,
            stats: self.server.stats(),
        };
        reports.send(&report.fit());
    }

    /// No section: stop listening and forget the records.
    fn clear(&mut self) {
        for addr in std::mem::take(&mut self.observed.listening) {
            self.server.close(addr);
        }
        if self.observed.generation.take().is_some() {
            self.server.set_records(Records::default());
            info!("The plan has no DNS section: the DNS server stopped.");
        }
        self.errors.clear();
    }
}
