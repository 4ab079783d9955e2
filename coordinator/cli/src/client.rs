//! A small HTTP client of the coordinator API, used by the `skiff` CLI and
//! by the test harness.

use http_body_util::{BodyExt, Full};
pub use hyper::Method;
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use skiff_api_types::ApiErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid API URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot reach the coordinator at {url}: {source}; is it running, and is --url right?")]
    Connect { url: String, source: std::io::Error },
    #[error("request to {url} failed: {message}")]
    Http { url: String, message: String },
    #[error("{message} ({code})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from {url}: {message}")]
    Decode { url: String, message: String },
}

impl ClientError {
    /// True for a token that was refused, or may not do what was asked.
    pub fn is_unauthorized(&self) -> bool {
        matches!(
            self,
            Self::Api {
                status: 401 | 403,
                ..
            }
        )
    }
}

/// A client bound to one coordinator and one token (`Debug` leaves the
/// token out).
#[derive(Clone)]
pub struct Client {
    url: String,
    authority: String,
    base_path: String,
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// `url` is `http://HOST:PORT[/prefix]`.
    pub fn new(url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.starts_with("https://") {
            return Err(bad(
                "https is not supported by this client; reach the API over http on the coordinator host or an SSH tunnel",
            ));
        } else {
            return Err(bad("expected http://HOST:PORT"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !authority.ends_with(']')
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            url: url.to_owned(),
            authority,
            base_path: path.to_owned(),
            token,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends a request under `/api/v1` and decodes the JSON answer.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.raw(method, &format!("/api/v1{path}"), body).await?;
        if !status.is_success() {
            return Err(Self::api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: self.url.clone(),
            message: e.to_string(),
        })
    }

    fn http_error(&self, message: impl ToString) -> ClientError {
        ClientError::Http {
            url: self.url.clone(),
            message: message.to_string(),
        }
    }

    /// Opens a connection and sends one request; `path` is below the base URL.
    async fn send(
        &self,
        method: Method,
        path: &str,
        json: Option<Bytes>,
        accept: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let tcp = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|source| ClientError::Connect {
                url: self.url.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| self.http_error(e))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base_path))
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::ACCEPT, accept);
        if json.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(json.unwrap_or_default()))
            .map_err(|e| self.http_error(e))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| self.http_error(e))
    }

    /// Sends a request and returns status and body, whatever the status.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let json = match body {
            Some(b) => Some(Bytes::from(
                serde_json::to_vec(b).map_err(|e| self.http_error(e))?,
            )),
            None => None,
        };
        let resp = self.send(method, path, json, "application/json").await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.http_error(e))?
            .to_bytes();
        Ok((status, bytes))
    }

    /// The API error in a failed answer's body.
    fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
        match serde_json::from_slice::<ApiErrorBody>(bytes) {
            Ok(e) => ClientError::Api {
                status: status.as_u16(),
                code: e.code,
                message: e.message,
            },
            Err(_) => ClientError::Api {
                status: status.as_u16(),
                code: "http".into(),
                message: format!("HTTP {status}: {}", String::from_utf8_lossy(bytes).trim()),
            },
        }
    }
}

impl Client {
    /// GETs a stream under `/api/v1` accepting `accept`: its body once the
    /// answer is a success, the API's error otherwise.
    async fn open_stream(
        &self,
        path: &str,
        accept: &str,
    ) -> Result<hyper::body::Incoming, ClientError> {
        let resp = self
            .send(Method::GET, &format!("/api/v1{path}"), None, accept)
            .await?;
        let status = resp.status();
        let body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map_err(|e| self.http_error(e))?
                .to_bytes();
            return Err(Self::api_error(status, &bytes));
        }
        Ok(body)
    }

    /// Follows a server-sent-event stream under `/api/v1`, calling `on_data`
    /// with each event's data until it returns false or the stream ends.
    pub async fn follow_events(
        &self,
        path: &str,
        mut on_data: impl FnMut(&str) -> bool,
    ) -> Result<(), ClientError> {
        let mut body = self.open_stream(path, "text/event-stream").await?;
        let mut buf = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.http_error(e))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if !data.is_empty() && !on_data(&data.join("\n")) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

impl Client {
    /// Follows a newline-delimited JSON stream under `/api/v1`, calling
    /// `on_line` with each non-blank line until it returns false or the
    /// stream ends.
    pub async fn follow_lines(
        &self,
        path: &str,
        mut on_line: impl FnMut(&str) -> bool,
    ) -> Result<(), ClientError> {
        let mut body = self.open_stream(path, "application/x-ndjson").await?;
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.http_error(e))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line);
                let text = text.trim();
                if !text.is_empty() && !on_line(text) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_leaves_tokens_out() {
        let token = "skiff_0123456789abcdef_0123456789abcdef0123456789abcdef01234567";
        let c = Client::new("http://127.0.0.1:7070", Some(token.into())).unwrap();
        let saved = crate::config::CliConfig {
            url: None,
            token: Some(token.into()),
        };
        let cli = <crate::commands::Cli as clap::Parser>::try_parse_from([
            "skiff", "--token", token, "node", "ls",
        ])
        .unwrap();
        for shown in [format!("{c:?}"), format!("{saved:?}"), format!("{cli:?}")] {
            assert!(
                shown.contains("<redacted>") && !shown.contains(token),
                "{shown}"
            );
        }
    }

    #[test]
    fn urls() {
        let c = Client::new("http://127.0.0.1:7070", None).unwrap();
        assert_eq!(c.authority, "127.0.0.1:7070");
        let c = Client::new("http://coord.example/skiff/", None).unwrap();
        assert_eq!(
            (c.authority.as_str(), c.base_path.as_str()),
            ("coord.example:80", "/skiff")
        );
        assert!(Client::new("https://x:1", None).is_err());
        assert!(Client::new("ftp://x", None).is_err());
        assert!(Client::new("http://", None).is_err());
    }
}
