//! The simulated agents' identities: joined through the real join
//! endpoint as `skiff-agent join` does, and kept in a cache that a later
//! run against the same coordinator reuses.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair};
use serde::{Deserialize, Serialize};
use serde_json::json;
use skiff_api_types::{ClusterView, CreateJoinToken, CreatedJoinToken, NodeView};
use skiff_cli::client::Client;
use skiff_shared::files::{PRIVATE, create_private_dir, write_atomic};
use skiff_shared::join::{ErrorBody, JOIN_PATH, JoinRequest, JoinResponse, JoinToken};
use skiff_shared::protocol::HostFacts;
use skiff_shared::tls::{certs_from_pem, fingerprint, join_client_config, server_name_of};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::{Cli, emit, round2};

/// Time for each step of a join.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Cached certificates closer than this to expiry are not reused.
const CERT_MARGIN: Duration = Duration::from_secs(3600);

/// One simulated agent's identity, as cached.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CachedIdentity {
    pub(crate) name: String,
    pub(crate) node_id: String,
    pub(crate) key_pem: String,
    pub(crate) cert_pem: String,
}

/// What every identity in the cache shares.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CacheMeta {
    pub(crate) ca_pem: String,
    pub(crate) plan_public_key: String,
}

const CACHE_META: &str = "cluster.json";
const CACHE_IDS: &str = "identities.jsonl";

