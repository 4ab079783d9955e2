//! Where each container's output was read up to: saved (fsync and
//! rename) only once the lines before it are in the container's file and
//! the sinks took them, so after a restart (SIGKILL included) reading
//! resumes there with no gap.
//!
//! A position is the engine's timestamp of the last line taken and how
//! many lines carried that very timestamp: the Docker API resumes by time
//! (`since`, whole seconds), and lines of one second before the position
//! are skipped again exactly.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A position in a container's output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The engine's timestamp of the last line taken (Unix nanoseconds).
    pub ts_ns: i64,
    /// How many lines with exactly that timestamp were taken.
    pub at_ts: u32,
}

impl Position {
    /// Moves past one more line (or piece of a line) stamped `ts_ns`.
    pub fn advance(&mut self, ts_ns: i64) {
        if ts_ns == self.ts_ns {
            self.at_ts = self.at_ts.saturating_add(1);
        } else {
            *self = Self { ts_ns, at_ts: 1 };
        }
    }

    /// Whether a line stamped `ts_ns`, the `nth_at_ts` (1-based) with
    /// that timestamp, was taken before this position.
    pub fn covers(&self, ts_ns: i64, nth_at_ts: u32) -> bool {
        ts_ns < self.ts_ns || (ts_ns == self.ts_ns && nth_at_ts <= self.at_ts)
    }

    /// The `since` to ask the engine for: the position's second.
    pub fn since_secs(&self) -> i32 {
        i32::try_from(self.ts_ns.div_euclid(1_000_000_000)).unwrap_or(0)
    }
}

/// The checkpoints of one host, one small file per container id.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
}

impl Checkpoints {
    /// Checkpoints in `<data_dir>/logs/checkpoints/`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("logs").join("checkpoints"),
        }
    }

    fn path(&self, container_id: &str) -> Option<PathBuf> {
        // Engine ids are hex; anything else never names a file.
        (!container_id.is_empty() && container_id.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.dir.join(format!("{container_id}.json")))
    }

    /// The saved position of a container; none when it was never read.
    pub fn load(&self, container_id: &str) -> Option<Position> {
        let text = std::fs::read(self.path(container_id)?).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Saves a position durably (0600).
    ///
    /// # Errors
    /// The disk refused.
    pub fn save(&self, container_id: &str, position: Position) -> std::io::Result<()> {
        let path = self
            .path(container_id)
            .ok_or_else(|| std::io::Error::other(format!("bad container id {container_id:?}")))?;
        if !self.dir.is_dir() {
            skiff_shared::files::create_private_dir(&self.dir)?;
        }
        let body = serde_json::to_vec(&position).map_err(std::io::Error::other)?;
        skiff_shared::files::write_atomic(&path, &body, skiff_shared::files::PRIVATE)
    }

    /// Forgets a container that is gone.
    pub fn remove(&self, container_id: &str) {
        if let Some(path) = self.path(container_id) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The container ids that have a checkpoint.
    pub fn ids(&self) -> Vec<String> {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(str::to_owned)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_covers_what_was_taken_and_nothing_after() {
        let mut p = Position::default();
        p.advance(5);
        p.advance(7);
        p.advance(7);
        assert_eq!(p, Position { ts_ns: 7, at_ts: 2 });
        assert!(p.covers(5, 1));
        assert!(p.covers(7, 2));
        assert!(!p.covers(7, 3));
        assert!(!p.covers(8, 1));
        assert_eq!(
            Position {
                ts_ns: 2_999_999_999,
                at_ts: 1
            }
            .since_secs(),
            2
        );
    }

    #[test]
    fn checkpoints_survive_and_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::new(dir.path());
        assert_eq!(c.load("ab12"), None);
        c.save("ab12", Position { ts_ns: 9, at_ts: 3 }).unwrap();
        assert_eq!(c.load("ab12"), Some(Position { ts_ns: 9, at_ts: 3 }));
        let mode = std::fs::metadata(dir.path().join("logs/checkpoints/ab12.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(c.save("../x", Position::default()).is_err());
        assert_eq!(c.ids(), vec!["ab12".to_owned()]);
        c.remove("ab12");
        assert_eq!(c.load("ab12"), None);
    }
}
