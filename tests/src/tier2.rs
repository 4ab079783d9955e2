//! Tier-2 clusters: hosts that are containers with their own Docker Engine
//! (`scripts/test-host.sh`) on one Docker network of this machine, each
//! running an agent installed by the install script, joined to a
//! coordinator on this machine that listens on the network's gateway.
//!
//! Every cluster has a unique run id in its hosts' and network's names, so
//! parallel and leftover runs never clash; dropping the cluster removes its
//! hosts (and everything in them) and its network, unless `SKIFF_T2_KEEP`
//! is set (to look into them after a failure; remove them with
//! `scripts/test-host.sh stop` and `docker network rm`).

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use skiff_api_types::{NetworkView, NodeStatus, TaskView};
use skiff_cli::client::Method;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::cluster::{Coordinator, CoordinatorOptions, START_DEADLINE};
use crate::image::{TEST_IMAGE, docker, ensure_test_image};
use crate::wait::wait_for;

/// How long a host command may take (an image load or an install included).
const COMMAND_DEADLINE: Duration = Duration::from_secs(600);

/// Where the install script logs a detached agent, in a host.
pub const AGENT_LOG: &str = "/var/log/skiff-agent.log";
/// The pid file of a detached agent, in a host.
const AGENT_PID: &str = "/run/skiff-agent.pid";

/// Whether tier-2 tests are to be skipped (`SKIFF_SKIP_TIER2` set).
pub fn skipped(what: &str) -> bool {
    let skip = std::env::var_os("SKIFF_SKIP_TIER2").is_some();
    if skip {
        eprintln!("SKIFF_SKIP_TIER2 is set: skipping {what}");
    }
    skip
}

/// A script of the repository's `scripts/` directory.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join(name)
}

/// Runs `cmd` to its end (killed after ten minutes) and returns its output.
pub async fn run(cmd: &mut Command) -> Output {
    tokio::time::timeout(COMMAND_DEADLINE, cmd.kill_on_drop(true).output())
        .await
        .expect("command finished in time")
        .expect("command ran")
}

/// Standard output and error, for messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Standard output, trimmed.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// A run id unique on this machine: the process id, a counter, and the
/// clock (a leftover of a crashed run with a reused pid differs).
pub fn unique_run() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos & 0xffff
    )
}

/// The install snippet of README.md ("Installing on servers"), exactly,
/// with `coordinator` in place of the example address and `options` after
/// `--token-stdin`, as the README says to add them.
pub fn install_snippet(coordinator: &str, options: &str) -> String {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let start = readme
        .find("<!-- install-snippet")
        .expect("the snippet's marker");
    let end = readme[start..]
        .find("<!-- /install-snippet -->")
        .expect("the snippet's end marker");
    let block = &readme[start..start + end];
    let fence = block
        .lines()
        .find(|l| l.trim_start().starts_with("```sh"))
        .expect("a sh code block");
    let indent = fence.len() - fence.trim_start().len();
    let code: Vec<&str> = block
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("```sh"))
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with("```"))
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect();
    let code = code.join("\n");
    assert!(code.contains("COORD=coord.example.com:7443"), "{code}");
    assert_eq!(code.matches("--token-stdin").count(), 1, "{code}");
    assert!(
        code.lines()
            .filter(|l| l.contains("curl") && l.contains("install.sh"))
            .all(|l| l.contains("--cacert") && !l.contains(" -k")),
        "the script is fetched only over TLS checked against the CA: {code}"
    );
    code.replace(
        "COORD=coord.example.com:7443",
        &format!("COORD={coordinator}"),
    )
    .replace("--token-stdin", &format!("--token-stdin {options}"))
}

/// Starts host `name` on Docker network `network` (created if absent) and
/// returns its address there.
pub async fn start_host(name: &str, network: &str, tun: bool) -> anyhow::Result<String> {
    let mut cmd = Command::new(script("test-host.sh"));
    cmd.args(["start", name, network]);
    if !tun {
        cmd.arg("--no-tun");
    }
    let out = run(&mut cmd).await;
    anyhow::ensure!(out.status.success(), "start of host {name}: {}", text(&out));
    Ok(stdout(&out))
}

