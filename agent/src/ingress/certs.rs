//! The certificates an edge host serves: delivered by the coordinator,
//! kept in `<data_dir>/ingress/certs/<id>.pem` (the chain, then the key;
//! 0600 in a 0700 folder) so that TLS keeps working after a restart with
//! the coordinator away.
//!
//! A delivered certificate serves only while the section lists it with
//! the SHA-256 of its chain, so an old delivery never serves a name the
//! plan gave another certificate. Key material is never logged: errors
//! name the certificate's id only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rustls::sign::CertifiedKey;
use skiff_shared::files;
use skiff_shared::sections::ingress::{CertificatesDelivery, IngressSection};
use tracing::{info, warn};

/// The longest certificate id (it names a file).
const MAX_ID: usize = 128;

/// One stored certificate.
#[derive(Clone)]
struct Stored {
    chain_sha256: String,
    /// Parsed once; the error says why it cannot serve.
    parsed: Result<Arc<CertifiedKey>, String>,
}

/// What the section's certificates give: the ones to serve, their ids, and
/// why the others do not serve.
#[derive(Default)]
pub struct Served {
    pub keys: Vec<(Vec<String>, Arc<CertifiedKey>)>,
    pub ids: Vec<String>,
    pub errors: Vec<String>,
}

/// The delivered certificates, on disk and parsed.
pub struct Store {
    dir: PathBuf,
    stored: Mutex<BTreeMap<String, Stored>>,
    /// Bumped by every delivery that changed something.
    version: Mutex<u64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// The store in `dir`, empty until [`Store::load`].
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            stored: Mutex::default(),
            version: Mutex::new(0),
        }
    }

    /// Where `<data_dir>` keeps them.
    pub fn dir_in(data_dir: &Path) -> PathBuf {
        data_dir.join("ingress").join("certs")
    }

    /// Loads what the last deliveries left on disk.
    pub fn load(&self) {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(error) => {
                warn!(dir = %self.dir.display(), error = %error, "Cannot read the stored certificates; HTTPS waits for the coordinator's.");
                return;
            }
        };
        // Files an older release or an operator left looser are tightened.
        if let Err(error) = files::restrict(&self.dir, 0o700) {
            warn!(dir = %self.dir.display(), error = %error, "Cannot restrict the certificates' folder.");
        }
        let mut stored = BTreeMap::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".pem").filter(|id| check_id(id).is_ok()) else {
                continue;
            };
            if let Err(error) = files::restrict(&entry.path(), files::PRIVATE) {
                warn!(certificate = id, error = %error, "Cannot restrict a stored certificate.");
            }
            match std::fs::read_to_string(entry.path()) {
                Ok(text) => match split(&text) {
                    Some((chain, key)) => {
                        stored.insert(id.to_owned(), parse(id, chain, key));
                    }
                    None => warn!(
                        certificate = id,
                        "A stored certificate has no chain and key; ignored."
                    ),
                },
                Err(error) => {
                    warn!(certificate = id, error = %error, "Cannot read a stored certificate.")
                }
            }
        }
        if !stored.is_empty() {
            info!(
                certificates = stored.len(),
                "Loaded the stored certificates."
            );
        }
        *self.lock() = stored;
        self.bump();
    }

    /// Takes a delivery: writes every certificate, removes the ones no
    /// longer delivered.
    ///
    /// # Errors
    /// An invalid id, or the disk refusing; the error never holds a key.
    pub fn deliver(&self, delivery: &CertificatesDelivery) -> Result<(), String> {
        for c in &delivery.certificates {
            check_id(&c.id)?;
            if c.chain_pem.contains("PRIVATE KEY-----") {
                return Err(format!(
                    "certificate {}: the chain holds a private key; deliver the key apart",
                    c.id
                ));
            }
        }
        files::create_private_dir(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let mut next = BTreeMap::new();
        for c in &delivery.certificates {
            let key = key_block(&c.key_pem)
                .ok_or_else(|| format!("certificate {}: its key is not PEM", c.id))?;
            let path = self.dir.join(format!("{}.pem", c.id));
            let contents = [c.chain_pem.as_bytes(), key.as_bytes()].concat();
            files::write_atomic(&path, &contents, files::PRIVATE)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            next.insert(c.id.clone(), parse(&c.id, &c.chain_pem, key));
        }
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let gone = name
                    .strip_suffix(".pem")
                    .is_some_and(|id| !next.contains_key(id));
                if gone && let Err(error) = std::fs::remove_file(entry.path()) {
                    warn!(file = %name, error = %error, "Cannot remove a certificate no longer delivered.");
                }
            }
        }
        let changed = {
            let mut stored = self.lock();
            let same = stored.len() == next.len()
                && stored
                    .iter()
                    .zip(&next)
                    .all(|((a, x), (b, y))| a == b && x.chain_sha256 == y.chain_sha256);
            *stored = next;
            !same
        };
        if changed {
            self.bump();
        }
        Ok(())
    }

    /// Counts deliveries that changed something (the controller applies
    /// the certificates again when it moves).
    pub fn version(&self) -> u64 {
        *self.version.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The certificates `section` asks for that can serve.
    pub fn served(&self, section: &IngressSection) -> Served {
        let stored = self.lock();
        let mut out = Served::default();
        for r in &section.certificates {
            match stored.get(&r.id) {
                None => out
                    .errors
                    .push(format!("certificate {} has not been delivered", r.id)),
                Some(s) if !s.chain_sha256.eq_ignore_ascii_case(&r.chain_sha256) => {
                    out.errors.push(format!(
                        "certificate {}: the delivered chain is not the one the plan names (waiting for a new delivery)",
                        r.id
                    ));
                }
                Some(Stored { parsed: Err(e), .. }) => out.errors.push(e.clone()),
                Some(Stored {
                    parsed: Ok(key), ..
                }) => {
                    out.keys.push((r.domains.clone(), key.clone()));
                    out.ids.push(r.id.clone());
                }
            }
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Stored>> {
        self.stored.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        *self.version.lock().unwrap_or_else(PoisonError::into_inner) += 1;
    }
}

/// An id names a file: letters, digits, `.`, `_`, `-`, not first a dot.
fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "certificate id {id:?} is invalid: use up to {MAX_ID} letters, digits, '.', '_' or '-', not starting with '.'"
        ))
    }
}

