//! Launching coordinators and agents as real processes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use skiff_api_types::{
    ApiRole, CreateApiToken, CreateJoinToken, CreatedApiToken, CreatedJoinToken, NodeStatus,
    NodeView, TaskView,
};
use skiff_cli::client::{Client, Method};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::proxy::Proxy;
use crate::target_bin;
use crate::wait::{wait_for, wait_until};

/// How long processes get to come up in tests.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// Reserves a free loopback port (the listener is closed again; the race
/// with other processes is harmless on a test machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// How the harness starts a daemon process, beyond its flags.
#[derive(Debug, Clone, Default)]
pub struct ProcessOptions {
    /// Environment variables set after the harness's own: `SKIFF_LOG`
    /// here replaces the harness's default.
    pub env: Vec<(String, String)>,
    /// The file mode creation mask the process starts with (set by a shell
    /// that then execs the binary); `None` keeps the test's own.
    pub umask: Option<u32>,
    /// The process's limit on open files (`ulimit -n`, set the same way);
    /// `None` inherits the test's.
    pub open_files: Option<u64>,
}

impl ProcessOptions {
    /// A command that runs `program` with these options; `log_filter` is
    /// the harness's default `SKIFF_LOG`.
    fn command(&self, program: &Path, log_filter: &str) -> Command {
        let mut setup = Vec::new();
        if let Some(mask) = self.umask {
            setup.push(format!("umask {mask:03o}"));
        }
        if let Some(n) = self.open_files {
            setup.push(format!("ulimit -n {n}"));
        }
        let mut cmd = if setup.is_empty() {
            Command::new(program)
        } else {
            // The shell sets them, then becomes the program.
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(format!("{} && exec \"$0\" \"$@\"", setup.join(" && ")))
                .arg(program);
            sh
        };
        cmd.env("SKIFF_LOG", log_filter);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }
}

/// Coordinator settings for a test, written to its config file.
#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    pub heartbeat_interval: Duration,
    pub cert_ttl: Duration,
    /// Address the agent port binds (default 127.0.0.1).
    pub agent_ip: String,
    pub advertise: Vec<String>,
    /// How long a silent node is given before its replicas move.
    pub host_lost_grace: Duration,
    /// The coordinator process's environment and umask.
    pub process: ProcessOptions,
    /// Deadlines and caps of both ports; unset ones keep the coordinator's defaults.
    pub limits: ListenerLimits,
    /// The keys of the `[network]` table. Off by default: agents on this
    /// machine share one kernel and one engine, where the cluster
    /// network's per-network subnets would collide; tier-2 hosts turn it on.
    pub network: String,
    /// More tables of the coordinator's config (`[acme]`, say), written
    /// after `[network]`'s keys; empty by default.
    pub tables: String,
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        Self {
            // Short for quick tests, but with room for a loaded two-core machine.
            heartbeat_interval: Duration::from_secs(1),
            cert_ttl: Duration::from_secs(3600),
            agent_ip: "127.0.0.1".into(),
            advertise: Vec::new(),
            host_lost_grace: Duration::from_secs(60),
            process: ProcessOptions::default(),
            limits: ListenerLimits::default(),
            network: "enabled = false\n".into(),
            tables: String::new(),
        }
    }
}

/// Listener limits for a test, written as the coordinator's
/// `[api_limits]` and `[agent_limits]` tables; `None` keeps the default.
#[derive(Debug, Clone, Default)]
pub struct ListenerLimits {
    /// Both ports: time to send a request head.
    pub header_timeout: Option<Duration>,
    /// Both ports: time to send a request body.
    pub body_timeout: Option<Duration>,
    /// Both ports: keep-alive idle time, and time an answer may go unread.
    pub idle_timeout: Option<Duration>,
    /// Both ports: largest request head.
    pub max_header_bytes: Option<usize>,
    /// API: connections at once.
    pub api_max_connections: Option<usize>,
    /// API: largest request body.
    pub api_max_body_bytes: Option<usize>,
    /// Agent port: total time of one public request.
    pub request_timeout: Option<Duration>,
    /// Agent port: connections that are not agent links, at once.
    pub agent_max_connections: Option<usize>,
    /// Agent port: such connections from one source.
    pub max_connections_per_source: Option<usize>,
    /// Agent port: the window refusals are counted and logged in.
    pub refusal_window: Option<Duration>,
    /// Agent port: refusals a source may have in a window before it is throttled.
    pub max_refusals_per_source: Option<u32>,
}

