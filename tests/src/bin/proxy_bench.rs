//! `skiff-proxy-bench`: the agent's HTTP(S) reverse proxy alone, with no
//! coordinator, for benchmarks (wrk, h2load) against it.
//!
//! - `serve --upstream IP:PORT... [--domain D] [--http ADDR] [--https ADDR]
//!   [--cert-dir DIR]`: one route (`D` and `/`, every path) to the given
//!   upstreams, which must share one port (a route has one container
//!   port; replicas differ by address: use 127.0.0.2, 127.0.0.3... on
//!   loopback). Listens in clear on `--http` and with TLS on `--https`,
//!   with a self-signed certificate for `D` (and `*.D`) whose PEM is
//!   written to `DIR/cert.pem` (a temporary directory by default; its
//!   path is printed). TLS clients must send `D` as SNI (a name with no
//!   certificate, or an IP address, is refused in the handshake): wrk
//!   takes it from the URL, so give `D` an address (`127.0.0.1 D` in
//!   /etc/hosts) and use `https://D:PORT/`; wrk does not check
//!   certificates; curl takes `--cacert DIR/cert.pem --resolve
//!   D:PORT:127.0.0.1`. Clear-text clients send `Host: D`.
//!   Runs until SIGTERM/SIGINT, then prints the route's counters as JSON
//!   on stdout.
//! - `tcp --listen IP:PORT --upstream IP:PORT...`: the published-port
//!   TCP forwarder alone (layer 4), for iperf3.
//! - `upstream --listen IP:PORT... [--body-bytes N]`: a minimal HTTP/1.1
//!   upstream answering every request 200 with N bytes, for runs without
//!   another server.
//!
//! Exit codes: 0 stopped by SIGTERM/SIGINT, 1 failed, 2 invalid flags.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use skiff_agent::ingress::balance::Pools;
use skiff_agent::ingress::http::HttpProxy;
use skiff_shared::sections::ingress::{
    Backend, Balance, Endpoint, IngressSection, PortRule, Protocol, ProxySettings, Route, Tls,
};
use skiff_shared::tasks::TaskTree;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(
    name = "skiff-proxy-bench",
    about = "The agent's HTTP(S) reverse proxy alone, for benchmarks.",
    long_about = "The agent's HTTP(S) reverse proxy alone, with no coordinator, for benchmarks.\n\n\
        serve: one route (--domain, every path) to --upstream addresses sharing one port; \
        clear on --http, TLS on --https with a self-signed certificate written to \
        --cert-dir/cert.pem. TLS clients must send the domain as SNI (an IP address is refused): \
        give it an address in /etc/hosts and use https://DOMAIN:PORT/ with wrk. \
        Prints the route's counters as JSON on SIGTERM/SIGINT.\n\
        upstream: a minimal HTTP/1.1 server answering 200 with --body-bytes bytes.\n\n\
        Exit codes: 0 stopped by SIGTERM/SIGINT, 1 failed, 2 invalid flags."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy with one route to the upstreams.
    Serve {
        /// An upstream (IPv4:port); repeat for more. All share one port.
        #[arg(long, required = true)]
        upstream: Vec<SocketAddrV4>,
        /// The route's domain; clients send it as Host (or SNI).
        #[arg(long, default_value = "bench.test")]
        domain: String,
        /// The clear-text listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        /// The TLS listener.
        #[arg(long, default_value = "127.0.0.1:8443")]
        https: SocketAddr,
        /// Where to write the certificate (cert.pem); default a temporary
        /// directory.
        #[arg(long)]
        cert_dir: Option<PathBuf>,
        /// round_robin or least_connections.
        #[arg(long, default_value = "round_robin")]
        balance: Balance,
        /// Expect a PROXY protocol header on every connection.
        #[arg(long)]
        proxy_protocol: bool,
        #[arg(long, default_value_t = 60_000)]
        request_timeout_ms: u64,
        #[arg(long, default_value_t = 120_000)]
        idle_timeout_ms: u64,
        #[arg(long, default_value_t = 100 * 1024 * 1024)]
        max_body_bytes: u64,
        /// The most client connections per listener.
        #[arg(long, default_value_t = skiff_agent::ingress::http::MAX_CONNECTIONS)]
        max_connections: usize,
    },
    /// Forward TCP at layer 4 (the published-port forwarder) from
    /// --listen to the upstreams, which share one port.
    Tcp {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddrV4,
        /// An upstream (IPv4:port); repeat for more. All share one port.
        #[arg(long, required = true)]
        upstream: Vec<SocketAddrV4>,
    },
    /// Serve fixed answers, as an upstream.
    Upstream {
        /// Where to listen; repeat for more.
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
        /// The answer body's size.
        #[arg(long, default_value_t = 64)]
        body_bytes: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("skiff-proxy-bench: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Serve {
            upstream,
            domain,
            http,
            https,
            cert_dir,
            balance,
            proxy_protocol,
            request_timeout_ms,
            idle_timeout_ms,
            max_body_bytes,
            max_connections,
        } => {
            let port = upstream[0].port();
            if upstream.iter().any(|u| u.port() != port) {
                eprintln!(
                    "skiff-proxy-bench: the upstreams must share one port (a route has one container port); \
                     give each its own address instead (127.0.0.2:{port}, 127.0.0.3:{port}...)"
                );
                return ExitCode::from(2);
            }
            if let Err(e) = skiff_shared::sections::ingress::check_domain(&domain) {
                eprintln!("skiff-proxy-bench: --domain: {e}");
                return ExitCode::from(2);
            }
            let section = IngressSection {
                generation: 1,
                node: "bench".into(),
                edge: true,
                settings: ProxySettings {
                    http_port: http.port(),
                    https_port: https.port(),
                    proxy_protocol,
                    request_timeout_ms,
                    idle_timeout_ms,
                    max_body_bytes,
                    ..ProxySettings::default()
                },
                routes: vec![Route {
                    stack: "bench".into(),
                    service: "web".into(),
                    domain: domain.clone(),
                    path: "/".into(),
                    port,
                    tls: Tls::Auto,
                    balance,
                    local_first: false,
                }],
                backends: vec![backend(&upstream)],
                ..IngressSection::default()
            };
            runtime.block_on(serve(
                section,
                domain,
                Listeners {
                    http,
                    https,
                    max_connections,
                },
                cert_dir,
            ))
        }
        Command::Tcp { listen, upstream } => {
            let port = upstream[0].port();
            if upstream.iter().any(|u| u.port() != port) {
                eprintln!("skiff-proxy-bench: the upstreams must share one port");
                return ExitCode::from(2);
            }
            let section = IngressSection {
                generation: 1,
                node: "bench".into(),
                edge: true,
                ports: vec![PortRule {
                    port: listen.port(),
                    protocol: Protocol::Tcp,
                    stack: "bench".into(),
                    service: "web".into(),
                    target: port,
                }],
                backends: vec![backend(&upstream)],
                ..IngressSection::default()
            };
            runtime.block_on(tcp(section, listen))
        }
        Command::Upstream { listen, body_bytes } => runtime.block_on(upstream(listen, body_bytes)),
    }
}

