//! The PROXY protocol (v1 text, v2 binary), as sent first by a load
//! balancer in front of the edge hosts: the client's real address.
//!
//! [`read_header`] reads the header exactly, never a byte past it, so the
//! stream can then be handed to TLS, HTTP or a splice as it is. It is
//! strict: a connection to a port that expects the header and does not
//! start with one is refused, as the specification asks (otherwise a
//! client could forge its address by sending one itself through a path
//! that does not add it).
//!
//! Specification: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included.
const V1_MAX: usize = 107;
/// The shortest v1 line (`PROXY UNKNOWN\r\n`).
const V1_MIN: usize = 15;

/// Why a connection's PROXY header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no PROXY protocol header arrived in time")]
    Timeout,
    #[error("the connection closed inside its PROXY protocol header")]
    Truncated,
    #[error(
        "the connection does not start with a PROXY protocol header (v1 or v2); \
         the port expects one (settings.proxy_protocol): send it from the load balancer, \
         or turn proxy_protocol off"
    )]
    Missing,
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[source] std::io::Error),
}

/// Reads a PROXY protocol header from the start of `s`, by `deadline`.
/// Returns the client's address, or `None` when the header says the
/// connection is the balancer's own (v2 LOCAL, v1 UNKNOWN, or an address
/// family other than IPv4 and IPv6). Nothing after the header is read.
///
/// # Errors
/// No header, a malformed or truncated one, or none by `deadline`.
pub async fn read_header<S: AsyncRead + Unpin>(
    s: &mut S,
    deadline: Instant,
) -> Result<Option<SocketAddr>, Error> {
    tokio::time::timeout_at(deadline, read(s))
        .await
        .map_err(|_| Error::Timeout)?
}

async fn read<S: AsyncRead + Unpin>(s: &mut S) -> Result<Option<SocketAddr>, Error> {
    let mut head = [0u8; 8];
    exact(s, &mut head).await?;
    if head.starts_with(b"PROXY ") {
        return read_v1(s, head).await;
    }
    if head == V2_SIGNATURE[..8] {
        return read_v2(s).await;
    }
    Err(Error::Missing)
}

async fn exact<S: AsyncRead + Unpin>(s: &mut S, buf: &mut [u8]) -> Result<(), Error> {
    match s.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::Truncated),
        Err(e) => Err(Error::Io(e)),
    }
}

async fn read_v1<S: AsyncRead + Unpin>(
    s: &mut S,
    head: [u8; 8],
) -> Result<Option<SocketAddr>, Error> {
    let mut line = Vec::with_capacity(V1_MAX);
    line.extend_from_slice(&head);
    // Every line is at least this long: read that much at once, then a
    // byte at a time up to the CRLF (so nothing past it is taken).
    let mut rest = [0u8; V1_MIN - 8];
    exact(s, &mut rest).await?;
    line.extend_from_slice(&rest);
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(Error::Invalid(format!(
                "a v1 line longer than {V1_MAX} bytes"
            )));
        }
        let mut b = [0u8; 1];
        exact(s, &mut b).await?;
        line.push(b[0]);
    }
    let text = std::str::from_utf8(&line[..line.len() - 2])
        .map_err(|_| Error::Invalid("a v1 line that is not ASCII".into()))?;
    parse_v1(text)
}

fn parse_v1(text: &str) -> Result<Option<SocketAddr>, Error> {
    let mut parts = text.split(' ');
    let _proxy = parts.next();
    let family = parts.next().unwrap_or("");
    if family == "UNKNOWN" {
        return Ok(None);
    }
    let fields: Vec<&str> = parts.collect();
    let [src, _dst, sport, dport] = fields[..] else {
        return Err(Error::Invalid(format!(
            "v1 wants `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>`, got {text:?}"
        )));
    };
    let ip: IpAddr = match family {
        "TCP4" => src
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| Error::Invalid(format!("v1 source {src:?} is not an IPv4 address")))?,
        "TCP6" => src
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| Error::Invalid(format!("v1 source {src:?} is not an IPv6 address")))?,
        other => {
            return Err(Error::Invalid(format!(
                "v1 protocol {other:?} is not TCP4, TCP6 or UNKNOWN"
            )));
        }
    };
    // Decimal, no leading zero (the specification's form).
    let port = |p: &str| {
        let digits = !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        (digits && (p == "0" || !p.starts_with('0')))
            .then(|| p.parse::<u16>().ok())
            .flatten()
    };
    let (Some(port), Some(_)) = (port(sport), port(dport)) else {
        return Err(Error::Invalid(format!(
            "v1 ports {sport:?} {dport:?} are not ports"
        )));
    };
    Ok(Some(SocketAddr::new(ip, port)))
}

async fn read_v2<S: AsyncRead + Unpin>(s: &mut S) -> Result<Option<SocketAddr>, Error> {
    let mut rest = [0u8; 8];
    exact(s, &mut rest).await?;
    if rest[..4] != V2_SIGNATURE[8..] {
        return Err(Error::Missing);
    }
    let ver_cmd = rest[4];
    let family = rest[5];
    let len = usize::from(u16::from_be_bytes([rest[6], rest[7]]));
    if ver_cmd >> 4 != 2 {
        return Err(Error::Invalid(format!(
            "v2 version {} (only 2 exists)",
            ver_cmd >> 4
        )));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        cmd => {
            return Err(Error::Invalid(format!(
                "v2 command {cmd} is not LOCAL or PROXY"
            )));
        }
    };
    let mut body = vec![0u8; len];
    exact(s, &mut body).await?;
    if local {
        return Ok(None);
    }
    match family >> 4 {
        1 => {
            let Some(a) = body.get(..12) else {
                return Err(Error::Invalid(format!(
                    "v2 IPv4 addresses need 12 bytes, the header has {len}"
                )));
            };
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            let port = u16::from_be_bytes([a[8], a[9]]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        2 => {
            let Some(a) = body.get(..36) else {
                return Err(Error::Invalid(format!(
                    "v2 IPv6 addresses need 36 bytes, the header has {len}"
                )));
            };
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let port = u16::from_be_bytes([a[32], a[33]]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port,
            )))
        }
        // UNSPEC and UNIX: the connection's own addresses stand.
        0 | 3 => Ok(None),
        f => Err(Error::Invalid(format!("v2 address family {f} is unknown"))),
    }
}

#[cfg(test)]
#[path = "proxy_protocol_tests.rs"]
mod tests;
