//! TLS certificates for HTTP routes: uploaded by an admin or obtained by
//! ACME, stored with their private keys sealed (as stack secrets are),
//! and handed to the `ingress` section, which serves the right one for
//! each domain on every edge host.
//!
//! [`CertBook`] is the handle: built once at start, it keeps the stored
//! certificates (without keys) in memory, the domains routes want
//! certificates for ([`CertBook::want`]), the ACME HTTP-01 challenges in
//! flight and which edge host answers which. The ingress section reads
//! [`CertBook::refs`], [`CertBook::materials`] and
//! [`CertBook::challenges`], and re-plans on [`CertBook::changed`].
//!
//! Layout: [`validate`] checks a chain and its key; [`acme`] obtains and
//! renews certificates; the maintenance task here warns of certificates
//! close to expiry and fires [`CertBook::changed`] when one becomes valid
//! or expires. The book never logs a key.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use skiff_api_types::EventKind;
use skiff_shared::sections::SectionKind as _;
use skiff_shared::sections::ingress::{
    CertificateMaterial, CertificateRef, Challenge, Ingress, domain_matches,
};
use skiff_shared::tasks::TaskTree;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::events::EventLog;
use crate::now_ms;
use crate::secrets::{SecretError, SecretKey};
use crate::sessions::Sessions;
use crate::store::{CertRow, CertSource, Store, StoreError};

pub mod acme;
pub mod dns01;
mod validate;

pub use acme::AcmeSettings;
pub use validate::{CertError, Checked, check};

#[cfg(test)]
mod dns01_tests;
#[cfg(test)]
mod pebble_tests;
#[cfg(test)]
pub(crate) mod tests;

/// A certificate this close to its expiry gets a warning event.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);
/// How often certificates are checked for their expiry.
const EXPIRY_CHECK: Duration = Duration::from_secs(3600);
/// How often the served set is checked against the clock (a certificate
/// becoming valid or expiring changes it without any other event).
const VALIDITY_CHECK: Duration = Duration::from_secs(60);

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BookError {
    #[error("{0}")]
    Invalid(#[from] CertError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Seal(#[from] SecretError),
}

/// Why a renewal cannot be asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenewError {
    #[error(
        "ACME is not configured on this coordinator: set [acme] directory in its config file, or upload a renewed certificate with `skiff cert add`"
    )]
    AcmeOff,
    #[error("{0}")]
    Invalid(String),
    #[error(
        "{0} is a wildcard, which ACME's HTTP-01 cannot prove: configure [acme.dns01] on the coordinator, or upload a renewed certificate with `skiff cert add`"
    )]
    Wildcard(String),
    #[error("no route with TLS wants a certificate for {domain} (routes with TLS: {}): deploy a route for it first, or check the spelling", list_or_none(.wanted))]
    NotWanted { domain: String, wanted: Vec<String> },
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// The context a certificate's private key is sealed under.
fn key_context(id: &str) -> String {
    format!("certificate/{id}")
}

/// What the book holds in memory.
#[derive(Debug, Default)]
struct State {
    /// Every stored certificate, oldest first.
    certs: Vec<CertRow>,
    /// The domains of routes with TLS.
    wanted: BTreeSet<String>,
    /// Domains whose certificate is renewed at once, valid or not.
    forced: BTreeSet<String>,
    /// Domains a renewal was asked for since the ACME task last looked:
    /// tried at once, whatever their failures' backoff.
    asked: BTreeSet<String>,
    /// ACME challenges in flight: token to key authorization.
    challenges: BTreeMap<String, String>,
    /// The challenge tokens each edge host last said it answers.
    answered: HashMap<String, BTreeSet<String>>,
}

/// The certificates handle (see the module's doc).
pub struct CertBook {
    store: Arc<dyn Store>,
    key: Arc<SecretKey>,
    sessions: Arc<Sessions>,
    events: Arc<EventLog>,
    acme: Option<AcmeSettings>,
    state: Mutex<State>,
    /// Fired when what the ingress section reads changes.
    changed: watch::Sender<u64>,
    /// Fired when the ACME task may have something new to do: wanted
    /// domains, a forced renewal, an edge host's answered challenges.
    wake: watch::Sender<u64>,
}

