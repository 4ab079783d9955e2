//! The agent's identity on disk, and joining a cluster.
//!
//! Layout of the data dir (mode 0700):
//! - `node.key` (0600): the agent's private key; it never leaves the host.
//! - `node.crt`: its client certificate, replaced atomically on renewal.
//! - `ca.crt`: the cluster CA, pinned at join.
//! - `plan-signing.pub`: the coordinator's plan-signing public key, pinned at join.
//! - `node.toml` (0600): node id, name and coordinator address.
//! - `plan.json` (0600): the last signed plan accepted, exactly as received.
//! - `plan-position.json` (0600): where the last accepted plan stands
//!   (cluster, epoch, generation, digest of its bytes), kept apart from
//!   `plan.json` so that losing the plan does not lift the check against
//!   replays.
//!
//! Certificates and the public key are 0644, everything else 0600, set
//! exactly whatever the umask.
//!
//! The join exchange is bounded: the TCP connection, the TLS handshake and
//! the request with its whole answer each have a deadline, and the answer
//! is read up to [`MAX_JOIN_ANSWER_BYTES`]; a coordinator (or anything else
//! at that address) that stalls or floods ends the join with a one-line
//! error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ed25519_dalek::VerifyingKey;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use skiff_shared::files::{PRIVATE, PUBLIC, create_private_dir, write_atomic};
use skiff_shared::join::{ErrorBody, JOIN_PATH, JoinRequest, JoinResponse, JoinToken};
use skiff_shared::tls::{
    certs_from_pem, fingerprint, join_client_config, key_from_pem, server_name_of,
};

/// Errors joining or loading the identity. Each names what failed and the fix.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "this agent has not joined a cluster yet ({path} is missing); run `skiff-agent join --coordinator HOST:PORT --token TOKEN` first"
    )]
    NotJoined { path: PathBuf },
    #[error("{what} in {path} is unusable: {message}")]
    Corrupt {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error(
        "data dir {dir} already belongs to another cluster (CA {have}); use another --data-dir or remove it"
    )]
    OtherCluster { dir: PathBuf, have: String },
    #[error("cannot connect to the coordinator at {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("the join request to the coordinator at {addr} failed: {message}")]
    Exchange { addr: String, message: String },
    #[error("the coordinator refused the join: {message}")]
    Refused { message: String },
    #[error("the coordinator's answer is invalid: {0}")]
    Protocol(String),
    #[error("{0}")]
    Input(String),
}

/// Time to open the TCP connection at join.
pub const JOIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for the TLS handshake at join.
pub const JOIN_TLS_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for the join request and the whole answer.
pub const JOIN_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest join answer read (a real one is a few KiB).
pub const MAX_JOIN_ANSWER_BYTES: usize = 1 << 20;

/// What is stored in `node.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    pub node_id: String,
    pub name: String,
    pub coordinator: String,
    /// The cluster joined; plans for another are refused. Agents that
    /// joined before it was kept take it from their first plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
}

/// The agent's loaded identity.
#[derive(Clone)]
pub struct Identity {
    pub dir: PathBuf,
    pub node: NodeFile,
    pub key_pem: String,
    pub ca: CertificateDer<'static>,
    pub plan_key: VerifyingKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("dir", &self.dir)
            .field("node", &self.node)
            .finish_non_exhaustive()
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

impl Identity {
    /// Loads a joined identity from `dir`.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let node_path = dir.join("node.toml");
        if !node_path.exists() {
            return Err(IdentityError::NotJoined { path: node_path });
        }
        // Earlier releases wrote it 0644.
        skiff_shared::files::restrict(&node_path, PRIVATE).map_err(io(&node_path))?;
        let node: NodeFile =
            toml::from_str(&read(&node_path)?).map_err(|e| IdentityError::Corrupt {
                what: "node file",
                path: node_path.clone(),
                message: e.message().to_owned(),
            })?;
        let ca_path = dir.join("ca.crt");
        let ca = certs_from_pem(&read(&ca_path)?, "ca.crt")
            .map_err(|e| IdentityError::Corrupt {
                what: "CA",
                path: ca_path.clone(),
                message: e.to_string(),
            })?
            .remove(0);
        let pub_path = dir.join("plan-signing.pub");
        let plan_key =
            skiff_shared::signing::decode_public_key(&read(&pub_path)?).map_err(|message| {
                IdentityError::Corrupt {
                    what: "plan-signing key",
                    path: pub_path.clone(),
                    message,
                }
            })?;
        let key_pem = read(&dir.join("node.key"))?;
        Ok(Self {
            dir: dir.to_owned(),
            node,
            key_pem,
            ca,
            plan_key,
        })
    }

