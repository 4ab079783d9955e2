//! Wiring: prepare the coordinator's handles from a validated config, then
//! serve the API and the agent port in the task tree until it is cancelled.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use skiff_shared::files::{PRIVATE, write_atomic};
use skiff_shared::tasks::TaskTree;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::api::Api;
use crate::auth::ApiTokenSecret;
use crate::certs::CertBook;
use crate::config::{ApiLimits, Config};
use crate::deploy::Deployer;
use crate::dns::RecordsBook;
use crate::events::EventLog;
use crate::identity::Identity;
use crate::link::{AgentBinary, Link, LinkMetrics, TlsConfigs};
use crate::listener::HttpLimits;
use crate::network::ClusterNetwork;
use crate::now_ms;
use crate::observed::ObservedBook;
use crate::plans::PlanBook;
use crate::sections::{SectionHandles, Sections};
use crate::sessions::Sessions;
use crate::store::ApiToken;
use crate::store::prelude::*;
use crate::store::sqlite::SqliteStore;

/// How often last-seen times of connected nodes are written.
const SEEN_FLUSH: Duration = Duration::from_secs(60);
/// The first admin API token's file in the data dir (0600), removed when
/// `skiff login` replaces the token.
const INITIAL_TOKEN_FILE: &str = "initial-admin-token";
/// How long the DNS records wait for more reports before they are made
/// again after one.
const RECORDS_COALESCE: Duration = Duration::from_millis(50);
/// How long shutdown waits for tasks to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
    #[error("{0}")]
    Network(String),
    #[error("{0}")]
    Config(String),
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

