//! The headers a proxy owns: hop-by-hop ones removed both ways, the
//! X-Forwarded-* ones added toward the upstream.

use std::net::IpAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether a header concerns one connection only (RFC 9110 7.6.1), or
/// one proxy (`Proxy-*`), or asks to switch protocols.
fn hop_by_hop(name: &HeaderName) -> bool {
    let n = name.as_str();
    matches!(
        n,
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || n.starts_with("proxy-")
}

/// The protocol a request asks to switch to (`Upgrade`, with `Connection:
/// upgrade`), if any.
pub(super) fn upgrade_of(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Removes hop-by-hop headers: `Connection` and the headers it names, the
/// fixed list, any `Proxy-*`, and `Upgrade` unless `upgrade` is given
/// (then `Connection: upgrade` and that `Upgrade` are set again).
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    // One pass to find them; most messages have none, or only
    // `Connection: keep-alive`.
    let mut named: Vec<HeaderName> = Vec::new();
    let mut add = |n: HeaderName| {
        if !named.contains(&n) {
            named.push(n);
        }
    };
    for (name, value) in headers.iter() {
        if !hop_by_hop(name) {
            continue;
        }
        add(name.clone());
        if name == header::CONNECTION {
            for t in value.to_str().unwrap_or_default().split(',') {
                match t.trim() {
                    "" => {}
                    t if t.eq_ignore_ascii_case("keep-alive") => add(KEEP_ALIVE),
                    t => {
                        if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
                            add(n);
                        }
                    }
                }
            }
        }
    }
    for n in named {
        headers.remove(n);
    }
    if let Some(u) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, u);
    }
}

/// A client address as an X-Forwarded-For entry (made once per client
/// connection).
pub(super) fn forwarded_for(client: IpAddr) -> HeaderValue {
    // An address's text is always a valid header value.
    HeaderValue::from_str(&client.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Adds the client's address (`client`, from [`forwarded_for`]) to
/// `X-Forwarded-For`, and sets `X-Forwarded-Proto` and `X-Forwarded-Host`.
pub(super) fn add_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    tls: bool,
    host: Option<&HeaderValue>,
) {
    let value = if headers.contains_key(X_FORWARDED_FOR) {
        let mut value = Vec::new();
        for prior in headers.get_all(X_FORWARDED_FOR) {
            if prior.to_str().is_ok() {
                value.extend_from_slice(prior.as_bytes());
                value.extend_from_slice(b", ");
            }
        }
        value.extend_from_slice(client.as_bytes());
        HeaderValue::from_bytes(&value).ok()
    } else {
        Some(client.clone())
    };
    if let Some(v) = value {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    if let Some(h) = host {
        headers.insert(X_FORWARDED_HOST, h.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-authorization", HeaderValue::from_static("basic x"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn an_upgrade_keeps_its_two_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        let u = upgrade_of(&h);
        assert_eq!(u, Some(HeaderValue::from_static("websocket")));
        strip_hop_by_hop(&mut h, u);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        let host = HeaderValue::from_static("a.io");
        let client = forwarded_for("5.6.7.8".parse().unwrap());
        add_forwarded(&mut h, &client, true, Some(&host));
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "a.io");
    }
}
