//! `skiff sink`: where the cluster's container output is shipped (syslog,
//! JSON lines over HTTP, OpenTelemetry), and how each sink does on every
//! host. Sinks are checked here, then again by the coordinator.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use skiff_api_types::logs::MAX_SINK_CA_BYTES;
use skiff_api_types::{PutSink, SinkView};
use skiff_shared::sections::logs::{DEFAULT_BUFFER_BYTES, FullPolicy, SinkFormat, SinkSpec};

use crate::Failure;
use crate::client::{Client, Method};
use crate::commands::path_segment;
use crate::output::{print_json, table};

#[derive(Debug, Subcommand)]
pub enum SinkCommand {
    /// List the cluster's sinks and the stacks' own, with each one's
    /// delivery on every host.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Add a sink, or replace the one of that name. Every host ships its
    /// stacks' lines there (except stacks that name their own sinks).
    Add {
        /// 1 to 40 of a-z, 0-9 and -.
        name: String,
        /// `udp://`, `tcp://` or `tls://host:port` for syslog; an
        /// `http://` or `https://` URL for json_lines and otlp.
        // Its own id: the global `--url` (the API's) is `url`, and clap
        // would take this argument for it.
        #[arg(id = "sink_url", value_name = "URL")]
        url: String,
        /// syslog, json_lines or otlp.
        #[arg(long, default_value = "syslog")]
        format: String,
        /// A PEM file with the CA that signed the receiver's certificate
        /// (tls:// and https:// only; default: the host's roots).
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// The on-disk buffer on each host (1MiB to 64GiB).
        #[arg(long, default_value = "256MiB")]
        buffer: String,
        /// When the buffer is full: block (stop reading, lose nothing) or
        /// drop_oldest (counted).
        #[arg(long = "when-full", default_value = "block")]
        when_full: String,
    },
    /// Remove a sink.
    Rm { name: String },
}

/// The request of `skiff sink add`, checked as hosts will check it.
pub fn put_request(
    name: &str,
    url: &str,
    format: &str,
    ca: Option<&std::path::Path>,
    buffer: &str,
    when_full: &str,
) -> Result<PutSink, Failure> {
    let fmt: SinkFormat = format.parse().map_err(Failure::usage)?;
    let policy: FullPolicy = when_full.parse().map_err(Failure::usage)?;
    let buffer_bytes = skiff_compose::stack::parse_bytes(buffer).map_err(|why| {
        Failure::usage(format!(
            "--buffer {buffer:?} is not a size ({why}): write e.g. 256MiB"
        ))
    })?;
    let ca_pem = match ca {
        Some(path) => {
            let meta = std::fs::metadata(path).map_err(|e| {
                Failure::usage(format!("cannot read the CA file {}: {e}", path.display()))
            })?;
            if meta.len() > MAX_SINK_CA_BYTES as u64 {
                return Err(Failure::usage(format!(
                    "the CA file {} is over 256 KiB: give only the CA that signed the receiver's certificate",
                    path.display()
                )));
            }
            Some(std::fs::read_to_string(path).map_err(|e| {
                Failure::usage(format!(
                    "cannot read the CA file {} as PEM text: {e}",
                    path.display()
                ))
            })?)
        }
        None => None,
    };
    let spec = SinkSpec {
        name: name.to_owned(),
        url: url.trim().to_owned(),
        format: fmt,
        ca_pem: ca_pem.clone(),
        buffer_bytes,
        when_full: policy,
    };
    spec.check().map_err(|e| Failure::usage(e.to_string()))?;
    Ok(PutSink {
        url: spec.url,
        format: Some(fmt.as_str().to_owned()),
        ca_pem,
        buffer_bytes: (buffer_bytes != DEFAULT_BUFFER_BYTES).then_some(buffer_bytes),
        when_full: Some(policy.as_str().to_owned()),
    })
}

fn mib(b: u64) -> String {
    if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
        format!("{}GiB", b >> 30)
    } else {
        format!("{}MiB", b >> 20)
    }
}

