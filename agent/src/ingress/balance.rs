//! Stand-in for the endpoint pools (the controller's branch owns the real
//! module; this one only has the API the proxy uses).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use skiff_shared::sections::ingress::{Balance, IngressSection};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default, Clone)]
pub struct Pools {
    pools: HashMap<(String, String), Arc<Pool>>,
}

impl Pools {
    pub fn from_section(section: &IngressSection) -> Self {
        let mut pools = HashMap::new();
        for b in &section.backends {
            let eps = b
                .endpoints
                .iter()
                .map(|e| (e.ip, e.node.clone(), CancellationToken::new()))
                .collect();
            pools.insert(
                (b.stack.clone(), b.service.clone()),
                Arc::new(Pool {
                    endpoints: Mutex::new(eps),
                    next: AtomicUsize::new(0),
                }),
            );
        }
        Self { pools }
    }

    pub fn get(&self, stack: &str, service: &str) -> Option<Arc<Pool>> {
        self.pools
            .get(&(stack.to_owned(), service.to_owned()))
            .cloned()
    }
}

#[derive(Debug)]
pub struct Pool {
    endpoints: Mutex<Vec<(Ipv4Addr, String, CancellationToken)>>,
    next: AtomicUsize,
}

#[derive(Debug)]
pub struct Pick {
    pub ip: Ipv4Addr,
    pub leaving: CancellationToken,
}

impl Pool {
    pub fn pick(
        &self,
        _balance: Balance,
        _local_first: bool,
        _local_node: &str,
        skip: Option<Ipv4Addr>,
    ) -> Option<Pick> {
        let eps = self.endpoints.lock().ok()?;
        let live: Vec<_> = eps.iter().filter(|e| Some(e.0) != skip).collect();
        if live.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % live.len();
        Some(Pick {
            ip: live[i].0,
            leaving: live[i].2.clone(),
        })
    }

    pub fn failed(&self, _ip: Ipv4Addr) {}

    pub fn succeeded(&self, _ip: Ipv4Addr) {}
}
