//! Stack secrets: sealed with AES-256-GCM under a key kept in the data dir
//! (`secrets.key`, 0600) before they reach the store, opened only to be
//! delivered to an agent whose plan mounts them. Values are never logged
//! and never returned by the API.
//!
//! Each version gets a random id when it is stored; plans and hosts know
//! it by that id and by a check value keyed with it
//! ([`skiff_shared::workload::secret_check`]), never by a plain hash of
//! the value. Whether a value is the same as the latest version's is
//! decided by an HMAC under a key derived from `secrets.key`
//! ([`SecretKey::mac`]), which nothing outside the data dir can compute.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::{hkdf, hmac};
use skiff_shared::workload::{secret_check, secret_id};
use tracing::{info, warn};

use crate::store::{NewSecretVersion, SecretStore, StoreError};

/// Largest secret value accepted.
pub const MAX_SECRET_BYTES: usize = 512 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot use the secrets key {path}: {message}")]
    Key { path: String, message: String },
    #[error("a stored secret cannot be opened: it was sealed with another key or is corrupt")]
    Open,
    #[error("system random source failed")]
    Random,
}

/// The key secrets are sealed with, and the MAC key derived from it.
pub struct SecretKey {
    seal: LessSafeKey,
    mac: hmac::Key,
}

/// HKDF info of the MAC key: a new use of `secrets.key` gets its own label.
const MAC_KEY_INFO: &[u8] = b"skiff secret value mac v1";

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// Loads `dir/secrets.key`, creating it (0600) on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, SecretError> {
        let path = dir.join("secrets.key");
        let err = |message: String| SecretError::Key {
            path: path.display().to_string(),
            message,
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let fresh = skiff_shared::random_bytes::<32>().map_err(|_| SecretError::Random)?;
                skiff_shared::files::write_atomic(&path, &fresh, skiff_shared::files::PRIVATE)
                    .map_err(|e| err(e.to_string()))?;
                fresh.to_vec()
            }
            Err(e) => return Err(err(e.to_string())),
        };
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| err("it must hold 32 bytes".into()))?;
        let mac = hkdf::Salt::new(hkdf::HKDF_SHA256, &[])
            .extract(&bytes)
            .expand(&[MAC_KEY_INFO], hmac::HMAC_SHA256)
            .map(hmac::Key::from)
            .map_err(|_| err("cannot derive the MAC key".into()))?;
        Ok(Self {
            seal: LessSafeKey::new(key),
            mac,
        })
    }

    /// HMAC-SHA256 of a secret value under the key derived from
    /// `secrets.key`, hex: equal for equal values, and useless without the
    /// key (unlike a plain hash, it cannot be tested against guesses).
    pub fn mac(&self, value: &[u8]) -> String {
        hex::encode(hmac::sign(&self.mac, value))
    }

    /// A new version of a secret: a random id, the value's check value
    /// keyed with it, and the value sealed under `context`.
    pub fn new_version(
        &self,
        context: &str,
        value: &[u8],
    ) -> Result<NewSecretVersion, SecretError> {
        let id = secret_id().map_err(|_| SecretError::Random)?;
        Ok(NewSecretVersion {
            check: secret_check(&id, value),
            sealed: self.seal(context, value)?,
            id,
        })
    }

    /// Seals a value; `context` (stack/name/version) is bound to it.
    pub fn seal(&self, context: &str, value: &[u8]) -> Result<String, SecretError> {
        let nonce = skiff_shared::random_bytes::<12>().map_err(|_| SecretError::Random)?;
        let mut buf = value.to_vec();
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SecretError::Open)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(B64.encode(out))
    }

    /// Opens a sealed value.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, SecretError> {
        let raw = B64.decode(sealed).map_err(|_| SecretError::Open)?;
        if raw.len() < 12 {
            return Err(SecretError::Open);
        }
        let (nonce, rest) = raw.split_at(12);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Open)?;
        let mut buf = rest.to_vec();
        let plain = self
            .seal
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| SecretError::Open)?;
        Ok(plain.to_vec())
    }
}

/// Gives every secret version stored before versions had ids its MAC and
/// check value, opening it; returns how many were completed. A version
/// that cannot be opened is left as it is, with a warning: deploys that
/// use it are refused until it is set again.
///
/// # Errors
/// When the store fails.
pub async fn complete_versions(
    store: &dyn SecretStore,
    key: &SecretKey,
) -> Result<usize, StoreError> {
    let mut done = 0;
    for s in store.incomplete_secrets().await? {
        match key.open(&context(&s.stack, &s.name, s.version), &s.sealed) {
            Ok(value) => {
                store
                    .complete_secret(&s.id, &key.mac(&value), &secret_check(&s.id, &value))
                    .await?;
                done += 1;
            }
            Err(error) => {
                warn!(stack = %s.stack, secret = %s.name, version = s.version, error = %error, "A stored secret version cannot be opened; set it again to deploy it.");
            }
        }
    }
    if done > 0 {
        info!(
            versions = done,
            "Secret versions stored before ids were given their check values."
        );
    }
    Ok(done)
}

/// The context a secret version is sealed under.
pub fn context(stack: &str, name: &str, version: i64) -> String {
    format!("{stack}/{name}/{version}")
}

/// Checks a secret name: the same rule as node names.
pub fn check_name(name: &str) -> Result<(), String> {
    skiff_shared::join::names::check_name("secret", name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_binds_context_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::load_or_create(dir.path()).unwrap();
        let sealed = key.seal("s/db/1", b"hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_eq!(key.open("s/db/1", &sealed).unwrap(), b"hunter2");
        assert!(
            key.open("s/db/2", &sealed).is_err(),
            "bound to its stack, name and version"
        );
        let again = SecretKey::load_or_create(dir.path()).unwrap();
        assert_eq!(
            again.open("s/db/1", &sealed).unwrap(),
            b"hunter2",
            "the key persists"
        );
        let other = SecretKey::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(other.open("s/db/1", &sealed).is_err());
        assert_eq!(
            key.mac(b"hunter2"),
            again.mac(b"hunter2"),
            "the MAC key persists"
        );
        assert_ne!(
            key.mac(b"hunter2"),
            other.mac(b"hunter2"),
            "and is the cluster's own"
        );
        assert_ne!(key.mac(b"hunter2"), key.mac(b"hunter3"));
        assert_ne!(
            key.mac(b"hunter2"),
            hex::encode(skiff_shared::sha256(b"hunter2")),
            "not a plain hash"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("secrets.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}