    /// The current client certificate chain and key, read fresh (renewal replaces it).
    pub fn client_cert(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), IdentityError> {
        let path = self.dir.join("node.crt");
        let chain =
            certs_from_pem(&read(&path)?, "node.crt").map_err(|e| IdentityError::Corrupt {
                what: "certificate",
                path: path.clone(),
                message: e.to_string(),
            })?;
        let key = key_from_pem(&self.key_pem, "node.key").map_err(|e| IdentityError::Corrupt {
            what: "key",
            path: self.dir.join("node.key"),
            message: e.to_string(),
        })?;
        Ok((chain, key))
    }

    /// Validity window of the current certificate.
    pub fn cert_validity(&self) -> Result<(SystemTime, SystemTime), IdentityError> {
        let (chain, _) = self.client_cert()?;
        validity(&chain[0]).ok_or_else(|| IdentityError::Corrupt {
            what: "certificate",
            path: self.dir.join("node.crt"),
            message: "cannot read its validity".into(),
        })
    }

    /// A CSR for the agent's existing key, for renewal.
    pub fn csr(&self) -> Result<String, IdentityError> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| IdentityError::Corrupt {
            what: "key",
            path: self.dir.join("node.key"),
            message: e.to_string(),
        })?;
        csr_for(&key)
    }

    /// Stores a renewed certificate after checking it is for our key and node.
    pub fn store_cert(&self, cert_pem: &str) -> Result<(), IdentityError> {
        let chain = certs_from_pem(cert_pem, "renewed certificate")
            .map_err(|e| IdentityError::Protocol(e.to_string()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| {
            IdentityError::Protocol(format!("renewed certificate does not parse: {e}"))
        })?;
        let cn = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .unwrap_or("");
        if cn != self.node.node_id {
            return Err(IdentityError::Protocol(format!(
                "renewed certificate names node {cn:?}, not this node"
            )));
        }
        let key =
            KeyPair::from_pem(&self.key_pem).map_err(|e| IdentityError::Protocol(e.to_string()))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(IdentityError::Protocol(
                "renewed certificate is not for this node's key".into(),
            ));
        }
        let path = self.dir.join("node.crt");
        write_atomic(&path, cert_pem.as_bytes(), PUBLIC).map_err(io(&path))
    }
}

/// Reads the validity window of a certificate.
pub fn validity(der: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let at = |t: i64| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).ok()?));
    Some((
        at(cert.validity().not_before.timestamp())?,
        at(cert.validity().not_after.timestamp())?,
    ))
}

fn csr_for(key: &KeyPair) -> Result<String, IdentityError> {
    CertificateParams::default()
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(|e| IdentityError::Protocol(format!("cannot make a certificate request: {e}")))
}

/// What `skiff-agent join` needs.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    pub coordinator: String,
    pub token: JoinToken,
    pub data_dir: PathBuf,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// The result of a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    New {
        node_id: String,
    },
    /// The data dir had already joined this cluster; nothing was sent.
    Already {
        node_id: String,
    },
}

