//! The CLI's saved login: the coordinator URL and API token that `skiff
//! login` writes (0600) to `$SKIFF_CONFIG`, else
//! `$XDG_CONFIG_HOME/skiff/config.toml`, else `~/.config/skiff/config.toml`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Failure;

/// The coordinator URL when no flag, environment variable or saved config
/// names one.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7070";

/// What `skiff login` saves (`Debug` leaves the token out).
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    pub url: Option<String>,
    pub token: Option<String>,
}

impl std::fmt::Debug for CliConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CliConfig")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Where the config is, or None when neither `SKIFF_CONFIG`,
/// `XDG_CONFIG_HOME` nor `HOME` is set.
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SKIFF_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("skiff").join("config.toml"))
}

/// The saved config; empty when there is none.
pub fn load() -> Result<CliConfig, Failure> {
    let Some(path) = path() else {
        return Ok(CliConfig::default());
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| {
            Failure::usage(format!(
                "invalid config file {}: {}",
                path.display(),
                e.message()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CliConfig::default()),
        Err(e) => Err(Failure::usage(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Writes the config to `path` (0600, atomically), creating its directory.
pub fn save(path: &Path, config: &CliConfig) -> Result<(), Failure> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Failure {
            message: format!("cannot create {}: {e}", dir.display()),
            code: 1,
        })?;
    }
    let text = toml::to_string(config).unwrap_or_default();
    skiff_shared::files::write_atomic(path, text.as_bytes(), skiff_shared::files::PRIVATE).map_err(
        |e| Failure {
            message: format!("cannot write {}: {e}", path.display()),
            code: 1,
        },
    )
}