/// The bench service's endpoints: the upstreams' addresses.
fn backend(upstream: &[SocketAddrV4]) -> Backend {
    Backend {
        stack: "bench".into(),
        service: "web".into(),
        endpoints: upstream
            .iter()
            .zip(1..)
            .map(|(u, slot)| Endpoint {
                ip: *u.ip(),
                node: "bench".into(),
                slot,
            })
            .collect(),
    }
}

/// The TCP forwarder alone, until a signal; its counters as JSON then.
async fn tcp(section: IngressSection, listen: SocketAddrV4) -> ExitCode {
    use skiff_agent::ingress::l4;
    let tree = TaskTree::root();
    let pools = Arc::new(Pools::default().rebuild(&section, &tree));
    let shared = l4::Shared::new(tree.clone(), l4::Limits::default());
    shared.set_table(l4::Table::new(&section, pools.clone()));
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("skiff-proxy-bench: listening on {listen}: {e}");
            return ExitCode::from(1);
        }
    };
    tree.spawn(
        "bench tcp",
        l4::tcp::serve(
            listener,
            listen.port(),
            shared.clone(),
            tree.token().clone(),
        ),
    );
    eprintln!("skiff-proxy-bench: forwarding TCP from {listen}");
    let code = wait_for_signal().await;
    tree.cancel();
    pools.cut_all();
    tree.wait().await;
    match serde_json::to_string(&shared.port_stats()) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("skiff-proxy-bench: {e}"),
    }
    code
}

