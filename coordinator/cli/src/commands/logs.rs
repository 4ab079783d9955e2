//! `skiff logs STACK[.SERVICE[.N]]`: a stack's container output from
//! every host it runs on, through the coordinator: the history merged in
//! time order, then with `--follow` new lines as they come. Each line is
//! printed as `service.N | line`, the prefix padded (and coloured on a
//! terminal) as `docker compose logs` does; stderr lines go to stdout
//! too, as Compose prints them. A host's notices (lines it left out, its
//! errors) go to stderr.

use std::io::Write;

use clap::Args;
use skiff_api_types::LogEntry;

use crate::Failure;
use crate::client::Client;
use crate::commands::path_segment;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// `STACK`, `STACK.SERVICE` or `STACK.SERVICE.N` (one replica).
    pub target: String,
    /// Keep printing new lines as they come.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only lines from this time on: RFC 3339 (`2026-11-30T12:00:00Z`) or
    /// a duration back from now (`10m`, `2h`).
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Only the last N lines of each container (before following).
    #[arg(long, value_name = "N")]
    pub tail: Option<u32>,
    /// Only the lines of this host (node name).
    #[arg(long, value_name = "H")]
    pub host: Option<String>,
    /// Print each line as the API's JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `STACK[.SERVICE[.N]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub stack: String,
    pub service: Option<String>,
    pub slot: Option<u32>,
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split('.');
        let bad =
            || format!("{s:?} is not STACK, STACK.SERVICE or STACK.SERVICE.N (a replica number)");
        let stack = parts.next().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        let service = match parts.next() {
            Some("") => return Err(bad()),
            p => p,
        };
        let slot = match parts.next() {
            Some(n) => Some(n.parse::<u32>().map_err(|_| bad())?),
            None => None,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self {
            stack: stack.to_owned(),
            service: service.map(str::to_owned),
            slot,
        })
    }
}

