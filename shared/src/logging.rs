//! Logging for both daemons: one `tracing` subscriber writing to stderr,
//! filtered by `SKIFF_LOG` (default `info`), that also receives the `log`
//! records of libraries (tungstenite, rustls).
//!
//! Whatever `SKIFF_LOG` asks for, the libraries that carry the agent link
//! and the HTTP ports are capped at `info` ([`CAPPED_TARGETS`]): below
//! that they dump whole frames and records, and a frame of the link can
//! hold a secret value or a registry password on its way to an agent.

use tracing::Subscriber;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The environment variable that holds the log filter.
pub const LOG_ENV: &str = "SKIFF_LOG";
/// The filter when [`LOG_ENV`] is unset or empty.
pub const DEFAULT_FILTER: &str = "info";
/// Targets (and everything under them) never logged below [`CAP`]: the
/// WebSocket of the agent link, TLS, and the HTTP servers and clients.
pub const CAPPED_TARGETS: [&str; 7] = [
    "tungstenite",
    "tokio_tungstenite",
    "rustls",
    "tokio_rustls",
    "hyper",
    "hyper_util",
    "h2",
];
/// The most detailed level [`CAPPED_TARGETS`] are logged at.
pub const CAP: LevelFilter = LevelFilter::INFO;

/// A `SKIFF_LOG` that is not a filter.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid {LOG_ENV} {value:?}: {message}; set a level such as info or debug, or directives such as info,skiff_agent=debug"
)]
pub struct LogFilterError {
    value: String,
    message: String,
}

/// The subscriber both daemons log through: `directives` (in the syntax of
/// `SKIFF_LOG`) with [`CAPPED_TARGETS`] capped at [`CAP`], written to `writer`.
///
/// # Errors
/// When `directives` cannot be parsed.
pub fn subscriber<W>(
    directives: &str,
    writer: W,
    ansi: bool,
) -> Result<impl Subscriber + Send + Sync + 'static, LogFilterError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let wanted = EnvFilter::builder()
        .parse(directives)
        .map_err(|e| LogFilterError {
            value: directives.to_owned(),
            message: e.to_string(),
        })?;
    let cap = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(CAPPED_TARGETS.map(|t| (t, CAP)));
    // Both filters must let an event through: the cap wins over any
    // directive that names a capped target more finely.
    Ok(tracing_subscriber::registry().with(wanted).with(cap).with(
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi),
    ))
}

/// Installs the daemons' subscriber (see [`subscriber`]) on stderr, with
/// the filter from [`LOG_ENV`], and routes `log` records through it.
///
/// # Errors
/// When `SKIFF_LOG` is set but is not a filter; nothing is installed then.
pub fn init() -> Result<(), LogFilterError> {
    let directives = match std::env::var(LOG_ENV) {
        Ok(v) if !v.trim().is_empty() => v,
        Ok(_) | Err(std::env::VarError::NotPresent) => DEFAULT_FILTER.to_owned(),
        Err(std::env::VarError::NotUnicode(v)) => {
            return Err(LogFilterError {
                value: v.to_string_lossy().into_owned(),
                message: "not UTF-8".into(),
            });
        }
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Fails only when a subscriber is already installed (a second call).
    let _ = subscriber(&directives, std::io::stderr, ansi)?.try_init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What the daemons would log with `SKIFF_LOG=directives` while `emit` runs.
    fn logged(directives: &str, emit: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let sub = subscriber(directives, move || writer.clone(), false).unwrap();
        tracing::subscriber::with_default(sub, emit);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    fn emit_everywhere() {
        tracing::trace!(target: "tungstenite::protocol", "frame payload");
        tracing::debug!(target: "tokio_tungstenite", "frame payload");
        tracing::trace!(target: "rustls::conn", "record payload");
        tracing::debug!(target: "hyper_util::client", "body payload");
        tracing::trace!(target: "h2::codec", "frame payload");
        tracing::info!(target: "tungstenite::protocol", "link closed");
        tracing::trace!(target: "skiff_agent::link", "own trace");
        tracing::debug!(target: "sqlx::query", "own debug");
    }

    #[test]
    fn frame_level_output_never_reaches_the_log_whatever_the_filter_asks() {
        for directives in [
            "trace",
            "info,tungstenite=trace,rustls=trace,hyper=trace,h2=trace",
            "info,tokio_tungstenite=trace,hyper_util=debug,skiff_agent=trace,sqlx=debug",
        ] {
            let out = logged(directives, emit_everywhere);
            assert!(!out.contains("payload"), "{directives}: {out}");
            assert!(out.contains("link closed"), "{directives}: {out}");
        }
        // Everything else gets the level asked for.
        let out = logged("trace", emit_everywhere);
        assert!(
            out.contains("own trace") && out.contains("own debug"),
            "{out}"
        );
        let out = logged("info", emit_everywhere);
        assert!(out.contains("link closed") && !out.contains("own"), "{out}");
        let out = logged("warn", emit_everywhere);
        assert!(out.is_empty(), "{out}");
    }

    #[test]
    fn a_filter_that_cannot_be_parsed_is_an_error_naming_it() {
        let e = subscriber("info,skiff=loud", std::io::sink, false)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("SKIFF_LOG") && e.contains("info,skiff=loud"),
            "{e}"
        );
    }
}
