//! Secret hygiene end to end. At any log level a secret's value, its
//! base64 and its unsalted SHA-256 reach no log, no file outside the
//! sealed store and the container's mount, no output of the CLI and
//! nothing `docker inspect` shows; a delivered value that is not the one
//! the signed plan names is never mounted; and both daemons keep every
//! file that holds plans or state private whatever the umask they start
//! with.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use skiff_tests::cluster::{Cluster, CoordinatorOptions, ProcessOptions};
use skiff_tests::image::{docker, ensure_test_image};
use skiff_tests::{launch_cluster_with, wait_for};

use crate::stacks::{assert_ok, get, wait_ready};

/// The secret every test here deploys: weak on purpose (a dictionary
/// phrase is what an offline guess of a plain hash finds).
const SECRET: &str = "correct horse battery staple";

/// A one-agent cluster whose daemons run with `process`, and a stack
/// whose only service serves its secret: deployed, healthy, and seen to
/// read the value. Returns the cluster, the stack and everything the CLI
/// printed.
async fn deploy_a_secret(process: ProcessOptions) -> (Cluster, String, String) {
    ensure_test_image(&docker().await.unwrap()).await.unwrap();
    let opts = CoordinatorOptions {
        process: process.clone(),
        ..Default::default()
    };
    let cluster = launch_cluster_with(1, opts, process).await.unwrap();
    let label = cluster.coordinator.api.port().to_string();
    let stack = format!("leak{label}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("compose.yml"),
        format!(
            "services:\n  web:\n    image: skiff-test/busybox:1\n    command: [\"sh\", \"-c\", \"cp /run/secrets/db_password /www/index.html && httpd -f -p 8080 -h /www\"]\n    secrets: [db_password]\n    healthcheck:\n      test: [\"CMD\", \"wget\", \"-q\", \"-O\", \"/dev/null\", \"http://127.0.0.1:8080/\"]\n      interval: 1s\n    deploy:\n      placement:\n        constraints: [\"node.labels.test == {label}\"]\nsecrets:\n  db_password:\n    external: true\n"
        ),
    )
    .unwrap();
    let mut printed = String::new();
    let runs: [(&[&str], Option<&str>); 4] = [
        (&["secret", "set", &stack, "db_password"], Some(SECRET)),
        (&["deploy", &stack], None),
        (&["secret", "ls", &stack, "--json"], None),
        (&["stack", "ps", &stack], None),
    ];
    for (args, stdin) in runs {
        let out = cluster.skiff(dir.path(), args, stdin).await;
        assert_ok(&cluster, &out);
        printed.push_str(&String::from_utf8_lossy(&out.stdout));
        printed.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    let t = wait_ready(&cluster, &stack, 1).await;
    assert_eq!(get(&t[0].ips[0]).await.as_deref(), Some(SECRET));
    (cluster, stack, printed)
}

/// `docker inspect` of the stack's one container, as the engine prints it.
fn inspect(stack: &str) -> String {
    let ps = std::process::Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=skiff.stack={stack}"),
        ])
        .output()
        .unwrap();
    let ids = String::from_utf8_lossy(&ps.stdout).into_owned();
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(ids.len(), 1, "one container of {stack}: {ids:?}");
    let out = std::process::Command::new("docker")
        .args(["inspect", ids[0]])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The host path mounted at the secret's target, from `docker inspect`.
