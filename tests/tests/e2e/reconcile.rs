//! The agent's reconcile against the real Docker Engine: create, adopt,
//! replace and remove its own labelled containers, and nothing else.

use std::collections::BTreeMap;

use bollard::Docker;
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, RemoveContainerOptions,
};
use skiff_agent::containers::{Engine, State, reconcile_once};
use skiff_shared::sections::containers::ContainersSection;
use skiff_shared::workload::{ContainerSpec, PortSpec, Protocol, ResourceSpec, RestartSpec};
use skiff_tests::cluster::free_port;
use skiff_tests::image::{docker, ensure_test_image};

fn spec(service: &str, slot: u32, image: &str) -> ContainerSpec {
    ContainerSpec {
        stack: "shop".into(),
        service: service.into(),
        slot,
        revision: 1,
        image: image.into(),
        command: Some(vec!["sleep".into(), "3600".into()]),
        entrypoint: None,
        env: BTreeMap::from([("GREETING".into(), "hello".into())]),
        labels: BTreeMap::from([("team".into(), "web".into())]),
        ports: vec![],
        mounts: vec![],
        healthcheck: None,
        restart: RestartSpec::UnlessStopped,
        resources: ResourceSpec {
            memory_limit_bytes: Some(64 << 20),
            ..Default::default()
        },
        stop_grace_ms: Some(1000),
        user: None,
        working_dir: None,
        secrets: vec![],
        probe: None,
        configs: vec![],
        networks: vec![],
        dns: vec![],
        dns_search: vec![],
        runtime: Default::default(),
    }
}

fn plan(_node: &str, _generation: u64, containers: Vec<ContainerSpec>) -> ContainersSection {
    ContainersSection { containers }
}

