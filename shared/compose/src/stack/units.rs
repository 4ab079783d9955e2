//! Durations, byte sizes and CPU counts as Compose writes them, and the
//! serde forms the model uses for them.

use std::time::Duration;

/// Parses a Go-style duration as Compose takes it: a sequence of decimal
/// numbers with units `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`, such as
/// `10s`, `1m30s`, `1.5s` or `500ms`; a bare `0` is zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("an empty duration".into());
    }
    if s.starts_with('-') {
        return Err("a negative duration".into());
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
            .map_or(rest.len(), |(i, _)| i);
        let number = &rest[..num_len];
        rest = &rest[num_len..];
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let nanos_per: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err("a number without a unit (use ns, us, ms, s, m or h)".into()),
            other => {
                return Err(format!(
                    "an unknown unit `{other}` (use ns, us, ms, s, m or h)"
                ));
            }
        };
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(format!("a malformed number `{number}`"));
        }
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse()
                .map_err(|_| format!("a number too large `{number}`"))?
        };
        let mut part = int
            .checked_mul(nanos_per)
            .ok_or_else(|| "a duration too long".to_string())?;
        // Fractional digits, exact to the nanosecond.
        let mut scale = nanos_per;
        for digit in frac.chars() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            part += u128::from(digit.to_digit(10).unwrap_or(0)) * scale;
        }
        total = total
            .checked_add(part)
            .ok_or_else(|| "a duration too long".to_string())?;
    }
    let secs =
        u64::try_from(total / 1_000_000_000).map_err(|_| "a duration too long".to_string())?;
    let nanos = u32::try_from(total % 1_000_000_000).unwrap_or(0);
    Ok(Duration::new(secs, nanos))
}

/// Formats a duration in the form [`parse_duration`] reads back: `0s`,
/// `500ms`, `1m30s`, `1h0m5.5s`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    if secs == 0 {
        return match nanos {
            0 => "0s".into(),
            n if n % 1_000_000 == 0 => format!("{}ms", n / 1_000_000),
            n if n % 1_000 == 0 => format!("{}us", n / 1_000),
            n => format!("{n}ns"),
        };
    }
    let mut out = String::new();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        out.push_str(&format!("{h}h{m}m"));
    } else if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if nanos == 0 {
        out.push_str(&format!("{s}s"));
    } else {
        let frac = format!("{nanos:09}");
        out.push_str(&format!("{s}.{}s", frac.trim_end_matches('0')));
    }
    out
}

/// Parses a byte size as Docker does (`RAMInBytes`): a number, an optional
/// unit `k`, `m`, `g`, `t` or `p` (powers of 1024), an optional `i` and `b`:
/// `512M`, `1g`, `1.5GiB`, `2048`, `100b`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let num_len = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
        .map_or(s.len(), |(i, _)| i);
    let (number, unit) = s.split_at(num_len);
    if number.is_empty() {
        return Err("no number".into());
    }
    let unit = unit.trim_start().to_ascii_lowercase();
    let mut u = unit.as_str();
    let mult: u64 = match u.chars().next() {
        Some('k') => 1 << 10,
        Some('m') => 1 << 20,
        Some('g') => 1 << 30,
        Some('t') => 1 << 40,
        Some('p') => 1 << 50,
        _ => 1,
    };
    if mult != 1 {
        u = &u[1..];
        u = u.strip_prefix('i').unwrap_or(u);
    }
    u = u.strip_prefix('b').unwrap_or(u);
    if !u.is_empty() {
        return Err(format!(
            "an unknown unit `{}` (use b, k, m, g, t or p)",
            &unit.trim()
        ));
    }
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if frac.contains('.') || (int.is_empty() && frac.is_empty()) {
        return Err(format!("a malformed number `{number}`"));
    }
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| "a size too large".to_string())?
    };
    let mut total = int
        .checked_mul(mult)
        .ok_or_else(|| "a size too large".to_string())?;
    let mut scale = mult as f64;
    for digit in frac.chars().take(12) {
        scale /= 10.0;
        total = total.saturating_add((f64::from(digit.to_digit(10).unwrap_or(0)) * scale) as u64);
    }
    Ok(total)
}

/// Parses a CPU count (`0.5`, `2`, `"1.25"`) into billionths of a CPU, as
/// Docker's `NanoCpus` holds it, without going through floating point.
pub fn parse_nano_cpus(text: &str) -> Result<u64, String> {
    let s = text.trim();
    if s.starts_with('-') {
        return Err("a negative CPU count".into());
    }
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| t.chars().all(|c| c.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return Err("not a number".into());
    }
    if frac.len() > 9 {
        return Err("more than nine decimal places".into());
    }
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| "too large".to_string())?
    };
    let frac_nanos: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}")
            .parse()
            .map_err(|_| "not a number".to_string())?
    };
    int.checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(frac_nanos))
        .ok_or_else(|| "too large".to_string())
}

/// Serde form of a [`Duration`]: the text [`format_duration`] writes.
pub mod serde_duration {
    use super::{format_duration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde form of an optional [`Duration`].
pub mod serde_opt_duration {
    use super::{format_duration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => parse_duration(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1..5s").is_err());
        assert!(parse_duration("99999999999999999999999h").is_err());
    }

    #[test]
    fn bytes() {
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_bytes("2048"), Ok(2048));
        assert_eq!(parse_bytes("100b"), Ok(100));
        assert_eq!(parse_bytes("64 MB"), Ok(64 << 20));
        assert!(parse_bytes("12Q").is_err());
        assert!(parse_bytes("M").is_err());
        assert!(parse_bytes("99999999999p").is_err());
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_nano_cpus("0.5"), Ok(500_000_000));
        assert_eq!(parse_nano_cpus("2"), Ok(2_000_000_000));
        assert_eq!(parse_nano_cpus(".25"), Ok(250_000_000));
        assert!(parse_nano_cpus("-1").is_err());
        assert!(parse_nano_cpus("one").is_err());
        assert!(parse_nano_cpus("1e3").is_err());
    }

    proptest! {
        #[test]
        fn duration_round_trips(secs in 0u64..10_000_000, nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,20}") {
            let _ = parse_duration(&s);
            let _ = parse_bytes(&s);
            let _ = parse_nano_cpus(&s);
        }
    }
}
