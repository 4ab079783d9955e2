//! The agent's own health checks: an HTTP request or a TCP connect from the
//! host to each running container's address, for containers whose spec has
//! a [`ProbeSpec`]. They need nothing inside the image.
//!
//! Like Docker's: a container is `starting` until the first pass,
//! `healthy` after a pass, and `unhealthy` after `retries` consecutive
//! failures; failures in `start_period` after the start do not count. The
//! result is folded into the health the agent reports ([`combine`]), so
//! rollouts and `depends_on` wait on it like on a Docker health check.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use skiff_shared::tasks::TaskTree;
use skiff_shared::workload::{ContainerState, ContainerStatus, Health, ProbeSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info};

/// The checks of one agent: one task per running container that has one,
/// each in its own subtree of the controller's.
#[derive(Debug)]
pub struct Prober {
    tree: TaskTree,
    checks: Arc<Mutex<HashMap<String, Check>>>,
    changed: Arc<Notify>,
}

/// One container run's check.
#[derive(Debug)]
struct Check {
    /// The container's start time and address: a restart or a new address
    /// starts the check over.
    run: (Option<String>, SocketAddr),
    spec: ProbeSpec,
    health: Health,
    task: TaskTree,
}

impl Drop for Prober {
    fn drop(&mut self) {
        for c in lock(&self.checks).values() {
            c.task.cancel();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Prober {
    /// Checks run as tasks of `tree`.
    pub fn new(tree: TaskTree) -> Self {
        Self {
            tree,
            checks: Arc::default(),
            changed: Arc::default(),
        }
    }

    /// Notified whenever a container's check result changes.
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// Runs a check for every running container in `containers` whose key
    /// has a spec in `specs`, stops the others, and folds the results into
    /// the containers' reported health.
    pub fn sync(&self, containers: &mut [ContainerStatus], specs: &HashMap<String, &ProbeSpec>) {
        let mut checks = lock(&self.checks);
        let mut live = Vec::new();
        for c in containers.iter_mut() {
            let Some(spec) = specs.get(&c.key) else {
                continue;
            };
            if c.state != ContainerState::Running {
                continue;
            }
            let Some(ip) = c.ips.iter().find_map(|ip| ip.parse::<IpAddr>().ok()) else {
                // No address (host networking or none): nothing to check from here.
                continue;
            };
            let run = (c.started_at.clone(), SocketAddr::new(ip, spec.port));
            let fresh = checks
                .get(&c.id)
                .is_none_or(|k| k.run != run || k.spec != **spec);
            if fresh {
                if let Some(old) = checks.remove(&c.id) {
                    old.task.cancel();
                }
                let task = self.tree.child();
                task.spawn(
                    "health-check",
                    probe_loop(
                        c.id.clone(),
                        c.name.clone(),
                        run.1,
                        (*spec).clone(),
                        self.checks.clone(),
                        self.changed.clone(),
                        task.clone(),
                    ),
                );
                checks.insert(
                    c.id.clone(),
                    Check {
                        run,
                        spec: (*spec).clone(),
                        health: Health::Starting,
                        task,
                    },
                );
            }
            live.push(c.id.clone());
            if let Some(k) = checks.get(&c.id) {
                c.health = Some(combine(c.health, k.health));
            }
        }
        checks.retain(|id, k| {
            let keep = live.contains(id);
            if !keep {
                k.task.cancel();
            }
            keep
        });
    }
}

/// One health from Docker's check (if any) and the agent's: unhealthy if
/// either is, healthy if both are, starting otherwise.
pub fn combine(docker: Option<Health>, probe: Health) -> Health {
    match docker {
        None => probe,
        Some(Health::Unhealthy) => Health::Unhealthy,
        Some(_) if probe == Health::Unhealthy => Health::Unhealthy,
        Some(Health::Healthy) => probe,
        Some(Health::Starting) => Health::Starting,
    }
}

async fn probe_loop(
    id: String,
    name: String,
    addr: SocketAddr,
    spec: ProbeSpec,
    checks: Arc<Mutex<HashMap<String, Check>>>,
    changed: Arc<Notify>,
    tree: TaskTree,
) {
    let started = Instant::now();
    let start_period = Duration::from_millis(spec.start_period_ms);
    let interval = Duration::from_millis(spec.interval_ms.max(100));
    let mut health = Health::Starting;
    let mut failures = 0u32;
    loop {
        let outcome = tokio::select! {
            () = tree.cancelled() => return,
            r = probe_once(addr, &spec) => r,
        };
        let next = match outcome {
            Ok(()) => {
                failures = 0;
                Health::Healthy
            }
            Err(why) => {
                if health != Health::Healthy && started.elapsed() < start_period {
                    health
                } else {
                    failures = failures.saturating_add(1);
                    debug!(container = %name, failures, reason = %why, "Health check failed.");
                    if failures >= spec.retries {
                        Health::Unhealthy
                    } else {
                        health
                    }
                }
            }
        };
        if next != health {
            info!(container = %name, from = %health, to = %next, "Health changed.");
            health = next;
            if let Some(k) = lock(&checks).get_mut(&id) {
                k.health = health;
            }
            changed.notify_one();
        }
        tokio::select! {
            () = tree.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// One check: a TCP connect, and for HTTP a `GET` whose status must be
/// 2xx or 3xx, all within the timeout.
pub async fn probe_once(addr: SocketAddr, spec: &ProbeSpec) -> Result<(), String> {
    let timeout = Duration::from_millis(spec.timeout_ms.max(1));
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let Some(path) = &spec.http_path else {
            return Ok(());
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: skiff-agent\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("sending the request: {e}"))?;
        // Only the status line matters; read until it is complete.
        let mut head = Vec::with_capacity(64);
        let mut buf = [0u8; 256];
        while !head.contains(&b'\n') && head.len() < 1024 {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        let line = line.lines().next().unwrap_or_default();
        let code: u16 = line
            .strip_prefix("HTTP/")
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| {
                format!(
                    "not an HTTP answer: {:?}",
                    line.chars().take(80).collect::<String>()
                )
            })?;
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("GET {path} answered {code}"))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("no answer within {} ms", spec.timeout_ms))?
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    fn spec(path: Option<&str>, port: u16) -> ProbeSpec {
        ProbeSpec {
            http_path: path.map(str::to_owned),
            port,
            interval_ms: 100,
            timeout_ms: 1000,
            retries: 2,
            start_period_ms: 0,
        }
    }

    /// A server that answers every connection with `answer`.
    async fn serve(answer: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_checks_pass_on_2xx_and_3xx_only() {
        let ok = serve("HTTP/1.1 204 No Content\r\n\r\n").await;
        let redirect = serve("HTTP/1.0 302 Found\r\nLocation: /\r\n\r\n").await;
        let broken = serve("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let garbage = serve("SSH-2.0-OpenSSH\r\n").await;
        assert_eq!(
            probe_once(ok, &spec(Some("/healthz"), ok.port())).await,
            Ok(())
        );
        assert_eq!(probe_once(redirect, &spec(Some("/"), 0)).await, Ok(()));
        let err = probe_once(broken, &spec(Some("/healthz"), 0))
            .await
            .unwrap_err();
        assert_eq!(err, "GET /healthz answered 503");
        let err = probe_once(garbage, &spec(Some("/"), 0)).await.unwrap_err();
        assert!(err.contains("not an HTTP answer"), "{err}");
    }

    #[tokio::test]
    async fn tcp_checks_pass_when_a_connection_is_accepted() {
        let open = serve("").await;
        assert_eq!(probe_once(open, &spec(None, 0)).await, Ok(()));
        // A port nothing listens on: bind, learn the port, close.
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let err = probe_once(closed, &spec(None, 0)).await.unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
    }

    #[test]
    fn docker_and_agent_health_combine() {
        use Health::*;
        assert_eq!(combine(None, Healthy), Healthy);
        assert_eq!(combine(Some(Healthy), Healthy), Healthy);
        assert_eq!(combine(Some(Healthy), Starting), Starting);
        assert_eq!(combine(Some(Starting), Healthy), Starting);
        assert_eq!(combine(Some(Unhealthy), Healthy), Unhealthy);
        assert_eq!(combine(Some(Healthy), Unhealthy), Unhealthy);
    }

    fn running_at(ip: &str) -> ContainerStatus {
        ContainerStatus {
            name: "s.web.1".into(),
            key: "s.web.1@1".into(),
            id: "c1".into(),
            state: ContainerState::Running,
            health: None,
            restart_count: 0,
            addresses: Vec::new(),
            started_at: Some("2026-01-01T00:00:00Z".into()),
            exit_code: None,
            ips: vec![ip.to_owned()],
            image_id: String::new(),
            spec: String::new(),
        }
    }

    /// Syncs the container at `ip` until its reported health is `want`;
    /// panics at the deadline.
    async fn wait_health(prober: &Prober, probe: &ProbeSpec, ip: &str, want: Health) {
        let specs = HashMap::from([("s.web.1@1".to_owned(), probe)]);
        let changed = prober.changed();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut now = vec![running_at(ip)];
            prober.sync(&mut now, &specs);
            if now[0].health == Some(want) {
                return;
            }
            assert!(Instant::now() < deadline, "never {want}");
            let _ = tokio::time::timeout(Duration::from_secs(1), changed.notified()).await;
        }
    }

    #[tokio::test]
    async fn a_container_turns_healthy_then_unhealthy_and_stops_being_checked() {
        let up = serve("HTTP/1.1 200 OK\r\n\r\n").await;
        let prober = Prober::new(TaskTree::root());
        let probe = spec(Some("/"), up.port());
        let specs = HashMap::from([("s.web.1@1".to_owned(), &probe)]);
        let mut seen = vec![running_at("127.0.0.1")];
        prober.sync(&mut seen, &specs);
        assert_eq!(seen[0].health, Some(Health::Starting));
        wait_health(&prober, &probe, "127.0.0.1", Health::Healthy).await;
        // The same container run, now on an address nobody answers on.
        let closed = TcpListener::bind("127.0.0.2:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let probe = spec(Some("/"), closed.port());
        wait_health(&prober, &probe, "127.0.0.2", Health::Unhealthy).await;
        // Gone from the engine: its check stops.
        prober.sync(&mut [], &specs);
        assert!(lock(&prober.checks).is_empty());
    }
}
