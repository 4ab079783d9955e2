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
    #[error(transparent)]
    File(#[from] skiff_shared::files::ConfigFileError),
    #[error("invalid config: {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(skiff_shared::files::read_toml(path)?)
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
