//! The coordinator's data dir and the cluster identity kept in it.
//!
//! Layout of the data dir (mode 0700):
//! - `cluster-id` (0600): written last at first start; its presence means the dir is complete.
//! - `ca.crt`, `ca.key` (0600): the cluster CA.
//! - `server.crt`, `server.key` (0600): the agent endpoint's certificate,
//!   re-issued at every start so its names follow `--advertise`.
//! - `plan-signing.key` (0600): the ed25519 plan-signing key (PKCS#8 PEM).
//! - `initial-admin-token` (0600): the first admin API token, written once.
//! - `secrets.key` (0600): seals stack secrets and registry passwords.
//! - `skiff.db` (0600, and so its `-wal` and `-shm`): the SQLite store.
//!
//! Certificates are 0644, everything else 0600, set exactly whatever the
//! umask.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use skiff_shared::files::{PRIVATE, PUBLIC, create_private_dir, write_atomic};

use crate::pki::{Ca, PkiError};

/// How long the agent endpoint's server certificate is valid; it is
/// re-issued at every start.
const SERVER_CERT_TTL: Duration = Duration::from_secs(365 * 86400);

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot use data dir {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Pki(#[from] PkiError),
    #[error("plan-signing key {path} is unreadable: {message}")]
    SigningKey { path: PathBuf, message: String },
    #[error("system random source failed")]
    Random,
}

/// The cluster's identity as loaded from the data dir.
pub struct Identity {
    pub cluster_id: String,
    pub ca: Ca,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub plan_key: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cluster_id", &self.cluster_id)
            .field("ca", &self.ca)
            .finish()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(io(path))
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), IdentityError> {
    write_atomic(path, contents.as_bytes(), mode).map_err(io(path))
}

/// The names the agent endpoint's certificate covers: the advertised ones,
/// the host's name, and loopback.
pub fn server_names(advertise: &[String]) -> Vec<String> {
    let mut names: Vec<String> = advertise.to_vec();
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if crate::pki::check_san(host).is_ok() {
            names.push(host.to_owned());
        }
    }
    names.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

impl Identity {
    /// Loads the identity from `dir`, creating it on first start. Returns
    /// whether it was created now.
    pub fn load_or_init(dir: &Path, advertise: &[String]) -> Result<(Self, bool), IdentityError> {
        create_private_dir(dir).map_err(io(dir))?;
        let id_path = dir.join("cluster-id");
        let created = !id_path.exists();
        let (cluster_id, ca, plan_key) = if created {
            let cluster_id =
                hex::encode(skiff_shared::random_bytes::<8>().map_err(|_| IdentityError::Random)?);
            let (ca, ca_key_pem) = Ca::generate(&cluster_id)?;
            write(&dir.join("ca.key"), &ca_key_pem, PRIVATE)?;
            write(&dir.join("ca.crt"), &ca.cert_pem, PUBLIC)?;
            let plan_key =
                skiff_shared::signing::generate_key().map_err(|_| IdentityError::Random)?;
            let key_path = dir.join("plan-signing.key");
            let pem = plan_key
                .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
                .map_err(|e| IdentityError::SigningKey {
                    path: key_path.clone(),
                    message: e.to_string(),
                })?;
            write(&key_path, &pem, PRIVATE)?;
            (cluster_id, ca, plan_key)
        } else {
            // Earlier releases wrote it 0644.
            skiff_shared::files::restrict(&id_path, PRIVATE).map_err(io(&id_path))?;
            let cluster_id = read(&id_path)?.trim().to_owned();
            let ca = Ca::load(&read(&dir.join("ca.crt"))?, &read(&dir.join("ca.key"))?)?;
            let key_path = dir.join("plan-signing.key");
            let plan_key = SigningKey::from_pkcs8_pem(&read(&key_path)?).map_err(|e| {
                IdentityError::SigningKey {
                    path: key_path.clone(),
                    message: e.to_string(),
                }
            })?;
            (cluster_id, ca, plan_key)
        };
        let (server, server_key_pem) =
            ca.issue_server(&server_names(advertise), SERVER_CERT_TTL)?;
        write(&dir.join("server.key"), &server_key_pem, PRIVATE)?;
        write(&dir.join("server.crt"), &server.cert_pem, PUBLIC)?;
        if created {
            // Last: its presence marks the data dir as complete.
            write(&id_path, &cluster_id, PRIVATE)?;
        }
        Ok((
            Self {
                cluster_id,
                ca,
                server_cert_pem: server.cert_pem,
                server_key_pem,
                plan_key,
            },
            created,
        ))
    }
}
