//! Secrets kept out of what the agent prints: `Config::masked_json` (the effective
//! configuration for `posbridge check`), the secret key names, and `user:password@` in
//! URLs replaced by the mask.

use super::{validate, Config};

pub(super) const MASK: &str = "***";

impl Config {
    /// The effective configuration for `posbridge check`, secrets masked.
    pub fn masked_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_else(
            |e| serde_json::json!({ "error": format!("cannot render the configuration: {e}") }),
        );
        mask_secrets(&mut value);
        value
    }
}

/// Keys whose values are secrets (never printed or logged); `*_file` keys hold paths.
pub fn is_secret_key(name: &str) -> bool {
    const SECRET_WORDS: [&str; 5] = ["password", "secret", "api_key", "token", "private"];
    let name = name.to_ascii_lowercase();
    !name.ends_with("_file") && SECRET_WORDS.iter().any(|w| name.contains(w))
}

pub(super) fn mask_secrets(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if is_secret_key(key) {
                    if !v.is_null() {
                        *v = serde_json::Value::String(MASK.into());
                    }
                } else if let (true, Some(url)) = (key.ends_with("url"), v.as_str()) {
                    *v = serde_json::Value::String(validate::redact_userinfo(url));
                } else {
                    mask_secrets(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(mask_secrets),
        _ => {}
    }
}