/// Removes host `name` (best effort, blocking: also called from `Drop`).
pub fn stop_host(name: &str) {
    let _ = std::process::Command::new(script("test-host.sh"))
        .args(["stop", name])
        .output();
}

/// The gateway of Docker network `network`: where its hosts reach this machine.
pub async fn gateway(network: &str) -> anyhow::Result<String> {
    let out = run(Command::new(script("test-host.sh")).args(["gateway", network])).await;
    let gw = stdout(&out);
    anyhow::ensure!(
        gw.parse::<std::net::IpAddr>().is_ok(),
        "gateway of {network}: {}",
        text(&out)
    );
    Ok(gw)
}

/// A tier-2 host: a container with its own Docker Engine.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its container's name (and hostname).
    pub name: String,
    /// Its node's name in the cluster.
    pub node: String,
    /// Its address on the cluster's Docker network.
    pub ip: String,
}

impl Host {
    /// Runs `shell` in the host.
    pub async fn exec(&self, shell: &str) -> Output {
        run(Command::new("docker").args(["exec", &self.name, "sh", "-c", shell])).await
    }

    /// Runs `shell` (busybox sh) in `container`, a container of the host's engine.
    pub async fn exec_in(&self, container: &str, shell: &str) -> Output {
        run(Command::new("docker").args([
            "exec", &self.name, "docker", "exec", container, "sh", "-c", shell,
        ]))
        .await
    }

    /// Runs `shell` with the host's tools (socat, for one) in the network
    /// namespace of `container`: as that container, on the network.
    pub async fn exec_in_netns(&self, container: &str, shell: &str) -> Output {
        let quoted = shell.replace('\'', r"'\''");
        self.exec(&format!(
            "pid=$(docker inspect -f '{{{{.State.Pid}}}}' {container}) && exec nsenter -t \"$pid\" -n sh -c '{quoted}'"
        ))
        .await
    }

    /// The id of the running container of replica `task` (`<stack>.<service>.<slot>`).
    pub async fn container(&self, task: &str) -> anyhow::Result<String> {
        let out = self
            .exec(&format!(
                "docker ps -q --filter label=skiff.name={task} --filter status=running"
            ))
            .await;
        let ids = stdout(&out);
        let mut ids = ids.lines();
        match (ids.next(), ids.next()) {
            (Some(id), None) if out.status.success() => Ok(id.to_owned()),
            _ => anyhow::bail!(
                "no one running container of {task} in {}: {}",
                self.name,
                text(&out)
            ),
        }
    }

    /// The agent's log in the host.
    pub async fn agent_log(&self) -> String {
        text(&self.exec(&format!("tail -n 200 {AGENT_LOG}")).await)
    }

    /// Loads the test image into the host's engine.
    pub async fn load_test_image(&self) -> anyhow::Result<()> {
        ensure_test_image(&docker().await?).await?;
        let out = run(Command::new("bash").args([
            "-o",
            "pipefail",
            "-c",
            &format!(
                "docker save {TEST_IMAGE} | docker exec -i {} docker load",
                self.name
            ),
        ]))
        .await;
        anyhow::ensure!(
            out.status.success(),
            "loading {TEST_IMAGE} into {}: {}",
            self.name,
            text(&out)
        );
        Ok(())
    }

    /// Stops the agent (SIGTERM, then waits for it to exit) and starts it
    /// again the way the install script starts a detached agent.
    pub async fn restart_agent(&self) -> anyhow::Result<()> {
        self.stop_and_start_agent("TERM").await
    }

    /// Kills the agent (SIGKILL: no chance to save anything) and starts it
    /// again the way the install script starts a detached agent.
    pub async fn kill_agent(&self) -> anyhow::Result<()> {
        self.stop_and_start_agent("KILL").await
    }

