//! ACME (RFC 8555): for every wanted domain that no valid certificate
//! covers with more than a third of its life left, the task orders a
//! certificate from the configured directory and proves the domain. By
//! HTTP-01: it publishes the challenge for every edge host to answer and
//! waits until each connected edge host says it answers it. A wildcard,
//! with `[acme.dns01]`, by DNS-01: it adds the TXT record to the zone by
//! a signed dynamic update ([`super::dns01`]) and waits until the zone's
//! primary serves it. Then it tells the CA, withdraws the challenge once
//! the order is validated, and stores the issued chain with a fresh key.
//! Renewal is the same path. A failing domain is retried with backoff;
//! each streak of failures is logged once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountBuilder, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier,
    NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use skiff_api_types::EventKind;
use skiff_shared::tasks::TaskTree;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::dns01::{Dns01Error, Dns01Settings, TxtRecords};
use super::{BookError, CertBook, check};
use crate::now_ms;
use crate::store::{CertSource, StoreError};

/// How often wanted domains are looked at again with nothing else
/// happening (renewals come due with time).
const RECHECK: Duration = Duration::from_secs(3600);
/// How often the wait for edge hosts looks at the connected hosts again.
const HOSTS_RECHECK: Duration = Duration::from_secs(1);

/// How the coordinator uses ACME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// The directory URL (`https://`).
    pub directory: String,
    /// The account's contact email.
    pub email: Option<String>,
    /// A PEM CA certificate to trust for the directory (a test CA such as
    /// pebble); the system's roots otherwise.
    pub ca_bundle: Option<PathBuf>,
    /// How long every connected edge host has to answer a challenge.
    pub challenge_wait: Duration,
    /// How long the CA has to validate an order, then to issue it.
    pub order_timeout: Duration,
    /// The longest one attempt at a certificate may take, every step
    /// included (the ACME client has no deadlines of its own).
    pub attempt_timeout: Duration,
    /// The first retry's delay after a failed order; it doubles with each
    /// further failure, up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// DNS-01 for wildcard domains (`[acme.dns01]`); without it they are
    /// left to uploads.
    pub dns01: Option<Dns01Settings>,
}

impl AcmeSettings {
    /// The defaults for a directory.
    pub fn new(directory: impl Into<String>) -> Self {
        Self {
            directory: directory.into(),
            email: None,
            ca_bundle: None,
            challenge_wait: Duration::from_secs(120),
            order_timeout: Duration::from_secs(120),
            // The challenge wait, the validation and the issuance, and
            // room for the requests between them.
            attempt_timeout: Duration::from_secs(600),
            retry_base: Duration::from_secs(60),
            retry_max: Duration::from_secs(6 * 3600),
            dns01: None,
        }
    }

    /// The delay before the next try after `failures` failures in a row.
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.retry_base.saturating_mul(factor).min(self.retry_max)
    }
}

/// Why obtaining a certificate failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("the ACME directory failed: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("{0}")]
    Book(#[from] BookError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the stored ACME account cannot be read: {0}")]
    Account(String),
    #[error("the CA offered no HTTP-01 challenge for {0}")]
    NoHttp01(String),
    #[error("the CA offered no DNS-01 challenge for {0}")]
    NoDns01(String),
    #[error("DNS-01: {0}")]
    Dns01(#[from] Dns01Error),
    #[error("the CA's authorization for {domain} is {status}")]
    Authorization { domain: String, status: String },
    #[error(
        "no edge host is connected to answer the challenge: connect a host that is not labelled edge=false"
    )]
    NoEdgeHost,
    #[error(
        "{0} edge host(s) did not say they answer the challenge in time: check that their agents run and serve HTTP"
    )]
    NotAnswered(usize),
    #[error("the CA refused the order: {0}")]
    Invalid(String),
    #[error("cannot make the certificate's key or request: {0}")]
    Key(#[from] rcgen::Error),
    #[error("the ACME directory did not complete the order within {}", humantime::format_duration(*.0))]
    Stalled(Duration),
    #[error("the CA's certificate was refused: {0}")]
    Issued(super::CertError),
}

/// A domain's failures in a row, and when to try again.
#[derive(Debug)]
struct Streak {
    failures: u32,
    retry_at: Instant,
}