fn load_cache(dir: &Path) -> anyhow::Result<Option<(CacheMeta, Vec<CachedIdentity>)>> {
    let meta_path = dir.join(CACHE_META);
    let meta = match std::fs::read_to_string(&meta_path) {
        Ok(text) => serde_json::from_str::<CacheMeta>(&text)
            .with_context(|| format!("{} is not a cache file", meta_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context(format!("reading {}", meta_path.display())),
    };
    let ids_path = dir.join(CACHE_IDS);
    let text = std::fs::read_to_string(&ids_path)
        .with_context(|| format!("reading {}", ids_path.display()))?;
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        ids.push(
            serde_json::from_str::<CachedIdentity>(line)
                .with_context(|| format!("{} line {}", ids_path.display(), n + 1))?,
        );
    }
    Ok(Some((meta, ids)))
}

fn store_cache(dir: &Path, meta: &CacheMeta, ids: &[CachedIdentity]) -> anyhow::Result<()> {
    create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut lines = String::new();
    for id in ids {
        lines.push_str(&serde_json::to_string(id)?);
        lines.push('\n');
    }
    let ids_path = dir.join(CACHE_IDS);
    write_atomic(&ids_path, lines.as_bytes(), PRIVATE)
        .with_context(|| format!("writing {}", ids_path.display()))?;
    let meta_path = dir.join(CACHE_META);
    write_atomic(&meta_path, serde_json::to_string(meta)?.as_bytes(), PRIVATE)
        .with_context(|| format!("writing {}", meta_path.display()))?;
    Ok(())
}

/// Keeps the cached identities this coordinator still accepts: same CA, node
/// not removed, certificate valid for a while yet.
fn usable_cached(
    meta: &CacheMeta,
    ids: Vec<CachedIdentity>,
    ca_fingerprint_hex: &str,
    live: &HashSet<String>,
) -> (Vec<CachedIdentity>, String) {
    let same_ca = certs_from_pem(&meta.ca_pem, "cached CA")
        .ok()
        .and_then(|c| c.into_iter().next())
        .is_some_and(|ca| hex::encode(fingerprint(&ca)) == ca_fingerprint_hex);
    if !same_ca {
        return (Vec::new(), "the cache belongs to another cluster CA".into());
    }
    let deadline = SystemTime::now() + CERT_MARGIN;
    let (known, gone): (Vec<_>, Vec<_>) =
        ids.into_iter().partition(|id| live.contains(&id.node_id));
    let (kept, expiring): (Vec<_>, Vec<_>) = known.into_iter().partition(|id| {
        certs_from_pem(&id.cert_pem, "cached certificate")
            .ok()
            .and_then(|c| c.into_iter().next())
            .and_then(|der| skiff_agent::identity::validity(&der))
            .is_some_and(|(_, not_after)| not_after > deadline)
    });
    let why = format!(
        "{} removed or unknown to the coordinator, {} with a certificate expiring within {} min",
        gone.len(),
        expiring.len(),
        CERT_MARGIN.as_secs() / 60
    );
    (kept, why)
}

/// A typical server's facts; each simulated agent reports them under its
/// own host name, so the coordinator stores a realistic row per node.
pub(crate) fn facts_template() -> HostFacts {
    HostFacts {
        hostname: String::new(),
        os: "Debian GNU/Linux 12 (bookworm)".into(),
        kernel: "6.1.0-bench".into(),
        arch: std::env::consts::ARCH.into(),
        cpus: 2,
        memory_bytes: 24 << 30,
        disks: vec![skiff_shared::protocol::Disk {
            mount: "/".into(),
            filesystem: "ext4".into(),
            total_bytes: 250 << 30,
            available_bytes: 80 << 30,
        }],
        addresses: vec!["10.0.0.2".into(), "fe80::1".into()],
        docker_version: Some("26.1.5".into()),
        docker_api_version: Some("1.45".into()),
        mesh_endpoint: None,
        extra: BTreeMap::new(),
    }
}

struct Joined {
    identity: CachedIdentity,
    meta: CacheMeta,
}

/// Joins one simulated agent exactly as `skiff-agent join` does: pin the
/// CA from the token, then POST a CSR for a fresh key.
async fn join_one(
    addr: &str,
    token: &JoinToken,
    name: String,
    facts: HostFacts,
) -> anyhow::Result<Joined> {
    let server_name = server_name_of(addr).map_err(anyhow::Error::msg)?;
    let key = KeyPair::generate().context("generating a key")?;
    let csr_pem = CertificateParams::default()
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .context("making a CSR")?;
    let (mut config, verifier) = join_client_config(token.ca_fingerprint)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .context("connect timed out")?
        .context("connect")?;
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(server_name, tcp),
    )
    .await
    .context("TLS handshake timed out")?
    .context("TLS handshake")?;
    let ca = verifier
        .ca()
        .context("the TLS handshake did not pin the CA")?;
    let request = JoinRequest {
        token_id: token.id.clone(),
        secret: token.secret.clone(),
        csr_pem,
        name: name.clone(),
        labels: BTreeMap::from([("bench".to_owned(), "link".to_owned())]),
        facts,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .context("HTTP handshake")?;
    tokio::spawn(conn);
    let req = hyper::Request::post(JOIN_PATH)
        .header(hyper::header::HOST, addr)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&request)?)))?;
    let resp = tokio::time::timeout(Duration::from_secs(60), sender.send_request(req))
        .await
        .context("join request timed out")?
        .context("join request")?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.message)
            .unwrap_or_else(|_| format!("HTTP {status}"));
        bail!("join refused: {message}");
    }
    let resp: JoinResponse = serde_json::from_slice(&body).context("join answer")?;
    let answered_ca = certs_from_pem(&resp.ca_pem, "CA")?;
    if answered_ca.first().map(|c| fingerprint(c)) != Some(fingerprint(&ca)) {
        bail!("the CA in the join answer is not the pinned CA");
    }
    Ok(Joined {
        identity: CachedIdentity {
            name,
            node_id: resp.node_id,
            key_pem: key.serialize_pem(),
            cert_pem: resp.cert_pem,
        },
        meta: CacheMeta {
            ca_pem: resp.ca_pem,
            plan_public_key: resp.plan_public_key,
        },
    })
}

