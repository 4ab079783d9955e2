//! Checks of request fields that the client and the coordinator both run:
//! the `skiff` CLI before it sends a request (so a mistake is caught before
//! anything is read from standard input or sent), the coordinator before it
//! acts on one (so every client gets the same rule). Each returns the
//! message to show, naming the input and the fix; each side maps it to its
//! own error.

/// Longest registry username accepted.
pub const MAX_USERNAME_BYTES: usize = 256;
/// Longest registry password or token accepted (cloud registries' tokens
/// run to a few KiB; a JSON key file to a few more).
pub const MAX_PASSWORD_BYTES: usize = 64 * 1024;

/// Checks a registry username ([`crate::SetRegistry::username`]): not
/// empty, no `:` (HTTP basic auth splits on it), no control characters.
pub fn check_username(username: &str) -> Result<(), String> {
    if username.is_empty() {
        return Err("the username is empty; pass the registry account's name".into());
    }
    if username.len() > MAX_USERNAME_BYTES {
        return Err(format!(
            "the username is longer than {MAX_USERNAME_BYTES} bytes"
        ));
    }
    if username.contains(':') || username.chars().any(char::is_control) {
        return Err(format!(
            "username {username:?} has a ':' or a control character, which registries cannot accept; check it"
        ));
    }
    Ok(())
}

/// Checks a registry password or token ([`crate::SetRegistry::password`]):
/// not empty, not over [`MAX_PASSWORD_BYTES`], no line breaks.
pub fn check_password(password: &str) -> Result<(), String> {
    if password.is_empty() {
        return Err("the password is empty; pipe the password or token in".into());
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "the password is longer than {} KiB",
            MAX_PASSWORD_BYTES / 1024
        ));
    }
    if password.chars().any(char::is_control) {
        return Err(
            "the password has a line break or control character; pipe only the password".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["bot", "org+robot", "user@example.com", "ä"] {
            assert_eq!(check_username(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            check_username(&"u".repeat(MAX_USERNAME_BYTES)),
            Ok(()),
            "the longest"
        );
        for (bad, says) in [
            ("", "username is empty"),
            ("a:b", "\"a:b\""),
            ("a\nb", "control character"),
            ("a\tb", "control character"),
        ] {
            let m = check_username(bad).unwrap_err();
            assert!(m.contains(says), "{bad:?}: {m}");
        }
        let m = check_username(&"u".repeat(MAX_USERNAME_BYTES + 1)).unwrap_err();
        assert!(m.contains("longer than 256 bytes"), "{m}");
    }

    #[test]
    fn passwords() {
        for ok in [
            "pw",
            "correct horse battery staple",
            "ghp_Ab1:/+=",
            "pässwörd",
        ] {
            assert_eq!(check_password(ok), Ok(()), "{ok}");
        }
        assert_eq!(check_password(&"p".repeat(MAX_PASSWORD_BYTES)), Ok(()));
        for (bad, says) in [
            ("", "password is empty"),
            ("pw\n", "line break"),
            ("pw\r\n", "line break"),
            ("p\u{7f}w", "control character"),
        ] {
            let m = check_password(bad).unwrap_err();
            assert!(m.contains(says), "{bad:?}: {m}");
        }
        let m = check_password(&"p".repeat(MAX_PASSWORD_BYTES + 1)).unwrap_err();
        assert!(m.contains("longer than 64 KiB"), "{m}");
    }
}

/// Checks a name asked with `skiff dns query`: 1 to 253 characters, labels
/// of letters, digits, `-` and `_` (SRV names), dot-separated.
///
/// # Errors
/// Why the name is not one.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid DNS name {name:?}: write a name such as web, web.shop.skiff or _80._tcp.web.shop.skiff"
        ))
    }
}

/// Reads a replica named `STACK.SERVICE.N` (as `skiff stack tasks` lists
/// them): its stack, service and slot.
///
/// # Errors
/// Why it is not one.
pub fn parse_replica(from: &str) -> Result<(String, String, u32), String> {
    let bad = || {
        format!(
            "invalid replica {from:?}: write STACK.SERVICE.N, such as shop.web.1 (see `skiff stack tasks STACK`)"
        )
    };
    let mut parts = from.split('.');
    let (Some(stack), Some(service), Some(slot), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let slot: u32 = slot.parse().map_err(|_| bad())?;
    if stack.is_empty() || service.is_empty() {
        return Err(bad());
    }
    Ok((stack.to_owned(), service.to_owned(), slot))
}

#[cfg(test)]
mod dns_tests {
    use super::*;

    #[test]
    fn dns_names_and_replicas_are_checked() {
        for ok in [
            "web",
            "web.shop.skiff.",
            "_80._tcp.web.shop.skiff",
            "a-1.nodes.skiff",
        ] {
            assert_eq!(check_dns_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".", "a..b", "a b", "x".repeat(64).as_str(), "ä.skiff"] {
            assert!(
                check_dns_name(bad)
                    .unwrap_err()
                    .contains("invalid DNS name"),
                "{bad}"
            );
        }
        assert_eq!(
            parse_replica("shop.web.2"),
            Ok(("shop".into(), "web".into(), 2))
        );
        for bad in ["shop.web", "shop.web.x", "shop.web.1.2", ".web.1"] {
            assert!(
                parse_replica(bad).unwrap_err().contains("STACK.SERVICE.N"),
                "{bad}"
            );
        }
    }
}

/// An RFC 3339 time's UTC offset (`+01:00`, `-05:30`), split off: the
/// time as if it were UTC (`...Z`) and the offset in seconds east of UTC,
/// to subtract. `None` when the text ends in no numeric offset.
pub fn split_utc_offset(text: &str) -> Option<(String, i64)> {
    let t = text.trim();
    if t.len() < 6 || !t.contains('T') && !t.contains(' ') {
        return None;
    }
    let (base, offset) = t.split_at(t.len() - 6);
    let b = offset.as_bytes();
    let sign = match b[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    if b[3] != b':' {
        return None;
    }
    let hours: i64 = offset[1..3].parse().ok()?;
    let minutes: i64 = offset[4..6].parse().ok()?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some((format!("{base}Z"), sign * (hours * 3600 + minutes * 60)))
}

#[cfg(test)]
mod offset_tests {
    use super::split_utc_offset;

    #[test]
    fn offsets_are_split_off() {
        assert_eq!(
            split_utc_offset("2026-11-30T12:00:00+01:00"),
            Some(("2026-11-30T12:00:00Z".into(), 3600))
        );
        assert_eq!(
            split_utc_offset("2026-11-30T12:00:00.5-05:30"),
            Some(("2026-11-30T12:00:00.5Z".into(), -19800))
        );
        for none in [
            "2026-11-30T12:00:00Z",
            "10m",
            "",
            "2026-11-30T12:00:00+1:000",
        ] {
            assert_eq!(split_utc_offset(none), None, "{none}");
        }
    }
}
