//! Wiring: prepare the state from a validated config, then serve the API
//! and the agent port until shutdown.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use skiff_shared::files::{PRIVATE, write_atomic};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::ApiTokenSecret;
use crate::config::Config;
use crate::identity::Identity;
use crate::link::TlsConfigs;
use crate::state::{AgentBinary, AppState, Sessions, now_ms};
use crate::store::sqlite::SqliteStore;
use crate::store::{ApiToken, Store};

/// How often last-seen times of connected nodes are written.
const SEEN_FLUSH: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Identity(#[from] crate::identity::IdentityError),
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Link(#[from] crate::link::LinkSetupError),
    #[error("system random source failed")]
    Random,
    #[error("{0}")]
    Secrets(#[from] crate::secrets::SecretError),
    #[error("a stored plan cannot be encoded again: {0}")]
    Encode(serde_json::Error),
}

/// The agent binary to serve: the configured one, or `skiff-agent` beside
/// this executable.
fn find_agent_binary(config: &Config) -> Option<PathBuf> {
    if let Some(p) = &config.agent_binary {
        return Some(p.clone());
    }
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.join("skiff-agent");
    candidate.is_file().then_some(candidate)
}

async fn checksum(path: &Path) -> std::io::Result<String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(path)?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
        }
        Ok(hex::encode(ctx.finish()))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Initialises or loads the data dir and the store. Binds nothing.
pub async fn prepare(config: Config) -> Result<Arc<AppState>, ServerError> {
    let (identity, created) = Identity::load_or_init(&config.data_dir, &config.advertise)?;
    if created {
        info!(dir = %config.data_dir.display(), cluster = %identity.cluster_id, "Data dir initialised: new cluster CA and keys.");
    }
    let store = SqliteStore::open(&config.data_dir.join("skiff.db")).await?;
    if store.api_token_count().await? == 0 {
        let token = ApiTokenSecret::generate().map_err(|_| ServerError::Random)?;
        let path = config.data_dir.join("initial-admin-token");
        write_atomic(&path, format!("{token}\n").as_bytes(), PRIVATE).map_err(|source| {
            ServerError::Write {
                path: path.clone(),
                source,
            }
        })?;
        store
            .insert_api_token(&ApiToken {
                id: token.id.clone(),
                name: "initial-admin".into(),
                secret_hash: token.hash(),
                role: "admin".into(),
                created_at: now_ms(),
                revoked_at: None,
            })
            .await?;
        info!(path = %path.display(), "First admin API token written (shown nowhere else).");
    }
    let revoked: HashSet<String> = store
        .nodes(true)
        .await?
        .into_iter()
        .filter(|n| n.removed_at.is_some())
        .map(|n| n.id)
        .collect();
    let agent_binary = match find_agent_binary(&config) {
        Some(path) => match checksum(&path).await {
            Ok(sha256_hex) => Some(AgentBinary { path, sha256_hex }),
            Err(error) => {
                warn!(error = %error, path = %path.display(), "Agent binary unreadable; it will not be served.");
                None
            }
        },
        None => {
            warn!(
                "No agent binary found beside the coordinator; set agent_binary to serve installs."
            );
            None
        }
    };
    let secret_key = Arc::new(crate::secrets::SecretKey::load_or_create(&config.data_dir)?);
    let store: Arc<dyn Store> = Arc::new(store);
    let observed = Arc::new(crate::observed::ObservedBook::default());
    let sections = crate::sections::Sections::new(&crate::sections::SectionHandles {
        store: store.clone(),
        secret_key: secret_key.clone(),
        observed: observed.clone(),
    });
    let plans = crate::plans::PlanBook::new(Arc::new(sections));
    for row in store.node_plans().await? {
        let node_id = row.node_id.clone();
        if let Some(plan) = plans.restore(row).map_err(ServerError::Encode)? {
            store
                .put_node_plan(&crate::plans::row(&node_id, &plan), now_ms())
                .await?;
        }
    }
    Ok(Arc::new(AppState {
        config,
        identity,
        store,
        sessions: Sessions::default(),
        revoked: Arc::new(RwLock::new(revoked)),
        agent_binary,
        shutdown: CancellationToken::new(),
        metrics: Default::default(),
        plans,
        observed,
        deploy_lock: Default::default(),
        rollouts: Default::default(),
        events: Default::default(),
        secret_key,
        started_at_ms: now_ms(),
    }))
}

/// Serves until `state.shutdown` is cancelled, then drains for up to 10 s.
pub async fn run(
    state: Arc<AppState>,
    api: TcpListener,
    agent: TcpListener,
) -> Result<(), ServerError> {
    let tls = TlsConfigs::new(&state)?;
    info!(
        api = %api.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        agent = %agent.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        ca_fingerprint = %hex::encode(state.identity.ca.fingerprint()),
        "Coordinator serving."
    );
    let link = tokio::spawn(crate::link::serve(state.clone(), agent, tls));
    let app = crate::api::router(state.clone());
    let shutdown = state.shutdown.clone();
    let api_task = tokio::spawn(async move {
        let serve =
            axum::serve(api, app).with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(error) = serve.await {
            warn!(error = %error, "API server failed.");
        }
    });
    let flush_state = state.clone();
    let flush = tokio::spawn(async move {
        let mut tick = tokio::time::interval(SEEN_FLUSH);
        loop {
            tokio::select! {
                () = flush_state.shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let ids = flush_state.sessions.ids();
                    if let Err(error) = flush_state.store.node_seen(&ids, now_ms()).await {
                        warn!(error = %error, "Recording last-seen times failed.");
                    }
                }
            }
        }
    });
    // Rollouts the last run of the coordinator left unfinished carry on.
    let resume_state = state.clone();
    tokio::spawn(async move {
        match crate::deploy::resume(&resume_state).await {
            Ok(0) => {}
            Ok(n) => info!(stacks = n, "Resumed unfinished rollouts."),
            Err(error) => warn!(error = %error, "Resuming unfinished rollouts failed."),
        }
    });
    let lost_state = state.clone();
    let lost = tokio::spawn(async move {
        // Check often relative to the grace period, but not busily.
        let period = (lost_state.config.host_lost_grace / 4)
            .clamp(Duration::from_millis(200), Duration::from_secs(5));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                () = lost_state.shutdown.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(error) = crate::deploy::reschedule_lost(&lost_state).await {
                        warn!(error = %error, "Rescheduling after a host loss failed.");
                    }
                }
            }
        }
    });
    state.shutdown.cancelled().await;
    let drain = async {
        let _ = link.await;
        let _ = api_task.await;
        let _ = flush.await;
        let _ = lost.await;
        // Give sessions a moment to send their close frames.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !state.sessions.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        warn!("Shutdown drain timed out.");
    }
    info!("Coordinator stopped.");
    Ok(())
}