    async fn stop_and_start_agent(&self, signal: &str) -> anyhow::Result<()> {
        let out = self
            .exec(&format!(
                "pid=$(cat {AGENT_PID}) && kill -{signal} \"$pid\" && \
                 i=0; while kill -0 \"$pid\" 2>/dev/null; do i=$((i+1)); [ $i -lt 300 ] || exit 1; sleep 0.1; done; \
                 setsid sh -c 'cd / && echo $$ >{AGENT_PID} && exec /usr/local/bin/skiff-agent run --config /etc/skiff/agent.toml' \
                 >>{AGENT_LOG} 2>&1 </dev/null &"
            ))
            .await;
        anyhow::ensure!(
            out.status.success(),
            "restart (SIG{signal}) of the agent in {}: {}",
            self.name,
            text(&out)
        );
        Ok(())
    }
}

/// What a tier-2 cluster is made of.
#[derive(Debug, Clone)]
pub struct Tier2Options {
    pub hosts: usize,
    /// The coordinator's `[network]` keys.
    pub network: String,
    /// Whether the hosts get /dev/net/tun.
    pub tun: bool,
    /// More tables of the coordinator's config, such as `[acme]`.
    pub coordinator_tables: String,
}

impl Tier2Options {
    /// `hosts` hosts on a cluster network with `mesh`.
    pub fn mesh(hosts: usize, mesh: &str) -> Self {
        Self {
            hosts,
            network: format!("enabled = true\nmesh = \"{mesh}\"\n"),
            tun: true,
            coordinator_tables: String::new(),
        }
    }
}

/// A coordinator on this machine and hosts that joined it.
#[derive(Debug)]
pub struct Tier2 {
    /// The unique run id; every host carries the node label `t2=<run>`.
    pub run: String,
    /// The Docker network the hosts share.
    pub network: String,
    pub gateway: String,
    pub coordinator: Coordinator,
    /// Every host started, removed nodes included (until the cluster drops).
    pub hosts: Vec<Host>,
    /// A working directory for Compose files.
    pub dir: tempfile::TempDir,
}

