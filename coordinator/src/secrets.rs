//! Stack secrets: sealed with AES-256-GCM under a key kept in the data dir
//! (`secrets.key`, 0600) before they reach the store, opened only to be
//! delivered to an agent whose plan mounts them. Values are never logged
//! and never returned by the API.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

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

/// The key secrets are sealed with.
pub struct SecretKey(LessSafeKey);

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
        Ok(Self(LessSafeKey::new(key)))
    }

    /// Seals a value; `context` (stack/name/version) is bound to it.
    pub fn seal(&self, context: &str, value: &[u8]) -> Result<String, SecretError> {
        let nonce = skiff_shared::random_bytes::<12>().map_err(|_| SecretError::Random)?;
        let mut buf = value.to_vec();
        self.0
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
            .0
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf)
            .map_err(|_| SecretError::Open)?;
        Ok(plain.to_vec())
    }
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
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("secrets.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
}
