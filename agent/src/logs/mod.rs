//! The logs controller (`logs` section): follows every Skiff container's
//! output, writes it to per-container files, ships it to sinks through
//! on-disk buffers, and answers `skiff logs` queries.

pub mod record;
pub mod ship;
