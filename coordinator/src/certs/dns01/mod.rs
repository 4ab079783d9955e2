//! ACME DNS-01 (RFC 8555 §8.4) through RFC 2136 dynamic updates signed
//! with TSIG: the way wildcard certificates are proved. For each
//! authorization the ACME task adds `_acme-challenge.<name>. 60 TXT
//! "<digest>"` to the configured zone on its primary, waits until that
//! server answers the record, tells the CA, and deletes the record once
//! the order is validated (or failed, or abandoned).
//!
//! Layout: [`settings`] reads and checks `[acme.dns01]`; [`rfc2136`]
//! builds, signs, sends and checks the messages. This module does not
//! know ACME: it is handed names and values.

use std::time::Duration;

use hickory_proto::rr::Name;
use tokio::time::Instant;
use tracing::{debug, warn};

pub mod rfc2136;
pub mod settings;

pub use rfc2136::Dns01Error;
pub use settings::{Dns01Config, Dns01Settings, TsigSecret};

#[cfg(test)]
mod tests;

/// How often the server is asked again for a record it does not serve
/// yet.
const VISIBLE_RECHECK: Duration = Duration::from_millis(500);

/// The challenge records one order added; deletes them when
/// [`TxtRecords::remove_all`] runs, or (in a spawned task) when dropped
/// with records left, so an attempt cut by its deadline cleans up too.
#[derive(Debug)]
pub struct TxtRecords {
    settings: Dns01Settings,
    added: Vec<(Name, String)>,
}

impl TxtRecords {
    pub fn new(settings: Dns01Settings) -> Self {
        Self {
            settings,
            added: Vec::new(),
        }
    }

    /// Adds the challenge record for `domain` with `value`, then waits
    /// until the server answers it.
    ///
    /// # Errors
    /// [`Dns01Error`]: the name is outside the zone, the server cannot be
    /// reached, refuses the update, or does not serve the record in time.
    pub async fn add(&mut self, domain: &str, value: &str) -> Result<(), Dns01Error> {
        let name = rfc2136::challenge_name(&self.settings, domain)?;
        rfc2136::update(
            &self.settings,
            rfc2136::add_message(&self.settings, &name, value),
        )
        .await?;
        self.added.push((name.clone(), value.to_owned()));
        debug!(name = %name, "DNS-01 challenge record added.");
        wait_served(&self.settings, &name, value).await
    }

    /// Deletes every record added; a failure is logged (the record is
    /// harmless, and the next order adds its own).
    pub async fn remove_all(&mut self) {
        for (name, value) in std::mem::take(&mut self.added) {
            remove(&self.settings, &name, &value).await;
        }
    }
}

impl Drop for TxtRecords {
    fn drop(&mut self) {
        if self.added.is_empty() {
            return;
        }
        let (settings, added) = (self.settings.clone(), std::mem::take(&mut self.added));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for (name, value) in added {
                    remove(&settings, &name, &value).await;
                }
            });
        }
    }
}

async fn remove(settings: &Dns01Settings, name: &Name, value: &str) {
    let message = rfc2136::delete_message(settings, name, value);
    match rfc2136::update(settings, message).await {
        Ok(()) => debug!(name = %name, "DNS-01 challenge record deleted."),
        Err(error) => {
            warn!(name = %name, error = %error, "A DNS-01 challenge record could not be deleted; delete it by hand.");
        }
    }
}

/// Waits until the server answers `name TXT` with `value`, up to the
/// propagation timeout.
async fn wait_served(settings: &Dns01Settings, name: &Name, value: &str) -> Result<(), Dns01Error> {
    let deadline = Instant::now() + settings.propagation_timeout;
    loop {
        let last = match rfc2136::serves_txt(settings, name, value).await {
            Ok(true) => return Ok(()),
            Ok(false) => None,
            Err(e) => Some(e),
        };
        if Instant::now() + VISIBLE_RECHECK > deadline {
            return Err(last.unwrap_or(Dns01Error::NotVisible {
                server: settings.server.clone(),
                name: rfc2136::shown(name),
                zone: rfc2136::shown(&settings.zone),
                wait: settings.propagation_timeout,
            }));
        }
        tokio::time::sleep(VISIBLE_RECHECK).await;
    }
}
