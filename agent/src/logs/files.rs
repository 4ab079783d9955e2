//! The per-container files: where they are (the path template), each line
//! as `<RFC 3339 UTC time with nanoseconds> <stream> <line>`, rotation by
//! size and age (`x.log` → `x.log.1` → ... → `x.log.<keep_files>`), and
//! retention (rotated files older than `retain_days`, and the files of
//! containers gone that long, removed).
//!
//! Two revisions of a slot side by side (a start-first deploy) share one
//! file, as they share their `<stack>.<service>.<slot>` name: [`Files`]
//! hands both followers the same [`Writer`].

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use skiff_shared::sections::logs::{FileSettings, Stream};

use super::record::{Record, Source};

/// Directories are made 0750, files 0640 (group `adm`-style readers).
pub const DIR_MODE: u32 = 0o750;
pub const FILE_MODE: u32 = 0o640;

/// The path of a container's file.
pub fn render(template: &str, source: &Source) -> PathBuf {
    let slot = source.slot.to_string();
    PathBuf::from(
        template
            .replace("{stack}", &source.stack)
            .replace("{service}", &source.service)
            .replace("{container}", &source.container)
            .replace("{slot}", &slot)
            .replace("{host}", &source.host),
    )
}

/// Unix nanoseconds as RFC 3339 UTC with nine fraction digits.
pub fn format_ts(ts_ns: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(u64::try_from(ts_ns).unwrap_or(0));
    humantime::format_rfc3339_nanos(t).to_string()
}

/// RFC 3339 (as Docker and [`format_ts`] write it) to Unix nanoseconds.
pub fn parse_ts(text: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(text).ok()?;
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(d.as_nanos()).ok()
}

/// One line of a file, as written.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    out.extend_from_slice(format_ts(record.ts_ns).as_bytes());
    out.push(b' ');
    out.extend_from_slice(record.stream.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(record.line.as_bytes());
    out.push(b'\n');
}

/// One line of a file, read back: time, stream, text.
pub fn decode(line: &str) -> Option<(i64, Stream, &str)> {
    let (ts, rest) = line.split_once(' ')?;
    let (stream, text) = rest.split_once(' ').unwrap_or((rest, ""));
    let stream = match stream {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => return None,
    };
    Some((parse_ts(ts)?, stream, text))
}

/// The rotated files of `path`, newest first (`x.log.1`, `x.log.2`...).
pub fn rotated(path: &Path, keep: u32) -> Vec<PathBuf> {
    (1..=keep.max(1))
        .map(|i| numbered(path, i))
        .filter(|p| p.exists())
        .collect()
}

fn numbered(path: &Path, i: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{i}"));
    PathBuf::from(name)
}

/// Makes `dir` and its missing parents, each 0750.
fn make_dirs(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        make_dirs(parent)?;
    }
    match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// An open container file.
#[derive(Debug)]
pub struct Writer {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    /// When the file now at `path` was started.
    opened: SystemTime,
}

impl Writer {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            size: 0,
            opened: SystemTime::now(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                make_dirs(dir)?;
            }
            let file = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(FILE_MODE)
                .open(&self.path)?;
            let meta = file.metadata()?;
            if meta.permissions().mode() & 0o777 != FILE_MODE {
                file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
            }
            self.size = meta.len();
            self.opened = meta
                .created()
                .or_else(|_| meta.modified())
                .unwrap_or_else(|_| SystemTime::now());
            self.file = Some(file);
        }
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("file not open"))
    }

    /// Appends whole lines and makes them durable (they are in the file
    /// before a checkpoint says so), rotating when the file is old or a
    /// line would take it past its size (a single line over it gets a file
    /// of its own).
    pub fn write(&mut self, lines: &[u8], settings: &FileSettings) -> io::Result<()> {
        self.open()?;
        let age = SystemTime::now()
            .duration_since(self.opened)
            .unwrap_or_default();
        if self.size > 0 && settings.max_file_age_s > 0 && age.as_secs() >= settings.max_file_age_s
        {
            self.rotate(settings.keep_files)?;
        }
        let mut rest = lines;
        while !rest.is_empty() {
            self.open()?;
            let room = settings.max_file_bytes.saturating_sub(self.size);
            // The longest run of whole lines that fits.
            let mut take = 0;
            for (i, b) in rest.iter().enumerate() {
                if *b == b'\n' {
                    if (i + 1) as u64 > room {
                        break;
                    }
                    take = i + 1;
                }
            }
            if take == 0 {
                if self.size > 0 {
                    self.rotate(settings.keep_files)?;
                    continue;
                }
                // One line bigger than a file: alone in its file.
                take = rest
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(rest.len(), |i| i + 1);
            }
            let file = self.open()?;
            file.write_all(&rest[..take])?;
            self.size += take as u64;
            rest = &rest[take..];
        }
        self.open()?.sync_data()
    }

    /// `x.log` → `x.log.1`, each older one up by one, the oldest past
    /// `keep` removed.
    fn rotate(&mut self, keep: u32) -> io::Result<()> {
        if let Some(file) = self.file.take() {
            file.sync_data()?;
        }
        let keep = keep.max(1);
        match fs::remove_file(numbered(&self.path, keep)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        for i in (1..keep).rev() {
            match fs::rename(numbered(&self.path, i), numbered(&self.path, i + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fs::rename(&self.path, numbered(&self.path, 1))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// Every open container file, by path, shared by the followers of the
/// containers that write to it.
#[derive(Debug, Default)]
pub struct Files {
    open: Mutex<HashMap<PathBuf, Arc<Mutex<Writer>>>>,
}

impl Files {
    /// The writer of `path`, opened lazily.
    pub fn writer(&self, path: &Path) -> Arc<Mutex<Writer>> {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(path.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(Writer::new(path.to_owned()))))
            .clone()
    }

    /// Closes the files no follower holds any more.
    pub fn close_unused(&self) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, w| Arc::strong_count(w) > 1);
    }

    pub fn is_open(&self, path: &Path) -> bool {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(path)
    }
}

/// Removes, for each container file in `paths`: rotated files older than
/// `retain_days`, and, when `path` is not open and was last written
/// `retain_days` ago, the file and its rotations. Returns the paths whose
/// files are all gone.
pub fn retain(files: &Files, paths: &[PathBuf], settings: &FileSettings) -> Vec<PathBuf> {
    let mut gone = Vec::new();
    if settings.retain_days == 0 {
        return gone;
    }
    let limit = Duration::from_secs(u64::from(settings.retain_days) * 86_400);
    let old = |p: &Path| {
        fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age >= limit)
    };
    for path in paths {
        // Numbered files past `keep_files` too (the setting may have shrunk).
        for r in rotated(path, settings.keep_files.max(64)) {
            if old(&r) || is_past(&r, path, settings) {
                let _ = fs::remove_file(&r);
            }
        }
        if !files.is_open(path) && (old(path) || !path.exists()) {
            let _ = fs::remove_file(path);
            if rotated(path, 64).is_empty() {
                gone.push(path.clone());
            }
        }
    }
    gone
}

/// Whether rotated file `r` of `path` is numbered past `keep_files`.
fn is_past(r: &Path, path: &Path, settings: &FileSettings) -> bool {
    let base = path.as_os_str().len() + 1;
    r.as_os_str()
        .to_str()
        .and_then(|s| s.get(base..))
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n > settings.keep_files)
}