impl std::fmt::Debug for CertBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertBook")
            .field("acme", &self.acme)
            .finish_non_exhaustive()
    }
}

impl CertBook {
    /// The book with the stored certificates; ACME obtains certificates
    /// when `acme` is given (once [`CertBook::spawn`] runs its task).
    ///
    /// # Errors
    /// When the store fails.
    pub async fn open(
        store: Arc<dyn Store>,
        key: Arc<SecretKey>,
        sessions: Arc<Sessions>,
        events: Arc<EventLog>,
        acme: Option<AcmeSettings>,
    ) -> Result<Self, StoreError> {
        let certs = store.certificates().await?;
        Ok(Self {
            store,
            key,
            sessions,
            events,
            acme,
            state: Mutex::new(State {
                certs,
                ..State::default()
            }),
            changed: watch::Sender::new(0),
            wake: watch::Sender::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is a single assignment or insert: a panic cannot
        // leave the state half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fire_changed(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn fire_wake(&self) {
        self.wake.send_modify(|n| *n += 1);
    }

    /// Whether ACME is configured.
    pub fn acme_enabled(&self) -> bool {
        self.acme.is_some()
    }

    /// Checks and stores an uploaded certificate; nothing is stored when
    /// a check fails.
    ///
    /// # Errors
    /// [`BookError::Invalid`] with the problem and its fix; store or
    /// sealing failures.
    pub async fn add(&self, chain_pem: &str, key_pem: &str) -> Result<CertRow, BookError> {
        let checked = check(chain_pem, key_pem, now_ms())?;
        let row = self.insert(checked, CertSource::Upload).await?;
        info!(id = %row.id, domains = ?row.domains, "Certificate uploaded.");
        self.events.emit(
            EventKind::Certificate,
            None,
            None,
            format!(
                "Certificate {} for {} uploaded.",
                row.id,
                row.domains.join(", ")
            ),
        );
        Ok(row)
    }

    /// Stores a checked certificate with its key sealed.
    async fn insert(&self, checked: Checked, source: CertSource) -> Result<CertRow, BookError> {
        let id = hex::encode(skiff_shared::random_bytes::<8>().map_err(|_| SecretError::Random)?);
        let sealed = self
            .key
            .seal(&key_context(&id), checked.key_pem.as_bytes())?;
        let row = CertRow {
            id,
            domains: checked.domains,
            chain_pem: checked.chain_pem,
            issuer: checked.issuer,
            not_before: checked.not_before,
            not_after: checked.not_after,
            source,
            created_at: now_ms(),
        };
        self.store.insert_certificate(&row, &sealed).await?;
        self.lock().certs.push(row.clone());
        self.fire_changed();
        self.fire_wake();
        Ok(row)
    }

    /// Every stored certificate, oldest first.
    pub fn list(&self) -> Vec<CertRow> {
        self.lock().certs.clone()
    }

    /// Forgets a certificate and its key; the removed one, if any.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn remove(&self, id: &str) -> Result<Option<CertRow>, BookError> {
        if !self.store.remove_certificate(id).await? {
            return Ok(None);
        }
        let removed = {
            let mut state = self.lock();
            let at = state.certs.iter().position(|c| c.id == id);
            at.map(|i| state.certs.remove(i))
        };
        if let Some(row) = &removed {
            info!(id = %row.id, domains = ?row.domains, "Certificate removed.");
            self.events.emit(
                EventKind::Certificate,
                None,
                None,
                format!(
                    "Certificate {} for {} removed.",
                    row.id,
                    row.domains.join(", ")
                ),
            );
        }
        self.fire_changed();
        self.fire_wake();
        Ok(removed)
    }

    /// The ids of the certificates served now.
    pub fn served(&self) -> BTreeSet<String> {
        self.refs().into_iter().map(|r| r.id).collect()
    }

    /// The certificates edge hosts serve: for each domain, the newest
    /// certificate valid now. Each ref lists the domains it is served
    /// for, so that a host never has two for one name.
    pub fn refs(&self) -> Vec<CertificateRef> {
        serving(&self.lock().certs, now_ms())
    }

    /// The chains and keys of [`Self::refs`], unsealed: only for
    /// deliveries to edge hosts. A key that cannot be opened is left out
    /// (with a warning): its certificate cannot be served.
    pub async fn materials(&self) -> Vec<CertificateMaterial> {
        let refs = self.refs();
        let chains: HashMap<String, String> = self
            .lock()
            .certs
            .iter()
            .map(|c| (c.id.clone(), c.chain_pem.clone()))
            .collect();
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            let Some(chain_pem) = chains.get(&r.id) else {
                continue;
            };
            let sealed = match self.store.sealed_certificate_key(&r.id).await {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(error) => {
                    warn!(id = %r.id, error = %error, "A certificate's key cannot be read; it is not delivered.");
                    continue;
                }
            };
            match self.key.open(&key_context(&r.id), &sealed) {
                Ok(plain) => match String::from_utf8(plain) {
                    Ok(key_pem) => out.push(CertificateMaterial {
                        id: r.id,
                        chain_pem: chain_pem.clone(),
                        key_pem,
                    }),
                    Err(_) => {
                        warn!(id = %r.id, "A certificate's stored key is not PEM; add the certificate again.");
                    }
                },
                Err(error) => {
                    warn!(id = %r.id, error = %error, "A certificate's key cannot be opened; add the certificate again.");
                }
            }
        }
        out
    }

