//! TLS on the HTTPS port: the certificate is chosen by SNI (the exact
//! name, then the wildcard of its parent); a name with none is refused
//! in the handshake.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The certificates by name.
#[derive(Debug, Default)]
struct Certs {
    /// Exact names and `*.suffix` wildcards.
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

/// Chooses a certificate by SNI; swapped whole at each update.
#[derive(Debug, Default)]
pub(super) struct Resolver {
    certs: RwLock<Arc<Certs>>,
}

impl Resolver {
    /// Replaces every certificate; a name listed twice keeps the first.
    pub fn replace(&self, certs: Vec<(Vec<String>, Arc<CertifiedKey>)>) {
        let mut by_name = HashMap::new();
        for (names, key) in certs {
            for n in names {
                by_name
                    .entry(n.to_ascii_lowercase())
                    .or_insert_with(|| key.clone());
            }
        }
        let next = Arc::new(Certs { by_name });
        match self.certs.write() {
            Ok(mut c) => *c = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }

    /// The certificate for `name` (lower case): its own, else its parent's
    /// wildcard.
    pub fn find(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let certs = match self.certs.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if let Some(k) = certs.by_name.get(name) {
            return Some(k.clone());
        }
        let (_, parent) = name.split_once('.')?;
        certs.by_name.get(&format!("*.{parent}")).cloned()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello
            .server_name()?
            .trim_end_matches('.')
            .to_ascii_lowercase();
        self.find(&name)
    }
}

/// The HTTPS port's configuration: TLS 1.2 and 1.3 (ring), ALPN h2 then
/// http/1.1, certificates from `resolver`.
pub(super) fn server_config(
    resolver: Arc<Resolver>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
