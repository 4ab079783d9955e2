//! TCP forwarding: accept under a cap, connect to an endpoint (another one
//! after a failed connect, each at most once), splice both ways.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use skiff_shared::sections::ingress::{Balance, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Counters, Shared, Table};
use crate::ingress::balance::Pick;
use crate::ingress::proxy_protocol;

/// Serves `listener` (published TCP `port`) until `cancel`; connections
/// still open then are cut.
pub async fn serve(
    listener: TcpListener,
    port: u16,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(shared.limits.max_connections));
    loop {
        let permit = tokio::select! {
            () = cancel.cancelled() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let (client, peer) = match accepted {
            Ok(a) => a,
            Err(error) => {
                // Out of file descriptors and the like: pause, go on.
                debug!(port, error = %error, "Accept failed.");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        let shared2 = shared.clone();
        let cancel = cancel.clone();
        shared.tree.spawn("ingress tcp connection", async move {
            connection(client, peer, port, &shared2, &cancel).await;
            drop(permit);
        });
    }
}

async fn connection(
    mut client: TcpStream,
    peer: SocketAddr,
    port: u16,
    shared: &Shared,
    cancel: &CancellationToken,
) {
    let counters = shared.counters(port, Protocol::Tcp);
    counters.connections.fetch_add(1, Ordering::Relaxed);
    let fail = || counters.failed.fetch_add(1, Ordering::Relaxed);
    if shared.table().settings.proxy_protocol {
        let deadline = tokio::time::Instant::now() + shared.limits.header_timeout;
        match proxy_protocol::read_header(&mut client, deadline).await {
            Ok(source) => debug!(port, client = ?source, "PROXY protocol header read."),
            Err(error) => {
                debug!(port, peer = %peer, error = %error, "Connection refused.");
                fail();
                return;
            }
        }
    }
    // The table in force now (after the header, which may have taken a
    // while); again if a new one came in while connecting and no longer
    // lists the endpoint (its generation may be reported already).
    let mut swaps = 0;
    let (upstream, pick, idle) = loop {
        let table = shared.table();
        let Some((upstream, pick)) = connect_any(&table, port, shared).await else {
            fail();
            return;
        };
        let now = shared.table();
        let listed = Arc::ptr_eq(&table, &now)
            || now
                .rules
                .get(&(port, Protocol::Tcp))
                .and_then(|r| now.pools.get(&r.stack, &r.service))
                .is_some_and(|p| p.contains(pick.ip));
        if listed || swaps >= 3 {
            break (
                upstream,
                pick,
                Duration::from_millis(now.settings.tcp_idle_timeout_ms),
            );
        }
        swaps += 1;
    };
    let leaving = pick.leaving();
    tokio::select! {
        () = splice(client, upstream, idle, &counters) => {}
        () = leaving.cancelled() => debug!(endpoint = %pick.ip, "The endpoint left and drained: connection cut."),
        () = cancel.cancelled() => {}
    }
}

/// Connects to an endpoint of the port's service by `table`, trying each
/// endpoint at most once.
async fn connect_any(table: &Table, port: u16, shared: &Shared) -> Option<(TcpStream, Pick)> {
    let rule = table.rules.get(&(port, Protocol::Tcp))?;
    let pool = table.pools.get(&rule.stack, &rule.service)?;
    let mut skip = Vec::new();
    loop {
        let Some(pick) = pool.pick(Balance::RoundRobin, false, &table.node, &skip) else {
            debug!(port, service = %rule.service, tried = skip.len(), "No endpoint took the connection.");
            return None;
        };
        let to = SocketAddr::from((pick.ip, rule.target));
        match tokio::time::timeout(shared.limits.connect_timeout, TcpStream::connect(to)).await {
            Ok(Ok(s)) => {
                pick.succeeded();
                return Some((s, pick));
            }
            Ok(Err(error)) => {
                debug!(endpoint = %to, error = %error, "Connect failed; trying another endpoint.");
            }
            Err(_) => debug!(endpoint = %to, "Connect timed out; trying another endpoint."),
        }
        pick.failed();
        skip.push(pick.ip);
    }
}

/// Copies both ways until both sides are done, either fails, or nothing
/// moved for `idle`.
async fn splice(client: TcpStream, upstream: TcpStream, idle: Duration, counters: &Counters) {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let ticks = AtomicU64::new(0);
    let both = async {
        tokio::try_join!(
            pump(cr, uw, &counters.bytes_in, &ticks),
            pump(ur, cw, &counters.bytes_out, &ticks),
        )
    };
    tokio::select! {
        r = both => if let Err(error) = r {
            debug!(error = %error, "Connection ended by an error.");
        },
        () = super::idle(&ticks, idle) => debug!("Idle connection closed."),
    }
}

/// One direction; an end of stream is passed on as a half close.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    bytes: &AtomicU64,
    ticks: &AtomicU64,
) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        Counters::add(bytes, n);
        ticks.fetch_add(1, Ordering::Relaxed);
    }
}