/// The time of the last line of a file (the one a follower wrote before
/// the agent stopped), reading at most its last 64 KiB.
pub fn last_ts(path: &Path) -> Option<i64> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = len.saturating_sub(64 << 10);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.lines()
        .rev()
        .find_map(|l| decode(l).map(|(ts, _, _)| ts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Source {
        Source {
            host: "h1".into(),
            stack: "shop".into(),
            service: "web".into(),
            slot: 2,
            release: 7,
            container: "shop.web.2".into(),
            container_id: "abc".into(),
        }
    }

    #[test]
    fn the_template_names_the_file() {
        assert_eq!(
            render(
                skiff_shared::sections::logs::DEFAULT_PATH_TEMPLATE,
                &source()
            ),
            PathBuf::from("/var/log/skiff/shop/web/shop.web.2.log")
        );
        assert_eq!(
            render("/l/{host}/{stack}-{slot}/{container}", &source()),
            PathBuf::from("/l/h1/shop-2/shop.web.2")
        );
    }

    #[test]
    fn lines_read_back_as_written() {
        let r = Record {
            ts_ns: 1_764_509_627_123_456_789,
            stream: Stream::Stderr,
            line: "hello world".into(),
            source: Arc::new(source()),
        };
        let mut out = Vec::new();
        encode(&r, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "2025-11-30T13:33:47.123456789Z stderr hello world\n");
        assert_eq!(
            decode(text.trim_end()),
            Some((r.ts_ns, Stream::Stderr, "hello world"))
        );
        // Docker's own form: fewer fraction digits.
        assert_eq!(
            parse_ts("2025-11-30T13:33:47.1234Z"),
            Some(1_764_509_627_123_400_000)
        );
    }

    #[test]
    fn a_full_file_rotates_and_the_oldest_goes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/x.log");
        let settings = FileSettings {
            path_template: String::new(),
            max_file_bytes: 4096,
            max_file_age_s: 0,
            keep_files: 2,
            retain_days: 1,
        };
        let mut w = Writer::new(path.clone());
        let mut line = vec![b'x'; 999];
        line.push(b'\n');
        for _ in 0..20 {
            w.write(&line, &settings).unwrap();
        }
        assert_eq!(rotated(&path, 10).len(), 2);
        assert!(fs::metadata(&path).unwrap().len() <= 4096);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), FILE_MODE);
        assert_eq!(mode(path.parent().unwrap()), DIR_MODE);
    }

    #[test]
    fn retention_removes_old_rotations_and_files_of_containers_gone() {
        let dir = tempfile::tempdir().unwrap();
        let settings = FileSettings {
            keep_files: 2,
            retain_days: 2,
            ..FileSettings::default()
        };
        let kept = dir.path().join("kept.log");
        let gone = dir.path().join("gone.log");
        for p in [&kept, &gone] {
            for suffix in ["", ".1", ".2", ".3"] {
                let mut name = p.as_os_str().to_owned();
                name.push(suffix);
                fs::write(PathBuf::from(name), "x\n").unwrap();
            }
        }
        let age = |p: &Path, days: &str| {
            let ok = std::process::Command::new("touch")
                .args(["-d", days])
                .arg(p)
                .status()
                .unwrap()
                .success();
            assert!(ok);
        };
        // kept: written now, its .1 recent, its .2 old; .3 is past keep_files.
        age(&numbered(&kept, 2), "3 days ago");
        // gone: nothing written for 3 days.
        for p in rotated(&gone, 10).iter().chain([&gone]) {
            age(p, "3 days ago");
        }
        let files = Files::default();
        let _open = files.writer(&kept);
        let removed = retain(&files, &[kept.clone(), gone.clone()], &settings);
        assert_eq!(removed, vec![gone.clone()]);
        assert_eq!(rotated(&kept, 10), vec![numbered(&kept, 1)]);
        assert!(kept.exists());
        assert!(!gone.exists() && rotated(&gone, 10).is_empty());
    }
}
