//! Secret values delivered by the coordinator, stored by digest in the data
//! dir (`secrets/<sha256>`, directory 0700) and bind-mounted read-only into
//! the containers whose spec names them. A value whose SHA-256 is not its
//! digest is refused. Files no container mounts any more are removed by
//! the controller's diff ([`super::diff`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use skiff_shared::workload::SecretValue;

/// Files are readable by the container's user whatever its uid; the 0700
/// directory keeps other users of the host out.
const FILE_MODE: u32 = 0o444;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("a delivered secret does not match its digest {0}; refused")]
    Digest(String),
    #[error("a delivered secret is not base64")]
    Encoding,
    #[error("cannot store a secret: {0}")]
    Io(#[from] std::io::Error),
}

/// Where secrets live under the agent's data dir.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets")
}

/// Stores delivered values, checking each against its digest.
pub fn store(data_dir: &Path, values: &[SecretValue]) -> Result<usize, SecretError> {
    let dir = dir(data_dir);
    skiff_shared::files::create_private_dir(&dir)?;
    let mut stored = 0;
    for v in values {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&v.value)
            .map_err(|_| SecretError::Encoding)?;
        if hex::encode(skiff_shared::sha256(&bytes)) != v.digest {
            return Err(SecretError::Digest(v.digest.clone()));
        }
        let path = dir.join(&v.digest);
        if !path.exists() {
            skiff_shared::files::write_atomic(&path, &bytes, FILE_MODE)?;
            stored += 1;
        }
    }
    Ok(stored)
}

/// The digests of the stored secrets; `dir` is the secret store ([`dir`]).
pub fn stored(dir: &Path) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|name| !name.starts_with('.'))
        .collect()
}

/// Removes one stored secret; one already gone is fine.
pub fn remove(dir: &Path, digest: &str) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(digest)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_checked_values_and_prunes_unused_ones() {
        let data = tempfile::tempdir().unwrap();
        let value = b"hunter2";
        let digest = hex::encode(skiff_shared::sha256(value));
        let good = SecretValue {
            digest: digest.clone(),
            value: base64::engine::general_purpose::STANDARD.encode(value),
        };
        assert_eq!(store(data.path(), std::slice::from_ref(&good)).unwrap(), 1);
        assert_eq!(
            std::fs::read(dir(data.path()).join(&digest)).unwrap(),
            value
        );
        let forged = SecretValue {
            digest: digest.clone(),
            value: base64::engine::general_purpose::STANDARD.encode(b"other"),
        };
        assert!(matches!(
            store(data.path(), &[forged]),
            Err(SecretError::Digest(_))
        ));
        assert_eq!(stored(&dir(data.path())), [digest.clone()].into());
        remove(&dir(data.path()), &digest).unwrap();
        remove(&dir(data.path()), &digest).unwrap();
        assert!(stored(&dir(data.path())).is_empty());
    }
}