impl ListenerLimits {
    /// The two TOML tables.
    fn toml(&self) -> String {
        fn line<T: std::fmt::Display>(out: &mut String, key: &str, v: Option<T>) {
            if let Some(v) = v {
                out.push_str(&format!("{key} = {v}\n"));
            }
        }
        let ms = |d: Option<Duration>| d.map(|d| format!("\"{}ms\"", d.as_millis()));
        let (mut api, mut agent) = (String::new(), String::new());
        for out in [&mut api, &mut agent] {
            line(out, "header_timeout", ms(self.header_timeout));
            line(out, "body_timeout", ms(self.body_timeout));
            line(out, "idle_timeout", ms(self.idle_timeout));
            line(out, "max_header_bytes", self.max_header_bytes);
        }
        line(&mut api, "max_connections", self.api_max_connections);
        line(&mut api, "max_body_bytes", self.api_max_body_bytes);
        line(&mut agent, "request_timeout", ms(self.request_timeout));
        line(&mut agent, "max_connections", self.agent_max_connections);
        line(
            &mut agent,
            "max_connections_per_source",
            self.max_connections_per_source,
        );
        line(&mut agent, "refusal_window", ms(self.refusal_window));
        line(
            &mut agent,
            "max_refusals_per_source",
            self.max_refusals_per_source,
        );
        // A table only when it sets something: the defaults need none.
        let table = |name: &str, keys: String| {
            if keys.is_empty() {
                keys
            } else {
                format!("[{name}]\n{keys}")
            }
        };
        table("api_limits", api) + &table("agent_limits", agent)
    }
}

/// A coordinator process with its own temp dir and ports.
#[derive(Debug)]
pub struct Coordinator {
    pub root: TempDir,
    pub api: SocketAddr,
    pub agent: SocketAddr,
    process: ProcessOptions,
    child: Option<Child>,
}

impl Coordinator {
    /// Starts a coordinator and waits until its API answers.
    pub async fn launch(opts: CoordinatorOptions) -> anyhow::Result<Self> {
        let root = tempfile::Builder::new().prefix("skiff-coord-").tempdir()?;
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let agent: SocketAddr = format!("{}:{}", opts.agent_ip, free_port()).parse()?;
        let advertise = opts
            .advertise
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            "data_dir = {:?}\napi_listen = \"{api}\"\nagent_listen = \"{agent}\"\nadvertise = [{advertise}]\n\
             heartbeat_interval = \"{}ms\"\ncert_ttl = \"{}s\"\nhost_lost_grace = \"{}ms\"\n{}[network]\n{}{}",
            root.path().join("data"),
            opts.heartbeat_interval.as_millis(),
            opts.cert_ttl.as_secs(),
            opts.host_lost_grace.as_millis(),
            opts.limits.toml(),
            opts.network,
            opts.tables,
        );
        std::fs::write(root.path().join("coordinator.toml"), config)?;
        let mut c = Self {
            root,
            api,
            agent,
            process: opts.process,
            child: None,
        };
        c.start().await?;
        // The harness's own admin token: tests may replace the initial one
        // (`skiff login` does) without the harness losing its way in.
        let initial = std::fs::read_to_string(c.data_dir().join("initial-admin-token"))?;
        let created: CreatedApiToken = Client::new(&c.api_url(), Some(initial.trim().to_owned()))?
            .call(
                Method::POST,
                "/tokens/api",
                Some(&CreateApiToken {
                    name: Some("test harness".into()),
                    role: ApiRole::Admin,
                    stacks: Vec::new(),
                    ttl: None,
                }),
            )
            .await?;
        std::fs::write(c.root.path().join("admin-token"), created.token)?;
        Ok(c)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.path().join("coordinator.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("coordinator.log")
    }

