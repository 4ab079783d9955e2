//! The HTTP reverse proxy. A placeholder with the agreed interface until
//! the proxy itself lands: it holds its listeners open and serves nothing.

use std::sync::{Arc, Mutex, PoisonError};

use rustls::sign::CertifiedKey;
use skiff_shared::sections::ingress::{IngressSection, RouteStats};
use skiff_shared::tasks::TaskTree;
use tokio_util::sync::CancellationToken;

use super::balance::Pools;

/// The HTTP and HTTPS side of an edge host.
#[derive(Debug, Default)]
pub struct HttpProxy {
    challenges: Mutex<Vec<String>>,
}

impl HttpProxy {
    pub fn new(_tree: TaskTree) -> Arc<Self> {
        Arc::default()
    }

    /// Swaps routes, endpoints, settings, challenges and certificates at once.
    pub fn update(
        &self,
        section: &IngressSection,
        _pools: &Pools,
        _certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
    ) {
        *self
            .challenges
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            section.challenges.iter().map(|c| c.token.clone()).collect();
    }

    /// Serves one listener until `cancel`; `tls` true: the HTTPS port.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        _tls: bool,
        cancel: CancellationToken,
    ) {
        cancel.cancelled().await;
        drop(listener);
    }

    pub fn route_stats(&self) -> Vec<RouteStats> {
        Vec::new()
    }

    pub fn challenge_tokens(&self) -> Vec<String> {
        self.challenges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