/// The ACME task: runs until `tree` is cancelled.
pub(super) async fn run(book: Arc<CertBook>, settings: AcmeSettings, tree: TaskTree) {
    let mut wake = book.wake.subscribe();
    let mut account: Option<Account> = None;
    let mut streaks: BTreeMap<String, Streak> = BTreeMap::new();
    let mut told_wildcards = std::collections::BTreeSet::new();
    info!(directory = %settings.directory, "ACME on: certificates are obtained for the domains of routes.");
    loop {
        wake.borrow_and_update();
        let mut next = Instant::now() + RECHECK;
        if settings.dns01.is_none() {
            tell_wildcards(&book, &mut told_wildcards);
        }
        let due = book.due(now_ms());
        streaks.retain(|d, _| due.contains(d));
        // An admin asked for these now: a failure streak's backoff (up
        // to hours) does not hold them back.
        for domain in book.take_asked() {
            if let Some(s) = streaks.get_mut(&domain) {
                s.retry_at = Instant::now();
            }
        }
        for domain in due {
            if let Some(s) = streaks.get(&domain)
                && s.retry_at > Instant::now()
            {
                next = next.min(s.retry_at);
                continue;
            }
            // The ACME client has no deadlines of its own: a stalled
            // directory must not stall every later order.
            let attempt = tokio::time::timeout(
                settings.attempt_timeout,
                obtain(&book, &settings, &mut account, &domain),
            );
            let outcome = tokio::select! {
                () = tree.cancelled() => return,
                r = attempt => r.unwrap_or(Err(AcmeError::Stalled(settings.attempt_timeout))),
            };
            match outcome {
                Ok(row) => {
                    if let Some(s) = streaks.remove(&domain) {
                        info!(domain = %domain, id = %row.id, failures = s.failures, "A certificate was obtained after failures.");
                    }
                }
                Err(error) => {
                    // A new account next time: the failure may be its.
                    account = None;
                    let s = streaks.entry(domain.clone()).or_insert(Streak {
                        failures: 0,
                        retry_at: Instant::now(),
                    });
                    s.failures += 1;
                    let delay = settings.backoff(s.failures);
                    s.retry_at = Instant::now() + delay;
                    next = next.min(s.retry_at);
                    if s.failures == 1 {
                        warn!(domain = %domain, error = %error, retry_in = ?delay, "Obtaining a certificate failed; retrying with backoff.");
                    } else {
                        debug!(domain = %domain, error = %error, failures = s.failures, "Obtaining a certificate failed again.");
                    }
                    book.events.emit(
                        EventKind::Certificate,
                        None,
                        None,
                        format!(
                            "Obtaining a certificate for {domain} failed ({} in a row; next try in {}): {error}",
                            s.failures,
                            humantime::format_duration(delay)
                        ),
                    );
                }
            }
        }
        tokio::select! {
            () = tree.cancelled() => return,
            changed = wake.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(next) => {}
        }
    }
}

/// Says once per domain (per run) that a wanted wildcard no certificate
/// covers must be uploaded: HTTP-01 cannot prove a wildcard (only
/// called without DNS-01).
fn tell_wildcards(book: &CertBook, told: &mut std::collections::BTreeSet<String>) {
    for domain in book.uncovered() {
        if domain.starts_with("*.") && told.insert(domain.clone()) {
            warn!(domain = %domain, "A route's wildcard domain has no certificate; ACME's HTTP-01 cannot obtain one: upload it, or configure [acme.dns01].");
            book.events.emit(
                EventKind::Certificate,
                None,
                None,
                format!(
                    "No certificate covers {domain}, and ACME cannot obtain a wildcard by HTTP-01: add one with `skiff cert add`, or configure [acme.dns01]."
                ),
            );
        }
    }
}

pub(super) fn builder(settings: &AcmeSettings) -> Result<AccountBuilder, AcmeError> {
    Ok(match &settings.ca_bundle {
        Some(path) => Account::builder_with_root(path)?,
        None => Account::builder()?,
    })
}

/// The context the account's credentials are sealed under.
fn account_context(directory: &str) -> String {
    format!("acme-account/{directory}")
}

/// The stored account on the directory, or a new one (stored sealed).
async fn load_account(book: &CertBook, settings: &AcmeSettings) -> Result<Account, AcmeError> {
    let context = account_context(&settings.directory);
    if let Some(sealed) = book.store.acme_account(&settings.directory).await? {
        let plain = book
            .key
            .open(&context, &sealed)
            .map_err(|e| AcmeError::Account(e.to_string()))?;
        let credentials: AccountCredentials =
            serde_json::from_slice(&plain).map_err(|e| AcmeError::Account(e.to_string()))?;
        return Ok(builder(settings)?.from_credentials(credentials).await?);
    }
    let contact = settings.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder(settings)?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await?;
    let json = serde_json::to_vec(&credentials).map_err(|e| AcmeError::Account(e.to_string()))?;
    let sealed = book.key.seal(&context, &json).map_err(BookError::from)?;
    book.store
        .put_acme_account(&settings.directory, &sealed, now_ms())
        .await?;
    info!(directory = %settings.directory, "ACME account created.");
    Ok(account)
}

/// Withdraws the challenges it holds when dropped, whatever the outcome.
struct Published<'a> {
    book: &'a CertBook,
    tokens: Vec<String>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.book.drop_challenge(t);
        }
    }
}

