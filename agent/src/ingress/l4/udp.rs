//! UDP forwarding: a session per client address, a connected socket to the
//! endpoint picked for it; replies go back from the listening socket.
//! Sessions end after [`super::Limits::udp_idle`] without a datagram either
//! way; past [`super::Limits::max_sessions`] the least recently used one
//! ends.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use skiff_shared::sections::ingress::{Balance, Protocol};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Counters, Shared};
use crate::ingress::balance::Pick;

/// The largest datagram.
const MAX_DATAGRAM: usize = 65_535;

struct Session {
    id: u64,
    upstream: Arc<UdpSocket>,
    ticks: Arc<AtomicU64>,
    stop: CancellationToken,
    last: Instant,
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, Session>>>;

/// Serves `socket` (published UDP `port`) until `cancel`; every session
/// ends then.
pub async fn serve(socket: UdpSocket, port: u16, shared: Arc<Shared>, cancel: CancellationToken) {
    let socket = Arc::new(socket);
    let sessions: Sessions = Arc::default();
    let counters = shared.counters(port, Protocol::Udp);
    let mut next_id = 0u64;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            () = cancel.cancelled() => break,
            r = socket.recv_from(&mut buf) => r,
        };
        let (n, client) = match received {
            Ok(r) => r,
            Err(error) => {
                debug!(port, error = %error, "Receive failed.");
                continue;
            }
        };
        let found = {
            let mut map = sessions.lock().unwrap_or_else(PoisonError::into_inner);
            if map.get(&client).is_some_and(|s| s.stop.is_cancelled()) {
                map.remove(&client);
            }
            map.get_mut(&client).map(|s| {
                s.last = Instant::now();
                (s.upstream.clone(), s.ticks.clone(), s.stop.clone())
            })
        };
        let (upstream, ticks, stop) = match found {
            Some(s) => s,
            None => {
                next_id += 1;
                match open(port, client, next_id, &socket, &sessions, &shared, &cancel).await {
                    Some(s) => s,
                    None => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
        };
        match upstream.send(&buf[..n]).await {
            Ok(_) => {
                Counters::add(&counters.bytes_in, n);
                ticks.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                debug!(port, error = %error, "The endpoint refused a datagram; the session ends.");
                counters.failed.fetch_add(1, Ordering::Relaxed);
                stop.cancel();
            }
        }
    }
    for s in sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
    {
        s.stop.cancel();
    }
}

/// Starts a session for `client`: picks an endpoint by the table in force,
/// connects a socket to it, and relays its replies.
async fn open(
    port: u16,
    client: SocketAddr,
    id: u64,
    socket: &Arc<UdpSocket>,
    sessions: &Sessions,
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
) -> Option<(Arc<UdpSocket>, Arc<AtomicU64>, CancellationToken)> {
    let table = shared.table();
    let rule = table.rules.get(&(port, Protocol::Udp))?;
    let pool = table.pools.get(&rule.stack, &rule.service)?;
    let mut skip = Vec::new();
    let (upstream, pick) = loop {
        let pick = pool.pick(Balance::RoundRobin, false, &table.node, &skip)?;
        let to = SocketAddr::from((pick.ip, rule.target));
        let bound = UdpSocket::bind(SocketAddr::from((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))).await;
        match bound {
            Ok(s) => match s.connect(to).await {
                Ok(()) => break (s, pick),
                Err(error) => debug!(endpoint = %to, error = %error, "Cannot reach the endpoint."),
            },
            Err(error) => {
                debug!(error = %error, "Cannot open a socket for a session.");
                return None;
            }
        }
        pick.failed();
        skip.push(pick.ip);
    };
    let counters = shared.counters(port, Protocol::Udp);
    counters.connections.fetch_add(1, Ordering::Relaxed);
    let session = Session {
        id,
        upstream: Arc::new(upstream),
        ticks: Arc::default(),
        stop: cancel.child_token(),
        last: Instant::now(),
    };
    let handles = (
        session.upstream.clone(),
        session.ticks.clone(),
        session.stop.clone(),
    );
    {
        let mut map = sessions.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= shared.limits.max_sessions {
            let oldest = map.iter().min_by_key(|(_, s)| s.last).map(|(a, _)| *a);
            if let Some(s) = oldest.and_then(|a| map.remove(&a)) {
                s.stop.cancel();
            }
        }
        map.insert(client, session);
    }
    let idle = shared.limits.udp_idle;
    let (socket, sessions) = (socket.clone(), sessions.clone());
    let (upstream, ticks, stop) = handles.clone();
    shared.tree.spawn("ingress udp session", async move {
        let leaving = pick.leaving();
        tokio::select! {
            () = relay(&upstream, &socket, client, &pick, &counters, &ticks) => {}
            () = super::idle(&ticks, idle) => debug!(client = %client, "Idle UDP session ended."),
            () = leaving.cancelled() => debug!(endpoint = %pick.ip, "The endpoint left and drained: session ended."),
            () = stop.cancelled() => {}
        }
        let mut map = sessions.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(&client).is_some_and(|s| s.id == id) {
            map.remove(&client);
        }
    });
    Some(handles)
}

/// The endpoint's replies, back to the client from the published port.
async fn relay(
    upstream: &UdpSocket,
    socket: &UdpSocket,
    client: SocketAddr,
    pick: &Pick,
    counters: &Counters,
    ticks: &AtomicU64,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match upstream.recv(&mut buf).await {
            Ok(n) => {
                if let Err(error) = socket.send_to(&buf[..n], client).await {
                    debug!(client = %client, error = %error, "Cannot answer the client.");
                }
                Counters::add(&counters.bytes_out, n);
                ticks.fetch_add(1, Ordering::Relaxed);
                pick.succeeded();
            }
            Err(error) => {
                // ICMP port unreachable comes back as a refused receive.
                debug!(endpoint = %pick.ip, error = %error, "The endpoint refused; the session ends.");
                pick.failed();
                counters.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}
