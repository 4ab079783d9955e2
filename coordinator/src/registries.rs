//! Registry credentials for image pulls: one username and password (or
//! access token) per registry host, the password sealed with the secrets
//! key (see [`crate::secrets`]) before it reaches the store, and opened
//! only to be delivered to an agent whose plan has an image from that
//! registry. Passwords are never logged and never returned by the API.

use std::collections::BTreeSet;

use skiff_api_types::validate::{check_password, check_username};
use skiff_shared::registry::{RegistryCredential, registry_of};
use tracing::warn;

use crate::secrets::SecretKey;
use crate::store::{RegistryRow, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Bad input; the message names it and the fix.
    #[error("{0}")]
    Invalid(String),
    #[error("sealing the registry password failed")]
    Seal,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The context a registry password is sealed under: a sealed value moved
/// to another host's or user's row does not open.
pub fn context(host: &str, username: &str) -> String {
    format!("registry/{host}/{username}")
}

/// Checks and stores credentials for `host` (normalized first), replacing
/// any it had. Username and password are checked with the
/// [`skiff_api_types::validate`] rules the CLI also runs.
pub async fn set(
    store: &dyn Store,
    key: &SecretKey,
    host: &str,
    username: &str,
    password: &str,
    now: i64,
) -> Result<RegistryRow, RegistryError> {
    let host = skiff_shared::registry::check_host(host).map_err(RegistryError::Invalid)?;
    check_username(username).map_err(RegistryError::Invalid)?;
    check_password(password).map_err(RegistryError::Invalid)?;
    let sealed = key
        .seal(&context(&host, username), password.as_bytes())
        .map_err(|_| RegistryError::Seal)?;
    Ok(store.put_registry(&host, username, &sealed, now).await?)
}

/// The credentials of every registry `images` come from that has any, by
/// host. One that cannot be opened is left out, with a warning (the pull
/// then fails on the agent, naming the registry); a store failure is an
/// error, so that a caller does not mistake it for "no credentials".
pub async fn credentials_for<'a>(
    store: &dyn Store,
    key: &SecretKey,
    images: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<RegistryCredential>, StoreError> {
    let hosts: BTreeSet<String> = images.into_iter().map(registry_of).collect();
    let mut out = Vec::new();
    for host in hosts {
        let Some((username, sealed)) = store.sealed_registry(&host).await? else {
            continue;
        };
        let password = key
            .open(&context(&host, &username), &sealed)
            .ok()
            .and_then(|p| String::from_utf8(p).ok());
        match password {
            Some(password) => out.push(RegistryCredential {
                host,
                username,
                password,
            }),
            None => {
                warn!(registry = %host, "Stored registry credentials cannot be opened; set them again with `skiff registry login`.")
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::prelude::*;
    use crate::store::sqlite::SqliteStore;

    #[tokio::test]
    async fn stored_passwords_are_sealed_and_delivered_only_for_needed_registries() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("skiff.db");
        let store = SqliteStore::open(&db).await.unwrap();
        let key = SecretKey::load_or_create(dir.path()).unwrap();
        let password = "correct-horse-battery-staple-7f3a";
        let row = set(&store, &key, "Ghcr.IO", "bot", password, 5)
            .await
            .unwrap();
        assert_eq!(
            (row.host.as_str(), row.username.as_str()),
            ("ghcr.io", "bot")
        );
        set(&store, &key, "127.0.0.1:5000", "alice", "other-secret", 6)
            .await
            .unwrap();

        // Not in the clear in the row, nor anywhere in the database files.
        let (_, sealed) = store.sealed_registry("ghcr.io").await.unwrap().unwrap();
        assert!(!sealed.contains(password));
        drop(store);
        for name in ["skiff.db", "skiff.db-wal"] {
            if let Ok(bytes) = std::fs::read(dir.path().join(name)) {
                assert!(
                    !bytes
                        .windows(password.len())
                        .any(|w| w == password.as_bytes()),
                    "{name} holds the password in the clear"
                );
            }
        }
        let store = SqliteStore::open(&db).await.unwrap();

        // Only the registries the images need.
        let creds = credentials_for(
            &store,
            &key,
            ["ghcr.io/org/app:1", "busybox:1", "ghcr.io/org/other"],
        )
        .await
        .unwrap();
        assert_eq!(
            creds,
            vec![RegistryCredential {
                host: "ghcr.io".into(),
                username: "bot".into(),
                password: password.into(),
            }]
        );

        // A sealed value moved to another row does not open.
        let (_, other) = store
            .sealed_registry("127.0.0.1:5000")
            .await
            .unwrap()
            .unwrap();
        store
            .put_registry("ghcr.io", "bot", &other, 7)
            .await
            .unwrap();
        assert!(
            credentials_for(&store, &key, ["ghcr.io/org/app:1"])
                .await
                .unwrap()
                .is_empty()
        );

        assert!(store.remove_registry("ghcr.io").await.unwrap().is_some());
        assert!(store.remove_registry("ghcr.io").await.unwrap().is_none());
        assert_eq!(store.registries().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn bad_input_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("skiff.db"))
            .await
            .unwrap();
        let key = SecretKey::load_or_create(dir.path()).unwrap();
        for (host, user, pass, says) in [
            ("https://ghcr.io", "bot", "pw", "scheme"),
            ("ghcr.io", "", "pw", "username is empty"),
            ("ghcr.io", "a:b", "pw", "\"a:b\""),
            ("ghcr.io", "bot", "", "password is empty"),
            ("ghcr.io", "bot", "pw\n", "line break"),
        ] {
            match set(&store, &key, host, user, pass, 1).await {
                Err(RegistryError::Invalid(m)) => assert!(m.contains(says), "{m}"),
                other => panic!("{host} {user}: {other:?}"),
            }
        }
        assert!(store.registries().await.unwrap().is_empty());
    }
}
