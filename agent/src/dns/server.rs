//! The DNS server: UDP and TCP listeners on port 53 of each address it is
//! told, all answering from one set of [`Records`] swapped whole when a
//! new generation arrives.
//!
//! Bounds: each source has a token bucket ([`Limiter`]); TCP has a
//! connection cap (at the cap, clients wait in the backlog) and an idle
//! deadline per connection; forwarded queries in flight are capped (past
//! it, SERVFAIL at once). Malformed packets are dropped and counted;
//! sources that are neither a container of the records nor the host get
//! REFUSED, counted.
//!
//! Why not `hickory_server::Server`: it hands each UDP query through a
//! channel to a task of its own (a first version of this server, a tokio
//! task reading the socket and hickory's codec, reached only about 0.7x
//! unbound's rate here, the wake-ups between threads costing more than
//! the answers), has no TCP connection cap, and drops malformed packets
//! without telling its handler, so they could not be counted. The
//! wire format is still hickory's (`hickory-proto`, its codec), and
//! forwarding is hickory's resolver.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use skiff_shared::sections::dns::{DnsStats, Records};
use skiff_shared::tasks::TaskTree;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::{debug, warn};

use super::fast;
use super::forward::Forwarder;
use super::limit::{Limiter, Rate};
use super::reply::{self, Outcome};

/// The server's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub rate: Rate,
    /// TCP connections open at once, over every listener.
    pub tcp_connections: usize,
    /// How long a TCP connection may sit without sending a whole query.
    pub tcp_idle: Duration,
    /// Forwarded queries in flight at once.
    pub forwards: usize,
    /// UDP sockets per address (`SO_REUSEPORT`): one per core, so each
    /// core answers on its own.
    pub udp_sockets: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rate: Rate::default(),
            tcp_connections: 256,
            tcp_idle: Duration::from_secs(10),
            forwards: 1024,
            udp_sockets: std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
        }
    }
}

#[derive(Debug, Default)]
struct Stats {
    queries: AtomicU64,
    forwarded: AtomicU64,
    malformed: AtomicU64,
    rate_limited: AtomicU64,
    refused: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    records: watch::Sender<Arc<Records>>,
    stats: Stats,
    limiter: Limiter,
    forwarder: Forwarder,
    forwards: Arc<Semaphore>,
    tcp: Arc<Semaphore>,
    limits: Limits,
}

impl Shared {
    /// What a packet gets, counted; `None`: dropped. A plain query for
    /// our names is answered into `out` ([`fast`]) and gets an empty
    /// reply here.
    fn process(
        &self,
        records: &Records,
        packet: &[u8],
        from: IpAddr,
        rotation: u64,
        udp: bool,
        out: &mut Vec<u8>,
    ) -> Option<Outcome> {
        if self.limits.rate.per_second != 0 && !self.limiter.allow(from, Instant::now()) {
            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if let Some(refused) = fast::answer(records, packet, from, rotation, udp, out) {
            if refused {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
            }
            self.stats.queries.fetch_add(1, Ordering::Relaxed);
            return Some(Outcome::Reply(Vec::new()));
        }
        out.clear();
        let (outcome, refused) = reply::handle(records, packet, from, rotation, udp);
        let counter = match &outcome {
            Outcome::Malformed => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Outcome::Forward(_) => Some(&self.stats.forwarded),
            Outcome::Reply(_) if refused => Some(&self.stats.refused),
            Outcome::Reply(_) => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.queries.fetch_add(1, Ordering::Relaxed);
        Some(outcome)
    }
}

/// One address's listeners: cancelling the tree closes them.
#[derive(Debug)]
struct Listener {
    tree: TaskTree,
    local: SocketAddr,
}

/// The DNS server of the agent.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    tree: TaskTree,
    listeners: Mutex<BTreeMap<SocketAddr, Listener>>,
}

impl Server {
    /// A server with no listener yet, answering from empty records; its
    /// tasks run in `tree`.
    pub fn new(tree: TaskTree, limits: Limits, forwarder: Forwarder) -> Self {
        let (records, _) = watch::channel(Arc::new(Records::default()));
        Self {
            shared: Arc::new(Shared {
                records,
                stats: Stats::default(),
                limiter: Limiter::new(limits.rate),
                forwarder,
                forwards: Arc::new(Semaphore::new(limits.forwards)),
                tcp: Arc::new(Semaphore::new(limits.tcp_connections)),
                limits,
            }),
            tree,
            listeners: Mutex::default(),
        }
    }

