//! Secret hygiene end to end: both daemons keep every file that holds
//! plans or state private whatever the umask they start with.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use skiff_tests::cluster::{Cluster, CoordinatorOptions, ProcessOptions};
use skiff_tests::image::{docker, ensure_test_image};
use skiff_tests::launch_cluster_with;

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
async fn state_files_are_private_whatever_the_umask() {
    let permissive = ProcessOptions {
        env: Vec::new(),
        umask: Some(0o022),
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
