//! The cluster's container policy on real Docker: deploys that mount the
//! server's root or the Docker socket, or ask for a privileged container
//! through the raw API, are refused and change nothing until an admin
//! allows them for the stack; the keys production stacks need reach the
//! engine; and an agent refuses a plan that mounts its own data dir.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions};
use skiff_api_types::{DeployView, PolicyView};
use skiff_cli::client::{ClientError, Method};
use skiff_tests::cluster::Cluster;
use skiff_tests::image::docker;
use skiff_tests::wait_for;

use super::stacks::{assert_ok, engine_containers, skiff, stack_cluster};

/// A one-service stack that sleeps, kept on this cluster's nodes, with
/// `extra` lines under the service.
fn sleeper(label: &str, extra: &str) -> String {
    format!(
        "services:\n  web:\n    image: skiff-test/busybox:1\n    command: [\"sleep\", \"3600\"]\n{extra}    deploy:\n      placement:\n        constraints: [\"node.labels.test == {label}\"]\n"
    )
}

/// The engine's view of the stack's container, once the agent created it.
async fn inspect_only(stack: &str) -> ContainerInspectResponse {
    let docker = docker().await.unwrap();
    let filters = HashMap::from([("label".to_owned(), vec![format!("skiff.stack={stack}")])]);
    wait_for(
        "the stack's container to be created",
        Duration::from_secs(60),
        || async {
            let list = docker
                .list_containers(Some(ListContainersOptions {
                    all: true,
                    filters: Some(filters.clone()),
                    ..Default::default()
                }))
                .await
                .ok()?;
            let id = list.first()?.id.clone()?;
            docker
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
                .ok()
        },
    )
    .await
    .unwrap()
}