/// Joins `count` agents with one token, `concurrency` at a time, retrying
/// connection failures a few times.
async fn join_many(
    addr: &str,
    token: JoinToken,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<(CacheMeta, Vec<CachedIdentity>)> {
    let run_id = hex::encode(
        skiff_shared::random_bytes::<3>()
            .map_err(|_| anyhow::anyhow!("the system random source failed"))?,
    );
    let sem = Arc::new(Semaphore::new(concurrency));
    let token = Arc::new(token);
    let mut set = JoinSet::new();
    for i in 0..count {
        let sem = sem.clone();
        let token = token.clone();
        let addr = addr.to_owned();
        let name = format!("bench-{run_id}-{i:05}");
        set.spawn(async move {
            // The semaphore is never closed, so acquiring cannot fail.
            let _permit = sem.acquire().await;
            let mut facts = facts_template();
            facts.hostname = name.clone();
            let mut last = None;
            for attempt in 0..4u32 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                }
                match join_one(&addr, &token, name.clone(), facts.clone()).await {
                    Ok(j) => return Ok(j),
                    // A refusal will not change on retry.
                    Err(e) if e.to_string().starts_with("join refused") => return Err(e),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| anyhow::anyhow!("join failed")))
        });
    }
    let started = Instant::now();
    let mut meta: Option<CacheMeta> = None;
    let mut ids = Vec::with_capacity(count);
    let mut errors = 0usize;
    let mut first_error = None;
    let mut last_report = Instant::now();
    while let Some(done) = set.join_next().await {
        match done {
            Ok(Ok(j)) => {
                if let Some(m) = &meta {
                    if m.ca_pem != j.meta.ca_pem {
                        bail!("two join answers named different CAs");
                    }
                } else {
                    meta = Some(j.meta);
                }
                ids.push(j.identity);
            }
            Ok(Err(e)) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("join task failed: {e}"));
            }
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "  joined {}/{count} ({errors} failed) after {:.0} s",
                ids.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    if errors > 0 {
        bail!(
            "{errors} of {count} joins failed; first error: {}",
            first_error.unwrap_or_default()
        );
    }
    let meta = meta.context("no join answered")?;
    Ok((meta, ids))
}

pub(crate) async fn cluster_view(client: &Client) -> anyhow::Result<ClusterView> {
    Ok(client
        .call::<ClusterView>(Method::GET, "/cluster", None::<&()>)
        .await?)
}

/// Obtains `n` identities: reused from the cache where the coordinator
/// still accepts them, joined for the rest.
pub(crate) async fn identities(
    cli: &Cli,
    client: &Client,
) -> anyhow::Result<(CacheMeta, Vec<CachedIdentity>)> {
    let n = cli.agents;
    let cluster = cluster_view(client).await?;
    let mut have: Vec<CachedIdentity> = Vec::new();
    let mut meta: Option<CacheMeta> = None;
    if let Some(dir) = &cli.cache
        && let Some((cached_meta, ids)) = load_cache(dir)?
    {
        let nodes: Vec<NodeView> = client.call(Method::GET, "/nodes", None::<&()>).await?;
        let live: HashSet<String> = nodes.into_iter().map(|n| n.id).collect();
        let total = ids.len();
        let (kept, why) = usable_cached(&cached_meta, ids, &cluster.ca_fingerprint, &live);
        eprintln!(
            "Cache {}: {} of {total} identities usable ({why}).",
            dir.display(),
            kept.len()
        );
        emit(&json!({"event": "cache", "cached": total, "usable": kept.len()}));
        if !kept.is_empty() {
            have = kept;
            meta = Some(cached_meta);
        }
    }
    let missing = n.saturating_sub(have.len());
    if missing > 0 {
        let uses = u32::try_from(missing).context("too many agents for one join token")?;
        let created: CreatedJoinToken = client
            .call(
                Method::POST,
                "/tokens/join",
                Some(&CreateJoinToken {
                    ttl: Some("2h".into()),
                    uses: Some(uses),
                    // The label every simulated agent asks for at join.
                    labels: Some(BTreeMap::from([("bench".to_owned(), "link".to_owned())])),
                }),
            )
            .await
            .context("creating the join token")?;
        let token: JoinToken = created
            .token
            .parse()
            .map_err(|e| anyhow::anyhow!("the API returned an unusable token: {e}"))?;
        eprintln!(
            "Joining {missing} agents ({} at a time)...",
            cli.join_concurrency
        );
        let started = Instant::now();
        let (joined_meta, joined) =
            join_many(&cli.agent_addr, token, missing, cli.join_concurrency).await?;
        let secs = started.elapsed().as_secs_f64();
        emit(&json!({
            "event": "joins",
            "joined": joined.len(),
            "seconds": round2(secs),
            "per_second": round2(joined.len() as f64 / secs.max(1e-9)),
        }));
        eprintln!(
            "Joined {} agents in {secs:.1} s ({:.0}/s).",
            joined.len(),
            joined.len() as f64 / secs.max(1e-9)
        );
        if let Some(m) = &meta
            && m.ca_pem != joined_meta.ca_pem
        {
            bail!("the cached CA and the CA from the join differ");
        }
        meta.get_or_insert(joined_meta);
        have.extend(joined);
    }
    let meta = meta.context("no identities")?;
    if let Some(dir) = &cli.cache {
        store_cache(dir, &meta, &have)?;
    }
    have.truncate(n);
    Ok((meta, have))
}
