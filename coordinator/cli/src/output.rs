//! What the commands print: aligned tables, pretty JSON (the `--json` shapes
//! are the API's, see [`skiff_api_types`]), and small text helpers.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;

/// Prints `v` as pretty-printed JSON.
pub fn print_json(out: &mut impl Write, v: &impl Serialize) {
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_default()
    );
}

/// Prints rows under headers in aligned columns.
pub fn table(out: &mut impl Write, headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   "));
            }
        }
        s
    };
    let _ = writeln!(
        out,
        "{}",
        line(headers.iter().map(|h| (*h).to_owned()).collect())
    );
    for r in rows {
        let _ = writeln!(out, "{}", line(r));
    }
}

/// `-` for an empty string.
pub fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

/// `k=v,k=v`, or `-` for no labels.
pub fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Bytes in GiB with one decimal.
pub fn bytes_text(b: u64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    #[allow(clippy::cast_precision_loss)]
    let g = b as f64 / GIB;
    format!("{g:.1} GiB")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_every_column_but_the_last() {
        let mut out = Vec::new();
        table(
            &mut out,
            &["NAME", "STATE", "IMAGE"],
            vec![
                vec!["web.1".into(), "running".into(), "busybox:1".into()],
                vec!["db.10".into(), "-".into(), "postgres:17-long-tag".into()],
            ],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NAME    STATE     IMAGE\n\
             web.1   running   busybox:1\n\
             db.10   -         postgres:17-long-tag\n"
        );
    }

    #[test]
    fn text_helpers() {
        assert_eq!(dash(""), "-");
        assert_eq!(dash("1.2"), "1.2");
        assert_eq!(labels_text(&BTreeMap::new()), "-");
        let labels = BTreeMap::from([("zone".into(), "eu".into()), ("disk".into(), "ssd".into())]);
        assert_eq!(labels_text(&labels), "disk=ssd,zone=eu");
        assert_eq!(bytes_text(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }
}
