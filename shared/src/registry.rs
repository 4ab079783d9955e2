//! Image registries: which registry an image reference names (the way the
//! Docker Engine decides it), the check of a registry host typed by a
//! user, and the credentials the coordinator delivers to agents.
//!
//! A reference's first path component is a registry host when it contains
//! a `.` or a `:`, is `localhost`, or has an upper-case letter; otherwise
//! the image is on Docker Hub, whose host is [`DOCKER_HUB`]
//! (`index.docker.io` and `registry-1.docker.io` are the same registry).

use serde::{Deserialize, Serialize};

/// The registry host of Docker Hub.
pub const DOCKER_HUB: &str = "docker.io";

/// Other names of Docker Hub, normalized to [`DOCKER_HUB`].
const DOCKER_HUB_ALIASES: &[&str] = &["index.docker.io", "registry-1.docker.io"];

/// Longest registry host accepted (a DNS name plus a port).
const MAX_HOST_LEN: usize = 261;

/// An image reference split into its parts. `name` is the reference
/// without tag and digest, exactly as written (the engine normalizes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry host, normalized (lower case, Docker Hub as [`DOCKER_HUB`]).
    pub registry: String,
    pub name: String,
    pub tag: Option<String>,
    /// `algorithm:hex`, e.g. `sha256:…`.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Splits a reference. It does not validate it: the engine does, and
    /// says what is wrong.
    pub fn parse(reference: &str) -> Self {
        let (rest, digest) = match reference.split_once('@') {
            Some((r, d)) => (r, Some(d.to_owned())),
            None => (reference, None),
        };
        // A tag is after the last ':' of the last path component (a ':'
        // before a '/' is a registry port).
        let last = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last..].rfind(':') {
            Some(i) => (&rest[..last + i], Some(rest[last + i + 1..].to_owned())),
            None => (rest, None),
        };
        Self {
            registry: registry_of_name(name),
            name: name.to_owned(),
            tag,
            digest,
        }
    }

    /// What to ask the engine to pull: the name, and the digest, else the
    /// tag, else `latest` (an empty tag would pull every tag).
    pub fn pull_target(&self) -> (&str, &str) {
        let tag = self
            .digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest");
        (&self.name, tag)
    }
}

/// The registry host an image reference pulls from.
pub fn registry_of(reference: &str) -> String {
    ImageRef::parse(reference).registry
}

fn registry_of_name(name: &str) -> String {
    match name.split_once('/') {
        Some((first, _))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            normalize(first)
        }
        _ => DOCKER_HUB.to_owned(),
    }
}

fn normalize(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    if DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        DOCKER_HUB.to_owned()
    } else {
        host
    }
}

/// Checks a registry host typed by a user (`ghcr.io`, `127.0.0.1:5000`,
/// `docker.io`) and returns it normalized. The error names the input and
/// says what to write instead.
pub fn check_host(input: &str) -> Result<String, String> {
    let example = "write the host alone, e.g. ghcr.io, registry.example.com:5000 or docker.io";
    if input.is_empty() {
        return Err(format!("the registry host is empty; {example}"));
    }
    if input.contains("://") {
        return Err(format!(
            "registry host {input:?} has a scheme; {example} (Docker chooses HTTPS, or HTTP for loopback registries)"
        ));
    }
    if input.contains('/') {
        return Err(format!(
            "registry host {input:?} has a path; {example} (credentials apply to every repository of a registry)"
        ));
    }
    if input.len() > MAX_HOST_LEN {
        return Err(format!("registry host {input:?} is too long; {example}"));
    }
    let bad = || format!("invalid registry host {input:?}: expected hostname[:port]; {example}");
    let (host, port) = if let Some(rest) = input.strip_prefix('[') {
        // An IPv6 literal: [::1] or [::1]:5000.
        let (addr, after) = rest.split_once(']').ok_or_else(bad)?;
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(bad());
        }
        match after {
            "" => (input, None),
            p => (
                &input[..input.len() - p.len()],
                Some(p.strip_prefix(':').ok_or_else(bad)?),
            ),
        }
    } else {
        match input.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (input, None),
        }
    };
    if let Some(p) = port
        && !(p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n > 0))
    {
        return Err(format!(
            "registry host {input:?} has an invalid port {p:?}; write a port from 1 to 65535"
        ));
    }
    if !host.starts_with('[') {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if !host.split('.').all(label_ok) {
            return Err(bad());
        }
        // Docker reads `myhost/app` as the Docker Hub user `myhost`.
        if port.is_none() && !host.contains('.') && !host.eq_ignore_ascii_case("localhost") {
            return Err(format!(
                "registry host {input:?} is not one Docker pulls from: an image `{input}/app` is on Docker Hub; write the registry's full name or add its port, e.g. {input}.example.com or {input}:5000"
            ));
        }
    }
    Ok(normalize(input))
}