/// Joins the cluster: pins the CA from the token, sends a CSR with the
/// token, stores the certificate, CA and plan key.
pub async fn join(opts: &JoinOptions) -> Result<Joined, IdentityError> {
    let dir = &opts.data_dir;
    if dir.join("node.toml").exists() {
        let existing = Identity::load(dir)?;
        if fingerprint(&existing.ca) != opts.token.ca_fingerprint {
            return Err(IdentityError::OtherCluster {
                dir: dir.clone(),
                have: hex::encode(fingerprint(&existing.ca)),
            });
        }
        return Ok(Joined::Already {
            node_id: existing.node.node_id,
        });
    }
    let server_name = server_name_of(&opts.coordinator).map_err(IdentityError::Input)?;
    create_private_dir(dir).map_err(io(dir))?;
    let key = KeyPair::generate().map_err(|e| IdentityError::Protocol(e.to_string()))?;
    let key_pem = key.serialize_pem();
    let csr_pem = csr_for(&key)?;
    let facts = crate::facts::collect().await;

    let addr = &opts.coordinator;
    let connect_err = |message: String| IdentityError::Connect {
        addr: addr.clone(),
        message,
    };
    let (mut config, verifier) =
        join_client_config(opts.token.ca_fingerprint).map_err(|e| connect_err(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::time::timeout(JOIN_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| {
            connect_err(format!(
                "no TCP connection within {}s; check the address and that the agent port is reachable from this host",
                JOIN_CONNECT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| connect_err(e.to_string()))?;
    // The secret is sent only over a connection whose CA matched the token.
    let tls = tokio::time::timeout(
        JOIN_TLS_TIMEOUT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(server_name, tcp),
    )
    .await
    .map_err(|_| {
        connect_err(format!(
            "the TLS handshake did not finish within {}s; is {addr} a Skiff coordinator's agent port?",
            JOIN_TLS_TIMEOUT.as_secs()
        ))
    })?
    .map_err(|e| connect_err(format!("TLS handshake failed: {e}")))?;
    let ca = verifier
        .ca()
        .ok_or_else(|| connect_err("TLS handshake did not pin the CA".into()))?;

    let request = JoinRequest {
        token_id: opts.token.id.clone(),
        secret: opts.token.secret.clone(),
        csr_pem,
        name: opts.name.clone(),
        labels: opts.labels.clone(),
        facts,
    };
    let (status, body) = post_json(tls, addr, JOIN_PATH, &request)
        .await
        .map_err(|message| IdentityError::Exchange {
            addr: addr.clone(),
            message,
        })?;
    if !status.is_success() {
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.message)
            .unwrap_or_else(|_| format!("HTTP {status}"));
        return Err(IdentityError::Refused { message });
    }
    let resp: JoinResponse =
        serde_json::from_slice(&body).map_err(|e| IdentityError::Protocol(e.to_string()))?;
    let answered_ca =
        certs_from_pem(&resp.ca_pem, "CA").map_err(|e| IdentityError::Protocol(e.to_string()))?;
    if answered_ca.first().map(|c| fingerprint(c)) != Some(fingerprint(&ca)) {
        return Err(IdentityError::Protocol(
            "the CA in the answer is not the pinned CA".into(),
        ));
    }
    skiff_shared::signing::decode_public_key(&resp.plan_public_key)
        .map_err(IdentityError::Protocol)?;

    let w = |name: &str, contents: &str, mode| {
        let path = dir.join(name);
        write_atomic(&path, contents.as_bytes(), mode).map_err(io(&path))
    };
    w("node.key", &key_pem, PRIVATE)?;
    w("node.crt", &resp.cert_pem, PUBLIC)?;
    w("ca.crt", &resp.ca_pem, PUBLIC)?;
    w("plan-signing.pub", &resp.plan_public_key, PUBLIC)?;
    let node = NodeFile {
        node_id: resp.node_id.clone(),
        name: opts.name.clone(),
        coordinator: opts.coordinator.clone(),
        cluster_id: (!resp.cluster_id.is_empty()).then(|| resp.cluster_id.clone()),
    };
    // Last: its presence marks the join complete.
    w(
        "node.toml",
        &toml::to_string(&node).map_err(|e| IdentityError::Protocol(e.to_string()))?,
        PRIVATE,
    )?;
    Ok(Joined::New {
        node_id: resp.node_id,
    })
}

/// Posts `body` as JSON on `stream` and reads the answer, the whole within
/// [`JOIN_EXCHANGE_TIMEOUT`] and at most [`MAX_JOIN_ANSWER_BYTES`] of it.
async fn post_json<S>(
    stream: S,
    host: &str,
    path: &str,
    body: &impl Serialize,
) -> Result<(hyper::StatusCode, Bytes), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let payload = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let req = hyper::Request::post(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(payload)))
        .map_err(|e| e.to_string())?;
    let exchange = async move {
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let too_large = || {
            format!(
                "its answer is larger than {} MiB; is {host} a Skiff coordinator's agent port?",
                MAX_JOIN_ANSWER_BYTES >> 20
            )
        };
        // A declared length over the cap is refused before reading any of it.
        if hyper::body::Body::size_hint(resp.body()).lower() > MAX_JOIN_ANSWER_BYTES as u64 {
            return Err(too_large());
        }
        let bytes = Limited::new(resp.into_body(), MAX_JOIN_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    too_large()
                } else {
                    e.to_string()
                }
            })?
            .to_bytes();
        Ok((status, bytes))
    };
    // The connection is driven here, beside the exchange, and closed with it.
    let both = async {
        tokio::select! {
            r = exchange => r,
            c = conn => Err(match c {
                Ok(()) => "the connection closed before the answer".to_owned(),
                Err(e) => e.to_string(),
            }),
        }
    };
    tokio::time::timeout(JOIN_EXCHANGE_TIMEOUT, both)
        .await
        .map_err(|_| {
            format!(
                "no complete answer within {}s; is {host} a Skiff coordinator's agent port?",
                JOIN_EXCHANGE_TIMEOUT.as_secs()
            )
        })?
}
