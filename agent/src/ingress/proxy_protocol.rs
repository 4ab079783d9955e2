//! Stand-in for the PROXY protocol reader (the controller's branch owns
//! the real one).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

pub async fn read_header(
    stream: &mut TcpStream,
    deadline: Instant,
) -> std::io::Result<Option<SocketAddr>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    tokio::time::timeout_at(deadline, async {
        let mut first = [0u8; 5];
        stream.read_exact(&mut first).await?;
        if &first == b"PROXY" {
            let mut line = Vec::new();
            loop {
                let b = stream.read_u8().await?;
                line.push(b);
                if line.ends_with(b"\r\n") || line.len() > 107 {
                    break;
                }
            }
            let text = String::from_utf8_lossy(&line);
            let parts: Vec<&str> = text.split_whitespace().collect();
            if parts.first() == Some(&"UNKNOWN") {
                return Ok(None);
            }
            if parts.len() < 5 {
                return Err(bad("short PROXY v1 line"));
            }
            let ip: IpAddr = parts[1].parse().map_err(|_| bad("bad address"))?;
            let port: u16 = parts[3].parse().map_err(|_| bad("bad port"))?;
            return Ok(Some(SocketAddr::new(ip, port)));
        }
        let mut rest = [0u8; 11];
        stream.read_exact(&mut rest).await?;
        let mut sig = first.to_vec();
        sig.extend_from_slice(&rest);
        if &sig[..12] != b"\r\n\r\n\0\r\nQUIT\n" {
            return Err(bad("no PROXY header"));
        }
        let len = u16::from_be_bytes([sig[14], sig[15]]) as usize;
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await?;
        match sig[13] >> 4 {
            1 if body.len() >= 12 => {
                let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
                Ok(Some(SocketAddr::new(
                    ip.into(),
                    u16::from_be_bytes([body[8], body[9]]),
                )))
            }
            2 if body.len() >= 36 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&body[..16]);
                Ok(Some(SocketAddr::new(
                    Ipv6Addr::from(a).into(),
                    u16::from_be_bytes([body[32], body[33]]),
                )))
            }
            _ => Ok(None),
        }
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "PROXY header timed out"))?
}