/// Credentials for one registry, as delivered to an agent. The password
/// is redacted from `Debug` so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryCredential {
    /// The normalized registry host ([`check_host`]).
    pub host: String,
    pub username: String,
    /// A password or access token.
    pub password: String,
}

impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("host", &self.host)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn registry_is_found_the_way_docker_finds_it() {
        for (image, registry) in [
            ("busybox", "docker.io"),
            ("busybox:1.36", "docker.io"),
            ("library/busybox", "docker.io"),
            ("skiff-test/busybox:1", "docker.io"),
            ("docker.io/library/redis:7", "docker.io"),
            ("index.docker.io/library/redis", "docker.io"),
            ("registry-1.docker.io/x/y", "docker.io"),
            ("ghcr.io/org/app:v1", "ghcr.io"),
            ("GHCR.io/org/app", "ghcr.io"),
            ("127.0.0.1:5000/app", "127.0.0.1:5000"),
            (
                "registry.example.com:5000/team/app:2",
                "registry.example.com:5000",
            ),
            ("localhost/app", "localhost"),
            ("localhost:5000/app:1", "localhost:5000"),
            ("Uppercase/app", "uppercase"),
            ("myregistry:5000/app@sha256:abcd", "myregistry:5000"),
            ("app@sha256:abcd", "docker.io"),
            ("[::1]:5000/app:1", "[::1]:5000"),
        ] {
            assert_eq!(registry_of(image), registry, "{image}");
        }
    }

    #[test]
    fn references_split_into_name_tag_and_digest() {
        let r = ImageRef::parse("127.0.0.1:5000/team/app:v2@sha256:00ff");
        assert_eq!(r.name, "127.0.0.1:5000/team/app");
        assert_eq!(r.tag.as_deref(), Some("v2"));
        assert_eq!(r.digest.as_deref(), Some("sha256:00ff"));
        assert_eq!(r.pull_target(), ("127.0.0.1:5000/team/app", "sha256:00ff"));

        let r = ImageRef::parse("127.0.0.1:5000/app");
        assert_eq!(
            (r.name.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000/app", None)
        );
        assert_eq!(r.pull_target(), ("127.0.0.1:5000/app", "latest"));

        let r = ImageRef::parse("redis:7");
        assert_eq!(r.pull_target(), ("redis", "7"));
    }

    #[test]
    fn hosts_are_checked_and_normalized() {
        for (input, normalized) in [
            ("ghcr.io", "ghcr.io"),
            ("127.0.0.1:5000", "127.0.0.1:5000"),
            ("Registry.Example.com:443", "registry.example.com:443"),
            ("docker.io", "docker.io"),
            ("index.docker.io", "docker.io"),
            ("localhost", "localhost"),
            ("[::1]:5000", "[::1]:5000"),
        ] {
            assert_eq!(check_host(input).as_deref(), Ok(normalized), "{input}");
        }
        for (input, says) in [
            ("", "empty"),
            ("https://ghcr.io", "scheme"),
            ("ghcr.io/org", "path"),
            ("127.0.0.1:0", "port"),
            ("127.0.0.1:99999", "port"),
            ("host:", "port"),
            ("bad host", "hostname[:port]"),
            ("-bad.io", "hostname[:port]"),
            ("a..b", "hostname[:port]"),
            ("[zz]:1", "hostname[:port]"),
            ("myhost", "myhost:5000"),
        ] {
            let err = check_host(input).unwrap_err();
            assert!(err.contains(says), "{input:?}: {err}");
            assert!(err.contains("e.g.") || err.contains("write"), "{err}");
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = RegistryCredential {
            host: "ghcr.io".into(),
            username: "bot".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_checked_hosts_are_their_own_registry(s in ".{0,80}") {
            let _ = ImageRef::parse(&s);
            if let Ok(host) = check_host(&s) {
                prop_assert_eq!(registry_of(&format!("{host}/app:1")), host);
            }
        }
    }
}
