//! The install path on a fresh server: a tier-2 host (a Debian container
//! with its own Docker Engine and no systemd, see scripts/test-host.sh)
//! runs the install snippet of README.md exactly, with the join token in
//! its environment: it checks the CA against the token, fetches the
//! install script with that CA, and joins.

use std::time::Duration;

use skiff_api_types::NodeStatus;
use skiff_tests::cluster::{Coordinator, CoordinatorOptions};
use skiff_tests::tier2::{gateway, install_snippet, run, skipped, start_host, stop_host, text};
use skiff_tests::wait_for;

/// Removes the host and its network however the test ends.
struct Host {
    name: String,
    network: String,
}

impl Drop for Host {
    fn drop(&mut self) {
        stop_host(&self.name);
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

impl Host {
    async fn exec(&self, shell: &str) -> std::process::Output {
        run(tokio::process::Command::new("docker").args(["exec", &self.name, "sh", "-c", shell]))
            .await
    }

    /// Runs `shell` with `SKIFF_JOIN_TOKEN` in its environment (passed by
    /// name, so the value is on no command line here either).
    async fn exec_with_token(&self, shell: &str, token: &str) -> std::process::Output {
        run(tokio::process::Command::new("docker")
            .env("SKIFF_JOIN_TOKEN", token)
            .args([
                "exec",
                "-e",
                "SKIFF_JOIN_TOKEN",
                &self.name,
                "sh",
                "-c",
                shell,
            ]))
        .await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn install_script_installs_joins_and_starts_the_agent_on_a_fresh_host() {
    if skipped("the tier-2 install test") {
        return;
    }
    let id = std::process::id();
    let host = Host {
        name: format!("skiff-t2-host-{id}"),
        network: format!("skiff-t2-net-{id}"),
    };
    start_host(&host.name, &host.network, true).await.unwrap();
    let gateway = gateway(&host.network).await.unwrap();

    let coord = Coordinator::launch(CoordinatorOptions {
        agent_ip: gateway.clone(),
        advertise: vec![gateway.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let token = coord
        .create_token_granting(1, Some("1h"), &["role=edge"])
        .await
        .unwrap()
        .token;
    let addr = coord.agent.to_string();

    // Bad input: a clear error, a non-zero exit, nothing installed. A token
    // of another cluster stops the snippet before the script is fetched.
    let mut other: skiff_shared::join::JoinToken = token.parse().unwrap();
    other.ca_fingerprint = [9u8; 32];
    let out = host
        .exec_with_token(&install_snippet(&addr, ""), &other.to_string())
        .await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("STOP: the CA at"), "{}", text(&out));
    let out = host.exec("test ! -e skiff-install.sh").await;
    assert!(out.status.success(), "the script was not fetched");
    let out = host
        .exec_with_token(&install_snippet(&addr, "--frobnicate"), &token)
        .await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("--frobnicate"), "{}", text(&out));
    let out = host
        .exec("test ! -e /usr/local/bin/skiff-agent && test ! -e /etc/skiff/agent.toml")
        .await;
    assert!(
        out.status.success(),
        "nothing was installed by the refused runs"
    );
    assert_eq!(coord.nodes().await.unwrap().len(), 0);

    // The real thing. The host has no running systemd: the script says so
    // and, as asked, starts the agent without it.
    let good = install_snippet(
        &addr,
        "--name t2-host --label role=edge --start-without-systemd",
    );
    let out = host.exec_with_token(&good, &token).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !text(&out).contains("warning: --token"),
        "the token was not on a command line: {}",
        text(&out)
    );
    assert!(
        text(&out).to_lowercase().contains("systemd"),
        "{}",
        text(&out)
    );
    let node = coord
        .wait_node("t2-host", NodeStatus::Connected, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(node.labels.get("role").map(String::as_str), Some("edge"));
    let hostname = host.exec("hostname").await;
    assert_eq!(
        node.host.hostname,
        String::from_utf8_lossy(&hostname.stdout).trim(),
        "facts come from the host"
    );
    assert!(
        node.docker_version.is_some(),
        "the host's own engine answered"
    );
    let out = host.exec("stat -c %a /var/lib/skiff/agent/node.key").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "600");

    // Idempotent: again changes nothing and leaves one agent running.
    let out = host.exec_with_token(&good, &token).await;
    assert!(out.status.success(), "{}", text(&out));
    let count = host.exec("pgrep -c -x skiff-agent").await;
    assert_eq!(
        String::from_utf8_lossy(&count.stdout).trim(),
        "1",
        "{}",
        text(&count)
    );
    let nodes = wait_for(
        "the node to stay connected",
        Duration::from_secs(30),
        || async {
            coord
                .nodes()
                .await
                .ok()
                .filter(|n| n.len() == 1 && n[0].status == NodeStatus::Connected)
        },
    )
    .await
    .unwrap();
    assert_eq!(nodes[0].id, node.id, "same node, not a second join");
}