    /// The coordinator's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts (or restarts) the process with the same data dir and ports.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = self
            .process
            .command(
                &target_bin("skiff-coordinator"),
                "info,skiff_coordinator=debug",
            )
            .args(["serve", "--config"])
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        let client = Client::new(&format!("http://{}", self.api), None)?;
        wait_until("the coordinator to answer", START_DEADLINE, || {
            let client = client.clone();
            async move {
                matches!(client.raw(Method::GET, "/healthz", None::<&()>).await, Ok((s, _)) if s.is_success())
            }
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\ncoordinator log:\n{}", self.log()))
    }

    /// SIGKILLs the process and waits for it.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// SIGTERMs the process and waits for it to exit.
    pub async fn stop(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        signal(&c, "TERM");
        tokio::time::timeout(Duration::from_secs(20), c.wait())
            .await
            .ok()?
            .ok()
    }

    /// An admin token (the harness's own, made at launch).
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.root.path().join("admin-token"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// The initial admin token the coordinator wrote to its data dir, while
    /// it is there.
    pub fn initial_token(&self) -> Option<String> {
        std::fs::read_to_string(self.data_dir().join("initial-admin-token"))
            .ok()
            .map(|t| t.trim().to_owned())
    }

    /// An API client with the admin token.
    pub fn client(&self) -> Client {
        // The URL is well-formed by construction.
        Client::new(&format!("http://{}", self.api), Some(self.admin_token())).expect("valid URL")
    }

    pub fn api_url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// The `skiff` CLI against the coordinator, with the admin token, in
    /// `dir`, its output piped, killed when dropped.
    pub fn skiff_command(&self, dir: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(target_bin("skiff"));
        cmd.args(args)
            .current_dir(dir)
            .env("SKIFF_URL", self.api_url())
            .env("SKIFF_TOKEN", self.admin_token())
            .env("SKIFF_CONFIG", self.root.path().join("cli.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs the `skiff` CLI against the coordinator, with the admin token,
    /// in `dir`; `stdin` is piped in (none: an empty stdin). Fails the test
    /// if it does not end within two minutes.
    pub async fn skiff(&self, dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        use tokio::io::AsyncWriteExt;
        let mut cmd = self.skiff_command(dir, args);
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("skiff starts");
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // The command may refuse its arguments and exit before reading.
            let _ = pipe.write_all(text.as_bytes()).await;
        }
        tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("skiff ends within 2 minutes")
            .expect("skiff's output can be read")
    }

    /// A stack's tasks; none while the API does not answer.
    pub async fn tasks(&self, stack: &str) -> Vec<TaskView> {
        self.client()
            .call(Method::GET, &format!("/stacks/{stack}/tasks"), None::<&()>)
            .await
            .unwrap_or_default()
    }

    /// Creates a join token.
    pub async fn create_token(
        &self,
        uses: u32,
        ttl: Option<&str>,
    ) -> anyhow::Result<CreatedJoinToken> {
        self.create_token_granting(uses, ttl, &[]).await
    }

    /// Creates a join token that grants `labels` (`key=value`).
    pub async fn create_token_granting(
        &self,
        uses: u32,
        ttl: Option<&str>,
        labels: &[&str],
    ) -> anyhow::Result<CreatedJoinToken> {
        let mut granted = BTreeMap::new();
        for l in labels {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("label {l:?} is not key=value"))?;
            granted.insert(k.to_owned(), v.to_owned());
        }
        Ok(self
            .client()
            .call(
                Method::POST,
                "/tokens/join",
                Some(&CreateJoinToken {
                    ttl: ttl.map(String::from),
                    uses: Some(uses),
                    labels: (!granted.is_empty()).then_some(granted),
                }),
            )
            .await?)
    }

    pub async fn nodes(&self) -> anyhow::Result<Vec<NodeView>> {
        Ok(self
            .client()
            .call(Method::GET, "/nodes", None::<&()>)
            .await?)
    }

    pub async fn node(&self, id: &str) -> anyhow::Result<NodeView> {
        Ok(self
            .client()
            .call(Method::GET, &format!("/nodes/{id}"), None::<&()>)
            .await?)
    }

    /// Waits until node `id` has `status`, and returns it.
    pub async fn wait_node(
        &self,
        id: &str,
        status: NodeStatus,
        deadline: Duration,
    ) -> anyhow::Result<NodeView> {
        wait_for(
            &format!("node {id} to be {status}"),
            deadline,
            || async move { self.node(id).await.ok().filter(|n| n.status == status) },
        )
        .await
    }
}

fn signal(child: &Child, sig: &str) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status();
    }
}

/// An agent with its own data dir; it reaches the coordinator through its own proxy.
#[derive(Debug)]
pub struct Agent {
    pub name: String,
    pub root: TempDir,
    pub proxy: Proxy,
    /// The agent process's environment and umask (for `join` and `run`).
    pub process: ProcessOptions,
    child: Option<Child>,
}

/// Runs `skiff-agent join` and returns its output, whatever it is.
pub async fn run_join(
    coordinator: &str,
    token: &str,
    data_dir: &Path,
    name: &str,
    labels: &[&str],
) -> anyhow::Result<Output> {
    run_join_with(
        coordinator,
        token,
        data_dir,
        name,
        labels,
        &ProcessOptions::default(),
    )
    .await
}

async fn run_join_with(
    coordinator: &str,
    token: &str,
    data_dir: &Path,
    name: &str,
    labels: &[&str],
    process: &ProcessOptions,
) -> anyhow::Result<Output> {
    let mut cmd = process.command(&target_bin("skiff-agent"), "info,skiff_agent=debug");
    cmd.args([
        "join",
        "--coordinator",
        coordinator,
        "--token",
        token,
        "--name",
        name,
        "--data-dir",
    ])
    .arg(data_dir)
    .stdin(Stdio::null())
    .kill_on_drop(true);
    for l in labels {
        cmd.args(["--label", l]);
    }
    Ok(tokio::time::timeout(Duration::from_secs(60), cmd.output()).await??)
}

impl Agent {
    /// Joins through a new proxy to `coordinator` with `token`; fails if the join fails.
    pub async fn join(
        coordinator: &Coordinator,
        token: &str,
        name: &str,
        labels: &[&str],
    ) -> anyhow::Result<Self> {
        Self::join_with(coordinator, token, name, labels, ProcessOptions::default()).await
    }

