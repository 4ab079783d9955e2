//! The rules of route domains and paths, the same for the coordinator
//! (which refuses a bad route before anything is applied), the CLI and
//! the agent's proxy (which matches requests with them).

/// Why a domain is not one a route may have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DomainError(String);

/// Checks a route's domain: a DNS name of letters, digits and hyphens in
/// labels of 1 to 63, at least two labels, at most 253 bytes, lower case
/// (callers lower it first), optionally `*.` first for a wildcard of one
/// label. No IP address, no port, no trailing dot.
///
/// # Errors
/// What is wrong with it, and what a valid one looks like.
pub fn check_domain(domain: &str) -> Result<(), DomainError> {
    let bad = |why: &str| {
        Err(DomainError(format!(
            "domain {domain:?} is not valid: {why} (write a name like app.example.com or *.example.com)"
        )))
    };
    if domain.is_empty() {
        return bad("it is empty");
    }
    if domain.len() > 253 {
        return bad("it is longer than 253 characters");
    }
    let name = domain.strip_prefix("*.").unwrap_or(domain);
    if name.contains('*') {
        return bad("a wildcard is only allowed as the whole first label");
    }
    if name.contains(':') {
        return bad("a port does not belong in a domain");
    }
    if name.ends_with('.') {
        return bad("it ends with a dot");
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return bad("it needs at least two labels");
    }
    for l in &labels {
        if l.is_empty() || l.len() > 63 {
            return bad("each label must have 1 to 63 characters");
        }
        if !l
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("only lower-case letters, digits and hyphens are allowed");
        }
        if l.starts_with('-') || l.ends_with('-') {
            return bad("a label may not start or end with a hyphen");
        }
    }
    if labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return bad("an IP address is not a domain");
    }
    Ok(())
}

/// Checks a route's path prefix: starts with `/`, no `..`, `?`, `#`,
/// whitespace or control characters, at most 1024 bytes; no trailing `/`
/// except for `/` itself.
///
/// # Errors
/// What is wrong with it.
pub fn check_path(path: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "path {path:?} is not valid: {why} (write a prefix like / or /api)"
        ))
    };
    if !path.starts_with('/') {
        return bad("it must start with /");
    }
    if path.len() > 1024 {
        return bad("it is longer than 1024 characters");
    }
    if path.len() > 1 && path.ends_with('/') {
        return bad("it must not end with / (prefixes match whole segments)");
    }
    if path
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return bad("it holds a space, a control character, ? or #");
    }
    if path.split('/').any(|s| s == ".." || s == ".") {
        return bad("it holds a . or .. segment");
    }
    Ok(())
}

/// Whether a request's host (lower case, port removed) matches a route's
/// domain: equal, or one label more than a wildcard's suffix.
pub fn domain_matches(domain: &str, host: &str) -> bool {
    match domain.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .and_then(|h| h.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        None => domain == host,
    }
}

/// Whether two routes (domain, path) would take the same requests: the
/// same domain and the same path. A shorter path under a longer one is
/// not an overlap (the longest prefix wins), nor is a wildcard and a
/// name under it (the exact name wins).
pub fn routes_overlap(a: (&str, &str), b: (&str, &str)) -> bool {
    a.0 == b.0 && a.1 == b.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_domains_pass() {
        for d in [
            "example.com",
            "app.example.com",
            "*.example.com",
            "a-b.c1.example.io",
            "xn--bcher-kva.example",
        ] {
            assert_eq!(check_domain(d), Ok(()), "{d}");
        }
    }

    #[test]
    fn bad_domains_name_the_fix() {
        for d in [
            "",
            "localhost",
            "App.example.com",
            "app.example.com.",
            "app.example.com:443",
            "a.*.example.com",
            "*example.com",
            "-a.example.com",
            "a_b.example.com",
            "10.0.0.1",
            "a..b",
            &format!("{}.com", "a".repeat(64)),
        ] {
            let e = check_domain(d).unwrap_err().to_string();
            assert!(e.contains("app.example.com"), "{d}: {e}");
            assert!(e.contains(&format!("{d:?}")), "{d}: {e}");
        }
    }

    #[test]
    fn paths() {
        for p in ["/", "/api", "/api/v1", "/a-b_c.d"] {
            assert_eq!(check_path(p), Ok(()), "{p}");
        }
        for p in ["", "api", "/api/", "/a b", "/a?b", "/../x", "/a/./b"] {
            assert!(check_path(p).unwrap_err().contains("/api"), "{p}");
        }
    }

    #[test]
    fn wildcards_match_one_label() {
        assert!(domain_matches("app.example.com", "app.example.com"));
        assert!(!domain_matches("app.example.com", "x.app.example.com"));
        assert!(domain_matches("*.example.com", "app.example.com"));
        assert!(!domain_matches("*.example.com", "example.com"));
        assert!(!domain_matches("*.example.com", "a.b.example.com"));
        assert!(!domain_matches("*.example.com", "appexample.com"));
    }

    #[test]
    fn overlaps_are_the_same_domain_and_path() {
        assert!(routes_overlap(("a.io", "/"), ("a.io", "/")));
        assert!(!routes_overlap(("a.io", "/"), ("a.io", "/api")));
        assert!(!routes_overlap(("*.a.io", "/"), ("b.a.io", "/")));
    }
}