/// A self-signed certificate for `domain` and `*.domain`: the proxy's
/// key (kept in memory) and the certificate's PEM.
fn certificate(domain: &str) -> Result<(Arc<rustls::sign::CertifiedKey>, String), String> {
    let names = vec![domain.to_owned(), format!("*.{domain}")];
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
    Ok((
        Arc::new(rustls::sign::CertifiedKey::new(
            vec![ck.cert.der().clone()],
            signing,
        )),
        ck.cert.pem(),
    ))
}

/// Where the proxy listens, and how many connections each listener takes.
struct Listeners {
    http: SocketAddr,
    https: SocketAddr,
    max_connections: usize,
}

async fn serve(
    section: IngressSection,
    domain: String,
    listeners: Listeners,
    cert_dir: Option<PathBuf>,
) -> ExitCode {
    let Listeners {
        http,
        https,
        max_connections,
    } = listeners;
    let (key, pem) = match certificate(&domain) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skiff-proxy-bench: making the certificate: {e}");
            return ExitCode::from(1);
        }
    };
    // The temporary directory lives until the end of the run.
    let (dir, _temp) = match cert_dir {
        Some(d) => (d, None),
        None => match tempfile::tempdir() {
            Ok(t) => (t.path().to_owned(), Some(t)),
            Err(e) => {
                eprintln!("skiff-proxy-bench: making a temporary directory: {e}");
                return ExitCode::from(1);
            }
        },
    };
    let cert_path = dir.join("cert.pem");
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&cert_path, pem)) {
        eprintln!("skiff-proxy-bench: writing {}: {e}", cert_path.display());
        return ExitCode::from(1);
    }
    let tree = TaskTree::root();
    let proxy = HttpProxy::new(tree.clone());
    proxy.set_max_connections(max_connections);
    let pools = Pools::default().rebuild(&section, &tree);
    let names = vec![domain.clone(), format!("*.{domain}")];
    proxy.update(&section, &pools, vec![(names, key)]);
    let (plain, tls) = match (
        TcpListener::bind(http).await,
        TcpListener::bind(https).await,
    ) {
        (Ok(p), Ok(t)) => (p, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("skiff-proxy-bench: listening on {http} and {https}: {e}");
            return ExitCode::from(1);
        }
    };
    tree.spawn(
        "bench http",
        proxy.clone().serve(plain, false, tree.token().clone()),
    );
    tree.spawn(
        "bench https",
        proxy.clone().serve(tls, true, tree.token().clone()),
    );
    eprintln!(
        "skiff-proxy-bench: serving {domain} on http://{http} and https://{https}; certificate {}",
        cert_path.display()
    );
    let code = wait_for_signal().await;
    tree.cancel();
    pools.cut_all();
    tree.wait().await;
    match serde_json::to_string(&proxy.route_stats()) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("skiff-proxy-bench: {e}"),
    }
    code
}

async fn wait_for_signal() -> ExitCode {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return ExitCode::from(1);
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    ExitCode::SUCCESS
}

async fn upstream(listen: Vec<SocketAddr>, body_bytes: usize) -> ExitCode {
    let body = Bytes::from(vec![b'x'; body_bytes]);
    let tree = TaskTree::root();
    for addr in listen {
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("skiff-proxy-bench: listening on {addr}: {e}");
                return ExitCode::from(1);
            }
        };
        let body = body.clone();
        let t = tree.clone();
        tree.spawn("bench upstream", async move {
            loop {
                let stream = tokio::select! {
                    a = listener.accept() => match a {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                    () = t.cancelled() => return,
                };
                let body = body.clone();
                let t2 = t.clone();
                t.spawn("bench upstream connection", async move {
                    let _ = stream.set_nodelay(true);
                    let svc = service_fn(move |_req| {
                        let body = body.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(body)))
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        () = t2.cancelled() => {}
                    }
                });
            }
        });
    }
    eprintln!("skiff-proxy-bench: upstream serving.");
    let code = wait_for_signal().await;
    tree.cancel();
    tree.wait().await;
    code
}
