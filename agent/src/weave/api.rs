//! A small client of Weave Net's HTTP API (the router's, on
//! `127.0.0.1:6784` by default): its status, and its IPAM's
//! `POST /ip/<container>/<cidr>` (an address of a subnet for a container;
//! the same one again for the same container), `DELETE /ip/<container>`
//! (release all of a container's addresses). Every exchange has a deadline
//! and a bounded answer.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use ipnet::Ipv4Net;

/// How long one exchange with Weave may take.
const DEADLINE: Duration = Duration::from_secs(5);
/// The most of an answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Where Weave's API is: `http://host:port` (no TLS, no path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiUrl {
    /// `host:port`, as connected to and sent as `Host`.
    authority: String,
    url: String,
}

impl ApiUrl {
    /// Parses `http://host[:port]`; the port defaults to 6784.
    ///
    /// # Errors
    /// Not an `http://` URL of a host and port alone, said with an example.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{text:?} is not Weave Net's API address: give http://HOST:PORT, e.g. \"{}\"",
                super::DEFAULT_API
            )
        };
        let rest = text.strip_prefix("http://").ok_or_else(bad)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return Err(bad());
        }
        let authority = if rest
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            rest.to_owned()
        } else if rest.contains(':') {
            return Err(bad());
        } else {
            format!("{rest}:6784")
        };
        Ok(Self {
            url: format!("http://{authority}"),
            authority,
        })
    }
}

impl std::fmt::Display for ApiUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// One request; the status and the body, or why there is none.
async fn exchange(
    api: &ApiUrl,
    method: hyper::Method,
    path: &str,
) -> Result<(u16, String), String> {
    let go = async {
        let stream = tokio::net::TcpStream::connect(&api.authority)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &api.authority)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let answer = async move {
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, String::from_utf8_lossy(&body).trim().to_owned()))
        };
        tokio::select! {
            r = answer => r,
            c = conn => Err(match c {
                Ok(()) => "the connection closed before the answer".to_owned(),
                Err(e) => e.to_string(),
            }),
        }
    };
    tokio::time::timeout(DEADLINE, go)
        .await
        .map_err(|_| format!("no answer within {} s", DEADLINE.as_secs()))?
}

/// A short form of an answer's body, for an error.
fn short(body: &str) -> String {
    let mut s: String = body.chars().take(200).collect();
    if s.len() < body.len() {
        s.push('…');
    }
    s
}

/// Whether the API answers (`GET /status`).
///
/// # Errors
/// It does not, or not with 200.
pub async fn status(api: &ApiUrl) -> Result<(), String> {
    match exchange(api, hyper::Method::GET, "/status").await? {
        (200, _) => Ok(()),
        (code, body) => Err(format!("GET /status answered {code}: {}", short(&body))),
    }
}

/// An address of `subnet` for `container` (the same one for the same
/// container until it is released).
///
/// # Errors
/// No answer, a refusal (the subnet is full, or not Weave's to give), or an
/// answer that is not an address of `subnet`.
pub async fn allocate(api: &ApiUrl, container: &str, subnet: Ipv4Net) -> Result<Ipv4Net, String> {
    let path = format!("/ip/{container}/{subnet}");
    let (code, body) = exchange(api, hyper::Method::POST, &path).await?;
    if code != 200 {
        return Err(format!("POST {path} answered {code}: {}", short(&body)));
    }
    let address: Ipv4Net = body
        .parse()
        .map_err(|_| format!("POST {path} answered {:?}, not an address", short(&body)))?;
    if !subnet.contains(&address.addr()) || address.prefix_len() != subnet.prefix_len() {
        return Err(format!(
            "POST {path} answered {address}, not an address of {subnet}"
        ));
    }
    Ok(address)
}

/// Releases every address Weave holds for `container`.
///
/// # Errors
/// No answer, or one that is not a success.
pub async fn release(api: &ApiUrl, container: &str) -> Result<(), String> {
    let path = format!("/ip/{container}");
    match exchange(api, hyper::Method::DELETE, &path).await? {
        (200 | 204, _) => Ok(()),
        (code, body) => Err(format!("DELETE {path} answered {code}: {}", short(&body))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_address_is_http_host_and_port() {
        assert_eq!(
            ApiUrl::parse("http://127.0.0.1:6784").unwrap().to_string(),
            "http://127.0.0.1:6784"
        );
        assert_eq!(
            ApiUrl::parse("http://weave.local/").unwrap().authority,
            "weave.local:6784"
        );
        for bad in [
            "127.0.0.1:6784",
            "https://x:1",
            "http://x:1/ip",
            "http://",
            "http://x:y",
        ] {
            let e = ApiUrl::parse(bad).unwrap_err();
            assert!(e.contains("http://HOST:PORT"), "{bad}: {e}");
        }
    }
}