fn mount_source(inspected: &str) -> PathBuf {
    let containers: serde_json::Value = serde_json::from_str(inspected).unwrap();
    containers[0]["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Destination"] == "/run/secrets/db_password")
        .and_then(|m| m["Source"].as_str())
        .map(PathBuf::from)
        .expect("the secret is mounted")
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_is_never_found_outside_its_store_and_its_mount_at_any_log_level() {
    let trace = ProcessOptions {
        env: vec![("SKIFF_LOG".into(), "trace".into())],
        ..ProcessOptions::default()
    };
    let (cluster, stack, printed) = deploy_a_secret(trace).await;
    let coord = &cluster.coordinator;
    let agent = &cluster.agents[0];

    // The mount source is the one file on the host that holds the value.
    let inspected = inspect(&stack);
    let source = mount_source(&inspected);
    assert!(
        source.starts_with(agent.data_dir().join("secrets")),
        "{}",
        source.display()
    );
    assert_eq!(std::fs::read(&source).unwrap(), SECRET.as_bytes());

    let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
    let needles = [
        ("the value", SECRET.to_owned()),
        ("its base64", b64.clone()),
        (
            "its SHA-256",
            hex::encode(skiff_shared::sha256(SECRET.as_bytes())),
        ),
        // Frame dumps print payloads in hex.
        ("the value in hex", hex::encode(SECRET)),
        ("its base64 in hex", hex::encode(&b64)),
    ];
    let mut places: Vec<(String, Vec<u8>)> = vec![
        ("the coordinator's log".into(), coord.log().into_bytes()),
        ("the agent's log".into(), agent.log().into_bytes()),
        ("the CLI's output".into(), printed.into_bytes()),
        ("docker inspect".into(), inspected.into_bytes()),
    ];
    for dir in [coord.data_dir(), agent.data_dir()] {
        for f in files(&dir) {
            // A file's name is no place for a hash of the value either.
            places.push((
                format!("the name {}", f.display()),
                f.display().to_string().into_bytes(),
            ));
            if f != source {
                places.push((
                    f.display().to_string(),
                    std::fs::read(&f).unwrap_or_default(),
                ));
            }
        }
    }
    let mut found = Vec::new();
    for (what, bytes) in &places {
        for (needle_name, needle) in &needles {
            if let Some(at) = bytes
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
            {
                let context = String::from_utf8_lossy(&bytes[at.saturating_sub(160)..at]);
                found.push(format!("{needle_name} in {what}, after {context:?}"));
            }
        }
    }
    assert!(found.is_empty(), "the secret leaked: {}", found.join("; "));
    // The search above means something only if the daemons took
    // SKIFF_LOG=trace: the harness's own filter shows no library's debug.
    for (name, log) in [("coordinator", coord.log()), ("agent", agent.log())] {
        let verbose = log.lines().any(|l| {
            let mut words = l.split_whitespace().skip(1);
            matches!(words.next(), Some("DEBUG" | "TRACE"))
                && words
                    .next()
                    .is_some_and(|target| !target.starts_with("skiff"))
        });
        assert!(verbose, "the {name} logged at SKIFF_LOG=trace");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn state_files_are_private_whatever_the_umask() {
    let permissive = ProcessOptions {
        umask: Some(0o022),
        ..ProcessOptions::default()
    };
    let (cluster, _, _) = deploy_a_secret(permissive).await;
    // Certificates and public keys may be readable by all; delivered secrets
    // are read-only for every uid (containers run as any user) inside a
    // 0700 directory; everything else is the owner's alone.
    const PUBLIC: [&str; 4] = ["ca.crt", "node.crt", "server.crt", "plan-signing.pub"];
    let mut wrong = Vec::new();
    let mut seen = Vec::new();
    for dir in [cluster.coordinator.data_dir(), cluster.agents[0].data_dir()] {
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        if mode(&dir) != 0o700 {
            wrong.push(format!("{} is {:o}", dir.display(), mode(&dir)));
        }
        for f in files(&dir) {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let parent = f.parent().unwrap();
            let ok = if parent.ends_with("secrets") {
                mode(parent) == 0o700 && mode(&f) == 0o444
            } else if PUBLIC.contains(&name.as_str()) {
                mode(&f) & 0o022 == 0
            } else {
                mode(&f) == 0o600
            };
            if !ok {
                wrong.push(format!("{} is {:o}", f.display(), mode(&f)));
            }
            seen.push(name);
        }
    }
    for expected in [
        "skiff.db",
        "skiff.db-wal",
        "skiff.db-shm",
        "node.toml",
        "plan.json",
    ] {
        assert!(seen.iter().any(|s| s == expected), "{expected} in {seen:?}");
    }
    assert!(wrong.is_empty(), "not private: {}", wrong.join("; "));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivered_value_that_is_not_the_planned_one_is_never_mounted() {
    let (cluster, stack, _) = deploy_a_secret(ProcessOptions::default()).await;
    let inspected = inspect(&stack);
    let source = mount_source(&inspected);
    // The value on the host changes behind the agent's back; the container
    // is then created again from it.
    std::fs::remove_file(&source).unwrap();
    std::fs::write(&source, "forged").unwrap();
    let containers: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    let id = containers[0]["Id"].as_str().unwrap();
    let rm = std::process::Command::new("docker")
        .args(["rm", "-f", id])
        .output()
        .unwrap();
    assert!(rm.status.success());
    let error = wait_for(
        "the agent to refuse the forged value",
        std::time::Duration::from_secs(60),
        || async {
            cluster
                .tasks(&stack)
                .await
                .first()
                .and_then(|t| t.error.clone())
        },
    )
    .await
    .unwrap();
    assert!(
        error.contains("secret db_password (version 1)")
            && error.contains("does not match the check value in the signed plan"),
        "{error}"
    );
    let ps = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=skiff.stack={stack}"),
        ])
        .output()
        .unwrap();
    assert!(ps.stdout.is_empty(), "nothing was created from it");
}
