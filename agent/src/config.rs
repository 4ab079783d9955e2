//! Agent configuration: an optional TOML file, overridden by flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Everything the agent can be configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the identity and state live.
    pub data_dir: PathBuf,
    /// Overrides the coordinator address stored at join (HOST:PORT), e.g.
    /// after the coordinator moved.
    pub coordinator: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/skiff/agent"),
            coordinator: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(c) = &self.coordinator {
            skiff_shared::tls::server_name_of(c).map_err(|message| ConfigError::Invalid {
                key: "coordinator",
                message,
            })?;
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "data_dir",
                message: "must not be empty".into(),
            });
        }
        Ok(())
    }
}