/// The key's PEM block and what follows it, without what comes before
/// (OpenSSL's `Bag Attributes`).
fn key_block(key_pem: &str) -> Option<&str> {
    key_pem.find("-----BEGIN ").map(|i| &key_pem[i..])
}

/// A stored file: the chain as delivered, then the key.
fn split(text: &str) -> Option<(&str, &str)> {
    let mut from = 0;
    while let Some(i) = text[from..].find("-----BEGIN ") {
        let at = from + i;
        let line = text[at..].lines().next().unwrap_or("");
        if line.contains("PRIVATE KEY-----") {
            return Some((&text[..at], &text[at..]));
        }
        from = at + 1;
    }
    None
}

fn parse(id: &str, chain: &str, key: &str) -> Stored {
    let chain_sha256 = hex::encode(skiff_shared::sha256(chain.as_bytes()));
    let parsed = (|| {
        let certs =
            skiff_shared::tls::certs_from_pem(chain, "the chain").map_err(|e| e.to_string())?;
        let key = skiff_shared::tls::key_from_pem(key, "the key").map_err(|e| e.to_string())?;
        let provider = rustls::crypto::ring::default_provider();
        CertifiedKey::from_der(certs, key, &provider)
            .map(Arc::new)
            .map_err(|e| format!("the key does not go with the chain or is unsupported ({e})"))
    })()
    .map_err(|e| format!("certificate {id} cannot serve: {e}"));
    Stored {
        chain_sha256,
        parsed,
    }
}