impl Drop for Tier2 {
    fn drop(&mut self) {
        if std::env::var_os("SKIFF_T2_KEEP").is_some() {
            eprintln!(
                "SKIFF_T2_KEEP is set: keeping hosts {:?} and network {}",
                self.hosts.iter().map(|h| &h.name).collect::<Vec<_>>(),
                self.network
            );
            return;
        }
        for h in &self.hosts {
            stop_host(&h.name);
        }
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

impl Tier2 {
    /// Starts the hosts (side by side), the coordinator on their network's
    /// gateway, and installs and joins an agent in each host (node names
    /// `h0`, `h1`, ..., labels `t2=<run>` and `host=hN`), with the test
    /// image loaded into each; waits until every node is connected.
    pub async fn launch(opts: Tier2Options) -> anyhow::Result<Self> {
        let run = unique_run();
        let network = format!("skiff-t2-{run}");
        let create = run_cmd(&[
            "docker",
            "network",
            "create",
            "--label",
            "skiff-test=1",
            &network,
        ])
        .await;
        anyhow::ensure!(create.status.success(), "{}", text(&create));
        let gateway = gateway(&network).await?;
        // The network exists from here: the cluster removes it when dropped.
        let mut names = Vec::new();
        for i in 0..opts.hosts {
            names.push(format!("skiff-t2-{run}-h{i}"));
        }
        let coordinator = Coordinator::launch(CoordinatorOptions {
            agent_ip: gateway.clone(),
            advertise: vec![gateway.clone()],
            network: opts.network.clone(),
            tables: opts.coordinator_tables.clone(),
            ..Default::default()
        })
        .await;
        let coordinator = match coordinator {
            Ok(c) => c,
            Err(e) => {
                let _ = run_cmd(&["docker", "network", "rm", &network]).await;
                return Err(e);
            }
        };
        let mut cluster = Self {
            run,
            network,
            gateway,
            coordinator,
            hosts: Vec::new(),
            dir: tempfile::tempdir()?,
        };
        let started = futures_util::future::join_all(
            names
                .iter()
                .map(|n| start_host(n, &cluster.network, opts.tun)),
        )
        .await;
        for (i, (name, ip)) in names.iter().zip(started).enumerate() {
            // Recorded before any error, so that Drop removes what started.
            cluster.hosts.push(Host {
                name: name.clone(),
                node: format!("h{i}"),
                ip: ip.as_ref().map(String::clone).unwrap_or_default(),
            });
            ip?;
        }
        let joined =
            futures_util::future::join_all(cluster.hosts.iter().map(|h| cluster.join(h))).await;
        for j in joined {
            j?;
        }
        Ok(cluster)
    }

    /// Starts one more host (`h<N>`), loads the test image, installs and
    /// joins its agent, and waits until its node is connected.
    pub async fn add_host(&mut self, tun: bool) -> anyhow::Result<Host> {
        let i = self.hosts.len();
        let name = format!("skiff-t2-{}-h{i}", self.run);
        let ip = start_host(&name, &self.network, tun).await;
        self.hosts.push(Host {
            name,
            node: format!("h{i}"),
            ip: ip.as_ref().map(String::clone).unwrap_or_default(),
        });
        ip?;
        let host = self.hosts[i].clone();
        self.join(&host).await?;
        Ok(host)
    }

    /// Loads the test image into `host` and installs the agent there with
    /// the install snippet of the README and a token of its own (that
    /// grants its labels); waits until its node is connected.
    async fn join(&self, host: &Host) -> anyhow::Result<()> {
        host.load_test_image().await?;
        let labels = [format!("t2={}", self.run), format!("host={}", host.node)];
        let token = self
            .coordinator
            .create_token_granting(1, Some("1h"), &[&labels[0], &labels[1]])
            .await?
            .token;
        let snippet = install_snippet(
            &self.coordinator.agent.to_string(),
            &format!(
                "--name {} --label t2={} --label host={} --start-without-systemd",
                host.node, self.run, host.node
            ),
        );
        // The token is passed by name: on no command line.
        let out = run(Command::new("docker")
            .env("SKIFF_JOIN_TOKEN", &token)
            .args([
                "exec",
                "-e",
                "SKIFF_JOIN_TOKEN",
                &host.name,
                "sh",
                "-c",
                &snippet,
            ]))
        .await;
        anyhow::ensure!(
            out.status.success(),
            "install in {}: {}",
            host.name,
            text(&out)
        );
        self.wait_connected(host).await?;
        Ok(())
    }

    /// The node id of `host`.
    pub async fn node_id(&self, host: &Host) -> anyhow::Result<String> {
        self.coordinator
            .nodes()
            .await?
            .into_iter()
            .find(|n| n.name == host.node)
            .map(|n| n.id)
            .ok_or_else(|| anyhow::anyhow!("no node {}", host.node))
    }

    /// Restarts the agent in `host` and waits until it is connected again
    /// (a new session: another `connected_since`).
    pub async fn restart_agent(&self, host: &Host) -> anyhow::Result<()> {
        let node = |id: String| async move { self.coordinator.node(&id).await.ok() };
        let id = self.node_id(host).await?;
        let before = node(id.clone())
            .await
            .and_then(|n| n.connected_since)
            .unwrap_or_default();
        host.restart_agent().await?;
        wait_for(
            &format!("the restarted agent of {} to connect", host.node),
            START_DEADLINE * 2,
            || async {
                node(id.clone()).await.filter(|n| {
                    n.status == NodeStatus::Connected
                        && n.connected_since.as_deref().is_some_and(|s| s != before)
                })
            },
        )
        .await?;
        Ok(())
    }

    /// The tail of every host's agent log.
    pub async fn agent_logs(&self) -> String {
        let mut logs = String::new();
        for h in &self.hosts {
            logs.push_str(&format!(
                "\n--- agent log of {} ({}):\n{}",
                h.node,
                h.name,
                h.agent_log().await
            ));
        }
        logs
    }

    /// The value of `r`, or fails the test with the error and the hosts' agent logs.
    pub async fn expect<T>(&self, r: anyhow::Result<T>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => panic!("{e:#}\n{}", self.agent_logs().await),
        }
    }

    /// Waits until `host`'s node is connected.
    pub async fn wait_connected(&self, host: &Host) -> anyhow::Result<()> {
        wait_for(
            &format!("node {} to be connected", host.node),
            START_DEADLINE * 2,
            || async {
                self.coordinator
                    .nodes()
                    .await
                    .ok()?
                    .into_iter()
                    .find(|n| n.name == host.node && n.status == NodeStatus::Connected)
            },
        )
        .await
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{e}\nagent log of {}: see {AGENT_LOG}", host.name))
    }

    /// The host whose node is `node`.
    pub fn host(&self, node: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.node == node)
            .unwrap_or_else(|| panic!("no host {node}"))
    }