    /// Answers from `records` from now on (every listener, at its next
    /// query).
    pub fn set_records(&self, records: Records) {
        self.shared.records.send_replace(Arc::new(records));
    }

    /// The generation answered from.
    pub fn generation(&self) -> u64 {
        self.shared.records.borrow().generation()
    }

    pub fn stats(&self) -> DnsStats {
        let s = &self.shared.stats;
        DnsStats {
            queries: s.queries.load(Ordering::Relaxed),
            forwarded: s.forwarded.load(Ordering::Relaxed),
            malformed: s.malformed.load(Ordering::Relaxed),
            rate_limited: s.rate_limited.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
        }
    }

    /// The addresses listened on, as asked (port 0 stays 0; see
    /// [`Server::local_addr`]).
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.lock().keys().copied().collect()
    }

    /// Where the listeners for `addr` are bound (UDP and TCP share it).
    pub fn local_addr(&self, addr: SocketAddr) -> Option<SocketAddr> {
        self.lock().get(&addr).map(|l| l.local)
    }

    /// Listens on `addr` over UDP and TCP. The address may not exist yet
    /// (a bridge the networks controller has not made): it is bound
    /// anyway (`IP_FREEBIND`) and answers once it does.
    ///
    /// # Errors
    /// Why it cannot be bound (the port is taken).
    pub fn open(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        if let Some(l) = self.lock().get(&addr) {
            return Ok(l.local);
        }
        if addr.port() != 0 {
            // Sockets with SO_REUSEPORT share a port with any other such
            // socket of the same user: make sure nobody holds it first.
            match std::net::UdpSocket::bind(addr) {
                Ok(_) => {}
                // Not there yet: bound below with IP_FREEBIND.
                Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {}
                Err(e) => return Err(e),
            }
        }
        let (sockets, tcp, local) = self.bind(addr)?;
        let tree = self.tree.child();
        for socket in sockets {
            // Blocking receives on a thread per socket: no wake-ups between
            // threads on the way of a query (the cost that dominated).
            socket.set_nonblocking(false)?;
            socket.set_read_timeout(Some(CANCEL_CHECK))?;
            let (shared, t) = (self.shared.clone(), tree.clone());
            let handle = tokio::runtime::Handle::current();
            tree.spawn("dns-udp", async move {
                let socket = Arc::new(socket);
                let _ =
                    tokio::task::spawn_blocking(move || udp_loop(&socket, &shared, &t, &handle))
                        .await;
            });
        }
        let tcp = TcpListener::from_std(tcp)?;
        tree.spawn(
            "dns-tcp",
            tcp_accept(tcp, self.shared.clone(), tree.clone()),
        );
        self.lock().insert(addr, Listener { tree, local });
        Ok(local)
    }

