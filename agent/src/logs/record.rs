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