/// Obtains and stores a certificate for `domain`.
async fn obtain(
    book: &CertBook,
    settings: &AcmeSettings,
    account: &mut Option<Account>,
    domain: &str,
) -> Result<crate::store::CertRow, AcmeError> {
    let acct = match account {
        Some(a) => a.clone(),
        None => {
            let a = load_account(book, settings).await?;
            *account = Some(a.clone());
            a
        }
    };
    let identifiers = [Identifier::Dns(domain.to_owned())];
    let mut order = acct.new_order(&NewOrder::new(&identifiers)).await?;
    let mut published = Published {
        book,
        tokens: Vec::new(),
    };
    // DNS-01 proves wildcards; everything else keeps HTTP-01.
    let dns01 = settings.dns01.as_ref().filter(|_| domain.starts_with("*."));
    let mut records = dns01.map(|s| TxtRecords::new(s.clone()));
    {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Authorization {
                        domain: domain.to_owned(),
                        status: format!("{other:?}").to_lowercase(),
                    });
                }
            }
            if let Some(records) = &mut records {
                let mut challenge = authz
                    .challenge(ChallengeType::Dns01)
                    .ok_or_else(|| AcmeError::NoDns01(domain.to_owned()))?;
                let value = challenge.key_authorization().dns_value();
                records.add(domain, &value).await?;
                challenge.set_ready().await?;
                continue;
            }
            let mut challenge = authz
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| AcmeError::NoHttp01(domain.to_owned()))?;
            let token = challenge.token.clone();
            book.publish_challenge(&token, challenge.key_authorization().as_str());
            published.tokens.push(token.clone());
            wait_answered(book, &token, settings.challenge_wait).await?;
            challenge.set_ready().await?;
        }
    }
    let retry = RetryPolicy::new().timeout(settings.order_timeout);
    let status = order.poll_ready(&retry).await;
    // Validated or failed: the challenges are no longer needed.
    if let Some(records) = &mut records {
        records.remove_all().await;
    }
    drop(published);
    if status? != OrderStatus::Ready {
        return Err(AcmeError::Invalid(order_problem(&mut order).await));
    }
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    order.finalize_csr(csr.der()).await?;
    let chain = order.poll_certificate(&retry).await?;
    let checked = check(&chain, &key.serialize_pem(), now_ms()).map_err(AcmeError::Issued)?;
    let row = book.insert(checked, CertSource::Acme).await?;
    {
        // A renewal asked while this order ran (not yet taken by the
        // task) gets an order of its own: its forcing stays.
        let mut state = book.lock();
        if !state.asked.contains(domain) {
            state.forced.remove(domain);
        }
    }
    info!(domain = %domain, id = %row.id, "Certificate obtained by ACME.");
    book.events.emit(
        EventKind::Certificate,
        None,
        None,
        format!(
            "Certificate {} for {} obtained from the ACME directory.",
            row.id,
            row.domains.join(", ")
        ),
    );
    retire_replaced(book, &row).await;
    Ok(row)
}

/// What the CA said is wrong with an invalid order.
async fn order_problem(order: &mut instant_acme::Order) -> String {
    let mut found = Vec::new();
    if let Some(p) = &order.state().error {
        found.push(p.to_string());
    }
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        for c in &authz.challenges {
            if let Some(p) = &c.error {
                found.push(p.to_string());
            }
        }
    }
    if found.is_empty() {
        "the order became invalid".into()
    } else {
        found.join("; ")
    }
}

/// Forgets the older ACME certificates whose domains the new one covers.
async fn retire_replaced(book: &CertBook, new: &crate::store::CertRow) {
    let old: Vec<String> = book
        .list()
        .into_iter()
        .filter(|c| c.id != new.id && c.source == CertSource::Acme)
        .filter(|c| c.domains.iter().all(|d| new.domains.contains(d)))
        .map(|c| c.id)
        .collect();
    for id in old {
        if let Err(error) = book.remove(&id).await {
            warn!(id = %id, error = %error, "A replaced certificate could not be removed.");
        }
    }
}

/// Waits until every connected edge host says it answers `token`.
pub(super) async fn wait_answered(
    book: &CertBook,
    token: &str,
    wait: Duration,
) -> Result<(), AcmeError> {
    let mut wake = book.wake.subscribe();
    let deadline = Instant::now() + wait;
    loop {
        wake.borrow_and_update();
        let hosts = book.edge_hosts().await?;
        let missing = book.not_answering(&hosts, token);
        if !hosts.is_empty() && missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(match hosts.is_empty() {
                true => AcmeError::NoEdgeHost,
                false => AcmeError::NotAnswered(missing.len()),
            });
        }
        // Hosts connect and leave without waking the book: look again
        // now and then.
        let next = deadline.min(Instant::now() + HOSTS_RECHECK);
        tokio::select! {
            _ = wake.changed() => {}
            () = tokio::time::sleep_until(next) => {}
        }
    }
}
