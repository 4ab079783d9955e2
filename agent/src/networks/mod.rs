//! The networks controller: makes the stack networks on this host match
//! the `networks` section of the plan. It creates them as bridges labelled
//! as its own (`skiff.node`, `skiff.stack`, `skiff.network`) and removes
//! the ones no longer wanted once no container uses them. Networks it did
//! not label are never touched.
//!
//! The containers controller waits for a container's networks before it
//! creates the container; a network created here wakes it.

use std::collections::HashMap;
use std::sync::Arc;

use bollard::models::NetworkCreateRequest;
use skiff_shared::sections::networks::{Networks, NetworksSection};
use skiff_shared::workload::{LABEL_NETWORK, LABEL_NODE, LABEL_STACK};
use tracing::{debug, info};

use crate::controller::{Context, Pace, Reconcile, drive};
use crate::engine::{EngineHandle, changes, node_filter};
use crate::supervisor::Host;

pub mod diff;

pub use diff::{Action, Observed};

/// The networks controller.
#[derive(Debug)]
pub struct Controller {
    node_id: String,
    engine: EngineHandle,
}

impl Controller {
    pub fn new(host: &Host) -> Self {
        Self {
            node_id: host.node_id.clone(),
            engine: host.engine.clone(),
        }
    }
}

impl crate::controller::Controller for Controller {
    type Kind = Networks;

    async fn run(self: Arc<Self>, cx: Context<Networks>) {
        let Some(docker) = self.engine.get(&cx.tree).await else {
            return;
        };
        let r = Reconciler {
            docker,
            node_id: self.node_id.clone(),
        };
        drive(&r, cx.desired, &cx.tree, Pace::default(), None).await;
    }
}

/// A failed engine call, naming what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("Docker Engine error while {what}: {source}")]
pub struct NetworkError {
    what: String,
    source: bollard::errors::Error,
}

struct Reconciler {
    docker: bollard::Docker,
    node_id: String,
}

impl Reconcile for Reconciler {
    type Kind = Networks;
    type Observed = Vec<Observed>;
    type Action = Action;
    type Error = NetworkError;

    async fn observe(&self) -> Result<Vec<Observed>, NetworkError> {
        let filters = HashMap::from([("label".to_owned(), vec![node_filter(&self.node_id)])]);
        let list = self
            .docker
            .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|source| NetworkError {
                what: "listing networks".into(),
                source,
            })?;
        Ok(list
            .into_iter()
            .filter_map(|n| {
                let labels = n.labels.unwrap_or_default();
                Some(Observed {
                    name: n.name?,
                    stack: labels.get(LABEL_STACK)?.clone(),
                    network: labels.get(LABEL_NETWORK)?.clone(),
                })
            })
            .collect())
    }

    fn diff(desired: &NetworksSection, observed: &Vec<Observed>) -> Vec<Action> {
        diff::diff(desired, observed)
    }

    async fn apply(&self, actions: &[Action]) -> Result<(), NetworkError> {
        for action in actions {
            match action {
                Action::Create(spec) => {
                    let name = spec.engine_name(&self.node_id);
                    info!(network = %name, "Creating network.");
                    let labels = HashMap::from([
                        (LABEL_NODE.to_owned(), self.node_id.clone()),
                        (LABEL_STACK.to_owned(), spec.stack.clone()),
                        (LABEL_NETWORK.to_owned(), spec.name.clone()),
                    ]);
                    self.docker
                        .create_network(NetworkCreateRequest {
                            name: name.clone(),
                            driver: Some("bridge".into()),
                            internal: Some(spec.internal),
                            labels: Some(labels),
                            ..Default::default()
                        })
                        .await
                        .map_err(|source| NetworkError {
                            what: format!("creating network {name}"),
                            source,
                        })?;
                }
                Action::Remove { name } => match self.docker.remove_network(name).await {
                    Ok(()) => info!(network = %name, "Removed unused network."),
                    Err(e) => debug!(network = %name, error = %e, "Network not removed yet."),
                },
            }
        }
        Ok(())
    }

    /// Network changes (a container leaving one makes it removable), and
    /// this node's containers going away.
    fn wakeups(&self) -> futures_util::stream::BoxStream<'static, ()> {
        let networks = HashMap::from([("type".to_owned(), vec!["network".to_owned()])]);
        let containers = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("event".to_owned(), vec!["destroy".to_owned()]),
            ("label".to_owned(), vec![node_filter(&self.node_id)]),
        ]);
        Box::pin(futures_util::stream::select(
            changes(&self.docker, networks),
            changes(&self.docker, containers),
        ))
    }
}
