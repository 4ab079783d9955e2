//! Crash-safe file writes: write a temporary file beside the target, fsync
//! it, rename it into place and fsync the directory. Every file is created
//! with an exact mode, whatever the process's umask.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Permission bits for files holding secrets, plans or state: readable by
/// the owner only.
pub const PRIVATE: u32 = 0o600;
/// Permission bits for public material only: certificates, public keys.
pub const PUBLIC: u32 = 0o644;

/// Atomically replaces `path` with `contents`, created with `mode`.
///
/// After a crash the file holds either the old or the new contents, never
/// a mix.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode given to open() is filtered by the umask; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Creates `dir` (and its parents) if missing and sets it to mode 0700.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Sets `path` to mode `mode` if it exists: a file an earlier release
/// wrote with a looser mode, or one a library created.
pub fn restrict(path: &Path, mode: u32) -> io::Result<()> {
    match fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Creates `path` empty with mode 0600 if it is missing, and sets an
/// existing one to 0600; for files a library then opens (a database).
pub fn create_private_file(path: &Path) -> io::Result<()> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(PRIVATE)
        .open(path)?
        // The mode given to open() is filtered by the umask; set it exactly.
        .set_permissions(fs::Permissions::from_mode(PRIVATE))
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Reads and parses a TOML config file; parse errors name the line, column and key.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigFileError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().replace('\n', " "),
    })
}

/// `path` with `.` removed and `..` resolved, without touching any file
/// system (so a path that does not exist here is judged as written).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// How a path reaches another one that must stay out of reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// It is that path.
    Is,
    /// It is inside it.
    Inside,
    /// It is a directory above it.
    Above,
}

impl Reach {
    /// Of `path` and `guarded`, both normalised: whether one reaches the other.
    pub fn of(path: &Path, guarded: &Path) -> Option<Self> {
        if path == guarded {
            Some(Self::Is)
        } else if path.starts_with(guarded) {
            Some(Self::Inside)
        } else if guarded.starts_with(path) {
            Some(Self::Above)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_contents_with_exact_mode() {
        let dir = std::env::temp_dir().join(format!("skiff-files-{}", std::process::id()));
        create_private_dir(&dir).unwrap();
        let path = dir.join("key.pem");
        write_atomic(&path, b"one", PRIVATE).unwrap();
        write_atomic(&path, b"two", PRIVATE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn private_files_are_created_private_and_old_ones_restricted() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let db = dir.path().join("skiff.db");
        create_private_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        fs::write(&db, b"kept").unwrap();
        fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).unwrap();
        create_private_file(&db).unwrap();
        assert_eq!(
            (mode(&db), fs::read(&db).unwrap()),
            (0o600, b"kept".to_vec())
        );

        let old = dir.path().join("node.toml");
        fs::write(&old, b"x").unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o644)).unwrap();
        restrict(&old, PRIVATE).unwrap();
        assert_eq!(mode(&old), 0o600);
        restrict(&dir.path().join("missing"), PRIVATE).unwrap();
    }
}