pub(crate) async fn run(
    client: &Client,
    cmd: SinkCommand,
    out: &mut impl Write,
) -> Result<(), Failure> {
    match cmd {
        SinkCommand::Ls { json } => {
            let list: Vec<SinkView> = client.call(Method::GET, "/logs/sinks", None::<&()>).await?;
            if json {
                print_json(out, &list);
                return Ok(());
            }
            let rows = list
                .iter()
                .map(|s| {
                    let healthy = s.hosts.iter().filter(|h| h.healthy).count();
                    let sum = |f: fn(&skiff_api_types::SinkHostView) -> u64| {
                        s.hosts.iter().map(f).sum::<u64>().to_string()
                    };
                    vec![
                        s.name.clone(),
                        s.stack.clone().unwrap_or_else(|| "(cluster)".into()),
                        s.url.clone(),
                        s.format.clone(),
                        format!("{} {}", mib(s.buffer_bytes), s.when_full),
                        format!("{healthy}/{}", s.hosts.len()),
                        sum(|h| h.delivered),
                        sum(|h| h.buffered_lines),
                        sum(|h| h.dropped),
                    ]
                })
                .collect();
            table(
                out,
                &[
                    "NAME",
                    "STACK",
                    "URL",
                    "FORMAT",
                    "BUFFER",
                    "HEALTHY",
                    "DELIVERED",
                    "BUFFERED",
                    "DROPPED",
                ],
                rows,
            );
            for s in &list {
                for h in &s.hosts {
                    if let Some(e) = &h.error {
                        let _ = writeln!(out, "{} on {}: {e}", s.name, h.host);
                    }
                    if let Some(r) = &h.refused {
                        let _ = writeln!(
                            out,
                            "{} on {}: new settings refused, the old ones stay: {r}",
                            s.name, h.host
                        );
                    }
                }
            }
        }
        SinkCommand::Add {
            name,
            url,
            format,
            ca,
            buffer,
            when_full,
        } => {
            let req = put_request(&name, &url, &format, ca.as_deref(), &buffer, &when_full)?;
            let name = path_segment(&name)?;
            let view: SinkView = client
                .call(Method::PUT, &format!("/logs/sinks/{name}"), Some(&req))
                .await?;
            let _ = writeln!(
                out,
                "Sink {} set: {} lines to {}; every host gets it now (`skiff sink ls` shows how it does).",
                view.name, view.format, view.url
            );
        }
        SinkCommand::Rm { name } => {
            let name = path_segment(&name)?;
            let view: SinkView = client
                .call(Method::DELETE, &format!("/logs/sinks/{name}"), None::<&()>)
                .await?;
            let _ = writeln!(
                out,
                "Sink {} removed; hosts stop shipping to it.",
                view.name
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn add_takes_defaults_and_checks_before_sending() {
        let cli = crate::commands::Cli::try_parse_from([
            "skiff",
            "sink",
            "add",
            "central",
            "tcp://logs:601",
        ])
        .unwrap();
        // The sink's URL is not taken for the API's (`--url`).
        assert_eq!(cli.url, None);
        let crate::commands::Command::Sink(SinkCommand::Add {
            url,
            format,
            buffer,
            when_full,
            ..
        }) = cli.command
        else {
            panic!("not sink add");
        };
        assert_eq!(url, "tcp://logs:601");
        assert_eq!(
            (format.as_str(), buffer.as_str(), when_full.as_str()),
            ("syslog", "256MiB", "block")
        );
        let req = put_request(
            "central",
            "tcp://logs:601",
            &format,
            None,
            &buffer,
            &when_full,
        )
        .unwrap();
        assert_eq!(req.buffer_bytes, None);
        assert_eq!(req.format.as_deref(), Some("syslog"));

        let req = put_request(
            "loki",
            "https://loki/x",
            "json-lines",
            None,
            "1g",
            "drop-oldest",
        )
        .unwrap();
        assert_eq!(req.buffer_bytes, Some(1 << 30));
        assert_eq!(req.format.as_deref(), Some("json_lines"));
        assert_eq!(req.when_full.as_deref(), Some("drop_oldest"));

        for (url, format, buffer, when_full, says) in [
            (
                "tcp://logs",
                "gelf",
                "256MiB",
                "block",
                "syslog, json_lines or otlp",
            ),
            ("logs:514", "syslog", "256MiB", "block", "no scheme"),
            ("http://logs", "syslog", "256MiB", "block", "HTTP URL"),
            ("tcp://logs", "syslog", "lots", "block", "256MiB"),
            ("tcp://logs", "syslog", "1k", "block", "1 MiB"),
            ("tcp://logs", "syslog", "256MiB", "wait", "drop_oldest"),
        ] {
            let f = put_request("a", url, format, None, buffer, when_full).unwrap_err();
            assert_eq!(f.code, 2, "{url} {format}");
            assert!(f.message.contains(says), "{}", f.message);
        }
        let f = put_request(
            "a",
            "tls://logs",
            "syslog",
            Some(std::path::Path::new("/nonexistent/ca.pem")),
            "256MiB",
            "block",
        )
        .unwrap_err();
        assert!(
            f.message.contains("cannot read the CA file"),
            "{}",
            f.message
        );
    }
}