    /// Runs the `skiff` CLI in the cluster's working directory.
    pub async fn skiff(&self, args: &[&str]) -> Output {
        self.coordinator.skiff(self.dir.path(), args, None).await
    }

    /// Deploys `compose` as `stack`, without waiting for the release (see
    /// [`Tier2::wait_running`]).
    pub async fn deploy(&self, stack: &str, compose: &str) -> anyhow::Result<()> {
        let file = self.dir.path().join(format!("{stack}.yml"));
        std::fs::write(&file, compose)?;
        let file = file.to_string_lossy().into_owned();
        let out = self
            .skiff(&["deploy", "--detach", "-f", &file, stack])
            .await;
        anyhow::ensure!(out.status.success(), "deploy of {stack}: {}", text(&out));
        Ok(())
    }

    /// A stack's replicas; none while the API does not answer.
    pub async fn tasks(&self, stack: &str) -> Vec<TaskView> {
        self.coordinator.tasks(stack).await
    }

    /// Waits until `n` replicas of `stack` run and each has an address on
    /// every network it is on; returns them.
    pub async fn wait_running(&self, stack: &str, n: usize) -> anyhow::Result<Vec<TaskView>> {
        let last = std::sync::Mutex::new(Vec::new());
        wait_for(
            &format!("{n} running replicas of {stack} with cluster addresses"),
            Duration::from_secs(120),
            || async {
                let t = self.tasks(stack).await;
                let done = t.len() == n
                    && t.iter()
                        .all(|t| t.up_to_date && t.state == "running" && !t.addresses.is_empty());
                if let Ok(mut last) = last.lock() {
                    last.clone_from(&t);
                }
                done.then_some(t)
            },
        )
        .await
        .map_err(|e| {
            let seen: Vec<String> = last
                .lock()
                .map(|l| {
                    l.iter()
                        .map(|t| {
                            format!(
                                "{} on {}: {} {:?} {:?}",
                                t.name, t.node, t.state, t.addresses, t.error
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            anyhow::anyhow!("{e}; last seen:\n{}", seen.join("\n"))
        })
    }

    /// The cluster network as the API shows it.
    pub async fn network_view(&self) -> anyhow::Result<NetworkView> {
        Ok(self
            .coordinator
            .client()
            .call(Method::GET, "/network", None::<&()>)
            .await?)
    }

    /// Disconnects `host` from the cluster's network: it reaches neither
    /// the coordinator nor the other hosts.
    pub async fn cut_off(&self, host: &Host) -> anyhow::Result<()> {
        let out = run_cmd(&["docker", "network", "disconnect", &self.network, &host.name]).await;
        anyhow::ensure!(out.status.success(), "{}", text(&out));
        Ok(())
    }

    /// The interface on this machine that carries `host`'s traffic on
    /// the cluster's network: the machine's end of its veth. (The
    /// network's bridge itself does not show frames it forwards between
    /// hosts.)
    pub async fn host_interface(&self, host: &Host) -> anyhow::Result<String> {
        let out = host.exec("cat /sys/class/net/eth0/iflink").await;
        let index = stdout(&out);
        anyhow::ensure!(
            index.parse::<u32>().is_ok(),
            "iflink of {}: {}",
            host.name,
            text(&out)
        );
        let out = run_cmd(&["ip", "-o", "link"]).await;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                let (idx, rest) = l.split_once(": ")?;
                let name = rest.split([':', '@']).next()?;
                (idx == index).then(|| name.to_owned())
            })
            .ok_or_else(|| anyhow::anyhow!("no interface {index} here for {}", host.name))
    }
}

async fn run_cmd(argv: &[&str]) -> Output {
    run(Command::new(argv[0]).args(&argv[1..])).await
}

/// A packet capture (tcpdump) on an interface of this machine.
#[derive(Debug)]
pub struct Capture {
    child: Child,
    file: tempfile::NamedTempFile,
}

impl Capture {
    /// Starts capturing `filter` on `interface` and returns once tcpdump
    /// says it is listening.
    pub async fn start(interface: &str, filter: &str) -> anyhow::Result<Self> {
        let file = tempfile::Builder::new()
            .prefix("skiff-t2-")
            .suffix(".pcap")
            .tempfile()?;
        let mut child = Command::new("tcpdump")
            // Immediate mode: packets reach the file as they come, not
            // in blocks that a stop could leave unwritten.
            .args([
                "-i",
                interface,
                "-nn",
                "--immediate-mode",
                "-U",
                "-s",
                "0",
                "-w",
            ])
            .arg(file.path())
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("tcpdump: {e} (install it: apt-get install tcpdump)"))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut said = String::new();
        let listening = tokio::time::timeout(START_DEADLINE, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let yes = line.contains("listening on");
                said.push_str(&line);
                said.push('\n');
                if yes {
                    return true;
                }
            }
            false
        })
        .await;
        anyhow::ensure!(
            matches!(listening, Ok(true)),
            "tcpdump did not start listening on {interface}: {said}"
        );
        // Keep reading its stderr, so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { child, file })
    }

