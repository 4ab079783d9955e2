//! Private registries on real Docker and a real registry (Debian's
//! `docker-registry` with htpasswd auth on loopback): a pull without
//! credentials fails saying how to fix it; `skiff registry login` delivers
//! credentials to the agent and the same replica starts; an image present
//! by digest is not pulled again; the password is never shown or logged.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{
    EventsOptions, PushImageOptions, RemoveImageOptions, TagImageOptions,
};
use futures_util::StreamExt;
use skiff_cli::client::Method;
use skiff_tests::cluster::{CoordinatorOptions, free_port};
use skiff_tests::image::{docker, ensure_test_image};
use skiff_tests::{launch_cluster, wait_for, wait_until};
use tokio::io::AsyncWriteExt;

const USER: &str = "alice";

const MISSING: &str =
    "run scripts/test.sh, which installs Debian's docker-registry and apache2-utils";

/// A `docker-registry` process with htpasswd auth on a free loopback port;
/// killed when dropped.
struct Registry {
    addr: String,
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Registry {
    async fn start(user: &str, password: &str) -> Self {
        let bin = Path::new("/usr/bin/docker-registry");
        assert!(bin.is_file(), "{} is missing: {MISSING}", bin.display());
        let htpasswd = std::process::Command::new("htpasswd")
            .args(["-Bbn", user, password])
            .output()
            .unwrap_or_else(|e| panic!("htpasswd cannot run ({e}): {MISSING}"));
        assert!(htpasswd.status.success(), "htpasswd failed: {htpasswd:?}");
        let dir = tempfile::Builder::new()
            .prefix("skiff-registry-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {data}\n\
             http:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: skiff-test\n    path: {htpasswd}\n",
            data = dir.path().join("data").display(),
            htpasswd = dir.path().join("htpasswd").display(),
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = std::process::Command::new(bin)
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let registry = Self { addr, child, dir };
        let addr = registry.addr.clone();
        wait_until("the registry to answer", Duration::from_secs(30), || {
            let addr = addr.clone();
            async move { v2_status(&addr).await == Some(401) }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nregistry log:\n{}", registry.log()));
        registry
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn credentials(&self, password: &str) -> DockerCredentials {
        DockerCredentials {
            username: Some(USER.into()),
            password: Some(password.into()),
            serveraddress: Some(self.addr.clone()),
            ..Default::default()
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of an anonymous `GET /v2/` (401 from a registry with auth).
async fn v2_status(addr: &str) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Untags the test's registry references (never the shared test image).
struct Untag(Vec<String>);

impl Drop for Untag {
    fn drop(&mut self) {
        for r in &self.0 {
            let _ = std::process::Command::new("docker")
                .args(["image", "rm", r])
                .output();
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn unix_secs() -> i64 {
    i64::try_from(skiff_shared::unix_millis() / 1000).unwrap_or(0)
}

/// The engine's pull events for references of `repo` from `since` (Unix
/// seconds) until now. Docker answers a pull of a digest whose manifest it
/// cached without asking the registry, so only its events tell whether a
/// pull was made.
async fn pulls_of(docker: &Docker, repo: &str, since: i64) -> Vec<String> {
    let filters = std::collections::HashMap::from([
        ("type".to_owned(), vec!["image".to_owned()]),
        ("event".to_owned(), vec!["pull".to_owned()]),
    ]);
    docker
        .events(Some(EventsOptions {
            since: Some(since.to_string()),
            until: Some((unix_secs() + 1).to_string()),
            filters: Some(filters),
        }))
        .filter_map(|e| std::future::ready(e.ok().and_then(|e| e.actor?.id)))
        .filter(|id| std::future::ready(id.contains(repo)))
        .collect()
        .await
}

fn compose(image: &str, label: &str) -> String {
    format!(
        "services:\n  app:\n    image: \"{image}\"\n    command: [\"sleep\", \"3600\"]\n    stop_grace_period: 1s\n    deploy:\n      replicas: 1\n      placement:\n        constraints: [\"node.labels.test == {label}\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn images_from_a_private_registry_are_pulled_with_the_stored_credentials() {
    let port = free_port();
    let password = format!("pw-{port}-correct-horse");
    let registry = Registry::start(USER, &password).await;
    let addr = registry.addr.clone();

    // Push the test image to the registry, then forget the local copy of
    // the registry's reference so only a pull can bring it back.
    let docker = docker().await.unwrap();
    let source = ensure_test_image(&docker).await.unwrap();
    let repo = format!("{addr}/skiff-registry-{port}/busybox");
    let image = format!("{repo}:1");
    let mut untag = Untag(vec![image.clone()]);
    docker
        .tag_image(
            source,
            Some(TagImageOptions {
                repo: Some(repo.clone()),
                tag: Some("1".into()),
            }),
        )
        .await
        .unwrap();
    let mut push = docker.push_image(
        &repo,
        Some(PushImageOptions {
            tag: Some("1".into()),
            ..Default::default()
        }),
        Some(registry.credentials(&password)),
    );
    while let Some(step) = push.next().await {
        let step = step.unwrap_or_else(|e| panic!("push failed: {e}\n{}", registry.log()));
        assert!(step.error_detail.is_none(), "push failed: {step:?}");
    }
    let digest = docker
        .inspect_image(&image)
        .await
        .unwrap()
        .repo_digests
        .unwrap_or_default()
        .into_iter()
        .find(|d| d.starts_with(&format!("{repo}@")))
        .expect("the pushed image has a digest from the registry");
    untag.0.push(digest.clone());
    docker
        .remove_image(&image, None::<RemoveImageOptions>, None)
        .await
        .unwrap();
    let _ = docker
        .remove_image(&digest, None::<RemoveImageOptions>, None)
        .await;
    assert!(docker.inspect_image(&image).await.is_err());
    assert!(docker.inspect_image(&digest).await.is_err());

    let cluster = launch_cluster(1, CoordinatorOptions::default())
        .await
        .unwrap();
    let label = cluster.coordinator.api.port().to_string();
    let stack = format!("reg{label}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yml"), compose(&image, &label)).unwrap();

    // Without credentials: the deploy fails, naming the image, the
    // registry and the command that fixes it.
    let out = cluster.skiff(dir.path(), &["deploy", &stack], None).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&image)
            && err.contains("could not be pulled")
            && err.contains(&format!("authentication required by registry {addr}"))
            && err.contains(&format!("run `skiff registry login {addr}`")),
        "{err}"
    );

    // Bad input changes nothing and says what to do.
    let out = cluster
        .skiff(
            dir.path(),
            &["registry", "login", &format!("http://{addr}/"), "-u", USER],
            Some(&password),
        )
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has a scheme; write the host alone"),
        "{}",
        text(&out)
    );
    let out = cluster
        .skiff(
            dir.path(),
            &["registry", "login", &addr, "-u", USER, "--password-stdin"],
            Some("\n"),
        )
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("password read from standard input is empty"),
        "{}",
        text(&out)
    );
    let (status, _) = cluster
        .coordinator
        .client()
        .raw(
            Method::PUT,
            "/registries/ghcr.io%2Fx",
            Some(&serde_json::json!({"username": "u", "password": "p"})),
        )
        .await
        .unwrap();
    assert!(status.is_client_error(), "{status}");

    // A wrong password reaches the agent, which says the registry refused it.
    let out = cluster
        .skiff(
            dir.path(),
            &["registry", "login", &addr, "-u", USER, "--password-stdin"],
            Some("not-the-password\n"),
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    wait_until(
        "the agent to report the refused credentials",
        Duration::from_secs(60),
        || async {
            cluster.tasks(&stack).await.iter().any(|t| {
                t.error.as_deref().is_some_and(|e| {
                    e.contains(&format!(
                        "registry {addr} refused the credentials of user {USER}"
                    ))
                })
            })
        },
    )
    .await
    .unwrap();

    // The right password: the same replica starts, with no new deploy.
    let login_at = unix_secs();
    let out = cluster
        .skiff(
            dir.path(),
            &[
                "registry",
                "login",
                &addr,
                "--username",
                USER,
                "--password-stdin",
            ],
            Some(&format!("{password}\n")),
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let running = wait_for(
        "the replica to run once credentials are set",
        Duration::from_secs(90),
        || async {
            let t = cluster.tasks(&stack).await;
            (t.len() == 1 && t[0].up_to_date && t[0].state == "running" && t[0].error.is_none())
                .then_some(())
        },
    )
    .await;
    if let Err(e) = running {
        panic!("{e}\n{:?}", cluster.tasks(&stack).await);
    }
    assert!(docker.inspect_image(&image).await.is_ok(), "pulled");
    assert!(
        !pulls_of(&docker, &repo, login_at).await.is_empty(),
        "the engine reports the pull"
    );
    let out = cluster.skiff(dir.path(), &["deploy", &stack], None).await;
    assert!(out.status.success(), "{}", text(&out));

    // Listed without the password; the agent keeps them 0600.
    let out = cluster
        .skiff(dir.path(), &["registry", "ls", "--json"], None)
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["host"], addr.as_str());
    assert_eq!(listed[0]["username"], USER);
    assert!(listed[0].get("password").is_none(), "{listed}");
    let agent = &cluster.agents[0];
    let file = agent.data_dir().join("registries.json");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !cluster.coordinator.log().contains(&password),
        "the coordinator logged the password"
    );
    assert!(
        !agent.log().contains(&password),
        "the agent logged the password"
    );

    // Logged out: the agent forgets the credentials; an image present by
    // digest is used as it is (a pull would now be refused).
    let out = cluster
        .skiff(dir.path(), &["registry", "logout", &addr], None)
        .await;
    assert!(out.status.success(), "{}", text(&out));
    wait_until(
        "the agent to forget the credentials",
        Duration::from_secs(30),
        || async { !file.exists() },
    )
    .await
    .unwrap();
    assert!(docker.inspect_image(&digest).await.is_ok());
    std::fs::write(dir.path().join("compose.yml"), compose(&digest, &label)).unwrap();
    let deploy_at = unix_secs();
    let out = cluster.skiff(dir.path(), &["deploy", &stack], None).await;
    assert!(out.status.success(), "{}", text(&out));
    let t = cluster.tasks(&stack).await;
    assert!(
        t.len() == 1 && t[0].image == digest && t[0].state == "running",
        "{t:?}"
    );
    let pulls = pulls_of(&docker, &digest, deploy_at).await;
    assert!(pulls.is_empty(), "present by digest, yet pulled: {pulls:?}");
    let out = cluster
        .skiff(dir.path(), &["registry", "logout", &addr], None)
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    drop(cluster);
    drop(untag);
    drop(registry);
}
