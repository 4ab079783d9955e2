//! Secret values delivered by the coordinator, stored in the data dir
//! under their version's id (`secrets/<id>`, directory 0700) and
//! bind-mounted read-only into the containers whose spec names them.
//!
//! A delivery is not signed; the plan is. So a value is mounted only if it
//! matches the check value of its mount in the signed plan
//! ([`SecretMount::verify`]), and a mismatch refuses the container with an
//! error naming the secret. Files no container mounts any more are
//! removed by the controller's diff ([`super::diff`]). Mounts planned
//! before versions had ids name their file by the value's digest, and are
//! checked against it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use skiff_shared::workload::{SecretMount, SecretMountError, SecretValue, is_secret_file_name};

/// Files are readable by the container's user whatever its uid; the 0700
/// directory keeps other users of the host out.
const FILE_MODE: u32 = 0o444;

/// A delivery that cannot be stored; nothing of it was.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("a delivered secret has an invalid id {0:?}; refused")]
    Id(String),
    #[error("delivered secret {0} is not base64; refused")]
    Encoding(String),
    #[error("cannot store a secret: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a container cannot mount a secret.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("secret {name} (version {version}) has not been delivered to this host")]
    NotDelivered { name: String, version: u64 },
    #[error(transparent)]
    Refused(#[from] SecretMountError),
    #[error("cannot read delivered secret {name}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
}

/// Where secrets live under the agent's data dir.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets")
}

/// Stores delivered values under their ids, after checking every id and
/// encoding. Returns how many files were written (new or changed).
pub fn store(data_dir: &Path, values: &[SecretValue]) -> Result<usize, SecretError> {
    let mut decoded = Vec::with_capacity(values.len());
    for v in values {
        if !is_secret_file_name(&v.id) {
            return Err(SecretError::Id(v.id.clone()));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&v.value)
            .map_err(|_| SecretError::Encoding(v.id.clone()))?;
        decoded.push((v.id.as_str(), bytes));
    }
    let dir = dir(data_dir);
    skiff_shared::files::create_private_dir(&dir)?;
    let mut stored = 0;
    for (id, bytes) in decoded {
        let path = dir.join(id);
        if std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) {
            skiff_shared::files::write_atomic(&path, &bytes, FILE_MODE)?;
            stored += 1;
        }
    }
    Ok(stored)
}

/// The host path to mount for `mount`, once its delivered value matched
/// the plan's check value. `dir` is the secret store ([`dir`]).
pub fn source(dir: &Path, mount: &SecretMount) -> Result<PathBuf, MountError> {
    mount.validate()?;
    let path = dir.join(mount.file_name());
    let value = match std::fs::read(&path) {
        Ok(v) => v,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(MountError::NotDelivered {
                name: mount.name.clone(),
                version: mount.version,
            });
        }
        Err(source) => {
            return Err(MountError::Io {
                name: mount.name.clone(),
                source,
            });
        }
    };
    mount.verify(&value)?;
    Ok(path)
}

/// The file names of the stored secrets; `dir` is the secret store ([`dir`]).
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
pub fn remove(dir: &Path, file: &str) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(file)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use skiff_shared::workload::{secret_check, secret_id};

    use super::*;

    fn b64(value: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(value)
    }

    fn mount(id: &str, value: &[u8]) -> SecretMount {
        SecretMount {
            name: "db".into(),
            version: 2,
            digest: String::new(),
            id: id.into(),
            check: secret_check(id, value),
            target: "/run/secrets/db".into(),
        }
    }

    #[test]
    fn stores_by_id_and_mounts_only_values_that_match_the_plan() {
        let data = tempfile::tempdir().unwrap();
        let store_dir = dir(data.path());
        let id = secret_id().unwrap();
        let good = mount(&id, b"hunter2");
        assert!(matches!(
            source(&store_dir, &good),
            Err(MountError::NotDelivered { .. })
        ));
        let delivered = SecretValue {
            id: id.clone(),
            value: b64(b"hunter2"),
        };
        assert_eq!(
            store(data.path(), std::slice::from_ref(&delivered)).unwrap(),
            1
        );
        assert_eq!(store(data.path(), &[delivered]).unwrap(), 0, "unchanged");
        let path = source(&store_dir, &good).unwrap();
        assert_eq!(path, store_dir.join(&id));
        assert_eq!(std::fs::read(&path).unwrap(), b"hunter2");

        // A delivered value that is not the planned one is never mounted.
        let forged = SecretValue {
            id: id.clone(),
            value: b64(b"other"),
        };
        assert_eq!(store(data.path(), &[forged]).unwrap(), 1);
        let refused = source(&store_dir, &good).unwrap_err().to_string();
        assert!(
            refused.contains("secret db (version 2)") && refused.contains("does not match"),
            "{refused}"
        );
        // The next delivery of the right value repairs it.
        store(
            data.path(),
            &[SecretValue {
                id: id.clone(),
                value: b64(b"hunter2"),
            }],
        )
        .unwrap();
        source(&store_dir, &good).unwrap();

        assert_eq!(stored(&store_dir), [id.clone()].into());
        remove(&store_dir, &id).unwrap();
        remove(&store_dir, &id).unwrap();
        assert!(stored(&store_dir).is_empty());
    }

    #[test]
    fn bad_deliveries_store_nothing() {
        let data = tempfile::tempdir().unwrap();
        let ok = SecretValue {
            id: secret_id().unwrap(),
            value: b64(b"fine"),
        };
        for bad in [
            SecretValue {
                id: "../node.key".into(),
                value: b64(b"x"),
            },
            SecretValue {
                id: secret_id().unwrap(),
                value: "not base64!".into(),
            },
        ] {
            assert!(store(data.path(), &[ok.clone(), bad]).is_err());
            assert!(stored(&dir(data.path())).is_empty(), "nothing half-applied");
        }
    }

    #[test]
    fn mounts_planned_before_ids_are_checked_by_digest() {
        let data = tempfile::tempdir().unwrap();
        let digest = hex::encode(skiff_shared::sha256(b"hunter2"));
        // Delivered by a coordinator of an earlier release.
        let delivered: SecretValue = serde_json::from_str(&format!(
            r#"{{"digest":"{digest}","value":"{}"}}"#,
            b64(b"hunter2")
        ))
        .unwrap();
        store(data.path(), &[delivered]).unwrap();
        let legacy = SecretMount {
            digest: digest.clone(),
            id: String::new(),
            check: String::new(),
            ..mount("", b"")
        };
        let path = source(&dir(data.path()), &legacy).unwrap();
        assert!(path.ends_with(&digest));
    }
}
