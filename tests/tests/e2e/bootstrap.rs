//! The install path on a fresh server: a tier-2 host (a Debian container
//! with its own Docker Engine and no systemd, see scripts/test-host.sh)
//! fetches the install script from the coordinator and joins.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use skiff_api_types::NodeStatus;
use skiff_tests::cluster::{Coordinator, CoordinatorOptions};
use skiff_tests::wait_for;

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join(name)
}

async fn run(cmd: &mut tokio::process::Command) -> Output {
    tokio::time::timeout(Duration::from_secs(600), cmd.kill_on_drop(true).output())
        .await
        .expect("command finished in time")
        .expect("command ran")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Removes the host and its network however the test ends.
struct Host {
    name: String,
    network: String,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script("test-host.sh"))
            .args(["stop", &self.name])
            .output();
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

impl Host {
    async fn exec(&self, shell: &str) -> Output {
        run(tokio::process::Command::new("docker").args(["exec", &self.name, "sh", "-c", shell]))
            .await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn install_script_installs_joins_and_starts_the_agent_on_a_fresh_host() {
    if std::env::var_os("SKIFF_SKIP_TIER2").is_some() {
        eprintln!("SKIFF_SKIP_TIER2 is set: skipping the tier-2 install test");
        return;
    }
    let id = std::process::id();
    let host = Host {
        name: format!("skiff-t2-host-{id}"),
        network: format!("skiff-t2-net-{id}"),
    };
    let out = run(tokio::process::Command::new(script("test-host.sh")).args([
        "start",
        &host.name,
        &host.network,
    ]))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let out =
        run(tokio::process::Command::new(script("test-host.sh")).args(["gateway", &host.network]))
            .await;
    let gateway = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        gateway.parse::<std::net::IpAddr>().is_ok(),
        "gateway: {}",
        text(&out)
    );

    let coord = Coordinator::launch(CoordinatorOptions {
        agent_ip: gateway.clone(),
        advertise: vec![gateway.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    // The token grants the label the host asks for below.
    let token = coord
        .create_token_granting(1, Some("1h"), &["role=edge"])
        .await
        .unwrap()
        .token;
    let install = format!("curl -fsSLk https://{}/install.sh | sh -s --", coord.agent);

    // Bad input: a clear error, a non-zero exit, nothing installed.
    for (args, named) in [
        ("--token nope", "token"),
        (
            &format!("--token {token} --frobnicate") as &str,
            "--frobnicate",
        ),
    ] {
        let out = host.exec(&format!("{install} {args}")).await;
        assert!(!out.status.success(), "{args}: {}", text(&out));
        assert!(text(&out).contains(named), "{args}: {}", text(&out));
    }
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
    let good = format!(
        "{install} --token {token} --name t2-host --label role=edge --start-without-systemd"
    );
    let out = host.exec(&good).await;
    assert!(out.status.success(), "{}", text(&out));
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
    let out = host.exec(&good).await;
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