    /// [`Agent::join`], with `process` for the join and every later start.
    pub async fn join_with(
        coordinator: &Coordinator,
        token: &str,
        name: &str,
        labels: &[&str],
        process: ProcessOptions,
    ) -> anyhow::Result<Self> {
        let root = tempfile::Builder::new()
            .prefix(&format!("skiff-agent-{name}-"))
            .tempdir()?;
        let proxy = Proxy::start(coordinator.agent).await?;
        let out = run_join_with(
            &proxy.addr().to_string(),
            token,
            &root.path().join("data"),
            name,
            labels,
            &process,
        )
        .await?;
        anyhow::ensure!(
            out.status.success(),
            "join of {name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Self {
            name: name.to_owned(),
            root,
            proxy,
            process,
            child: None,
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("agent.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The node id given at join.
    pub fn node_id(&self) -> String {
        let text = std::fs::read_to_string(self.data_dir().join("node.toml")).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("node_id = "))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_default()
    }

    /// Starts `skiff-agent run`.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = self
            .process
            .command(&target_bin("skiff-agent"), "info,skiff_agent=debug")
            .arg("run")
            .arg("--data-dir")
            .arg(self.data_dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILLs the agent.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Waits for the agent to exit by itself, up to `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        let status = tokio::time::timeout(deadline, c.wait()).await.ok()?.ok()?;
        self.child = None;
        Some(status)
    }
}

/// A coordinator and N running, connected agents.
#[derive(Debug)]
pub struct Cluster {
    pub coordinator: Coordinator,
    pub agents: Vec<Agent>,
}

/// Launches a coordinator and `n` agents named `node-0..`, each labelled
/// `test=<unique>` so agents of parallel tests on one engine stay apart,
/// and waits until all are connected.
pub async fn launch_cluster(n: usize, opts: CoordinatorOptions) -> anyhow::Result<Cluster> {
    launch_cluster_with(n, opts, ProcessOptions::default()).await
}

/// [`launch_cluster`], with `agent_process` for every agent.
pub async fn launch_cluster_with(
    n: usize,
    opts: CoordinatorOptions,
    agent_process: ProcessOptions,
) -> anyhow::Result<Cluster> {
    let coordinator = Coordinator::launch(opts).await?;
    let run_label = format!("test={}", coordinator.api.port());
    let token = coordinator
        .create_token_granting(u32::try_from(n.max(1))?, None, &[&run_label])
        .await?
        .token;
    let mut agents = Vec::new();
    for i in 0..n {
        let mut a = Agent::join_with(
            &coordinator,
            &token,
            &format!("node-{i}"),
            &[&run_label],
            agent_process.clone(),
        )
        .await?;
        a.start()?;
        agents.push(a);
    }
    for a in &agents {
        coordinator
            .wait_node(&a.node_id(), NodeStatus::Connected, START_DEADLINE)
            .await?;
    }
    Ok(Cluster {
        coordinator,
        agents,
    })
}

impl Cluster {
    /// Runs the `skiff` CLI against the coordinator (see [`Coordinator::skiff`]).
    pub async fn skiff(&self, dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        self.coordinator.skiff(dir, args, stdin).await
    }

    /// A stack's tasks; none while the API does not answer.
    pub async fn tasks(&self, stack: &str) -> Vec<TaskView> {
        self.coordinator.tasks(stack).await
    }
}

impl Drop for Cluster {
    /// Removes the containers and networks the cluster's agents created:
    /// they outlive their agents by design (restart policy `always`), but
    /// not a test (and the engine has room for only a few dozen networks).
    fn drop(&mut self) {
        // Agents first, so none recreates what is removed below.
        for a in &mut self.agents {
            if let Some(c) = a.child.as_mut() {
                let _ = c.start_kill();
            }
        }
        for a in &self.agents {
            remove_labelled(&["ps", "-aq"], &["rm", "-f"], &a.node_id());
            remove_labelled(&["network", "ls", "-q"], &["network", "rm"], &a.node_id());
        }
    }
}

/// Removes with `docker REMOVE...` what `docker LIST... --filter
/// label=skiff.node=NODE` lists.
fn remove_labelled(list: &[&str], remove: &[&str], node: &str) {
    let Ok(out) = std::process::Command::new("docker")
        .args(list)
        .args(["--filter", &format!("label=skiff.node={node}")])
        .output()
    else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    if !ids.is_empty() {
        let _ = std::process::Command::new("docker")
            .args(remove)
            .args(&ids)
            .output();
    }
}

/// Labels as a map, for assertions.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
