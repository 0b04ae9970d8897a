//! The checks that guard money and secrets: signed commands (`security`), the device key
//! (`store.key_file`: present, 32 bytes, owner-only) and every other `*_file` key of the
//! configuration (readable by the agent; secret ones not readable by everyone).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Check;
use crate::config::Config;

/// Signed commands are the default (`mqtt-api.md`: Signed commands).
pub(super) fn security(cfg: &Config) -> Check {
    const NAME: &str = "security";
    let s = &cfg.security;
    if !s.command_keys.is_empty() {
        return Check::ok(
            NAME,
            format!(
                "only signed commands run ({} cloud key(s)); expires_at at most {} s ahead",
                s.command_keys.len(),
                s.max_command_age.as_secs()
            ),
        );
    }
    if cfg.terminals.is_empty() {
        return Check::ok(NAME, "no terminals: nothing to protect");
    }
    if s.allow_unsigned {
        return Check::warn(
            NAME,
            "security.allow_unsigned = true: anyone who can publish to the command topic can move money",
            "configure security.command_keys with the cloud's public keys (README: Signed commands) and drop allow_unsigned",
        );
    }
    Check::fail(
        NAME,
        "security.command_keys is empty: the agent refuses to start with payment terminals and no cloud keys",
        "configure security.command_keys (README: Signed commands), or set security.allow_unsigned = true for a broker nobody else can write to",
    )
}

pub(super) fn key_file(cfg: &Config) -> Check {
    const NAME: &str = "device key";
    let path = &cfg.store.key_file;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Check::warn(
                NAME,
                format!("{} does not exist yet", path.display()),
                "created (0600) at the agent's first start or by `posbridge provision`; back it up with the store",
            )
        }
        Err(e) => {
            return Check::fail(
                NAME,
                format!("{}: {e}", path.display()),
                "run doctor as the agent's user: `sudo -u posbridge posbridge doctor`",
            )
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Check::fail(
            NAME,
            format!("{} has mode {mode:04o}: readable beyond its owner", path.display()),
            format!("chmod 600 {}", path.display()),
        );
    }
    if meta.len() != 32 {
        return Check::fail(
            NAME,
            format!(
                "{} holds {} bytes, not 32: stored secrets cannot be read",
                path.display(),
                meta.len()
            ),
            "restore the key from backup, or move it away and set the secrets again (`posbridge secret set`)",
        );
    }
    if let Err(e) = std::fs::File::open(path) {
        return Check::fail(
            NAME,
            format!("{}: {e}", path.display()),
            "run doctor as the agent's user: `sudo -u posbridge posbridge doctor`",
        );
    }
    Check::ok(NAME, format!("{} mode {mode:04o}, 32 bytes", path.display()))
}

/// Every `*_file` key in the configuration: must be readable; secret ones (passwords,
/// private and API keys) must not be readable by everyone. Generic over terminal kinds.
pub(super) fn files(cfg: &Config) -> Vec<Check> {
    let mut found = Vec::new();
    if let Ok(v) = serde_json::to_value(cfg) {
        collect_files(&v, String::new(), &mut found);
    }
    found
        .into_iter()
        .filter(|(key, _)| key != "store.key_file")
        .map(|(key, path)| file_check(&key, &path))
        .collect()
}

fn collect_files(v: &Value, at: String, out: &mut Vec<(String, PathBuf)>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                match v {
                    Value::String(s) if k.ends_with("_file") && !s.is_empty() => {
                        out.push((key, PathBuf::from(s)))
                    }
                    _ => collect_files(v, key, out),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_files(item, format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

pub(super) fn is_secret_file(key: &str) -> bool {
    let name = key.rsplit('.').next().unwrap_or(key);
    !name.contains("public")
        && (name.contains("password") || name.contains("secret") || name.contains("key"))
}

fn file_check(key: &str, path: &Path) -> Check {
    let name = key.to_string();
    let readable_fix =
        "make it readable by the agent: chown root:posbridge FILE; chmod 640 FILE (and run doctor as posbridge)";
    if let Err(e) = std::fs::File::open(path) {
        return Check::fail(
            name,
            format!("{}: {e}", path.display()),
            readable_fix.replace("FILE", &path.display().to_string()),
        );
    }
    let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    if is_secret_file(key) && mode & 0o007 != 0 {
        return Check::fail(
            name,
            format!("{} has mode {mode:04o}: a secret readable by every user", path.display()),
            format!("chown root:posbridge {p}; chmod 640 {p}", p = path.display()),
        );
    }
    Check::ok(name, format!("{} mode {mode:04o}", path.display()))
}