/// No release of `stack` was recorded.
async fn no_release(cluster: &Cluster, stack: &str) {
    let stacks: Vec<serde_json::Value> = cluster
        .coordinator
        .client()
        .call(Method::GET, "/stacks", None::<&()>)
        .await
        .unwrap();
    assert!(stacks.iter().all(|s| s["name"] != stack), "{stacks:?}");
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn mounts_of_the_root_or_the_docker_socket_are_refused_until_allowed() {
    let (cluster, label, dir) = stack_cluster(1).await;
    let stack = format!("pol{label}");
    let file = dir.path().join("compose.yml");

    // The server's root, read-only even: refused, naming the fix; nothing
    // recorded, nothing started; a dry run says the same.
    std::fs::write(&file, sleeper(&label, "    volumes: [\"/:/host:ro\"]\n")).unwrap();
    for args in [
        &["deploy", &stack][..],
        &["deploy", "--dry-run", &stack][..],
    ] {
        let out = skiff(&cluster, dir.path(), args).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("service web: the bind mount of / (at /host) gives the container the server's whole file system")
                && err.contains(&format!("`skiff policy allow {stack} bind:/`")),
            "{err}"
        );
    }
    no_release(&cluster, &stack).await;
    assert_eq!(engine_containers(&stack).await, 0);

    // The Docker socket, beside /etc: every refusal is listed.
    std::fs::write(
        &file,
        sleeper(
            &label,
            "    volumes:\n      - /var/run/docker.sock:/var/run/docker.sock\n      - /etc:/host-etc:ro\n",
        ),
    )
    .unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the Docker Engine, and with it the whole server")
            && err.contains(&format!(
                "skiff policy allow {stack} bind:/var/run/docker.sock"
            ))
            && err.contains(&format!("skiff policy allow {stack} bind:/etc")),
        "{err}"
    );
    no_release(&cluster, &stack).await;
    assert_eq!(engine_containers(&stack).await, 0);

    // A relative bind has no meaning on a server: refused on this machine.
    std::fs::write(&file, sleeper(&label, "    volumes: [\".:/app\"]\n")).unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bind mount of \".\" is a relative path")
            && err.contains("write an absolute path"),
        "{err}"
    );

    // Allowed for this stack only (another stack is still refused): it runs.
    let other = format!("other{label}");
    let out = skiff(
        &cluster,
        dir.path(),
        &[
            "policy",
            "allow",
            &stack,
            "bind:/var/run/docker.sock",
            "bind:/etc",
        ],
    )
    .await;
    assert_ok(&cluster, &out);
    let out = skiff(&cluster, dir.path(), &["policy", "show", &stack, "--json"]).await;
    let view: PolicyView = serde_json::from_slice(&out.stdout).unwrap();
    let allowed: Vec<&str> = view.allowances.iter().map(|a| a.setting.as_str()).collect();
    assert_eq!(allowed, vec!["bind:/etc", "bind:/var/run/docker.sock"]);
    assert!(
        view.refused_by_default
            .iter()
            .any(|r| r.setting == "privileged")
    );
    std::fs::write(
        &file,
        sleeper(
            &label,
            "    volumes:\n      - /var/run/docker.sock:/var/run/docker.sock\n      - /etc:/host-etc:ro\n",
        ),
    )
    .unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", &other]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    assert_ok(&cluster, &out);
    let c = inspect_only(&stack).await;
    let sources: Vec<String> = c
        .mounts
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.source)
        .collect();
    assert!(
        sources.iter().any(|s| s == "/var/run/docker.sock") && sources.iter().any(|s| s == "/etc"),
        "{sources:?}"
    );

    // Revoked: running containers stay, but the next release is checked
    // without it (scaling included).
    let out = skiff(
        &cluster,
        dir.path(),
        &["policy", "revoke", &stack, "bind:/var/run/docker.sock"],
    )
    .await;
    assert_ok(&cluster, &out);
    let out = skiff(
        &cluster,
        dir.path(),
        &["service", "scale", &format!("{stack}.web=2")],
    )
    .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("bind:/var/run/docker.sock"), "{err}");
    let out = skiff(&cluster, dir.path(), &["release", "ls", &stack, "--json"]).await;
    let releases: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(releases.len(), 1, "the refused scale recorded nothing");
    assert_eq!(engine_containers(&stack).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_privileged_container_asked_for_through_the_raw_api_is_refused_until_allowed() {
    let (cluster, label, dir) = stack_cluster(1).await;
    let stack = format!("raw{label}");
    let client = cluster.coordinator.client();
    let compose = sleeper(&label, "    privileged: true\n");
    let path = format!("/stacks/{stack}/deploy");

    // The Compose file, with no client in between: parsed and checked here.
    let body = serde_json::json!({"compose": compose});
    let refused = client
        .call::<DeployView>(Method::POST, &path, Some(&body))
        .await
        .unwrap_err();
    match &refused {
        ClientError::Api {
            status: 409,
            code,
            message,
        } => {
            assert_eq!(code, "refused_by_policy");
            assert!(
                message.contains("`privileged: true` gives the container every device and capability of the server")
                    && message.contains(&format!("`skiff policy allow {stack} privileged`")),
                "{message}"
            );
        }
        other => panic!("expected a policy refusal, got {other}"),
    }
    // A parsed model, as older clients sent it, is not taken on trust.
    let model = serde_json::json!({
        "stack": {"services": {"web": {"image": "skiff-test/busybox:1", "runtime": {"privileged": true}}}},
        "compose": "services: {}\n",
    });
    match client
        .call::<DeployView>(Method::POST, &path, Some(&model))
        .await
        .unwrap_err()
    {
        ClientError::Api {
            status: 400,
            code,
            message,
        } => {
            assert_eq!(code, "outdated_client");
            assert!(message.contains("upgrade skiff"), "{message}");
        }
        other => panic!("expected the old request to be refused, got {other}"),
    }
    no_release(&cluster, &stack).await;
    assert_eq!(engine_containers(&stack).await, 0);

    // Allowed for the stack: the same request is deployed, and the agent
    // creates the container privileged. (Whether the engine can start it
    // depends on the engine's own rights: one inside an unprivileged
    // container cannot.)
    let out = skiff(
        &cluster,
        dir.path(),
        &["policy", "allow", &stack, "privileged"],
    )
    .await;
    assert_ok(&cluster, &out);
    let view: DeployView = client.call(Method::POST, &path, Some(&body)).await.unwrap();
    assert_eq!(view.release, Some(1));
    let c = inspect_only(&stack).await;
    assert_eq!(c.host_config.and_then(|h| h.privileged), Some(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_and_kernel_settings_production_stacks_need_reach_the_engine() {
    let (cluster, label, dir) = stack_cluster(1).await;
    let stack = format!("prod{label}");
    // Limits within what the engine itself may grant (one running in an
    // unprivileged container cannot raise them past its own).
    let extra = "    cap_drop: [ALL]\n    cap_add: [CHOWN]\n    ulimits:\n      nofile: {soft: 1024, hard: 4096}\n      memlock: 65536\n    sysctls:\n      net.core.somaxconn: 1024\n    shm_size: 128m\n    pids_limit: 200\n";
    std::fs::write(dir.path().join("compose.yml"), sleeper(&label, extra)).unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", &stack]).await;
    assert_ok(&cluster, &out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Deployed."));
    let c = inspect_only(&stack).await;
    assert_eq!(
        c.state.as_ref().and_then(|s| s.running),
        Some(true),
        "{c:?}"
    );
    let h = c.host_config.unwrap();
    let caps = |v: Option<Vec<String>>| -> Vec<String> {
        v.unwrap_or_default()
            .into_iter()
            .map(|c| c.trim_start_matches("CAP_").to_owned())
            .collect()
    };
    assert_eq!(caps(h.cap_drop), vec!["ALL"]);
    assert_eq!(caps(h.cap_add), vec!["CHOWN"]);
    let mut ulimits: Vec<(String, i64, i64)> = h
        .ulimits
        .unwrap_or_default()
        .into_iter()
        .map(|u| {
            (
                u.name.unwrap_or_default(),
                u.soft.unwrap_or_default(),
                u.hard.unwrap_or_default(),
            )
        })
        .collect();
    ulimits.sort();
    assert_eq!(
        ulimits,
        vec![
            ("memlock".to_owned(), 65536, 65536),
            ("nofile".to_owned(), 1024, 4096)
        ]
    );
    assert_eq!(
        h.sysctls
            .unwrap_or_default()
            .get("net.core.somaxconn")
            .map(String::as_str),
        Some("1024")
    );
    assert_eq!(h.shm_size, Some(128 << 20));
    assert_eq!(h.pids_limit, Some(200));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_refuses_a_plan_that_mounts_its_own_data_dir() {
    let (cluster, label, dir) = stack_cluster(1).await;
    let stack = format!("own{label}");
    let agent = &cluster.agents[0];
    let data = agent.data_dir();
    // Not a path the cluster's policy protects (the test agent's data dir
    // is a temporary one): the coordinator lets it through, the agent not.
    std::fs::write(
        dir.path().join("compose.yml"),
        sleeper(
            &label,
            &format!("    volumes: [\"{}:/agent:ro\"]\n", data.display()),
        ),
    )
    .unwrap();
    let out = skiff(&cluster, dir.path(), &["deploy", "--detach", &stack]).await;
    assert_ok(&cluster, &out);
    let node = agent.node_id();
    let error = wait_for(
        "the agent to refuse its plan",
        Duration::from_secs(60),
        || async {
            cluster
                .coordinator
                .node(&node)
                .await
                .ok()
                .and_then(|n| n.plan_error)
        },
    )
    .await
    .unwrap();
    assert!(
        error.contains(&format!("container {stack}.web.1 may not bind-mount"))
            && error.contains("the agent's data dir"),
        "{error}"
    );
    assert_eq!(engine_containers(&stack).await, 0);

    // Without the stack, the agent takes its plans again.
    let out = skiff(&cluster, dir.path(), &["stack", "rm", &stack]).await;
    assert_ok(&cluster, &out);
    wait_for(
        "the agent to accept its next plan",
        Duration::from_secs(60),
        || async {
            cluster
                .coordinator
                .node(&node)
                .await
                .ok()
                .filter(|n| n.plan_error.is_none())
        },
    )
    .await
    .unwrap();
}
