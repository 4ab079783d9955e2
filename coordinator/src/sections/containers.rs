//! The `containers` section: a host's containers as the deploys decided
//! them, the secret values and registry credentials they need (delivered
//! only to that host), and the agent's report of what runs.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use skiff_shared::sections::containers::{Containers, ContainersDelivery, ContainersSection};
use skiff_shared::workload::{ContainerSpec, ObservedState, SecretValue};
use tracing::warn;

use super::SectionHandles;
use crate::observed::ObservedBook;
use crate::secrets::SecretKey;
use crate::store::Store;

/// The coordinator's side of the `containers` section.
#[derive(Debug)]
pub struct ContainersFeature {
    store: Arc<dyn Store>,
    secret_key: Arc<SecretKey>,
    observed: Arc<ObservedBook>,
}

impl ContainersFeature {
    pub fn new(h: &SectionHandles) -> Self {
        Self {
            store: h.store.clone(),
            secret_key: h.secret_key.clone(),
            observed: h.observed.clone(),
        }
    }

    /// Opens the secrets the containers mount, each under the name of its
    /// file on the host (the version's id); one that cannot be opened is
    /// left out (the agent then reports the container as not startable).
    async fn secret_values(&self, containers: &[ContainerSpec]) -> Vec<SecretValue> {
        let mut out: Vec<SecretValue> = Vec::new();
        for c in containers {
            for m in &c.secrets {
                if out.iter().any(|v| v.id == m.file_name()) {
                    continue;
                }
                let version = i64::try_from(m.version).unwrap_or(0);
                let sealed = match self.store.sealed_secret(&c.stack, &m.name, version).await {
                    Ok(Some(s)) => s,
                    Ok(None) => {
                        warn!(stack = %c.stack, secret = %m.name, version, "A planned secret version is not in the store.");
                        continue;
                    }
                    Err(error) => {
                        warn!(error = %error, "Reading a secret failed.");
                        continue;
                    }
                };
                match self.secret_key.open(
                    &crate::secrets::context(&c.stack, &m.name, version),
                    &sealed,
                ) {
                    Ok(value) => out.push(SecretValue {
                        id: m.file_name().to_owned(),
                        value: base64::engine::general_purpose::STANDARD.encode(value),
                    }),
                    Err(error) => {
                        warn!(stack = %c.stack, secret = %m.name, error = %error, "A secret cannot be opened.");
                    }
                }
            }
        }
        out
    }
}

#[async_trait]
impl super::Section for ContainersFeature {
    type Kind = Containers;

    fn build(&self, _node_id: &str, containers: &[ContainerSpec]) -> Option<ContainersSection> {
        Some(ContainersSection {
            containers: containers.to_vec(),
        })
    }

    /// The secrets the containers mount (when there are any), and the
    /// credentials of the registries their images come from (always: an
    /// empty list removes what the agent kept).
    async fn deliveries(
        &self,
        _node_id: &str,
        containers: &[ContainerSpec],
    ) -> Vec<ContainersDelivery> {
        let mut out = Vec::new();
        let values = self.secret_values(containers).await;
        if !values.is_empty() {
            out.push(ContainersDelivery::Secrets { values });
        }
        match crate::registries::credentials_for(
            self.store.as_ref(),
            &self.secret_key,
            containers.iter().map(|c| c.image.as_str()),
        )
        .await
        {
            Ok(registries) => out.push(ContainersDelivery::RegistryAuth { registries }),
            // The agent keeps what it has; the next plan or change retries.
            Err(error) => warn!(error = %error, "Reading registry credentials failed."),
        }
        out
    }

    fn report(&self, node_id: &str, report: ObservedState) {
        self.observed.set(node_id, report);
    }
}