    /// The ACME HTTP-01 challenges every edge host must answer now.
    pub fn challenges(&self) -> Vec<Challenge> {
        self.lock()
            .challenges
            .iter()
            .map(|(token, key_authorization)| Challenge {
                token: token.clone(),
                key_authorization: key_authorization.clone(),
            })
            .collect()
    }

    /// Fired when [`Self::refs`], [`Self::materials`] or
    /// [`Self::challenges`] change: every host's plan is built again.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// An edge host's ingress report: the challenge tokens it answers.
    pub fn report_challenges(&self, node_id: &str, tokens: &[String]) {
        let tokens: BTreeSet<String> = tokens.iter().cloned().collect();
        let mut state = self.lock();
        if state.answered.get(node_id) == Some(&tokens) {
            return;
        }
        state.answered.insert(node_id.to_owned(), tokens);
        drop(state);
        self.fire_wake();
    }

    /// The domains of routes with TLS: ACME obtains a certificate for
    /// each that no valid certificate covers. Replaces the set before.
    pub fn want(&self, domains: BTreeSet<String>) {
        let mut state = self.lock();
        if state.wanted == domains {
            return;
        }
        state.wanted = domains;
        drop(state);
        self.fire_wake();
    }

    /// The domains routes want certificates for.
    pub fn wanted(&self) -> BTreeSet<String> {
        self.lock().wanted.clone()
    }

    /// The wanted domains no certificate valid now covers (HTTPS for
    /// them fails until one is uploaded or obtained).
    pub fn uncovered(&self) -> Vec<String> {
        let state = self.lock();
        let now = now_ms();
        state
            .wanted
            .iter()
            .filter(|d| {
                !state.certs.iter().any(|c| {
                    valid_at(c, now) && c.domains.iter().any(|n| n == *d || domain_matches(n, d))
                })
            })
            .cloned()
            .collect()
    }

