//! One line of a container's output, as the logs pipeline carries it:
//! read from the engine, written to the container's file, pushed into
//! each sink's buffer, answered to `skiff logs`.

use std::sync::Arc;

pub use skiff_shared::sections::logs::Stream;

/// What every line of one container carries (shared by its lines).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Source {
    /// The host's node name.
    pub host: String,
    pub stack: String,
    pub service: String,
    pub slot: u32,
    /// The release that made the container (its revision).
    pub release: u64,
    /// `<stack>.<service>.<slot>`.
    pub container: String,
    /// The engine's container id.
    pub container_id: String,
}

/// One line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When the engine read it (Unix nanoseconds).
    pub ts_ns: i64,
    pub stream: Stream,
    /// Without its line end.
    pub line: String,
    pub source: Arc<Source>,
}

/// A boxed future, for the object-safe [`Sinks`].
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The sinks of a host: what the follower hands lines to once they are in
/// their container's file.
pub trait Sinks: Send + Sync {
    /// Puts a section's sinks in force: the cluster's and each stack's own.
    /// A sink whose settings changed is tried first (connect, TLS
    /// handshake); when that fails the old settings stay in force and the
    /// sink's status says why (`SinkStatus::refused`). A sink no longer
    /// listed is stopped and its buffer removed.
    fn configure<'a>(
        &'a self,
        section: &'a skiff_shared::sections::logs::LogsSection,
    ) -> BoxFuture<'a, ()>;

    /// Takes lines into the buffer of every sink their stack ships to, and
    /// resolves once they are stored there (on disk: a checkpoint taken
    /// after this returns loses nothing). A full buffer under the `block`
    /// policy makes this wait for room; under `drop_oldest` it drops and
    /// counts. Never waits on a receiver otherwise.
    fn push(&self, records: Vec<Record>) -> BoxFuture<'_, ()>;

    /// Every sink's status, for the report.
    fn statuses(&self) -> Vec<skiff_shared::sections::logs::SinkStatus>;
}
