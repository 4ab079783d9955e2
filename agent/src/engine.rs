//! The agent's connection to the Docker Engine, made once it answers (the
//! API version negotiated with the engine that is really there) and shared
//! by every controller that needs it.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use skiff_shared::tasks::TaskTree;
use skiff_shared::workload::LABEL_NODE;
use tokio::sync::watch;
use tracing::{info, warn};

/// Pause between attempts to reach the engine.
const RETRY: Duration = Duration::from_secs(2);
/// The most waiting engine events taken as one "something changed".
const EVENT_BATCH: usize = 1024;

/// The label filter that selects one node's containers and networks.
pub fn node_filter(node_id: &str) -> String {
    format!("{LABEL_NODE}={node_id}")
}

/// The engine's events matching `filters`, as a stream of "something
/// changed" that ends when the engine's stream does. Events already
/// waiting come as one item: a round that creates 50 containers leaves
/// some 150 events behind it, and one more round sees all of them.
pub fn changes(docker: &Docker, filters: HashMap<String, Vec<String>>) -> BoxStream<'static, ()> {
    docker
        .events(Some(bollard::query_parameters::EventsOptions {
            filters: Some(filters),
            ..Default::default()
        }))
        .take_while(|e| std::future::ready(e.is_ok()))
        .ready_chunks(EVENT_BATCH)
        .map(|_| ())
        .boxed()
}

/// The engine, once connected.
#[derive(Debug, Clone)]
pub struct EngineHandle(watch::Receiver<Option<Docker>>);

impl EngineHandle {
    /// Connects in the background, retrying until the engine answers.
    pub fn connect(tree: &TaskTree) -> Self {
        let (tx, rx) = watch::channel(None);
        let t = tree.clone();
        tree.spawn("docker-connect", async move {
            let mut said = false;
            loop {
                let attempt = match Docker::connect_with_local_defaults() {
                    Ok(d) => d.negotiate_version().await,
                    Err(e) => Err(e),
                };
                match attempt {
                    Ok(d) => {
                        if said {
                            info!("Docker Engine answers.");
                        }
                        tx.send_replace(Some(d));
                        return;
                    }
                    Err(error) => {
                        if !said {
                            warn!(error = %error, "Docker Engine unavailable; containers are reconciled once it answers.");
                            said = true;
                        }
                    }
                }
                tokio::select! {
                    () = t.cancelled() => return,
                    () = tokio::time::sleep(RETRY) => {}
                }
            }
        });
        Self(rx)
    }

    /// An engine that is already connected.
    pub fn ready(docker: Docker) -> Self {
        Self(watch::channel(Some(docker)).1)
    }

    /// Waits for the engine; `None` when `tree` is cancelled first.
    pub async fn get(&self, tree: &TaskTree) -> Option<Docker> {
        let mut rx = self.0.clone();
        tokio::select! {
            () = tree.cancelled() => None,
            r = rx.wait_for(Option::is_some) => r.ok().and_then(|d| d.clone()),
        }
    }
}
