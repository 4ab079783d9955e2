//! The agent's own nftables table, `inet skiff`: the only firewall state
//! the agent writes (besides one tagged rule in Docker's `DOCKER-USER`
//! chain that accepts what this table marks). Two controllers contribute
//! to it: the networks controller (which subnets may talk across hosts,
//! what is masqueraded) and the mesh controller (its device, and who may
//! send to its port). Each change renders the whole table from both parts
//! ([`render`], pure) and replaces it in one `nft -f` transaction; the
//! rest of the host's ruleset is never flushed or touched.

use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::Mutex;
use tracing::{debug, info};

pub mod render;

pub use render::{MARK, TABLE, render, script};

/// What the mesh controller contributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshRules {
    /// The mesh device (`skw0`, `skv0`): traffic in from it is checked
    /// against the networks' rules.
    pub device: String,
    /// The mesh's UDP port, and whether only the peers may send to it
    /// (VXLAN, which has no authentication of its own).
    pub port: u16,
    pub peers_only: bool,
    /// The peers' underlay addresses.
    pub peers: Vec<Ipv4Addr>,
}

/// What the networks controller contributes: the cluster range, the hosts'
/// block, and the stack networks on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRules {
    /// The cluster range: traffic inside it is never masqueraded, and two
    /// of its addresses talk only when on the same network.
    pub range: Ipv4Net,
    /// The hosts' mesh addresses: they reach every network.
    pub hosts: Ipv4Net,
    /// This host's stack networks, in a stable order.
    pub networks: Vec<NetworkRule>,
    /// Containers are attached to Weave Net (mesh `weave`): their cluster
    /// addresses are on the `weave` bridge, Skiff's bridges are the
    /// engine's plain ones, and there are no hosts' mesh addresses.
    pub weave: bool,
}

/// One stack network on this host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NetworkRule {
    /// Its cluster-wide subnet.
    pub subnet: Ipv4Net,
    /// Compose `internal: true`: nothing leaves the cluster range.
    pub internal: bool,
    /// Its bridge here (`sk-<id>`), named in the rules' comments.
    pub bridge: String,
}

/// Both parts of the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parts {
    pub networks: Option<NetworkRules>,
    pub mesh: Option<MeshRules>,
}

/// Why the table, or the `DOCKER-USER` rule, could not be set.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("`{tool}` is not installed: install the {package} package")]
    Missing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("setting the nftables table inet skiff failed: {0}")]
    Nft(String),
    #[error(
        "Docker's DOCKER-USER chain does not exist yet (dockerd makes it when it starts with iptables enabled): {0}"
    )]
    NoDockerUser(String),
    #[error("adding the rule to Docker's DOCKER-USER chain failed: {0}")]
    Iptables(String),
}

/// How long after start a part waits for the other before it replaces a
/// table an earlier run left: an agent restart keeps the old table, whole,
/// until both controllers have said what they want (a part alone would
/// drop the other's rules, and with the networks' the cross-host traffic).
pub const RESTART_GRACE: Duration = Duration::from_secs(20);

/// The table, as both controllers want it and as the host last had it.
#[derive(Debug)]
pub struct Firewall {
    state: Mutex<State>,
    started: Instant,
}

#[derive(Debug, Default)]
struct State {
    /// Both parts as last asked for.
    wanted: Parts,
    /// Which parts were asked for since start: networks, mesh.
    known: (bool, bool),
    /// What the host has, once set: none until the first successful set
    /// (an earlier run's table is then replaced or removed).
    applied: Option<Parts>,
}

impl Default for Firewall {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            started: Instant::now(),
        }
    }
}

/// Whether a part is held back instead of replacing the table: only while
/// the first set since start waits for the other part, within the grace,
/// and only over a table an earlier run left.
fn hold(first: bool, both_known: bool, since_start: Duration, table_exists: bool) -> bool {
    first && !both_known && since_start < RESTART_GRACE && table_exists
}

impl Firewall {
    /// The networks' part; none removes it. Nothing is done when it is
    /// what the host already has (and the table is still there).
    ///
    /// # Errors
    /// `nft` failed; the table is as it was.
    pub async fn set_networks(&self, rules: Option<NetworkRules>) -> Result<(), FirewallError> {
        self.set(|s| {
            s.wanted.networks = rules;
            s.known.0 = true;
        })
        .await
    }

    /// The mesh's part; none removes it. Nothing is done when it is what
    /// the host already has (and the table is still there).
    ///
    /// # Errors
    /// `nft` failed; the table is as it was.
    pub async fn set_mesh(&self, rules: Option<MeshRules>) -> Result<(), FirewallError> {
        self.set(|s| {
            s.wanted.mesh = rules;
            s.known.1 = true;
        })
        .await
    }

    async fn set(&self, change: impl FnOnce(&mut State)) -> Result<(), FirewallError> {
        let mut state = self.state.lock().await;
        change(&mut state);
        let next = state.wanted.clone();
        // Unchanged: loaded again only if the table went (a flushed
        // ruleset, a firewall service restarted).
        if state.applied.as_ref() == Some(&next) && (is_empty(&next) || present().await) {
            return Ok(());
        }
        let (n, m) = state.known;
        if hold(
            state.applied.is_none(),
            n && m,
            self.started.elapsed(),
            exists().await,
        ) {
            debug!("Keeping the table an earlier run left until both parts are known.");
            return Ok(());
        }
        apply(&next).await?;
        info!(
            networks = next.networks.as_ref().map_or(0, |n| n.networks.len()),
            mesh = next.mesh.is_some(),
            "Firewall table inet skiff set."
        );
        state.applied = Some(next);
        Ok(())
    }