    /// Has ACME obtain a new certificate for `domain` now, even though a
    /// valid one covers it. The domain is lowered and must be one a route
    /// with TLS wants; returns the ids of the certificates serving it now
    /// (the new one replaces them once issued).
    ///
    /// # Errors
    /// [`RenewError`] when ACME is off, the domain is not a valid name or
    /// a wildcard without DNS-01, or no route wants it.
    pub fn renew(&self, domain: &str) -> Result<Vec<String>, RenewError> {
        if self.acme.is_none() {
            return Err(RenewError::AcmeOff);
        }
        let domain = domain.trim().to_ascii_lowercase();
        skiff_shared::sections::ingress::check_domain(&domain)
            .map_err(|e| RenewError::Invalid(e.to_string()))?;
        if domain.starts_with("*.") && !self.proves_wildcards() {
            return Err(RenewError::Wildcard(domain));
        }
        let mut state = self.lock();
        if !state.wanted.contains(&domain) {
            let wanted: Vec<String> = state.wanted.iter().cloned().collect();
            return Err(RenewError::NotWanted { domain, wanted });
        }
        state.forced.insert(domain.clone());
        state.asked.insert(domain.clone());
        drop(state);
        self.fire_wake();
        info!(domain = %domain, "Certificate renewal asked for.");
        Ok(self
            .refs()
            .into_iter()
            .filter(|r| r.domains.contains(&domain))
            .map(|r| r.id)
            .collect())
    }

    /// Whether ACME obtains wildcard certificates (by DNS-01).
    fn proves_wildcards(&self) -> bool {
        self.acme.as_ref().is_some_and(|a| a.dns01.is_some())
    }

    /// The domains a renewal was asked for since the last call.
    fn take_asked(&self) -> BTreeSet<String> {
        std::mem::take(&mut self.lock().asked)
    }

    /// Publishes a challenge for every edge host to answer.
    fn publish_challenge(&self, token: &str, key_authorization: &str) {
        self.lock()
            .challenges
            .insert(token.to_owned(), key_authorization.to_owned());
        self.fire_changed();
    }

    /// Withdraws a challenge.
    fn drop_challenge(&self, token: &str) {
        if self.lock().challenges.remove(token).is_some() {
            self.fire_changed();
        }
    }

    /// The connected edge hosts: nodes whose agent runs the ingress
    /// section, except those labelled `edge=false`.
    async fn edge_hosts(&self) -> Result<Vec<String>, StoreError> {
        let connected = self.sessions.with_capability(Ingress::CAPABILITY);
        if connected.is_empty() {
            return Ok(connected);
        }
        let not_edge: BTreeSet<String> = self
            .store
            .nodes(false)
            .await?
            .into_iter()
            .filter(|n| n.labels.get("edge").is_some_and(|v| v == "false"))
            .map(|n| n.id)
            .collect();
        Ok(connected
            .into_iter()
            .filter(|id| !not_edge.contains(id))
            .collect())
    }

    /// The edge hosts among `hosts` that do not answer `token` yet.
    fn not_answering(&self, hosts: &[String], token: &str) -> Vec<String> {
        let state = self.lock();
        hosts
            .iter()
            .filter(|h| !state.answered.get(*h).is_some_and(|t| t.contains(token)))
            .cloned()
            .collect()
    }

    /// The wanted domains ACME should obtain a certificate for at `now`:
    /// not covered by a valid certificate with more than a third of its
    /// life left, or forced. Wildcards are left out without DNS-01
    /// (HTTP-01 cannot prove them).
    fn due(&self, now: i64) -> Vec<String> {
        let dns01 = self.proves_wildcards();
        let state = self.lock();
        state
            .wanted
            .iter()
            .filter(|d| dns01 || !d.starts_with("*."))
            .filter(|d| state.forced.contains(*d) || !fresh_cover(&state.certs, d, now))
            .cloned()
            .collect()
    }

    /// Runs the book's tasks on `tree`: the maintenance task, and the
    /// ACME task when ACME is configured.
    pub fn spawn(self: &Arc<Self>, tree: &TaskTree) {
        tree.spawn("certificates", maintain(self.clone(), tree.clone()));
        if let Some(settings) = self.acme.clone() {
            tree.spawn("acme", acme::run(self.clone(), settings, tree.clone()));
        }
    }