/// The material of one certificate, for tests.
#[cfg(test)]
pub fn material(
    id: &str,
    chain_pem: String,
    key_pem: String,
) -> skiff_shared::sections::ingress::CertificateMaterial {
    skiff_shared::sections::ingress::CertificateMaterial {
        id: id.into(),
        chain_pem,
        key_pem,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use skiff_shared::sections::ingress::CertificateRef;

    use super::*;

    fn generated(name: &str) -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    fn section_for(refs: &[(&str, &str, &str)]) -> IngressSection {
        IngressSection {
            certificates: refs
                .iter()
                .map(|(id, domain, chain)| CertificateRef {
                    id: (*id).into(),
                    domains: vec![(*domain).into()],
                    chain_sha256: hex::encode(skiff_shared::sha256(chain.as_bytes())),
                })
                .collect(),
            ..IngressSection::default()
        }
    }

    #[test]
    fn delivered_certificates_are_kept_private_reloaded_and_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Store::dir_in(tmp.path());
        let (chain_a, key_a) = generated("a.example.com");
        let (chain_b, key_b) = generated("b.example.com");
        let store = Store::new(dir.clone());
        let delivery = CertificatesDelivery {
            certificates: vec![
                material("a", chain_a.clone(), key_a.clone()),
                material("b", chain_b.clone(), format!("Bag Attributes\n{key_b}")),
            ],
        };
        store.deliver(&delivery).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("a.pem")), 0o600);
        let section = section_for(&[
            ("a", "a.example.com", &chain_a),
            ("b", "b.example.com", &chain_b),
        ]);
        assert_eq!(store.served(&section).ids, vec!["a", "b"]);

        // A restart, the coordinator away: the same certificates serve.
        let again = Store::new(dir.clone());
        again.load();
        let served = again.served(&section);
        assert_eq!(served.ids, vec!["a", "b"], "{:?}", served.errors);
        assert_eq!(served.keys[0].0, vec!["a.example.com"]);

        // A delivery without b removes it from disk.
        store
            .deliver(&CertificatesDelivery {
                certificates: vec![material("a", chain_a.clone(), key_a)],
            })
            .unwrap();
        assert!(!dir.join("b.pem").exists());
        let served = store.served(&section);
        assert_eq!(served.ids, vec!["a"]);
        assert!(served.errors[0].contains("certificate b has not been delivered"));
    }

    #[test]
    fn a_certificate_serves_only_when_its_chain_matches_the_plan() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(Store::dir_in(tmp.path()));
        let (chain, key) = generated("a.example.com");
        let (other_chain, other_key) = generated("a.example.com");
        store
            .deliver(&CertificatesDelivery {
                certificates: vec![
                    material("a", chain.clone(), key.clone()),
                    material("mixed", chain.clone(), other_key),
                ],
            })
            .unwrap();
        let served = store.served(&section_for(&[("a", "a.example.com", &other_chain)]));
        assert!(served.ids.is_empty());
        assert!(
            served.errors[0].contains("not the one the plan names"),
            "{:?}",
            served.errors
        );
        let served = store.served(&section_for(&[("mixed", "a.example.com", &chain)]));
        assert!(served.ids.is_empty());
        let error = &served.errors[0];
        assert!(error.contains("does not go with the chain"), "{error}");
        assert!(
            !error.contains("PRIVATE"),
            "no key material in errors: {error}"
        );
    }

    #[test]
    fn bad_ids_and_keys_in_chains_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(Store::dir_in(tmp.path()));
        let (chain, key) = generated("a.example.com");
        for id in ["../x", ".hidden", "", "a/b"] {
            let e = store
                .deliver(&CertificatesDelivery {
                    certificates: vec![material(id, chain.clone(), key.clone())],
                })
                .unwrap_err();
            assert!(e.contains("is invalid"), "{e}");
        }
        let e = store
            .deliver(&CertificatesDelivery {
                certificates: vec![material("a", format!("{chain}{key}"), key.clone())],
            })
            .unwrap_err();
        assert!(
            e.contains("holds a private key") && !e.contains("BEGIN"),
            "{e}"
        );
    }
}