    /// Makes sure Docker's `DOCKER-USER` chain accepts what the table
    /// marks (checked first, inserted at the top once).
    ///
    /// # Errors
    /// `iptables` is missing or failed, or the chain does not exist yet.
    pub async fn ensure_docker_user(&self) -> Result<(), FirewallError> {
        let rule = docker_user_rule();
        let mut check = vec!["-C", "DOCKER-USER"];
        check.extend(rule.iter().map(String::as_str));
        if run("iptables", &check, None).await.is_ok() {
            return Ok(());
        }
        let mut insert = vec!["-I", "DOCKER-USER", "1"];
        insert.extend(rule.iter().map(String::as_str));
        match run("iptables", &insert, None).await {
            Ok(()) => {
                info!("Added the rule accepting the cluster network's traffic to DOCKER-USER.");
                Ok(())
            }
            Err(Failed::Missing) => Err(FirewallError::Missing {
                tool: "iptables",
                package: "iptables",
            }),
            Err(Failed::Status(e)) if e.contains("No chain") || e.contains("does not exist") => {
                Err(FirewallError::NoDockerUser(e))
            }
            Err(Failed::Status(e)) => Err(FirewallError::Iptables(e)),
        }
    }
}

/// The `DOCKER-USER` rule's match and target.
pub fn docker_user_rule() -> Vec<String> {
    [
        "-m",
        "mark",
        "--mark",
        &format!("{MARK:#010x}/{MARK:#010x}"),
        "-m",
        "comment",
        "--comment",
        "skiff",
        "-j",
        "ACCEPT",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

fn is_empty(parts: &Parts) -> bool {
    parts.networks.is_none() && parts.mesh.is_none()
}

/// Whether the host surely has the table.
async fn exists() -> bool {
    run("nft", &["list", "table", "inet", "skiff"], None)
        .await
        .is_ok()
}

/// Whether the host has the table; yes when that cannot be told (then
/// nothing is loaded again).
async fn present() -> bool {
    match run("nft", &["list", "table", "inet", "skiff"], None).await {
        Ok(()) | Err(Failed::Missing) => true,
        Err(Failed::Status(e)) => {
            info!(error = %e, "The firewall table inet skiff is gone; loading it again.");
            false
        }
    }
}

/// Replaces the table with `parts` (removes it when both are none).
async fn apply(parts: &Parts) -> Result<(), FirewallError> {
    let text = script(parts.networks.as_ref(), parts.mesh.as_ref());
    match run("nft", &["-f", "-"], Some(&text)).await {
        Ok(()) => Ok(()),
        // Without nft there is no table to remove.
        Err(Failed::Missing) if is_empty(parts) => Ok(()),
        Err(Failed::Missing) => Err(FirewallError::Missing {
            tool: "nft",
            package: "nftables",
        }),
        Err(Failed::Status(e)) => Err(FirewallError::Nft(e)),
    }
}

/// How a tool failed.
#[derive(Debug)]
enum Failed {
    Missing,
    Status(String),
}

/// Runs `tool args`, feeding it `stdin`.
async fn run(tool: &'static str, args: &[&str], stdin: Option<&str>) -> Result<(), Failed> {
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(Failed::Missing),
        Err(e) => return Err(Failed::Status(format!("cannot run {tool}: {e}"))),
    };
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(|e| Failed::Status(format!("writing to {tool}: {e}")))?;
        drop(pipe);
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| Failed::Status(format!("waiting for {tool}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Failed::Status(format!(
            "{tool} {} exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Checks `text` with `nft -c -f -` (nothing is changed): for tests.
///
/// # Errors
/// `nft` is missing or refused the text.
#[cfg(test)]
async fn check(text: &str) -> Result<(), Failed> {
    run("nft", &["-c", "-f", "-"], Some(text)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_agent_keeps_the_old_table_until_both_parts_are_known() {
        let soon = Duration::from_secs(1);
        assert!(hold(true, false, soon, true));
        assert!(!hold(true, true, soon, true), "both known");
        assert!(!hold(true, false, soon, false), "a fresh host");
        assert!(
            !hold(true, false, RESTART_GRACE, true),
            "waited long enough"
        );
        assert!(!hold(false, false, soon, true), "set once already");
    }

    #[test]
    fn the_docker_user_rule_matches_the_mark() {
        assert_eq!(
            docker_user_rule().join(" "),
            "-m mark --mark 0x00100000/0x00100000 -m comment --comment skiff -j ACCEPT"
        );
    }

    /// The rendered scripts are valid nftables, where `nft` can check them
    /// (it needs the nftables package and CAP_NET_ADMIN).
    #[tokio::test]
    async fn nft_accepts_the_rendered_scripts() {
        let (n, m) = (render::tests::networks(), render::tests::vxlan());
        let mut open = m.clone();
        open.peers_only = false;
        let mut lonely = m.clone();
        lonely.peers.clear();
        let cases = [
            script(Some(&n), Some(&m)),
            script(Some(&n), None),
            script(None, Some(&m)),
            script(None, Some(&open)),
            script(None, Some(&lonely)),
            script(
                Some(&NetworkRules {
                    networks: vec![],
                    ..n.clone()
                }),
                None,
            ),
            script(
                Some(&NetworkRules {
                    weave: true,
                    ..n.clone()
                }),
                None,
            ),
            script(None, None),
        ];
        for text in cases {
            match check(&text).await {
                Ok(()) => {}
                Err(Failed::Missing) => {
                    eprintln!("nft is not installed: the scripts were not checked");
                    return;
                }
                Err(Failed::Status(e)) if e.contains("Operation not permitted") => {
                    eprintln!("nft may not check here ({e}): the scripts were not checked");
                    return;
                }
                Err(Failed::Status(e)) => panic!("nft refused:\n{text}\n{e}"),
            }
        }
    }
}