    /// Emits a warning event for every served certificate within
    /// [`EXPIRY_WARNING`] of its expiry not warned of yet; returns the
    /// ids warned of now.
    fn warn_expiring(&self, warned: &mut BTreeSet<String>, now: i64) -> Vec<String> {
        let served = self.served();
        let soon: Vec<CertRow> = self
            .lock()
            .certs
            .iter()
            .filter(|c| served.contains(&c.id))
            .filter(|c| c.not_after - now < millis(EXPIRY_WARNING))
            .filter(|c| !warned.contains(&c.id))
            .cloned()
            .collect();
        for c in &soon {
            let when = crate::api::rfc3339_ms(c.not_after);
            warn!(id = %c.id, domains = ?c.domains, not_after = %when, "A certificate expires within 14 days.");
            let fix = match (c.source, self.acme.is_some()) {
                (CertSource::Acme, true) => "ACME has not renewed it: see the certificate events",
                _ => "add a renewed certificate with `skiff cert add`",
            };
            self.events.emit(
                EventKind::Certificate,
                None,
                None,
                format!(
                    "Certificate {} for {} expires at {when}: {fix}.",
                    c.id,
                    c.domains.join(", ")
                ),
            );
            warned.insert(c.id.clone());
        }
        soon.into_iter().map(|c| c.id).collect()
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn valid_at(c: &CertRow, now: i64) -> bool {
    c.not_before <= now && now < c.not_after
}

/// For each domain, the newest certificate valid at `now` (latest
/// `not_before`, then latest stored); one ref per certificate chosen,
/// with the domains it is chosen for.
fn serving(certs: &[CertRow], now: i64) -> Vec<CertificateRef> {
    let mut best: BTreeMap<&str, &CertRow> = BTreeMap::new();
    for c in certs.iter().filter(|c| valid_at(c, now)) {
        for d in &c.domains {
            let newer = best
                .get(d.as_str())
                .is_none_or(|b| (c.not_before, c.created_at) >= (b.not_before, b.created_at));
            if newer {
                best.insert(d, c);
            }
        }
    }
    let mut by_cert: BTreeMap<&str, (&CertRow, Vec<String>)> = BTreeMap::new();
    for (d, c) in best {
        by_cert
            .entry(&c.id)
            .or_insert_with(|| (c, Vec::new()))
            .1
            .push(d.to_owned());
    }
    by_cert
        .into_values()
        .map(|(c, domains)| CertificateRef {
            id: c.id.clone(),
            domains,
            chain_sha256: hex::encode(ring::digest::digest(
                &ring::digest::SHA256,
                c.chain_pem.as_bytes(),
            )),
        })
        .collect()
}

/// Whether a certificate valid at `now` with more than a third of its
/// life left covers `domain` (by name, or by a wildcard).
fn fresh_cover(certs: &[CertRow], domain: &str, now: i64) -> bool {
    certs.iter().any(|c| {
        let life = c.not_after - c.not_before;
        valid_at(c, now)
            && (c.not_after - now) * 3 > life
            && c.domains
                .iter()
                .any(|n| n == domain || domain_matches(n, domain))
    })
}

/// Warns of expiring certificates at start and hourly, and fires
/// [`CertBook::changed`] when the served set changes with time.
async fn maintain(book: Arc<CertBook>, tree: TaskTree) {
    let mut warned = BTreeSet::new();
    let mut served = book.refs();
    let mut validity = tokio::time::interval(VALIDITY_CHECK);
    let mut expiry = tokio::time::interval(EXPIRY_CHECK);
    loop {
        tokio::select! {
            () = tree.cancelled() => break,
            _ = expiry.tick() => {
                book.warn_expiring(&mut warned, now_ms());
            }
            _ = validity.tick() => {
                let now = book.refs();
                if now != served {
                    served = now;
                    book.fire_changed();
                }
            }
        }
    }
}
