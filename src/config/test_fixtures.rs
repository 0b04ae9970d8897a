//! Shared by the config tests: the full example from spec/config.md (`FULL`, also used by
//! `docs_tests`), a minimal config, and helpers that load a config from a file with a given
//! environment, parse one expecting an error, or add one terminal table.

use std::io::Write;
use std::path::PathBuf;

use super::{Config, ConfigError};

/// The example from spec/config.md, with concrete URLs for the `…` placeholders.
pub(super) const FULL: &str = r#"
agent_id = "shop-042"
topic_prefix = "posbridge"

[mqtt]
url = "mqtt://127.0.0.1:1883"
client_id = "posbridge-shop-042"
username = ""
password_file = ""
ca_file = ""
client_cert_file = ""
client_key_file = ""
keep_alive = "30s"

[store]
path = "/var/lib/posbridge"
key_file = "/var/lib/posbridge/device.key"

[commands]
default_ttl = "120s"
max_bytes = 65536
queue_depth = 16

[security]
command_keys = []

[telemetry]
interval = "60s"

[log]
format = "auto"
level = "info"

[[terminals]]
id = "kaspi-1"
kind = "kaspi"
url = "https://192.0.2.10:8080"
tls = "verify"
tls_name = ""
pin_sha256 = ""
ca_file = ""
register_name = "posbridge-shop-042"
protected = true

[[terminals]]
id = "ip-1"
kind = "ip"
addr = "192.0.2.20:8080"

[[terminals]]
id = "token-1"
kind = "token"
transport = "usb"
usb = { vid = 0x18d1, serial = "" }
addr = ""
strict = false
ca_file = ""
company_name = "posbridge"

[[terminals]]
id = "paywall-1"
kind = "paywall"
mode = "test"
test_url = "https://paywall-test.example/api"
live_url = "https://paywall.example/api"
terminal_guid = "8ff33705-57c7-42dc-8341-a0053e7f3009"
api_key_file = ""
client_key_file = ""

[[terminals]]
id = "kuveyt-1"
kind = "kuveyt"
mode = "test"
test_url = "https://kuveyt-test.example/pos"
live_url = "https://kuveyt.example/pos"
return_url = "https://shop.example/return"
cancel_url = "https://shop.example/cancel"
api_key_file = ""
api_secret_file = ""
"#;

pub(super) const MINIMAL: &str =
    "agent_id = \"shop-042\"\n[mqtt]\nurl = \"mqtt://broker.example\"\n";

pub(super) fn write_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("posbridge.toml");
    let mut file = std::fs::File::create(&path).expect("create");
    file.write_all(text.as_bytes()).expect("write");
    (dir, path)
}

pub(super) fn load(text: &str, env: &[(&str, &str)]) -> (Result<Config, ConfigError>, String) {
    let (_dir, path) = write_file(text);
    let env = env.iter().map(|&(k, v)| (k, v));
    (Config::load_with_env(&path, env), path.display().to_string())
}

pub(super) fn error(text: &str) -> String {
    match Config::from_toml_str(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

/// MINIMAL plus one terminal table.
pub(super) fn with_terminal(body: &str) -> String {
    format!("{MINIMAL}[[terminals]]\n{body}\n")
}
