//! Names that are not Skiff's go to the host's upstream resolvers, through
//! hickory's resolver and its cache (TTLs respected, negative answers
//! cached for their SOA's time).
//!
//! An upstream that does not answer costs a client at most
//! [`DEADLINE`]: then it gets SERVFAIL, never silence.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::Record;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};

use super::reply;

/// The longest a forwarded query waits for an upstream answer.
pub const DEADLINE: Duration = Duration::from_millis(1800);
/// How long one upstream attempt waits.
const ATTEMPT: Duration = Duration::from_millis(800);
/// Forwarded answers remembered at once.
const CACHE_SIZE: u64 = 8192;

/// The upstream resolvers and their cache.
#[derive(Clone)]
pub struct Forwarder {
    resolver: Option<TokioResolver>,
    upstreams: Vec<SocketAddr>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("upstreams", &self.upstreams)
            .finish()
    }
}

impl Forwarder {
    /// A forwarder to `upstreams` (none: every forwarded name gets
    /// SERVFAIL).
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        let resolver = if upstreams.is_empty() {
            None
        } else {
            let servers = upstreams
                .iter()
                .map(|u| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = u.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = u.port();
                    NameServerConfig::new(u.ip(), true, vec![udp, tcp])
                })
                .collect();
            let mut builder = TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], servers),
                TokioRuntimeProvider::default(),
            );
            let opts: &mut ResolverOpts = builder.options_mut();
            opts.timeout = ATTEMPT;
            opts.attempts = 1;
            opts.cache_size = CACHE_SIZE;
            opts.ndots = 0;
            opts.preserve_intermediates = true;
            builder.build().ok()
        };
        Self {
            resolver,
            upstreams,
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// The answer to a forwarded request, as bytes.
    pub async fn answer(&self, request: &Message, udp: bool) -> Vec<u8> {
        let (Some(resolver), Some(query)) = (&self.resolver, reply::question(request)) else {
            return reply::server_failure(request);
        };
        let mut name = query.name().clone();
        name.set_fqdn(true);
        let lookup =
            tokio::time::timeout(DEADLINE, resolver.lookup(name, query.query_type())).await;
        let mut response = reply::response(request);
        match lookup {
            Ok(Ok(lookup)) => {
                response.add_answers(lookup.answers().iter().cloned());
            }
            Ok(Err(NetError::Dns(DnsError::NoRecordsFound(none)))) => {
                response.metadata.response_code = none.response_code;
                if let Some(soa) = none.soa {
                    let soa: Record = soa.into_record_of_rdata();
                    response.add_authority(soa);
                }
            }
            Ok(Err(NetError::Dns(DnsError::ResponseCode(code)))) => {
                response.metadata.response_code = code;
            }
            Ok(Err(_)) | Err(_) => {
                response.metadata.response_code = ResponseCode::ServFail;
            }
        }
        reply::encode(&response, request, udp)
    }
}

/// The upstream resolvers in a resolv.conf's text: its `nameserver`
/// lines, port 53, without the addresses in `skip` (the agent's own
/// listeners: asking itself would loop).
pub fn upstreams_of(resolv_conf: &str, skip: &[SocketAddr]) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then_some(())?;
            let ip: IpAddr = words.next()?.split('%').next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .filter(|a| !skip.contains(a) && !a.ip().is_unspecified())
        .collect()
}

/// The host's upstream resolvers, from `/etc/resolv.conf`.
pub fn system_upstreams(skip: &[SocketAddr]) -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|text| upstreams_of(&text, skip))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_are_the_nameservers_but_the_agents_own() {
        let text = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver 127.0.0.1\nnameserver fe80::1%eth0\n nameserver 9.9.9.9 \nnameserver bogus\nnameserver 0.0.0.0\n";
        let skip = ["127.0.0.1:53".parse().unwrap()];
        assert_eq!(
            upstreams_of(text, &skip),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap(),
                "9.9.9.9:53".parse().unwrap(),
            ]
        );
    }
}