    /// Stops the capture and returns the raw bytes of the capture file.
    pub async fn stop(mut self) -> anyhow::Result<(Vec<u8>, tempfile::NamedTempFile)> {
        if let Some(pid) = self.child.id() {
            // SIGINT: tcpdump flushes and exits.
            let _ = std::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        Ok((std::fs::read(self.file.path())?, self.file))
    }
}

/// The number of packets in capture `file` that match `filter`.
pub async fn count_packets(file: &std::path::Path, filter: &str) -> anyhow::Result<usize> {
    let out = run(Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(file)
        .arg(filter))
    .await;
    anyhow::ensure!(out.status.success(), "tcpdump -r: {}", text(&out));
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}

/// Runs `skiff-coordinator serve` with `[network]` keys `network` on free
/// loopback ports and a fresh data dir, expecting it to refuse to start:
/// returns its exit status and output, or fails if it is still up after
/// the start deadline.
pub async fn coordinator_refusal(network: &str) -> anyhow::Result<Output> {
    let root = tempfile::Builder::new()
        .prefix("skiff-coord-refusal-")
        .tempdir()?;
    let config = root.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\napi_listen = \"127.0.0.1:{}\"\nagent_listen = \"127.0.0.1:{}\"\n[network]\n{network}",
            root.path().join("data"),
            crate::cluster::free_port(),
            crate::cluster::free_port(),
        ),
    )?;
    let child = Command::new(crate::target_bin("skiff-coordinator"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(START_DEADLINE, child)
        .await
        .map_err(|_| anyhow::anyhow!("the coordinator started with [network] {network:?}"))?
        .map_err(Into::into)
}

/// Checks run one after another on one cluster, each to its end: a failed
/// check is recorded and the next one runs, so that one run of a slow
/// set-up tells about all of them. [`Checks::finish`] fails the test with
/// every failure and the hosts' agent logs.
#[derive(Debug, Default)]
pub struct Checks {
    failures: Vec<String>,
}

impl Checks {
    /// Runs check `name`.
    pub async fn check<F>(&mut self, name: &str, f: F)
    where
        F: std::future::Future<Output = anyhow::Result<()>>,
    {
        eprintln!("check: {name} ...");
        match f.await {
            Ok(()) => eprintln!("check: {name}: ok"),
            Err(e) => {
                eprintln!("check: {name}: FAILED: {e:#}");
                self.failures.push(format!("{name}: {e:#}"));
            }
        }
    }

    /// Fails the test if a check failed, with the tail of every host's agent log.
    pub async fn finish(self, cluster: &Tier2) {
        if self.failures.is_empty() {
            return;
        }
        let logs = cluster.agent_logs().await;
        panic!(
            "{} check(s) failed:\n{}\n{logs}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}
