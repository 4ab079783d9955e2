//! `[logs]`: where hosts keep their containers' files and for how long,
//! the same on every host.

use std::time::Duration;

use serde::Deserialize;
use skiff_shared::sections::logs::FileSettings;

use crate::config::{ConfigError, duration_str};

/// The per-container log files on every host.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// `{stack}`, `{service}`, `{container}`, `{slot}` and `{host}` are
    /// replaced.
    pub path_template: String,
    /// A file is rotated at this size (`64MiB`).
    pub max_file_size: String,
    /// ...or at this age (`0s`: never by age).
    #[serde(with = "duration_str")]
    pub max_file_age: Duration,
    /// Rotated files kept per container.
    pub keep_files: u32,
    /// Rotated files, and the files of containers gone, are removed after
    /// this many days (0: no age limit).
    pub retain_days: u32,
}

impl Default for LogsConfig {
    fn default() -> Self {
        let d = FileSettings::default();
        Self {
            path_template: d.path_template,
            max_file_size: format!("{}MiB", d.max_file_bytes >> 20),
            max_file_age: Duration::from_secs(d.max_file_age_s),
            keep_files: d.keep_files,
            retain_days: d.retain_days,
        }
    }
}

impl LogsConfig {
    /// The settings every host gets, checked.
    ///
    /// # Errors
    /// The key, what is wrong and the fix.
    pub fn settings(&self) -> Result<FileSettings, ConfigError> {
        let max_file_bytes =
            skiff_compose::stack::parse_bytes(&self.max_file_size).map_err(|why| {
                ConfigError::Invalid {
                    key: "logs.max_file_size",
                    message: format!(
                        "{:?} is not a size ({why}): write e.g. \"64MiB\"",
                        self.max_file_size
                    ),
                }
            })?;
        let files = FileSettings {
            path_template: self.path_template.clone(),
            max_file_bytes,
            max_file_age_s: self.max_file_age.as_secs(),
            keep_files: self.keep_files,
            retain_days: self.retain_days,
        };
        files.check().map_err(|e| ConfigError::Invalid {
            key: match e.field.as_str() {
                "logs.max_file_size" => "logs.max_file_size",
                "logs.keep_files" => "logs.keep_files",
                _ => "logs.path_template",
            },
            message: e.why,
        })?;
        Ok(files)
    }

    /// Checks values that parse but make no sense.
    ///
    /// # Errors
    /// The key, what is wrong and the fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.settings().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_sections_defaults() {
        assert_eq!(
            LogsConfig::default().settings().unwrap(),
            FileSettings::default()
        );
    }

    #[test]
    fn errors_name_the_key_and_the_fix() {
        let bad = |c: LogsConfig| c.settings().unwrap_err().to_string();
        let e = bad(LogsConfig {
            max_file_size: "lots".into(),
            ..LogsConfig::default()
        });
        assert!(
            e.contains("logs.max_file_size") && e.contains("64MiB"),
            "{e}"
        );
        let e = bad(LogsConfig {
            path_template: "logs/{container}.log".into(),
            ..LogsConfig::default()
        });
        assert!(
            e.contains("logs.path_template") && e.contains("absolute"),
            "{e}"
        );
        let e = bad(LogsConfig {
            keep_files: 0,
            ..LogsConfig::default()
        });
        assert!(e.contains("logs.keep_files"), "{e}");
        let ok = LogsConfig {
            max_file_size: "1g".into(),
            max_file_age: Duration::from_secs(3600),
            ..LogsConfig::default()
        }
        .settings()
        .unwrap();
        assert_eq!(ok.max_file_bytes, 1 << 30);
        assert_eq!(ok.max_file_age_s, 3600);
    }
}
