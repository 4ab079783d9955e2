//! Registry credentials delivered by the coordinator for this host's image
//! pulls. Each delivery is the complete set for the current plan and
//! replaces the last one. They are kept in the data dir
//! (`registries.json`, 0600, in the 0700 data dir) so pulls keep working
//! while the coordinator is away, and are never logged.

use std::path::{Path, PathBuf};

use skiff_shared::registry::RegistryCredential;

#[derive(Debug, thiserror::Error)]
pub enum RegistryFileError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Where the credentials live under the agent's data dir.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("registries.json")
}

/// Replaces the stored credentials with `creds`; none removes the file.
pub fn store(data_dir: &Path, creds: &[RegistryCredential]) -> Result<(), RegistryFileError> {
    let path = path(data_dir);
    let err = |source| RegistryFileError::Write {
        path: path.display().to_string(),
        source,
    };
    if creds.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(e)),
            _ => Ok(()),
        };
    }
    // Serializing plain strings cannot fail.
    let bytes = serde_json::to_vec(creds).unwrap_or_default();
    skiff_shared::files::write_atomic(&path, &bytes, skiff_shared::files::PRIVATE).map_err(err)
}

/// The stored credentials for `host`, if any. `path` is the file ([`path`]).
pub fn for_host(path: &Path, host: &str) -> Result<Option<RegistryCredential>, RegistryFileError> {
    let err = |message: String| RegistryFileError::Read {
        path: path.display().to_string(),
        message,
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    let creds: Vec<RegistryCredential> =
        serde_json::from_slice(&bytes).map_err(|e| err(format!("not valid credentials: {e}")))?;
    Ok(creds.into_iter().find(|c| c.host == host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_private_replaces_and_removes() {
        use std::os::unix::fs::PermissionsExt;
        let data = tempfile::tempdir().unwrap();
        let cred = |host: &str| RegistryCredential {
            host: host.into(),
            username: "bot".into(),
            password: "hunter2".into(),
        };
        store(data.path(), &[cred("ghcr.io"), cred("127.0.0.1:5000")]).unwrap();
        let file = path(data.path());
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(for_host(&file, "ghcr.io").unwrap(), Some(cred("ghcr.io")));
        assert_eq!(for_host(&file, "docker.io").unwrap(), None);

        store(data.path(), &[cred("127.0.0.1:5000")]).unwrap();
        assert_eq!(for_host(&file, "ghcr.io").unwrap(), None, "replaced");

        store(data.path(), &[]).unwrap();
        assert!(!file.exists());
        assert_eq!(for_host(&file, "127.0.0.1:5000").unwrap(), None);

        std::fs::write(&file, "garbage").unwrap();
        assert!(for_host(&file, "ghcr.io").is_err());
    }
}