/// Initialises or loads the data dir and the store, and wires the
/// coordinator's handles; its tasks will run on `tree`. Binds nothing.
pub async fn prepare(config: Config, tree: &TaskTree) -> Result<Coordinator, ServerError> {
    let (identity, created) = Identity::load_or_init(&config.data_dir, &config.advertise)?;
    if created {
        info!(dir = %config.data_dir.display(), cluster = %identity.cluster_id, "Data dir initialised: new cluster CA and keys.");
    }
    let store = SqliteStore::open(&config.data_dir.join("skiff.db")).await?;
    if store.api_token_count().await? == 0 {
        let token = ApiTokenSecret::generate().map_err(|_| ServerError::Random)?;
        let path = config.data_dir.join(INITIAL_TOKEN_FILE);
        write_atomic(&path, format!("{token}\n").as_bytes(), PRIVATE).map_err(|source| {
            ServerError::Write {
                path: path.clone(),
                source,
            }
        })?;
        store
            .insert_api_token(&ApiToken {
                id: token.id.clone(),
                name: crate::auth::INITIAL_TOKEN_NAME.into(),
                secret_hash: token.hash(),
                role: skiff_api_types::ApiRole::Admin,
                stacks: Vec::new(),
                created_at: now_ms(),
                expires_at: None,
                revoked_at: None,
                last_used_at: None,
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
    crate::secrets::complete_versions(&store, &secret_key).await?;
    let store: Arc<dyn Store> = Arc::new(store);
    let observed = Arc::new(ObservedBook::default());
    let network = match config.network.enabled {
        true => Some(Arc::new(
            open_network(&config.network, store.clone(), observed.clone()).await?,
        )),
        false => None,
    };
    let epoch = next_epoch(store.as_ref()).await?;
    info!(epoch, "Plans of this run carry a new epoch.");
    let rows = store.node_plans().await?;
    // ElasticDNS runs with the cluster network, on Skiff's own mesh: with
    // Weave Net, containers' cluster addresses are Weave's, and their
    // bridges are not the ones the records' servers listen on.
    let dns = match &network {
        Some(n) if n.settings().mesh != skiff_shared::sections::mesh::MeshMode::Weave => {
            Some(Arc::new(open_records(epoch, store.as_ref(), &rows).await?))
        }
        _ => None,
    };
    let sessions = Arc::new(Sessions::new(revoked));
    let events = Arc::new(EventLog::default());
    let acme = config
        .acme
        .settings()
        .map_err(|e| ServerError::Config(e.to_string()))?;
    let certs = Arc::new(
        CertBook::open(
            store.clone(),
            secret_key.clone(),
            sessions.clone(),
            events.clone(),
            acme,
        )
        .await?,
    );
    let logs = Arc::new(open_logs(&config, store.clone()).await?);
    let sections = Arc::new(Sections::new(&SectionHandles {
        store: store.clone(),
        secret_key: secret_key.clone(),
        observed: observed.clone(),
        network: network.clone(),
        dns: dns.clone(),
        ingress: config.ingress.settings(),
        certs: Some(certs.clone()),
        logs: Some(logs.clone()),
    }));
    let plans = Arc::new(PlanBook::new(sections.clone()));
    for row in rows {
        let node_id = row.node_id.clone();
        if let Some(plan) = plans.restore(row).map_err(ServerError::Encode)? {
            store
                .put_node_plan(&crate::plans::row(&node_id, &plan), now_ms())
                .await?;
        }
    }
    let stamp = crate::plans::Stamp {
        cluster_id: identity.cluster_id.clone(),
        epoch,
    };
    let identity = Arc::new(identity);
    let metrics = Arc::new(LinkMetrics::default());
    let deployer = Deployer::new(
        store.clone(),
        plans.clone(),
        observed.clone(),
        sessions.clone(),
        events.clone(),
        tree,
        config.host_lost_grace,
    )
    .with_network(network.clone())
    .with_dns(dns)
    .with_logs(Some(logs.clone()));
    let link = Arc::new(Link {
        identity: identity.clone(),
        store: store.clone(),
        sessions: sessions.clone(),
        plans,
        events: events.clone(),
        metrics: metrics.clone(),
        agent_binary,
        heartbeat_interval: config.heartbeat_interval,
        cert_ttl: config.cert_ttl,
        stamp,
        refused: crate::link::Refused::new(&config.agent_limits),
        limits: config.agent_limits.clone(),
        network,
        logs: Some(logs.clone()),
    });
    let api = Api {
        store: store.clone(),
        sessions: sessions.clone(),
        observed,
        events,
        deployer: deployer.clone(),
        sections,
        identity,
        secret_key,
        certs: certs.clone(),
        logs,
        metrics,
        join_token_ttl: config.join_token_ttl,
        tree: tree.clone(),
        initial_token_file: config.data_dir.join(INITIAL_TOKEN_FILE),
    };
    Ok(Coordinator {
        tree: tree.clone(),
        store,
        sessions,
        deployer,
        link,
        api,
        api_limits: config.api_limits.clone(),
        certs,
    })
}

/// The epoch of this start of the coordinator: later than the last one
/// recorded and than the wall clock's seconds, so that a coordinator
/// restored from a backup (whose recorded epoch and plan generations went
/// back) still starts a later epoch than any its agents have seen.
async fn next_epoch(store: &dyn Store) -> Result<u64, ServerError> {
    let last = store
        .meta("epoch")
        .await?
        .and_then(|e| e.parse::<u64>().ok())
        .unwrap_or(0);
    let now = skiff_shared::unix_millis() / 1000;
    let epoch = (last + 1).max(now);
    store.set_meta("epoch", &epoch.to_string()).await?;
    Ok(epoch)
}

/// The DNS records book at start: the records the stored plans carry
/// (what hosts serve now), and every stack's current DNS settings.
async fn open_records(
    epoch: u64,
    store: &dyn Store,
    rows: &[crate::store::NodePlanRow],
) -> Result<RecordsBook, ServerError> {
    use skiff_shared::sections::SectionKind;
    use skiff_shared::sections::dns::{Dns, DnsSection};
    let book = RecordsBook::new(epoch);
    let stored: Vec<DnsSection> = rows
        .iter()
        .filter_map(|r| r.sections.get(Dns::NAME))
        .filter_map(|s| serde_json::from_value(s.body.clone()).ok())
        .collect();
    book.seed(&stored, crate::dns::node_infos(store.nodes(false).await?));
    for stack in store.stacks().await? {
        let releases = store.releases(&stack.name).await?;
        let Some(current) = releases.iter().find(|r| r.number == stack.current_release) else {
            continue;
        };
        match crate::deploy::defs_of(current) {
            Ok(defs) => book.set_services(&stack.name, &defs),
            Err(error) => {
                warn!(stack = %stack.name, error = %error, "A release cannot be read; its services get the default DNS settings.");
            }
        }
    }
    Ok(book)
}

/// The log book at start: `[logs]`, the cluster's sinks, and every
/// stack's own sinks from its current release.
async fn open_logs(
    config: &Config,
    store: Arc<dyn Store>,
) -> Result<crate::logs::LogBook, ServerError> {
    let files = config
        .logs
        .settings()
        .map_err(|e| ServerError::Config(e.to_string()))?;
    let book = crate::logs::LogBook::load(store.clone(), files).await?;
    for stack in store.stacks().await? {
        let releases = store.releases(&stack.name).await?;
        let Some(current) = releases.iter().find(|r| r.number == stack.current_release) else {
            continue;
        };
        match crate::deploy::defs_of(current) {
            Ok(defs) => book.set_stack(&stack.name, crate::logs::release_sinks(&defs)),
            Err(error) => {
                warn!(stack = %stack.name, error = %error, "A release cannot be read; its stack ships to the cluster's sinks.");
            }
        }
    }
    Ok(book)
}

/// The cluster network's records, with its range checked: the one the
/// cluster was created with (a later change is refused), and at creation
/// one that overlaps none of this host's networks.
async fn open_network(
    config: &crate::config::NetworkConfig,
    store: Arc<dyn Store>,
    observed: Arc<ObservedBook>,
) -> Result<ClusterNetwork, ServerError> {
    let settings = config
        .settings()
        .map_err(|e| ServerError::Network(e.to_string()))?;
    let range = settings.range.net.to_string();
    let mesh = settings.mesh.as_str();
    match store.meta(RANGE_KEY).await? {
        Some(stored) if stored != range => {
            return Err(ServerError::Network(format!(
                "[network] range = {range:?} differs from the cluster's range {stored}, fixed when the cluster was created: set it back to {stored:?} (the range of a running cluster cannot change)"
            )));
        }
        Some(_) => {}
        None => {
            let routes = crate::network::host_routes();
            if let Some((net, dev)) = routes
                .iter()
                .find(|(net, _)| crate::network::ipam::overlaps(net, &settings.range.net))
            {
                // Suggest only ranges this host does not use either.
                let free: Vec<&str> = [
                    "10.66.0.0/16",
                    "172.30.0.0/16",
                    "10.99.0.0/16",
                    "10.248.0.0/16",
                ]
                .into_iter()
                .filter(|c| {
                    c.parse::<ipnet::Ipv4Net>().is_ok_and(|c| {
                        !routes
                            .iter()
                            .any(|(n, _)| crate::network::ipam::overlaps(n, &c))
                    })
                })
                .collect();
                return Err(ServerError::Network(format!(
                    "[network] range = {range:?} overlaps {net}, a network of this host (on {dev}): choose a private range that no host uses{}",
                    if free.is_empty() {
                        String::new()
                    } else {
                        format!(", such as {}", free.join(" or "))
                    }
                )));
            }
            store.set_meta(RANGE_KEY, &range).await?;
            info!(range = %range, mesh, "Cluster network range fixed.");
        }
    }
    match store.meta(MESH_KEY).await? {
        Some(stored) if stored != mesh => {
            return Err(ServerError::Network(format!(
                "[network] mesh = {mesh:?} differs from the cluster's mesh {stored:?}: set it back (changing the mesh of a running cluster is not supported: bridges would need new MTUs)"
            )));
        }
        Some(_) => {}
        None => store.set_meta(MESH_KEY, mesh).await?,
    }
    let store: Arc<dyn crate::store::DeployStore> = store;
    Ok(ClusterNetwork::load(settings, store, observed).await?)
}

const RANGE_KEY: &str = "network.range";
const MESH_KEY: &str = "network.mesh";

/// A prepared coordinator: its handles, wired, with nothing bound yet.
#[derive(Debug)]
pub struct Coordinator {
    tree: TaskTree,
    store: Arc<dyn Store>,
    sessions: Arc<Sessions>,
    deployer: Deployer,
    link: Arc<Link>,
    api: Api,
    api_limits: ApiLimits,
    certs: Arc<CertBook>,
}

#[cfg(test)]
impl Coordinator {
    /// The certificates handle, for tests that stand in for routes.
    pub(crate) fn certs(&self) -> Arc<CertBook> {
        self.certs.clone()
    }
}

/// Serves until the coordinator's tree is cancelled, then waits up to
/// [`SHUTDOWN_GRACE`] for every task to end.
pub async fn run(c: Coordinator, api: TcpListener, agent: TcpListener) -> Result<(), ServerError> {
    let tls = TlsConfigs::new(&c.link)?;
    info!(
        api = %api.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        agent = %agent.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        ca_fingerprint = %hex::encode(c.link.identity.ca.fingerprint()),
        "Coordinator serving."
    );
    crate::listener::check_open_file_limit(
        c.api_limits.max_connections
            + c.link.limits.max_connections
            + c.link.limits.max_links
            + crate::listener::FILES_BESIDES_CONNECTIONS,
    );
    let tree = c.tree.clone();
    tree.spawn(
        "agent-port",
        crate::link::serve(c.link.clone(), agent, tls, tree.child()),
    );
    let app =
        crate::api::router(c.api.clone()).layer(DefaultBodyLimit::max(c.api_limits.max_body_bytes));
    tree.spawn(
        "api",
        crate::listener::serve_api(
            api,
            app,
            HttpLimits::from(&c.api_limits),
            c.api_limits.max_connections,
            tree.child(),
        ),
    );
    let (store, sessions, t) = (c.store.clone(), c.sessions.clone(), tree.clone());
    tree.spawn("last-seen", async move {
        let mut tick = tokio::time::interval(SEEN_FLUSH);
        loop {
            tokio::select! {
                () = t.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(error) = store.node_seen(&sessions.ids(), now_ms()).await {
                        warn!(error = %error, "Recording last-seen times failed.");
                    }
                }
            }
        }
    });
    // The cluster network follows hosts joining, leaving and reporting
    // new keys: every host's plan is built again.
    if let Some(network) = c.deployer.network.clone() {
        let (deployer, t) = (c.deployer.clone(), tree.clone());
        tree.spawn("network-replan", async move {
            let mut changes = network.watch();
            changes.mark_changed();
            loop {
                tokio::select! {
                    () = t.cancelled() => break,
                    changed = changes.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        changes.borrow_and_update();
                        if let Err(error) = crate::deploy::replan_all(&deployer).await {
                            warn!(error = %error, "Building plans for the cluster network failed.");
                        }
                    }
                }
            }
        });
    }
    // ElasticDNS follows the agents' reports: a replica that became
    // healthy, unhealthy, or stopped changes the records, and every host
    // gets them. A burst of reports makes one new generation.
    if c.deployer.dns.is_some() {
        let (deployer, t) = (c.deployer.clone(), tree.clone());
        tree.spawn("dns-records", async move {
            let mut reports = deployer.observed.watch();
            reports.mark_changed();
            loop {
                tokio::select! {
                    () = t.cancelled() => break,
                    changed = reports.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                }
                // Let the reports of the same moment arrive.
                tokio::select! {
                    () = t.cancelled() => break,
                    () = tokio::time::sleep(RECORDS_COALESCE) => {}
                }
                reports.borrow_and_update();
                if let Err(error) = crate::deploy::refresh_records(&deployer).await {
                    warn!(error = %error, "Making the DNS records failed.");
                }
            }
        });
    }
    // Certificates: expiry warnings, and ACME when it is configured.
    c.certs.spawn(&tree);
    // The ingress: ACME is asked for the domains of the routes with TLS
    // whenever the routes change, and edge hosts get new plans whenever
    // the certificates or challenges to serve change.
    if let Some(book) = c.deployer.dns.clone() {
        let (certs, t) = (c.certs.clone(), tree.clone());
        tree.spawn("ingress-domains", async move {
            let mut changes = book.watch_ingress();
            changes.mark_changed();
            loop {
                tokio::select! {
                    () = t.cancelled() => break,
                    changed = changes.changed() => if changed.is_err() { break },
                }
                changes.borrow_and_update();
                certs.want(crate::ingress::tls_domains(&book.ingress()));
            }
        });
        replan_on_change(
            &tree,
            "ingress-certificates",
            c.deployer.clone(),
            c.certs.changed(),
            "Sending edge hosts new certificates failed.",
        );
    }
    // A change of sinks (the API, a stack's release, a node's name)
    // gives every host its new `logs` section.
    if let Some(logs) = c.deployer.logs.clone() {
        replan_on_change(
            &tree,
            "logs-replan",
            c.deployer.clone(),
            logs.watch(),
            "Sending hosts their new log sinks failed.",
        );
    }
    // Rollouts the last run of the coordinator left unfinished carry on.
    let deployer = c.deployer.clone();
    tree.spawn("resume", async move {
        match crate::deploy::resume(&deployer).await {
            Ok(0) => {}
            Ok(n) => info!(stacks = n, "Resumed unfinished rollouts."),
            Err(error) => warn!(error = %error, "Resuming unfinished rollouts failed."),
        }
    });
    let (deployer, t) = (c.deployer.clone(), tree.clone());
    tree.spawn("host-lost", async move {
        // Check often relative to the grace period, but not busily.
        let period = (deployer.host_lost_grace / 4)
            .clamp(Duration::from_millis(200), Duration::from_secs(5));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                () = t.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(error) = crate::deploy::reschedule_lost(&deployer).await {
                        warn!(error = %error, "Rescheduling after a host loss failed.");
                    }
                }
            }
        }
    });
    tree.cancelled().await;
    if tokio::time::timeout(SHUTDOWN_GRACE, tree.wait())
        .await
        .is_err()
    {
        warn!("Shutdown drain timed out.");
    }
    info!("Coordinator stopped.");
    Ok(())
}

/// Builds every node's plan again whenever `changes` fires, until the tree
/// is cancelled or the sender is gone.
fn replan_on_change(
    tree: &TaskTree,
    name: &'static str,
    deployer: crate::deploy::Deployer,
    mut changes: tokio::sync::watch::Receiver<u64>,
    failed: &'static str,
) {
    let t = tree.clone();
    tree.spawn(name, async move {
        loop {
            tokio::select! {
                () = t.cancelled() => break,
                changed = changes.changed() => if changed.is_err() { break },
            }
            changes.borrow_and_update();
            if let Err(error) = crate::deploy::replan_all(&deployer).await {
                warn!(error = %error, "{failed}");
            }
        }
    });
}
