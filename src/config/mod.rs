//! Typed configuration (spec/config.md): one TOML file plus `POSBRIDGE__SECTION__KEY`
//! environment overrides, loaded with the `config` crate and validated before use.
//!
//! This file holds [`Config`], its agent-wide sections and [`ConfigError`]; the terminal
//! kinds' tables are in `terminals`, how values are written in the file (`""` for not
//! set, humantime durations) in `values`, loading in `load`, the checks in `validate` and
//! the secrets masked for `posbridge check` in `mask`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod load;
mod mask;
mod terminals;
mod validate;
mod values;

#[cfg(test)]
mod docs_tests;
#[cfg(test)]
mod env_tests;
#[cfg(test)]
mod error_tests;
#[cfg(test)]
mod failover_tests;
#[cfg(test)]
mod parse_tests;
#[cfg(test)]
mod test_fixtures;

pub use mask::is_secret_key;
pub use terminals::{
    IpTerminal, KaspiTerminal, KuveytTerminal, PaywallTerminal, ProviderMode, TerminalConfig,
    TlsMode, TokenTerminal, Transport, UsbAccessory, UsbFilter,
};
pub use validate::MqttEndpoint;

use values::{duration_str, non_empty, secs};

/// Where `posbridge run|check|doctor` look when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/posbridge/posbridge.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("environment variable {name} is not valid UTF-8")]
    EnvNotUnicode { name: String },
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error("unknown key \"{key}\" in {origin}{}", hint(expected))]
    UnknownKey { key: String, origin: String, expected: Option<String> },
    #[error("missing key \"{key}\" in {origin}")]
    MissingKey { key: String, origin: String },
    #[error("{key}: {message}{}", origin.as_deref().map(|o| format!(" (in {o})")).unwrap_or_default())]
    Invalid { key: String, message: String, origin: Option<String> },
}

fn hint(expected: &Option<String>) -> String {
    expected.as_deref().map(|e| format!("; expected {e}")).unwrap_or_default()
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.into(), message: message.into(), origin: None }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub agent_id: String,
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub commands: CommandsConfig,
    #[serde(default)]
    pub security: SecurityConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub terminals: Vec<TerminalConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host[:port]` or `mqtts://host[:port]`; see [`MqttConfig::endpoints`].
    #[serde(default)]
    pub url: String,
    /// Instead of `url`: several brokers (the nodes of a cluster), tried in order; the
    /// agent moves to the next when its broker is lost or refuses it.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Empty in the file means `"posbridge-" + agent_id` (filled in by `load`).
    #[serde(default)]
    pub client_id: String,
    #[serde(default, deserialize_with = "non_empty")]
    pub username: Option<String>,
    #[serde(default, deserialize_with = "non_empty")]
    pub password_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "non_empty")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "non_empty")]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "non_empty")]
    pub client_key_file: Option<PathBuf>,
    #[serde(default = "secs::<30>", with = "duration_str")]
    pub keep_alive: Duration,
    /// Allow a password over plain `mqtt://` to a broker that is not on this machine.
    #[serde(default)]
    pub allow_plaintext: bool,
}

/// The shortest `store.retention` a configuration may set: a day.
pub const MIN_RETENTION: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Empty in the file means `<path>/device.key` (filled in by `load`).
    pub key_file: PathBuf,
    /// Finished commands older than this are deleted (ids older than this may run again:
    /// the idempotency window); at least [`MIN_RETENTION`]. Unfinished ones are never
    /// deleted.
    #[serde(with = "duration_str")]
    pub retention: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("/var/lib/posbridge"),
            key_file: PathBuf::new(),
            retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandsConfig {
    #[serde(with = "duration_str")]
    pub default_ttl: Duration,
    pub max_bytes: usize,
    pub queue_depth: usize,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig { default_ttl: Duration::from_secs(120), max_bytes: 65536, queue_depth: 16 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// When non-empty, only signed command envelopes are accepted.
    pub command_keys: Vec<CommandKey>,
    /// Signed commands are the default: with money terminals and no `command_keys`,
    /// `run` refuses to start unless this says unsigned commands are wanted.
    pub allow_unsigned: bool,
    /// A signed command's `expires_at` may be at most this far ahead of its receipt.
    #[serde(with = "duration_str")]
    pub max_command_age: Duration,
    /// A refund by `transaction_id` + `method`, without the `original` payment's id, is
    /// refused unless this allows it.
    pub allow_unreferenced_refunds: bool,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            command_keys: Vec::new(),
            allow_unsigned: false,
            max_command_age: Duration::from_secs(15 * 60),
            allow_unreferenced_refunds: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandKey {
    pub kid: String,
    pub public_key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    #[serde(with = "duration_str")]
    pub interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { interval: Duration::from_secs(60) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter directive, e.g. `info` or `info,sled=warn`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Auto, level: "info".into() }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// journald under systemd, text on a tty.
    #[default]
    Auto,
    Journald,
    Text,
    Json,
}

fn default_topic_prefix() -> String {
    "posbridge".into()
}
