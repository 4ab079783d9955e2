use std::path::Path;

use super::*;

fn parse(text: &str) -> Stack {
    let env = BTreeMap::new();
    let files: BTreeMap<std::path::PathBuf, String> = BTreeMap::new();
    let input = skiff_compose::stack::Input::new(text, "compose.yml", Path::new("/srv"), &env)
        .with_files(&files);
    match skiff_compose::stack::parse(&input) {
        Ok(p) => p.stack,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn resolves_a_typical_service() {
    let stack = parse(
        "services:\n  web:\n    image: skiff-test/busybox:1\n    command: httpd -f -p 8080\n    ports: [\"8080:8080\"]\n    environment: {A: \"1\"}\n    volumes: [\"data:/data\"]\n    healthcheck:\n      test: [\"CMD\", \"wget\", \"-q\", \"-O-\", \"http://127.0.0.1:8080/\"]\n      interval: 2s\n    deploy:\n      replicas: 3\n      resources: {limits: {cpus: \"0.5\", memory: 64M}, reservations: {memory: 32M}}\n      update_config: {order: start-first, parallelism: 2}\nvolumes:\n  data: {}\n",
    );
    let (defs, _) = resolve("shop", &stack, &BTreeMap::new()).unwrap();
    let web = &defs[0];
    assert_eq!(web.replicas, Some(3));
    assert!(web.stateful);
    assert_eq!(
        web.max_per_host, None,
        "an ingress port binds on no replica's host"
    );
    assert!(web.template.ports.is_empty());
    assert_eq!(web.ingress.ports[0].published, 8080);
    assert_eq!(web.template.mounts[0].source, "shop_data");
    assert_eq!(web.template.resources.cpu_limit_millis, Some(500));
    assert_eq!(web.template.resources.memory_limit_bytes, Some(64 << 20));
    assert_eq!(web.reservations_memory_bytes, 32 << 20);
    assert_eq!(web.template.healthcheck.as_ref().unwrap().interval_ms, 2000);
    assert_eq!(web.template.healthcheck.as_ref().unwrap().test[0], "CMD");
    assert!(web.update.start_first && web.update.parallelism == 2);
    assert_eq!(web.update.failure_action, FailureAction::Rollback);
    assert_eq!(
        web.container(scheduler::Slot::Replica(2)).name(),
        "shop.web.2"
    );
}

#[test]
fn rights_namespaces_and_limits_reach_the_container_spec() {
    let stack = parse(
        "services:\n  cache:\n    image: redis:7\n    cap_drop: [ALL]\n    cap_add: [SETUID]\n    ulimits: {nofile: 4096, memlock: {soft: -1, hard: -1}}\n    sysctls: {net.core.somaxconn: 1024}\n    shm_size: 64m\n    pids_limit: 200\n    group_add: [mail]\n    ipc: private\n  probe:\n    image: probe:1\n    network_mode: host\n    pid: host\n    privileged: true\n    devices: [/dev/fuse]\n",
    );
    let (defs, _) = resolve("s", &stack, &BTreeMap::new()).unwrap();
    let cache = &defs.iter().find(|d| d.name == "cache").unwrap().template;
    assert_eq!(cache.runtime.cap_drop, vec!["ALL"]);
    assert_eq!(cache.runtime.cap_add, vec!["SETUID"]);
    assert_eq!(
        cache.runtime.ulimits["memlock"],
        Ulimit { soft: -1, hard: -1 }
    );
    assert_eq!(cache.runtime.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(cache.runtime.shm_size_bytes, Some(64 << 20));
    assert_eq!(cache.resources.pids_limit, Some(200));
    assert_eq!(cache.runtime.ipc, Some(IpcMode::Private));
    assert_eq!(cache.networks[0].name, "default");
    let probe = &defs.iter().find(|d| d.name == "probe").unwrap().template;
    assert!(probe.runtime.host_network && probe.runtime.host_pid && probe.runtime.privileged);
    assert!(
        probe.networks.is_empty(),
        "on the host's network, no stack network"
    );
    assert_eq!(probe.runtime.devices[0].source, "/dev/fuse");
}

#[test]
fn reports_every_problem_by_service() {
    let stack = parse(
        "services:\n  a:\n    image: x\n    ports: [\"80:80\"]\n  b:\n    image: y\n    ports: [\"81:8080\"]\n    deploy: {placement: {constraints: [\"node.label.zone == eu\"]}}\n",
    );
    let errors = resolve("s", &stack, &BTreeMap::new()).unwrap_err();
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(
        text.iter()
            .any(|e| e.contains("service b") && e.contains("node.label.zone")),
        "{text:?}"
    );

    // The same host port from two services, as a client could send it.
    let mut stack = stack;
    if let Some(b) = stack.services.get_mut("b") {
        b.ports[0].published = Some(80);
        b.deploy.placement.constraints.clear();
    }
    let errors = resolve("s", &stack, &BTreeMap::new()).unwrap_err();
    assert_eq!(
        errors[0].to_string(),
        "service b: port 80 is also published by service a; publish it from one service only"
    );
}

#[test]
fn configs_carry_their_content_and_bad_ones_are_named() {
    let mut stack = parse(
        "services:\n  web:\n    image: x\n    configs:\n      - page\n      - source: conf\n        target: etc/app.conf\n        uid: \"100\"\n        mode: 0400\nconfigs:\n  page: {content: hello}\n  conf: {content: \"a = 1\"}\n",
    );
    let (defs, _) = resolve("s", &stack, &BTreeMap::new()).unwrap();
    let files = &defs[0].template.configs;
    assert_eq!(files[0].target, "/page");
    assert_eq!((files[0].content.as_str(), files[0].mode), ("hello", 0o444));
    assert_eq!(files[1].target, "/etc/app.conf");
    assert_eq!((files[1].uid, files[1].mode), (100, 0o400));

    // As a client could send them: unread, too large, a bad target.
    if let Some(c) = stack.configs.get_mut("page") {
        c.source = ConfigSource::File("/srv/page.html".into());
    }
    if let Some(c) = stack.configs.get_mut("conf") {
        c.source = ConfigSource::Content("x".repeat(MAX_CONFIG_BYTES + 1));
    }
    let text: Vec<String> = resolve("s", &stack, &BTreeMap::new())
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        text[0].contains("config page was sent without its content"),
        "{text:?}"
    );
    assert!(text[1].contains("config conf is 262145 bytes"), "{text:?}");
    if let Some(w) = stack.services.get_mut("web") {
        w.configs[0].target = "/srv/../etc/".into();
    }
    if let Some(c) = stack.configs.get_mut("page") {
        c.source = ConfigSource::Content("ok".into());
    }
    let text = resolve("s", &stack, &BTreeMap::new()).unwrap_err()[0].to_string();
    assert!(text.contains("is not a file path"), "{text}");
}

#[test]
fn secrets_are_mounted_by_id_and_releases_from_before_ids_are_keyed() {
    let stack = parse(
        "services:\n  web:\n    image: x\n    secrets: [db, {source: api, target: /etc/api.key}]\nsecrets:\n  db: {external: true}\n  api: {external: true}\n",
    );
    let version = |v: u64, id: &str, check: Option<&str>| SecretVersion {
        version: v,
        id: id.into(),
        check: check.map(String::from),
    };
    let mut secrets = BTreeMap::from([
        ("db".to_owned(), version(2, "i2", Some("c2"))),
        ("api".to_owned(), version(1, "j1", Some("k1"))),
    ]);
    let (mut defs, _) = resolve("s", &stack, &secrets).unwrap();
    let mounts = &defs[0].template.secrets;
    assert_eq!(
        (
            mounts[0].id.as_str(),
            mounts[0].check.as_str(),
            mounts[0].digest.as_str()
        ),
        ("i2", "c2", "")
    );
    assert_eq!(mounts[0].target, "/run/secrets/db");
    assert_eq!(
        (mounts[1].id.as_str(), mounts[1].target.as_str()),
        ("j1", "/etc/api.key")
    );

    // A version stored before ids that could not be opened: refused, naming the fix.
    secrets.insert("db".into(), version(1, "i1", None));
    let e = resolve("s", &stack, &secrets).unwrap_err()[0].to_string();
    assert!(
        e.contains("service web") && e.contains("skiff secret set s db"),
        "{e}"
    );

    // A release made before ids mounts by digest; it is keyed.
    let digest = "d".repeat(64);
    defs[0].template.secrets[0].id.clear();
    defs[0].template.secrets[0].check.clear();
    defs[0].template.secrets[0].digest = digest;
    assert_eq!(unkeyed_secret_mounts(&defs), [("db".to_owned(), 2)].into());
    let versions = BTreeMap::from([(("db".to_owned(), 2), version(2, "i2", Some("c2")))]);
    key_secret_mounts("s", &mut defs, &versions).unwrap();
    let m = &defs[0].template.secrets[0];
    assert_eq!(
        (m.id.as_str(), m.check.as_str(), m.digest.as_str()),
        ("i2", "c2", "")
    );
    assert!(unkeyed_secret_mounts(&defs).is_empty());
    defs[0].template.secrets[0].id.clear();
    let e = key_secret_mounts("s", &mut defs, &BTreeMap::new()).unwrap_err();
    assert!(e[0].to_string().contains("no longer stored"), "{e:?}");
}
