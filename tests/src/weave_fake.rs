//! A small fake of Weave Net's HTTP API, for tests: Weave Net itself
//! cannot be installed here. It serves what Skiff's agent uses, with a real
//! allocator: `GET /status`; `POST /ip/<container>/<a.b.c.d>/<prefix>`
//! (the lowest free address of that subnet, network and broadcast
//! addresses left out, the same one again for the same container; 503
//! when the subnet is full); `PUT /ip/<container>/<a.b.c.d>/<prefix>`
//! (claim that address; 409 if another container has it);
//! `DELETE /ip/<container>` (release all of a container's addresses). One
//! fake serves every host of a test, as Weave's IPAM is one cluster-wide
//! allocator.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use skiff_shared::tasks::TaskTree;

/// Address to (container, prefix length).
type Allocations = BTreeMap<Ipv4Addr, (String, u8)>;

/// A running fake; it stops when dropped.
#[derive(Debug)]
pub struct FakeWeave {
    pub addr: SocketAddr,
    allocations: Arc<Mutex<Allocations>>,
    tree: TaskTree,
}

impl Drop for FakeWeave {
    fn drop(&mut self) {
        self.tree.cancel();
    }
}

impl FakeWeave {
    /// Serves on `bind` (port 0 picks one).
    ///
    /// # Errors
    /// The address could not be bound.
    pub async fn start(bind: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let allocations = Arc::new(Mutex::new(Allocations::new()));
        let tree = TaskTree::root();
        let (state, conns) = (allocations.clone(), tree.clone());
        tree.spawn("fake-weave", async move {
            loop {
                let accepted = tokio::select! {
                    () = conns.token().cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else {
                    continue;
                };
                let state = state.clone();
                conns.spawn("fake-weave-conn", async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, &req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            allocations,
            tree,
        })
    }

    /// `http://<addr>`, as an agent's `weave_api`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The addresses held now, with their containers.
    pub fn allocations(&self) -> BTreeMap<Ipv4Addr, String> {
        self.allocations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(a, (c, _))| (*a, c.clone()))
            .collect()
    }
}

fn answer(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r
}

fn handle<B>(state: &Mutex<Allocations>, req: &Request<B>) -> Response<Full<Bytes>> {
    let mut held = state.lock().unwrap_or_else(PoisonError::into_inner);
    let parts: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["status"]) => answer(StatusCode::OK, "fake Weave Net: ready"),
        (&Method::DELETE, ["ip", id]) => {
            held.retain(|_, (c, _)| c != id);
            answer(StatusCode::NO_CONTENT, "")
        }
        (m @ (&Method::POST | &Method::PUT), ["ip", id, ip, prefix]) => {
            let (Ok(ip), Ok(prefix)) = (ip.parse::<Ipv4Addr>(), prefix.parse::<u8>()) else {
                return answer(StatusCode::BAD_REQUEST, "bad address");
            };
            let Ok(net) = ipnet::Ipv4Net::new(ip, prefix) else {
                return answer(StatusCode::BAD_REQUEST, "bad prefix");
            };
            if m == Method::PUT {
                return match held.get(&ip) {
                    Some((c, _)) if c != id => answer(StatusCode::CONFLICT, "address in use"),
                    _ => {
                        held.insert(ip, ((*id).to_owned(), prefix));
                        answer(StatusCode::OK, "")
                    }
                };
            }
            let net = net.trunc();
            if let Some(a) = held
                .iter()
                .find(|(a, (c, _))| c == id && net.contains(*a))
                .map(|(a, _)| *a)
            {
                return answer(StatusCode::OK, format!("{a}/{prefix}"));
            }
            let free = net.hosts().find(|a| !held.contains_key(a));
            match free {
                Some(a) => {
                    held.insert(a, ((*id).to_owned(), prefix));
                    answer(StatusCode::OK, format!("{a}/{prefix}"))
                }
                None => answer(StatusCode::SERVICE_UNAVAILABLE, "subnet full"),
            }
        }
        _ => answer(StatusCode::NOT_FOUND, "404 page not found"),
    }
}