/// Checks `--since` as the coordinator will.
fn check_since(t: &str) -> Result<(), Failure> {
    let t = t.trim();
    let base =
        skiff_api_types::validate::split_utc_offset(t).map_or_else(|| t.to_owned(), |(b, _)| b);
    if humantime::parse_rfc3339_weak(&base).is_ok() || humantime::parse_duration(t).is_ok() {
        return Ok(());
    }
    Err(Failure::usage(format!(
        "--since {t:?} is neither a time nor a duration: write an RFC 3339 time (2026-11-30T12:00:00Z) or a duration back from now (10m, 2h)"
    )))
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The API path of a read.
pub fn query_path(target: &Target, args: &LogsArgs) -> Result<String, Failure> {
    let stack = path_segment(&target.stack)?;
    let mut q = vec![format!("follow={}", args.follow)];
    if let Some(s) = &target.service {
        q.push(format!("service={}", encode(s)));
    }
    if let Some(n) = target.slot {
        q.push(format!("slot={n}"));
    }
    if let Some(t) = &args.since {
        check_since(t)?;
        q.push(format!("since={}", encode(t.trim())));
    }
    if let Some(n) = args.tail {
        q.push(format!("tail={n}"));
    }
    if let Some(h) = &args.host {
        q.push(format!("host={}", encode(h)));
    }
    Ok(format!("/stacks/{stack}/logs?{}", q.join("&")))
}

/// Colours of the prefixes on a terminal, as Compose cycles them.
const COLOURS: [&str; 6] = ["36", "33", "32", "35", "34", "31"];

/// Prints lines as `service.N | line`, padding prefixes to the widest seen.
pub struct Printer {
    colour: bool,
    width: usize,
    colours: std::collections::HashMap<String, &'static str>,
}

impl Printer {
    pub fn new(colour: bool) -> Self {
        Self {
            colour,
            width: 0,
            colours: std::collections::HashMap::new(),
        }
    }

    /// One line of output, without its end.
    pub fn format(&mut self, e: &LogEntry) -> Option<String> {
        let line = e.line.as_deref()?;
        let prefix = match (&e.service, e.slot) {
            (Some(s), Some(n)) => format!("{s}.{n}"),
            (Some(s), None) => s.clone(),
            _ => e.host.clone(),
        };
        self.width = self.width.max(prefix.chars().count());
        let padded = format!("{prefix:<w$}", w = self.width);
        if self.colour {
            let next = COLOURS[self.colours.len() % COLOURS.len()];
            let c = *self.colours.entry(prefix).or_insert(next);
            Some(format!("\x1b[{c}m{padded} |\x1b[0m {line}"))
        } else {
            Some(format!("{padded} | {line}"))
        }
    }
}

pub(crate) async fn run(
    client: &Client,
    args: LogsArgs,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let target: Target = args.target.parse().map_err(Failure::usage)?;
    let path = query_path(&target, &args)?;
    let colour = !args.json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut printer = Printer::new(colour);
    let mut failed_hosts = std::collections::BTreeSet::new();
    client
        .follow_lines(&path, |text| {
            let Ok(e) = serde_json::from_str::<LogEntry>(text) else {
                return true;
            };
            if args.json {
                let _ = writeln!(out, "{}", serde_json::to_string(&e).unwrap_or_default());
            } else if let Some(line) = printer.format(&e) {
                let _ = writeln!(out, "{line}");
            }
            if let Some(err) = &e.error {
                failed_hosts.insert(e.host.clone());
                if !args.json {
                    eprintln!("skiff: {err}");
                }
            }
            if let Some(n) = e.dropped
                && !args.json
            {
                eprintln!("skiff: host {} left out {n} lines", e.host);
            }
            let _ = out.flush();
            true
        })
        .await?;
    if failed_hosts.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            message: format!(
                "the lines of {} are incomplete (see above)",
                failed_hosts.into_iter().collect::<Vec<_>>().join(", ")
            ),
            code: 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(argv: &[&str]) -> LogsArgs {
        match crate::commands::Cli::try_parse_from(argv).unwrap().command {
            crate::commands::Command::Logs(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn targets_name_a_stack_a_service_or_a_replica() {
        assert_eq!(
            "shop".parse::<Target>().unwrap(),
            Target {
                stack: "shop".into(),
                service: None,
                slot: None
            }
        );
        let t: Target = "shop.web.2".parse().unwrap();
        assert_eq!((t.service.as_deref(), t.slot), (Some("web"), Some(2)));
        for bad in ["", "shop.", ".web", "shop.web.x", "shop.web.1.2"] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_become_the_query() {
        let a = args(&[
            "skiff",
            "logs",
            "shop.web",
            "-f",
            "--since",
            "2026-11-30T12:00:00+01:00",
            "--tail",
            "50",
            "--host",
            "n1",
        ]);
        let t: Target = a.target.parse().unwrap();
        assert_eq!(
            query_path(&t, &a).unwrap(),
            "/stacks/shop/logs?follow=true&service=web&since=2026-11-30T12%3A00%3A00%2B01%3A00&tail=50&host=n1"
        );
        let a = args(&["skiff", "logs", "shop", "--since", "10m", "--json"]);
        assert!(a.json && !a.follow);
        let t: Target = a.target.parse().unwrap();
        assert_eq!(
            query_path(&t, &a).unwrap(),
            "/stacks/shop/logs?follow=false&since=10m"
        );
        let a = args(&["skiff", "logs", "shop", "--since", "last week"]);
        let f = query_path(&a.target.parse().unwrap(), &a).unwrap_err();
        assert_eq!(f.code, 2);
        assert!(f.message.contains("10m"), "{}", f.message);
        assert!(
            crate::commands::Cli::try_parse_from(["skiff", "logs", "shop", "--tail", "x"]).is_err()
        );
    }

    #[test]
    fn lines_are_prefixed_by_replica_and_padded_as_compose_does() {
        let entry = |service: &str, slot, line: &str| LogEntry {
            host: "n1".into(),
            service: Some(service.into()),
            slot: Some(slot),
            line: Some(line.into()),
            ..LogEntry::default()
        };
        let mut p = Printer::new(false);
        assert_eq!(p.format(&entry("worker", 1, "a")).unwrap(), "worker.1 | a");
        assert_eq!(p.format(&entry("db", 1, "b")).unwrap(), "db.1     | b");
        assert!(
            p.format(&LogEntry::default()).is_none(),
            "notices are no lines"
        );
        let mut p = Printer::new(true);
        let coloured = p.format(&entry("web", 2, "c")).unwrap();
        assert!(
            coloured.starts_with("\x1b[36mweb.2 |\x1b[0m c"),
            "{coloured:?}"
        );
    }
}