/// Removes every container the test made, however it ends.
struct Cleanup(Docker, Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let names: Vec<String> = self.1.clone();
        let docker = self.0.clone();
        // Drop cannot await: run the removals on a fresh thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                for n in names {
                    let _ = docker
                        .remove_container(
                            &n,
                            Some(RemoveContainerOptions {
                                force: true,
                                ..Default::default()
                            }),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

async fn ids(engine: &Engine) -> BTreeMap<String, (String, State)> {
    engine
        .observe()
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.key, (o.id, o.state)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_creates_adopts_replaces_and_removes_only_its_own_containers() {
    let docker = docker().await.unwrap();
    let image = ensure_test_image(&docker).await.unwrap();
    let run = format!("{}-{}", std::process::id(), free_port());
    let node = format!("reconcile-{run}");
    let other_node = format!("reconcile-other-{run}");
    let engine = Engine::new(docker.clone(), node.clone());
    let other = Engine::new(docker.clone(), other_node.clone());
    let bystander = format!("skiff-bystander-{run}");
    let mut cleanup = Cleanup(docker.clone(), vec![bystander.clone()]);

    // An unlabelled container and another agent's container share the engine.
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(bystander.clone()),
                ..Default::default()
            }),
            bollard::models::ContainerCreateBody {
                image: Some(image.into()),
                cmd: Some(vec!["sleep".into(), "3600".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    docker
        .start_container(
            &bystander,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .unwrap();
    let theirs = spec("web", 1, image);
    cleanup.1.push(other.container_name(&theirs));
    reconcile_once(&other, &plan(&other_node, 1, vec![theirs]))
        .await
        .unwrap();

    let port = free_port();
    let mut web1 = spec("web", 1, image);
    web1.ports = vec![PortSpec {
        target: 80,
        published: port,
        protocol: Protocol::Tcp,
        host_ip: Some("127.0.0.1".into()),
    }];
    let web2 = spec("web", 2, image);
    let mut worker = spec("worker", 1, image);
    worker.restart = RestartSpec::Always;
    for s in [&web1, &web2, &worker] {
        cleanup.1.push(engine.container_name(s));
    }

    // Create.
    let n = reconcile_once(
        &engine,
        &plan(&node, 1, vec![web1.clone(), web2.clone(), worker.clone()]),
    )
    .await
    .unwrap();
    assert_eq!(n, 3);
    let first = ids(&engine).await;
    assert_eq!(first.len(), 3);
    assert!(first.values().all(|(_, s)| *s == State::Up), "{first:?}");
    let inspected = docker
        .inspect_container(
            &engine.container_name(&web1),
            None::<InspectContainerOptions>,
        )
        .await
        .unwrap();
    let config = inspected.config.unwrap();
    let labels = config.labels.unwrap();
    assert_eq!(labels.get("skiff.node"), Some(&node));
    assert_eq!(
        labels.get("skiff.key").map(String::as_str),
        Some("shop.web.1@1")
    );
    assert_eq!(
        labels.get("skiff.name").map(String::as_str),
        Some("shop.web.1")
    );
    assert_eq!(labels.get("team").map(String::as_str), Some("web"));
    assert!(config.env.unwrap().contains(&"GREETING=hello".to_owned()));
    let host = inspected.host_config.unwrap();
    assert_eq!(host.memory, Some(64 << 20));
    let binding = &host.port_bindings.unwrap()["80/tcp"].clone().unwrap()[0];
    assert_eq!(
        binding.host_port.as_deref(),
        Some(port.to_string().as_str())
    );

    // Adopt: nothing to do, nothing recreated.
    assert_eq!(
        reconcile_once(
            &engine,
            &plan(&node, 1, vec![web1.clone(), web2.clone(), worker.clone()])
        )
        .await
        .unwrap(),
        0
    );
    assert_eq!(ids(&engine).await, first);

    // Replace what changed, keep the rest.
    let mut web1b = web1.clone();
    web1b.env.insert("GREETING".into(), "bonjour".into());
    let mut web2b = web2.clone();
    web2b.env.insert("GREETING".into(), "bonjour".into());
    reconcile_once(
        &engine,
        &plan(&node, 2, vec![web1b.clone(), web2b.clone(), worker.clone()]),
    )
    .await
    .unwrap();
    let second = ids(&engine).await;
    assert_ne!(second["shop.web.1@1"].0, first["shop.web.1@1"].0);
    assert_ne!(second["shop.web.2@1"].0, first["shop.web.2@1"].0);
    assert_eq!(
        second["shop.worker.1@1"].0, first["shop.worker.1@1"].0,
        "unchanged service untouched"
    );

    // Killed by hand: Docker leaves both down. The plan still wants them:
    // `always` is started again (the same container), `unless-stopped`
    // keeps Docker's meaning and stays down.
    for s in [&worker, &web2b] {
        docker
            .kill_container(
                &engine.container_name(s),
                None::<bollard::query_parameters::KillContainerOptions>,
            )
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let killed = ids(&engine).await;
        if killed["shop.worker.1@1"].1 == State::Down && killed["shop.web.2@1"].1 == State::Down {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never seen down: {killed:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        reconcile_once(
            &engine,
            &plan(&node, 2, vec![web1b.clone(), web2b.clone(), worker.clone()]),
        )
        .await
        .unwrap(),
        1
    );
    let restarted = ids(&engine).await;
    assert_eq!(
        restarted["shop.worker.1@1"],
        (second["shop.worker.1@1"].0.clone(), State::Up)
    );
    assert_eq!(restarted["shop.web.2@1"].1, State::Down);

    // Scale down, then to nothing.
    reconcile_once(
        &engine,
        &plan(&node, 3, vec![web1b.clone(), worker.clone()]),
    )
    .await
    .unwrap();
    let third = ids(&engine).await;
    assert_eq!(
        third.keys().cloned().collect::<Vec<_>>(),
        vec!["shop.web.1@1".to_owned(), "shop.worker.1@1".to_owned()]
    );
    reconcile_once(&engine, &plan(&node, 4, vec![]))
        .await
        .unwrap();
    assert!(ids(&engine).await.is_empty());

    // What was not ours is still there and running.
    let b = docker
        .inspect_container(&bystander, None::<InspectContainerOptions>)
        .await
        .unwrap();
    assert_eq!(b.state.unwrap().running, Some(true));
    assert_eq!(other.observe().await.unwrap().len(), 1);
}