    /// The UDP sockets and the TCP listener for `addr`, on one port. With
    /// port 0 the UDP port is picked first; if TCP has it taken, another.
    fn bind(
        &self,
        addr: SocketAddr,
    ) -> io::Result<(Vec<std::net::UdpSocket>, std::net::TcpListener, SocketAddr)> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let first = udp_socket(addr)?;
            let local = first.local_addr()?;
            let mut sockets = vec![first];
            for _ in 1..self.shared.limits.udp_sockets.max(1) {
                sockets.push(udp_socket(local)?);
            }
            match tcp_listener(local) {
                Ok(tcp) => return Ok((sockets, tcp, local)),
                Err(e)
                    if addr.port() == 0
                        && attempts < 10
                        && e.kind() == io::ErrorKind::AddrInUse => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Stops listening on `addr`.
    pub fn close(&self, addr: SocketAddr) {
        if let Some(l) = self.lock().remove(&addr) {
            l.tree.cancel();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<SocketAddr, Listener>> {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv4() {
        socket.set_freebind_v4(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv4() {
        socket.set_freebind_v4(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    Ok(socket.into())
}

/// How often a UDP thread looks whether it should stop.
const CANCEL_CHECK: Duration = Duration::from_millis(200);

fn udp_loop(
    socket: &Arc<std::net::UdpSocket>,
    shared: &Arc<Shared>,
    tree: &TaskTree,
    runtime: &tokio::runtime::Handle,
) {
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::with_capacity(1232);
    let mut records_rx = shared.records.subscribe();
    let mut records = records_rx.borrow_and_update().clone();
    let mut rotation: u64 = u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut checked = Instant::now();
    loop {
        // Looked at every CANCEL_CHECK, busy or not (the token takes a
        // lock): a closed listener's thread is gone within about that.
        if checked.elapsed() >= CANCEL_CHECK {
            if tree.is_cancelled() {
                return;
            }
            checked = Instant::now();
        }
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(error) => {
                if tree.is_cancelled() {
                    return;
                }
                // Timeouts (the cancel check), and ICMP errors of earlier
                // answers: go on.
                if !matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) {
                    debug!(error = %error, "A DNS UDP receive failed.");
                }
                continue;
            }
        };
        if records_rx.has_changed().unwrap_or(false) {
            records = records_rx.borrow_and_update().clone();
        }
        rotation = rotation.wrapping_add(1);
        let Some(packet) = buf.get(..len) else {
            continue;
        };
        match shared.process(&records, packet, from.ip(), rotation, true, &mut out) {
            Some(Outcome::Reply(bytes)) => {
                let _ = socket.send_to(if bytes.is_empty() { &out } else { &bytes }, from);
            }
            Some(Outcome::Forward(request)) => {
                let Ok(permit) = shared.forwards.clone().try_acquire_owned() else {
                    let _ = socket.send_to(&reply::server_failure(&request), from);
                    continue;
                };
                let (socket, shared) = (socket.clone(), shared.clone());
                let _entered = runtime.enter();
                tree.spawn("dns-forward", async move {
                    let bytes = shared.forwarder.answer(&request, true).await;
                    // A UDP send does not wait (a full buffer drops it).
                    let _ = socket.send_to(&bytes, from);
                    drop(permit);
                });
            }
            Some(Outcome::Malformed) | None => {}
        }
    }
}

async fn tcp_accept(listener: TcpListener, shared: Arc<Shared>, tree: TaskTree) {
    let mut failing = false;
    loop {
        let permit = tokio::select! {
            () = tree.cancelled() => return,
            permit = shared.tcp.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            () = tree.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, from)) => {
                failing = false;
                tree.spawn(
                    "dns-tcp-conn",
                    tcp_conn(stream, from, shared.clone(), permit, tree.clone()),
                );
            }
            Err(error) => {
                if !failing {
                    warn!(error = %error, "The DNS server cannot accept TCP connections; retrying.");
                }
                failing = true;
                tokio::select! {
                    () = tree.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

/// One TCP connection: length-prefixed queries answered in order, closed
/// when idle past the deadline or on a malformed query.
async fn tcp_conn(
    mut stream: TcpStream,
    from: SocketAddr,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
    tree: TaskTree,
) {
    let idle = shared.limits.tcp_idle;
    let mut rotation = u64::from(from.port());
    loop {
        let mut len = [0u8; 2];
        let read = tokio::select! {
            () = tree.cancelled() => return,
            read = tokio::time::timeout(idle, stream.read_exact(&mut len)) => read,
        };
        if !matches!(read, Ok(Ok(_))) {
            return;
        }
        let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if !matches!(
            tokio::time::timeout(idle, stream.read_exact(&mut packet)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        rotation = rotation.wrapping_add(1);
        let records = shared.records.borrow().clone();
        let mut out = Vec::new();
        let bytes = match shared.process(&records, &packet, from.ip(), rotation, false, &mut out) {
            Some(Outcome::Reply(bytes)) if bytes.is_empty() => out,
            Some(Outcome::Reply(bytes)) => bytes,
            Some(Outcome::Forward(request)) => shared.forwarder.answer(&request, false).await,
            Some(Outcome::Malformed) => return,
            None => {
                // Over its rate: the connection is closed, not held.
                return;
            }
        };
        let Ok(n) = u16::try_from(bytes.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&bytes);
        if !matches!(
            tokio::time::timeout(idle, stream.write_all(&framed)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}
