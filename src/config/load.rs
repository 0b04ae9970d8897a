//! Reading the file and the `POSBRIDGE__SECTION__KEY` environment through the `config`
//! crate, and turning its errors into ones that name the full key and its origin.

use std::path::Path;

use super::{Config, ConfigError, TerminalConfig};

const ENV_PREFIX: &str = "POSBRIDGE";
const ENV_SEPARATOR: &str = "__";

impl Config {
    /// Loads `path` plus `POSBRIDGE__…` overrides from the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, process_env()?)
    }

    /// Like [`Config::load`] with an explicit environment (tests need not touch the process's).
    pub fn load_with_env<I, K, V>(path: &Path, env: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        // Read it ourselves: the io error (missing vs. permission) and any file name work.
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::Read { path: path.to_owned(), error })?;
        Self::build(&text, &path.display().to_string(), env)
    }

    /// Parses and validates TOML text with no environment overrides.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::build(text, "inline TOML", std::iter::empty::<(String, String)>())
    }

    fn build<I, K, V>(text: &str, file: &str, env: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let env: ::config::Map<String, String> = env
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(k, _)| env_key(k).is_some())
            .collect();
        let origins = Origins::new(file, &env);
        origins.reject_list_overrides()?;
        // No `try_parsing`: it would turn agent_id "042" into the integer 42 and back into
        // "42". Plain strings still deserialize into numbers and bools.
        let environment = ::config::Environment::with_prefix(ENV_PREFIX)
            .separator(ENV_SEPARATOR)
            .source(Some(env));
        let mut config: Config = ::config::Config::builder()
            .add_source(::config::File::from_str(text, ::config::FileFormat::Toml))
            .add_source(environment)
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| origins.map_error(e))?;
        config.fill_derived_defaults();
        config.validate().map_err(|e| match e {
            ConfigError::Invalid { key, message, .. } => {
                ConfigError::Invalid { origin: Some(origins.of(&key)), key, message }
            }
            other => other,
        })?;
        Ok(config)
    }

    fn fill_derived_defaults(&mut self) {
        let agent_name = format!("posbridge-{}", self.agent_id);
        if self.mqtt.client_id.is_empty() {
            self.mqtt.client_id = agent_name.clone();
        }
        if self.store.key_file.as_os_str().is_empty() {
            self.store.key_file = self.store.path.join("device.key");
        }
        for terminal in &mut self.terminals {
            if let TerminalConfig::Kaspi(k) = terminal {
                if k.register_name.is_empty() {
                    k.register_name = agent_name.clone();
                }
            }
        }
    }
}

fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Ok(name) = name.into_string() else {
            continue; // cannot be one of ours: our names are ASCII
        };
        if env_key(&name).is_none() {
            continue;
        }
        // Silently dropping an override would leave the agent on the file's value.
        let value =
            value.into_string().map_err(|_| ConfigError::EnvNotUnicode { name: name.clone() })?;
        vars.push((name, value));
    }
    Ok(vars)
}

/// The config key an environment variable overrides, as the `config` crate derives it.
fn env_key(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}").to_ascii_lowercase();
    let rest = lower.strip_prefix(&prefix)?;
    Some(rest.replace(ENV_SEPARATOR, "."))
}

/// Says where a key's value came from, so errors point at the file or the variable.
struct Origins {
    file: String,
    env: Vec<(String, String)>,
}

impl Origins {
    fn new(file: &str, env: &::config::Map<String, String>) -> Self {
        let env = env.keys().filter_map(|name| Some((env_key(name)?, name.clone()))).collect();
        Origins { file: file.to_owned(), env }
    }

    fn of(&self, key: &str) -> String {
        let set_by_env = |k: &String| k == key || k.starts_with(&format!("{key}."));
        match self.env.iter().find(|(k, _)| set_by_env(k)) {
            Some((_, name)) => format!("environment variable {name}"),
            None => self.file.clone(),
        }
    }

    /// `POSBRIDGE__TERMINALS__0__ADDR` would turn the list into a table; say so plainly.
    fn reject_list_overrides(&self) -> Result<(), ConfigError> {
        const LISTS: [&str; 2] = ["terminals", "security.command_keys"];
        for (key, name) in &self.env {
            if LISTS.iter().any(|l| key == l || key.starts_with(&format!("{l}."))) {
                return Err(ConfigError::Invalid {
                    key: key.clone(),
                    message: "lists (terminals, security.command_keys) cannot be overridden \
                              from the environment; edit the file"
                        .into(),
                    origin: Some(format!("environment variable {name}")),
                });
            }
        }
        Ok(())
    }

    /// Rewrites the `config` crate's error, whose key stops at the struct that failed,
    /// into one that names the full key and where it came from.
    fn map_error(&self, err: ::config::ConfigError) -> ConfigError {
        use ::config::ConfigError as E;
        let (key, message) = match err {
            E::FileParse { cause, .. } => {
                return ConfigError::Syntax {
                    origin: self.file.clone(),
                    message: format!("invalid TOML: {cause}"),
                }
            }
            E::At { error, key, .. } => (key.unwrap_or_default(), error.to_string()),
            E::Type { unexpected, expected, key, .. } => (
                key.unwrap_or_default(),
                format!("invalid type: {unexpected}, expected {expected}"),
            ),
            // serde's `missing_field` arrives here, e.g. "terminals[0]kind".
            E::NotFound(key) => {
                let key = dot_after_index(&key);
                return ConfigError::MissingKey { origin: self.of(&key), key };
            }
            other => (String::new(), other.to_string()),
        };
        let mut key = dot_after_index(&key);
        let mut message = message.as_str();
        // Errors from inside a terminal lose their path (serde buffers internally tagged
        // enums); our wrappers for nested tables put it back as "usb: …".
        while let Some((segment, rest)) = message.split_once(": ") {
            if segment.is_empty() || !segment.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                break;
            }
            key = if key.is_empty() { segment.to_owned() } else { format!("{key}.{segment}") };
            message = rest;
        }
        let join = |field: &str| match key.as_str() {
            "" => field.to_owned(),
            parent => format!("{parent}.{field}"),
        };
        if let Some((field, rest)) = backticked(message, "unknown field ") {
            let key = join(field);
            let expected = rest
                .strip_prefix(", expected ")
                .map(|e| e.replace('`', ""))
                .filter(|e| !e.is_empty());
            return ConfigError::UnknownKey { origin: self.of(&key), key, expected };
        }
        if let Some((field, _)) = backticked(message, "missing field ") {
            let key = join(field);
            return ConfigError::MissingKey { origin: self.of(&key), key };
        }
        ConfigError::Invalid {
            origin: Some(self.of(&key)),
            key: if key.is_empty() { "config".into() } else { key },
            message: message.to_owned(),
        }
    }
}

/// The `config` crate joins an index and a field without a dot ("terminals[0]kind").
fn dot_after_index(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 2);
    let mut chars = key.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == ']' && chars.peek().is_some_and(|&n| n != '.' && n != '[') {
            out.push('.');
        }
    }
    out
}

/// Splits serde's "unknown field `name`, expected …" into `name` and the rest.
fn backticked<'a>(message: &'a str, lead: &str) -> Option<(&'a str, &'a str)> {
    let rest = message.strip_prefix(lead)?.strip_prefix('`')?;
    rest.split_once('`')
}
